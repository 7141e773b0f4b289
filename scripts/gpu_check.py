"""One GPU run that measures everything it can, every figure into one JSON file.

Run by `scripts/gpu-check.sh` (see there). Steps, each timed and allowed to fail alone, the
JSON written after each, all inside 450 s (a late step gets the time that is left):

1. `kernels`: paged compaction's KV move (`kernels.kv_move`, Triton) on a Qwen3-8B-shaped
   pool (36 layers, 8 KV heads of 128, bf16): microseconds per compaction step for
   batch 1-128 at page 16 and 64 (copies per row = page / 2, the mean for random block
   ends), next to the torch path; torch + Triton only, no SGLang needed.
2. `tests`: the KV move and row compaction on CUDA (torch + Triton only); then
   `server_tests` (only where SGLang imports): the masks on SGLang's Triton kernel and
   FlashInfer, and the oracle cases on GPU servers, per backend and page size.
3. `benchmarks` (only where SGLang imports): masked prefill, FlashInfer vs Triton;
   throughput under pressure at `--scale 1.0` on the config-only Qwen3-8B shell with
   dummy weights; compaction overhead at page sizes 1, 16 and 64.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `memento_sglang` from the checkout, installed or not

QWEN3_8B = {"layers": 36, "kv_heads": 8, "head_dim": 128}


def time_cuda(fn, repeats: int = 20) -> float:
    """Median microseconds of `fn` on the current stream (after two warm-ups)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def kernel_figures() -> dict:
    from memento_sglang.kernels.kv_move import buffer_table, move_kv_reference, move_kv_triton

    slots = 65536
    shape = (slots, QWEN3_8B["kv_heads"], QWEN3_8B["head_dim"])
    buffers = [torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(2 * QWEN3_8B["layers"])]
    table = buffer_table(buffers)
    rows = []
    for page in (16, 64):
        for batch in (1, 8, 32, 128):
            n = batch * page // 2
            perm = torch.randperm(slots - 1, device="cuda")[: 2 * n] + 1
            dst, src = perm[:n], perm[n:]
            triton_us = time_cuda(lambda dst=dst, src=src: move_kv_triton(buffers, dst, src, table=table))
            torch_us = time_cuda(lambda dst=dst, src=src: move_kv_reference(buffers, dst, src))
            moved_bytes = 2 * n * sum(b[0].nbytes for b in buffers)  # read + write
            rows.append({
                "page_size": page, "batch": batch, "tokens_moved": n, "triton_us": triton_us,
                "torch_us": torch_us, "triton_gb_per_s": moved_bytes / triton_us / 1e3,
            })  # fmt: skip
    return {"shape": QWEN3_8B, "pool_slots": slots, "rows": rows}


#: the whole check ends by then (gpu-check.sh kills it at 470 s): later steps get what is left
DEADLINE = time.monotonic() + 450


def run(cmd: list[str], timeout: int, log: Path) -> dict:
    start = time.monotonic()
    timeout = int(min(timeout, DEADLINE - start))
    if timeout < 30:
        return {"cmd": " ".join(cmd), "rc": None, "skipped": "no time left"}
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = 124, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout} s"
    log.write_text(out if isinstance(out, str) else out.decode(errors="replace"))
    return {"cmd": " ".join(cmd), "rc": code, "seconds": round(time.monotonic() - start, 1), "log": log.name}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "gpu-check")
    parser.add_argument("--skip-benchmarks", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import sglang

        result["sglang"] = sglang.__version__
    except ImportError:
        result["sglang"] = None
    if result["device"] is None:
        result["error"] = "no CUDA device"
    else:
        try:
            result["kernels"] = kernel_figures()
        except Exception as exc:  # one step failing must not lose the others' figures
            result["kernels"] = {"error": repr(exc)}
    py = sys.executable

    def save() -> None:
        (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2))

    save()  # after every step: a check cut short keeps what it measured
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # torch + Triton only: no conftest (it needs the package's dependencies)
    kernel_tests = ["--noconftest", "tests/gpu/test_gpu_kv_move.py", "tests/gpu/test_gpu_compaction.py"]
    result["tests"] = run([*pytest, *kernel_tests], 120, args.out / "tests.log")
    save()
    if result["sglang"] and result["device"]:
        sglang_tests = ["tests/gpu/test_gpu_masks.py", "tests/gpu/test_gpu_server_oracle.py"]
        result["server_tests"] = run([*pytest, *sglang_tests], 240, args.out / "server-tests.log")
        save()
        if not args.skip_benchmarks:
            result["benchmarks"] = benchmarks(py, args.out, save, result)
    save()
    print(json.dumps(result, indent=2))


def benchmarks(py: str, out: Path, save, result: dict) -> dict:
    shell = out / "qwen3-8b"
    make_shell = [py, "-m", "memento_sglang.cli", "model-shell", "qwen3-8b", str(shell)]
    steps = result["benchmarks"] = {"model_shell": run(make_shell, 60, out / "shell.log")}
    gpu = ["--model-path", str(shell), "--server-args", "--load-format dummy --dtype bfloat16"]
    plan = {
        "masked_prefill": (["masked_prefill", "--sizes", "8192", "--blocks", "8", "--repeats", "2"], 150),
        "throughput": (["throughput", "--scale", "1.0", "--pool", "100000", "--concurrency", "32",
                        "--traces", "sync", "--modes", "memento", "no_eviction"], 240),
        "compaction_overhead": (["compaction_overhead", "--batches", "8", "128",
                                 "--page-sizes", "1", "16"], 200),
    }  # fmt: skip
    for name, (argv, timeout) in plan.items():
        json_out = out / f"{name}.json"
        command = [py, "-m", "benchmarks", *argv, "--out", str(json_out), *gpu]
        steps[name] = run(command, timeout, out / f"{name}.log")
        if json_out.exists():
            steps[name]["result"] = json.loads(json_out.read_text())
        save()
    return steps


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
