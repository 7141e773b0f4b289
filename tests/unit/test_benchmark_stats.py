"""How a benchmark condenses repeated runs of one point."""

from __future__ import annotations

from benchmarks.throughput import median_run, spread


def test_the_median_run_is_reported_with_every_runs_tokens_per_s():
    runs = [{"tokens_per_s": v, "id": k} for k, v in (("a", 30.0), ("b", 10.0), ("c", 20.0))]
    row = median_run(runs)
    assert row["id"] == "c" and row["tokens_per_s_runs"] == [30.0, 10.0, 20.0]
    assert median_run(runs[:2])["id"] == "b"  # an even count keeps the lower middle run
    assert spread(row["tokens_per_s_runs"]) == "10-30" and spread([5.0]) == ""
