"""The demo (sgl.Engine in-process) and the CLI, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server
BIN = Path(sys.executable).parent


def test_demo_closes_mementos_and_reports_kv(tmp_path):
    done = subprocess.run(
        [str(BIN / "memento-sglang"), "demo", "--json", "--blocks", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    stats = out["meta_info"]["memento"]
    assert stats["blocks_closed"] == 3 and stats["blocks_evicted"] == 3
    assert stats["peak_live_kv_tokens"] < stats["peak_kv_tokens_without_eviction"]
    assert stats["live_kv_tokens"] + stats["tokens_evicted"] == stats["peak_kv_tokens_without_eviction"]


def test_demo_human_output(tmp_path):
    done = subprocess.run(
        [str(BIN / "memento-sglang"), "demo", "--blocks", "2", "--block-tokens", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mementos closed: 2" in done.stdout and "without eviction" in done.stdout


def test_serve_help_lists_the_memento_flag(tmp_path):
    done = subprocess.run(
        [str(BIN / "memento-sglang"), "serve", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--memento-config" in done.stdout
