"""The demo (sgl.Engine in-process) and the CLI, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server
BIN = Path(sys.executable).parent


def run_cli(tmp_path, *args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(BIN / "memento-sglang"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_demo_on_smollm2_reasons_in_blocks_and_evicts_them(tmp_path):
    """The README's main job: an @sgl.function of memento_block() calls on the real model."""
    out = json.loads(run_cli(tmp_path, "demo", "--json").strip().splitlines()[-1])
    assert len(out["blocks"]) == len(out["mementos"]) == 3
    assert all(text.strip() for text in out["blocks"] + out["mementos"])
    last = out["requests"]["answer"]
    stats = last["memento"]
    assert stats["blocks_evicted"] == 3 and stats["anomalies"] == 0
    assert stats["peak_live_kv_tokens"] < stats["peak_kv_tokens_without_eviction"]
    assert stats["live_kv_tokens"] + stats["tokens_evicted"] == stats["peak_kv_tokens_without_eviction"]
    assert last["cached_tokens"] > 0  # the radix tree held the program's earlier requests
    assert "8" in out["answer"]  # greedy SmolLM2 gets 12 - 4 right with its blocks hidden


def test_demo_human_output_on_the_tiny_model(tmp_path):
    out = run_cli(tmp_path, "demo", "--model", "tiny", "--blocks", "2", "--block-tokens", "8")
    assert "block 1:" in out and "without eviction" in out


ENGINE_PROGRAM = """
import json, sglang as sgl
from memento_sglang.engine import Engine
from memento_sglang.frontend.dsl import memento_reasoning
from memento_sglang.frontend.engine_backend import EngineBackend
from memento_sglang.models.tiny import tiny_model_path

@sgl.function
def reason(s, question):
    s += question
    forks = s.fork(2)
    for f in forks:
        f += memento_reasoning("r", max_blocks=2, max_block_tokens=5, max_memento_tokens=2,
                               answer_regex="[0-9]{2}", temperature=0)
    s["answers"] = [f["r_answer"] for f in forks]
    s["evicted"] = [f["r_trace"].stats.blocks_evicted for f in forks]
    s["blocks"] = [len(f["r_blocks"]) for f in forks]

def main():
    config = {"enable": True, "mask_delimiters": False}
    engine = Engine(model_path=str(tiny_model_path()), memento_config=config)
    chat = "<|im_start|>user\\nQ{}<|im_end|>\\n<|im_start|>assistant\\n"
    with EngineBackend(engine) as backend:
        states = reason.run_batch([{"question": chat.format(i)} for i in range(3)], backend=backend)
        out = [{k: st[k] for k in ("answers", "evicted", "blocks")} for st in states]
    after = engine.generate(prompt="x", sampling_params={"max_new_tokens": 2})["meta_info"]
    print(json.dumps({"states": out, "after_close": after["completion_tokens"]}))
    engine.shutdown()

if __name__ == "__main__":  # SGLang starts its processes with spawn
    main()
"""


def test_engine_backend_runs_forks_and_batches_in_process(tmp_path):
    script = tmp_path / "program.py"
    script.write_text(ENGINE_PROGRAM)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(out["states"]) == 3
    for state in out["states"]:
        assert all(len(a) == 2 and a.isdigit() for a in state["answers"])
        assert state["evicted"] == state["blocks"] and all(1 <= n <= 2 for n in state["blocks"])
        assert state["answers"][0] == state["answers"][1]  # greedy forks agree
    assert out["after_close"] == 2  # the engine's own sync API works again after close()


def test_serve_help_lists_the_memento_flag(tmp_path):
    done = subprocess.run(
        [str(BIN / "memento-sglang"), "serve", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--memento-config" in done.stdout
