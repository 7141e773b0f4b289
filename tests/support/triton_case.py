"""One Memento-masked batch through SGLang's Triton extend kernel, against masked SDPA.

Used on CPU under `TRITON_INTERPRET=1` (which must be set before Triton is imported,
so the unit test runs `python -m support.triton_case` in a fresh process) and on
CUDA directly by the GPU tests.
"""

from __future__ import annotations

import torch

from memento_sglang.kernels.extend_masks import flat_extend_masks, largest_chunk
from memento_sglang.kernels.segmented_attention import dense_reference
from memento_sglang.masks import ExtendSegment, extend_segments
from tests.support.synthetic import evictions

# request 0: 6 cached prefix tokens with a block at [1, 4) that rows 3.. of the 10 new
# tokens must not see, and a second block [7, 9) hidden from row 8 on;
# request 1: no plan (plain causal rows), 3 prefix + 5 new tokens.
PLANS = [
    [ExtendSegment(0, 3, ()), ExtendSegment(3, 8, ((1, 4),)), ExtendSegment(8, 10, ((1, 4), (7, 9)))],
    None,
]
PREFIX_LENS, EXTEND_LENS = [6, 3], [10, 5]


def max_error(device: str = "cpu", *, mask_prefix: bool = True, heads: int = 4, kv_heads: int = 2,
              dim: int = 16) -> float:  # fmt: skip
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd

    gen = torch.Generator().manual_seed(0)
    mask, mask_indptr = flat_extend_masks(PLANS, PREFIX_LENS, EXTEND_LENS, device=device)
    pool = 64
    k_buffer = torch.randn(pool, kv_heads, dim, generator=gen).to(device)
    v_buffer = torch.randn(pool, kv_heads, dim, generator=gen).to(device)
    lens = [p + e for p, e in zip(PREFIX_LENS, EXTEND_LENS, strict=True)]
    slots = [torch.randperm(pool, generator=gen)[:n].to(device) for n in lens]
    q = torch.randn(sum(EXTEND_LENS), heads, dim, generator=gen).to(device)
    k_extend = torch.cat([k_buffer[s[p:]] for s, p in zip(slots, PREFIX_LENS, strict=True)])
    v_extend = torch.cat([v_buffer[s[p:]] for s, p in zip(slots, PREFIX_LENS, strict=True)])
    qo_indptr = torch.tensor([0, EXTEND_LENS[0], sum(EXTEND_LENS)], dtype=torch.int32, device=device)
    kv_indptr = torch.tensor([0, PREFIX_LENS[0], sum(PREFIX_LENS)], dtype=torch.int32, device=device)
    kv_indices = torch.cat([s[:p] for s, p in zip(slots, PREFIX_LENS, strict=True)]).to(torch.int64)
    out = torch.empty_like(q)
    extend_attention_fwd(
        q, k_extend, v_extend, out, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
        mask, True, mask_indptr, max(EXTEND_LENS), 1.0, 1.0, sm_scale=None,
        skip_prefix_custom_mask=not mask_prefix,
    )  # fmt: skip
    worst = 0.0
    for i, (plan, p, e) in enumerate(zip(PLANS, PREFIX_LENS, EXTEND_LENS, strict=True)):
        rows = slice(int(qo_indptr[i]), int(qo_indptr[i + 1]))
        ki, vi = k_buffer[slots[i]].movedim(0, 1), v_buffer[slots[i]].movedim(0, 1)
        segments = plan or [ExtendSegment(0, e, ())]
        want = dense_reference(q[rows].movedim(0, 1).cpu(), ki.cpu(), vi.cpu(), segments, prefix_len=p)
        worst = max(worst, (want - out[rows].movedim(0, 1).cpu()).abs().max().item())
    return worst


# a 40-token prompt with two closed blocks: [3, 12) hidden after 13, [16, 30) after 31
LONG_PROMPT, LONG_EVICTIONS = 40, [(3, 12, 13), (16, 30, 31)]


def chunked_max_error(budget: int, device: str = "cpu", heads: int = 4, kv_heads: int = 2,
                      dim: int = 16) -> tuple[float, list[int], int]:  # fmt: skip
    """The long prompt prefilled in chunks cut by the mask budget, each through SGLang's
    Triton kernel with its flat mask, against masked SDPA over the whole prompt.

    Returns the worst error, the chunk sizes, and the largest flat mask built.
    """
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd

    gen = torch.Generator().manual_seed(1)
    spans = evictions(LONG_EVICTIONS)
    n = LONG_PROMPT
    k_buffer = torch.randn(n, kv_heads, dim, generator=gen).to(device)
    v_buffer = torch.randn(n, kv_heads, dim, generator=gen).to(device)
    q = torch.randn(n, heads, dim, generator=gen).to(device)
    out = torch.empty_like(q)
    chunks, largest_mask, prefix = [], 0, 0
    while prefix < n:
        extend = min(n - prefix, max(1, largest_chunk(prefix, budget)))
        plan = extend_segments(spans, prefix_len=prefix, extend_len=extend)
        mask, mask_indptr = flat_extend_masks([plan], [prefix], [extend], device=device)
        largest_mask = max(largest_mask, mask.numel())
        rows = slice(prefix, prefix + extend)
        qo_indptr = torch.tensor([0, extend], dtype=torch.int32, device=device)
        kv_indptr = torch.tensor([0, prefix], dtype=torch.int32, device=device)
        kv_indices = torch.arange(prefix, dtype=torch.int64, device=device)
        extend_attention_fwd(
            q[rows], k_buffer[rows], v_buffer[rows], out[rows], k_buffer, v_buffer, qo_indptr,
            kv_indptr, kv_indices, mask, True, mask_indptr, extend, 1.0, 1.0, sm_scale=None,
            skip_prefix_custom_mask=False,
        )  # fmt: skip
        chunks.append(extend)
        prefix += extend
    whole = extend_segments(spans, prefix_len=0, extend_len=n)
    ki, vi = k_buffer.movedim(0, 1).cpu(), v_buffer.movedim(0, 1).cpu()
    want = dense_reference(q.movedim(0, 1).cpu(), ki, vi, whole, prefix_len=0)
    return (want - out.movedim(0, 1).cpu()).abs().max().item(), chunks, largest_mask


if __name__ == "__main__":
    print(f"max_abs_err={max_error():.3e} without_prefix_mask={max_error(mask_prefix=False):.3e}")
    err, chunks, largest = chunked_max_error(budget=200)
    print(f"chunked_err={err:.3e} chunks={','.join(map(str, chunks))} largest_mask={largest}")
