"""KV moves for paged compaction: SGLang's `KVCache.move_kv_cache` and ours (`kernels.kv_move`).

A paged compaction plan (`memento_sglang.paging`) needs a simultaneous move: read every
source slot, then write every destination slot, in all layers, with sources and
destinations overlapping. Checked here on CPU, against a torch reference:

* the native path (`move_kv_cache_native`, memory_pool.py, used with
  `SGLANG_NATIVE_MOVE_KV_CACHE=1`): advanced indexing gathers into a temporary before
  it scatters, so any overlap is safe;
* the Triton path (`copy_all_layer_kv_cache_tiled`, kernels/ops/kvcache/cache_move.py)
  under `TRITON_INTERPRET=1`, in a fresh process (the variable must be set before
  Triton is imported). A launch covers at most `num_locs_upper` (128 or 256) moves, and
  `_move_kv_cache_impl` runs larger moves as chunks one after another, so only the
  plan's reader-before-writer order makes a long move right. The interpreter runs a
  program's whole load before its store; on a GPU the warps of one program have no
  barrier between the two, which this test cannot show either way.

Paged compaction therefore uses its own move (`memento_sglang.kernels.kv_move`): torch
on CPU, and on CUDA a Triton gather into scratch then a scatter (two launches, ordered
by the stream), checked here under the interpreter too, with chunks in plan order.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.paging import plan_paged_compaction

LAYERS, HEADS, DIM = 3, 2, 4


def reference_move(buffers: list[torch.Tensor], tgt: torch.Tensor, src: torch.Tensor) -> list[torch.Tensor]:
    """Gather every source row of every layer, then scatter."""
    out = [b.clone() for b in buffers]
    for b, o in zip(buffers, out, strict=True):
        o[tgt] = b[src].clone()
    return out


def make_pool(slots: int, page_size: int, *, triton: bool):
    """A real CPU `MHATokenToKVPool` with random K/V; `triton` picks the tiled copy."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(
        size=slots, page_size=page_size, dtype=torch.float32, head_num=HEADS, head_dim=DIM,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False, enable_alt_stream=False,
        enable_kv_cache_copy=triton,
    )  # fmt: skip
    pool.use_native_move_kv_cache = not triton
    gen = torch.Generator().manual_seed(slots)
    for b in [*pool.k_buffer, *pool.v_buffer]:
        b.copy_(torch.randn(b.shape, generator=gen))
    return pool


def buffers_of(pool) -> list[torch.Tensor]:
    return [*pool.k_buffer, *pool.v_buffer]


