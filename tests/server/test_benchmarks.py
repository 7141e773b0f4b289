"""The benchmark code paths on tiny sizes against a real server (no timings asserted)."""

from __future__ import annotations

import pytest

from benchmarks import compaction_overhead as overhead
from benchmarks import kv_profile as kv
from benchmarks import masked_prefill as masked
from benchmarks import prefix_sharing as sharing
from benchmarks import throughput

pytestmark = pytest.mark.server


def test_kv_profile_live_equals_theory_at_every_step(default_server, tokenizer, tmp_path):
    shape = kv.TraceShape(blocks=3, block_tokens=8, memento_tokens=2, answer_tokens=2)
    result = kv.run(default_server.url, tokenizer, shape, tmp_path)
    assert result["live_over_theoretical"] == {"memento": [1.0, 1.0], "no_eviction": [1.0, 1.0]}
    assert result["output_tokens"][0] == result["output_tokens"][1]  # same work with and without
    steps = result["steps"]["memento"]  # computed from the ids, checked at every reported step
    assert len(steps) == result["output_tokens"][0]
    reported = result["reported_steps"]["memento"]
    assert len(reported) >= len(steps) // 2 and set(reported) <= set(range(1, len(steps) + 1))
    # the sawtooth: live KV drops once per closed memento
    assert sum(1 for a, b in zip(steps, steps[1:], strict=False) if b < a) == shape.blocks
    assert result["peak_reduction"] > 1 and result["area_reduction"] > 1
    assert (tmp_path / "kv_profile.png").stat().st_size > 10_000


def test_compaction_overhead_counts_steps_and_time(unpaged_or_paged_server, tokenizer):
    server = unpaged_or_paged_server
    shape = {"blocks": 2, "block_tokens": 6, "memento_tokens": 2, "page_size": server.page_size}
    evicting = overhead.measure(server.url, tokenizer, 3, True, **shape)
    keeping = overhead.measure(server.url, tokenizer, 3, False, **shape)
    assert evicting["output_tokens"] == keeping["output_tokens"]  # exact lengths: equal work
    assert evicting["tokens_evicted"] == 3 * 2 * 6 and keeping["tokens_evicted"] == 0
    assert (evicting["kv_tokens_moved"] > 0) == (server.page_size > 1)  # 6-token spans: partial pages
    assert keeping["kv_tokens_moved"] == 0
    for row in (evicting, keeping):
        assert row["decode_steps"] > 0 and 0 < row["compaction_share"] < 1


def test_prefix_sharing_forks_reuse_the_memento_state(default_server, tokenizer):
    shape = {"closed_blocks": 2, "block_tokens": 8, "memento_tokens": 2, "new_block_tokens": 3}
    workload = sharing.Workload(forks=3, **shape)
    row = sharing.run(default_server.url, default_server.log_text, tokenizer, workload, memento=True)
    assert row["requests"] == 3 and row["output_tokens"] > 0
    state = sharing.shared_state(tokenizer, tokenizer.get_vocab(), workload, 0)
    evicted = 2 * 8  # both closed blocks' content left every row and was never prefilled again
    assert row["cached_tokens"] >= 3 * (len(state) - evicted)
    assert sharing.peak_used_tokens("Decode batch, #running-req: 3, #token: 57, token usage: 0.01") == 57


def test_throughput_runs_the_same_work_in_every_mode(default_server, tokenizer, tmp_path):
    shape = throughput.kv_profile.TraceShape(blocks=2, block_tokens=6, memento_tokens=2, answer_tokens=2)
    every = []
    for kind in ("sync", "staggered"):
        rows = [
            throughput.run(default_server, tokenizer, shape, 2, kind, mode, 20000, stagger=0.1)
            for mode in throughput.MODES
        ]
        assert len({r["output_tokens"] for r in rows}) == 1  # exact lengths: the same work
        assert rows[0]["output_tokens"] > 2 * 5 * 3
        for row in rows:
            assert row["tokens_per_s"] > 0 and row["retracted_requests"] == 0
            assert row["peak_kv_share"] < 1  # decode-log lines are sparse on this server
        every += rows
    throughput.plot(every, 20000, tmp_path / "throughput.png")
    assert (tmp_path / "throughput.png").stat().st_size > 10_000


def test_masked_prefill_builds_closed_blocks_and_times_both_modes(plain_server, tokenizer, token_ids):
    ids = masked.build_prompt(tokenizer, 300, 3)
    assert 280 <= len(ids) <= 300 and ids.count(token_ids.summary_end) == 3
    for memento in (True, False):  # a server without a radix cache: every repeat prefills
        assert masked.time_prefill(plain_server.url, ids, memento, repeats=1) > 0
