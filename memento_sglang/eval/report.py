"""Per-mode summary of an evaluation: accuracy with intervals, KV and time, paired
differences, as JSON, a Markdown table and plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

from memento_sglang.eval.stats import bootstrap, paired_difference, pass_at_k

#: accuracy differences are reported against this mode when it ran (eviction's own cost)
REFERENCE_MODE = "no_eviction"


def summarize(records: list[dict], modes: list[str] | tuple[str, ...], *, seed: int = 0) -> dict:
    """Accuracy (pass@1 averaged over samples, pass@k), output tokens, blocks, peak KV,
    KV area and time per mode; paired accuracy differences against `no_eviction`."""
    by_mode: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_mode[r["mode"]][r["problem_id"]].append(r)
    summary: dict = {"modes": {}, "paired": {}}
    pass1: dict[str, dict[str, float]] = {}
    for mode in modes:
        problems = by_mode.get(mode, {})
        if not problems:
            continue
        samples = [s for rows in problems.values() for s in rows]
        pass1[mode] = {pid: mean(float(s["correct"]) for s in rows) for pid, rows in problems.items()}
        n = min(len(rows) for rows in problems.values())
        acc = bootstrap(list(pass1[mode].values()), seed=seed)
        summary["modes"][mode] = {
            "problems": len(problems),
            "samples": len(samples),
            "pass@1": acc.mean,
            "pass@1_ci": [acc.low, acc.high],
            **{
                f"pass@{k}": mean(
                    pass_at_k(len(rows), sum(s["correct"] for s in rows), k) for rows in problems.values()
                )
                for k in _ks(n)
            },
            "mean_score": mean(s["score"] for s in samples),
            "output_tokens": mean(s["output_tokens"] for s in samples),
            "blocks": mean(s["blocks"] for s in samples),
            "peak_kv": mean(s["peak_kv"] for s in samples),
            "max_peak_kv": max(s["peak_kv"] for s in samples),
            "kv_area": mean(s["kv_area"] for s in samples),
            "seconds": mean(s["seconds"] or 0.0 for s in samples),
        }
    reference = REFERENCE_MODE if REFERENCE_MODE in pass1 else next(iter(pass1), None)
    for mode in pass1:
        if reference is not None and mode != reference:
            diff = paired_difference(pass1[mode], pass1[reference], seed=seed)
            summary["paired"][f"{mode} - {reference}"] = {"mean": diff.mean, "ci": [diff.low, diff.high]}
    ref = summary["modes"].get(reference) if reference is not None else None
    for stats in summary["modes"].values():
        if ref:
            stats["peak_kv_vs_reference"] = stats["peak_kv"] / ref["peak_kv"] if ref["peak_kv"] else None
            stats["kv_area_vs_reference"] = stats["kv_area"] / ref["kv_area"] if ref["kv_area"] else None
    summary["reference_mode"] = reference
    return summary


def _ks(n: int) -> list[int]:
    return [k for k in (2, 4, 8, 16, 32, 64) if k <= n]


def markdown(summary: dict) -> str:
    ref = summary.get("reference_mode")
    head = (
        "| mode | problems | samples | pass@1 (95% CI) | output tokens | blocks | peak KV | "
        f"KV area | peak KV vs {ref} | s/request |"
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for mode, s in summary["modes"].items():
        low, high = s["pass@1_ci"]
        ratio = s.get("peak_kv_vs_reference")
        lines.append(
            f"| {mode} | {s['problems']} | {s['samples']} | {100 * s['pass@1']:.1f}% "
            f"({100 * low:.1f}-{100 * high:.1f}) | {s['output_tokens']:.0f} | {s['blocks']:.1f} | "
            f"{s['peak_kv']:.0f} | {s['kv_area']:.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
            f"{s['seconds']:.2f} |"
        )
    if summary["paired"]:
        lines.append("")
    for name, d in summary["paired"].items():
        lines.append(
            f"- paired accuracy difference {name}: {100 * d['mean']:+.1f} pp "
            f"(95% CI {100 * d['ci'][0]:+.1f} to {100 * d['ci'][1]:+.1f})"
        )
    return "\n".join(lines) + "\n"


def write_report(records: list[dict], modes: list[str] | tuple[str, ...], out_dir: Path) -> dict:
    summary = summarize(records, modes)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "summary.md").write_text(markdown(summary))
    _plot(records, summary, out_dir)
    return summary


def _plot(records: list[dict], summary: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for mode, s in summary["modes"].items():
        low, high = s["pass@1_ci"]
        err = [[100 * (s["pass@1"] - low)], [100 * (high - s["pass@1"])]]
        ax.errorbar(s["peak_kv"], 100 * s["pass@1"], yerr=err, fmt="o", capsize=4, label=mode)
    ax.set_xlabel("mean peak KV (tokens)")
    ax.set_ylabel("pass@1 (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_kv.png", dpi=120)
    plt.close(fig)

    traced = [r for r in records if r.get("kv_trace")]
    shown = sorted({r["problem_id"] for r in traced})[:3]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 2.4 * len(shown)), squeeze=False)
    for ax, pid in zip(axes[:, 0], shown, strict=True):
        for r in traced:
            if r["problem_id"] == pid:
                ax.plot(r["kv_trace"], label=r["mode"], linewidth=1)
        ax.set_title(pid, fontsize=9)
        ax.set_ylabel("live KV")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("generated tokens")
    fig.tight_layout()
    fig.savefig(out_dir / "kv_sawtooth.png", dpi=120)
    plt.close(fig)
