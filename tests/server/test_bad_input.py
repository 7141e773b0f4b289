"""Bad configs: clear startup errors; bad requests: HTTP 400 with no harm done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.client import chat_prompt, memento_body
from tests.support.server import ServerProcess, ServerSpec

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    "memento, message",
    [
        ({"keep_last_n_blocks": "2"}, "keep_last_n_blocks"),
        ({"bogus": 1}, "bogus"),
        ({"keep_last_n_blocks": -5}, "keep_last_n_blocks"),
        ({"enable": True, "mask_delimiters": None}, "mask_delimiters is required"),
        ({"block_end_token": "<|nope|>"}, "block_end_token"),
        ({"summary_end_token": 99999}, "outside the vocabulary"),
        (
            {"keep_last_n_blocks": 1, "keep_last_block_for_answer": True},
            "keep_last_block_for_answer",
        ),
        ("not an object", "must be an object"),
    ],
)
def test_bad_request_config_is_http_400(default_server, tokenizer, memento, message):
    prompt = chat_prompt(tokenizer, "bad config")
    body = memento_body(prompt, [(4, 2)])
    body["sampling_params"]["custom_params"] = {"memento": memento}
    r = default_server.post("/generate", body)
    assert r.status_code == 400, r.text
    assert message in r.text
    good = default_server.generate(memento_body(prompt, [(4, 2)]))  # server unharmed
    assert good["meta_info"]["memento"]["blocks_closed"] == 1


def test_bad_flag_is_a_usage_error(model_path, tmp_path):
    cmd = [
        sys.executable, "-m", "memento_sglang.launch_server", "--model-path", str(model_path),
        "--memento-config", json.dumps({"enable": True, "keep_last_n_blocks": 1, "typo": 3}),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--memento-config" in done.stderr and "typo" in done.stderr


def test_token_missing_from_vocabulary_stops_startup(model_path):
    config = {"enable": True, "mask_delimiters": False, "block_start_token": "<|not_here|>"}
    server = ServerProcess(ServerSpec("bad-vocab", ("--memento-config", json.dumps(config))), model_path)
    server.start()
    try:
        server.proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail("server with an unknown delimiter token kept running")
    assert server.proc.returncode != 0
    assert "block_start_token='<|not_here|>' is not a single token" in server.log_text()


def test_backend_without_custom_mask_stops_startup(model_path, tmp_path):
    """fa3 (SGLang's Hopper default) cannot mask a prefill: refused before any model load."""
    cmd = [
        sys.executable, "-m", "memento_sglang.launch_server", "--model-path", str(model_path),
        "--attention-backend", "fa3",
        "--memento-config", json.dumps({"enable": True, "mask_delimiters": False}),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "the 'fa3' attention backend has no custom attention mask" in done.stderr