def random_move(rng: random.Random, slots: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct targets, distinct sources, the two sets overlapping."""
    tgt = rng.sample(range(1, slots), n)
    src = rng.sample(range(1, slots), n)
    return torch.tensor(tgt, dtype=torch.int64), torch.tensor(src, dtype=torch.int64)


def paged_plan_case(rng: random.Random, page_size: int, length: int, spans: list[tuple[int, int]], pages):
    """A page-consecutive row over shuffled pages, and the compaction plan for `spans`."""
    order = rng.sample(range(1, pages + 1), -(-length // page_size))
    row = [order[j // page_size] * page_size + j % page_size for j in range(length)]
    survivors = [p for p in range(length) if not any(s <= p < e for s, e in spans)]
    old_slots = torch.tensor([row[p] for p in survivors], dtype=torch.int64)
    return plan_paged_compaction(row, length, spans, page_size), old_slots


def plan_moves_kv(pool, plan, old_slots: torch.Tensor, *, reverse: bool = False) -> bool:
    """Apply `plan` through `pool.move_kv_cache` (its copies in plan order, or reversed);
    does the new row read the old KV?"""
    before = [b[old_slots].clone() for b in buffers_of(pool)]
    dst, src = (plan.copy_dst.flip(0), plan.copy_src.flip(0)) if reverse else (plan.copy_dst, plan.copy_src)
    pool.move_kv_cache(dst, src)
    return all(torch.equal(b[plan.new_row], want) for b, want in zip(buffers_of(pool), before, strict=True))


# ------------------------------------------------------------------ native path


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 40))
def test_native_move_equals_gather_then_scatter(seed, n):
    from sglang.srt.mem_cache.memory_pool import move_kv_cache_native

    rng = random.Random(seed)
    slots = 48
    gen = torch.Generator().manual_seed(seed)
    k = [torch.randn(slots, HEADS, DIM, generator=gen) for _ in range(LAYERS)]
    v = [torch.randn(slots, HEADS, DIM, generator=gen) for _ in range(LAYERS)]
    tgt, src = random_move(rng, slots, n)
    want = reference_move([*k, *v], tgt, src)
    move_kv_cache_native(k, v, tgt, src)
    assert all(torch.equal(got, w) for got, w in zip([*k, *v], want, strict=True))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 40))
def test_our_torch_move_equals_gather_then_scatter(seed, n):
    """`kernels.kv_move.move_kv_reference`, the CPU path of paged compaction."""
    from memento_sglang.kernels.kv_move import move_kv_reference

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    buffers = [torch.randn(48, HEADS, DIM, generator=gen) for _ in range(2 * LAYERS)]
    tgt, src = random_move(rng, 48, n)
    want = reference_move(buffers, tgt, src)
    move_kv_reference(buffers, tgt, src)
    assert all(torch.equal(got, w) for got, w in zip(buffers, want, strict=True))


def test_pool_native_move_applies_a_paged_plan():
    """Through `MHATokenToKVPool.move_kv_cache` (native): the compacted row reads the
    surviving tokens' K and V in every layer."""
    rng = random.Random(0)
    pool = make_pool(64 * 8, 8, triton=False)
    plan, old_slots = paged_plan_case(rng, 8, 300, [(37, 90), (120, 121), (200, 215)], 64)
    assert plan.copied > 0
    assert plan_moves_kv(pool, plan, old_slots)


# ------------------------------------------------------------ Triton, interpreted


def interpreted_cases() -> dict[str, bool]:
    """Run under TRITON_INTERPRET=1 (see the module docstring)."""
    rng = random.Random(1)
    results = {}
    pool = make_pool(1024, 16, triton=True)
    results["triton_path"] = pool._kv_copy_config is not None and not pool.use_native_move_kv_cache
    cap = int(pool._kv_copy_config["num_locs_upper"])
    ok = True
    for n in [1, 7, 64, cap]:  # one launch each: a simultaneous move
        tgt, src = random_move(rng, 1024, n)
        want = reference_move(buffers_of(pool), tgt, src)
        pool.move_kv_cache(tgt, src)
        ok &= all(torch.equal(b, w) for b, w in zip(buffers_of(pool), want, strict=True))
    results["single_launch"] = ok
    plan, old = paged_plan_case(rng, 16, 120, [(5, 40), (70, 71)], 64)
    results["small_plan"] = plan.copied <= cap and plan_moves_kv(pool, plan, old)
    # a memento-sized block out of a long row: more moves than one launch takes
    plan, old = paged_plan_case(rng, 16, 900, [(10, 13)], 64)
    results["long_plan_is_chunked"] = plan.copied > cap and plan.sequential_safe
    results["long_plan_in_plan_order"] = plan_moves_kv(pool, plan, old)
    pool = make_pool(1024, 16, triton=True)
    plan, old = paged_plan_case(random.Random(1), 16, 900, [(10, 13)], 64)
    results["long_plan_reversed"] = plan_moves_kv(pool, plan, old, reverse=True)
    return results


def our_kernel_cases() -> dict[str, bool]:
    """`kernels.kv_move.move_kv_triton` (gather to scratch, then scatter; TRITON_INTERPRET=1)."""
    from memento_sglang.kernels.kv_move import move_kv_reference, move_kv_triton

    rng = random.Random(2)
    gen = torch.Generator().manual_seed(2)
    # layers of different row widths and dtypes, as K/V next to their scales
    buffers = [torch.randn(512, HEADS, DIM, generator=gen) for _ in range(4)]
    buffers += [torch.randn(512, 3, generator=gen).to(torch.bfloat16)]
    ok = True
    for n in [1, 5, 17, 300]:  # overlapping sources and targets, one chunk each
        tgt, src = random_move(rng, 512, n)
        want = [b.clone() for b in buffers]
        move_kv_reference(want, tgt, src)
        move_kv_triton(buffers, tgt, src)
        ok &= all(torch.equal(b, w) for b, w in zip(buffers, want, strict=True))
    results = {"ours_simultaneous": ok}
    # a long plan in chunks of 10 copies: right in plan order only
    plan, old = paged_plan_case(rng, 16, 400, [(10, 13)], 30)
    pool = make_pool(30 * 16 + 16, 16, triton=False)
    before = [b[old].clone() for b in buffers_of(pool)]
    budget = 10 * len(buffers_of(pool)) * buffers_of(pool)[0][0].nbytes
    dst, src = plan.copy_dst, plan.copy_src
    move_kv_triton(buffers_of(pool), dst, src, scratch_budget_bytes=budget, chunkable=True)
    results["ours_chunked_plan_order"] = plan.copied > 10 and all(
        torch.equal(b[plan.new_row], w) for b, w in zip(buffers_of(pool), before, strict=True)
    )
    # copies in no safe order (reversed): `chunkable=False` keeps them in one chunk
    pool = make_pool(30 * 16 + 16, 16, triton=False)
    before = [b[old].clone() for b in buffers_of(pool)]
    dst, src = plan.copy_dst.flip(0), plan.copy_src.flip(0)
    move_kv_triton(buffers_of(pool), dst, src, scratch_budget_bytes=budget, chunkable=False)
    results["ours_unchunked_any_order"] = all(
        torch.equal(b[plan.new_row], w) for b, w in zip(buffers_of(pool), before, strict=True)
    )
    return results


def test_triton_move_under_the_interpreter():
    repo_root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}  # not the CPU kernel
    env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "tests.unit.test_kv_move"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = dict(re.findall(r"^(\w+)=(True|False)$", done.stdout, re.MULTILINE))
    assert got == {
        "triton_path": "True",
        "single_launch": "True",  # loads all, then stores: overlap-safe inside one launch
        "small_plan": "True",
        "long_plan_is_chunked": "True",
        "long_plan_in_plan_order": "True",  # chunks in a row: right in reader-first order
        "long_plan_reversed": "False",  # ... and wrong in the opposite order
        "ours_simultaneous": "True",
        "ours_chunked_plan_order": "True",
        "ours_unchunked_any_order": "True",
    }, done.stdout


if __name__ == "__main__":
    for name, value in {**interpreted_cases(), **our_kernel_cases()}.items():
        print(f"{name}={value}")
