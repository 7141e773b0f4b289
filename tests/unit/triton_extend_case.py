"""Run SGLang's Triton extend kernel with a Memento mask under TRITON_INTERPRET=1.

A script (not a test module): the interpreter must be on before Triton is imported,
so `test_extend_masks.py` runs it in a fresh interpreter. Prints the max error
against the dense masked SDPA reference.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd  # noqa: E402

from memento_sglang.kernels.extend_masks import flat_extend_masks  # noqa: E402
from memento_sglang.kernels.segmented_attention import dense_reference  # noqa: E402
from memento_sglang.masks import ExtendSegment  # noqa: E402

torch.manual_seed(0)
heads, kv_heads, dim = 4, 2, 16
# request 0: 6 cached prefix tokens (a block at [1, 4) inside them), 10 new tokens whose
# rows from 3 on hide it, and a second block [7, 9) hidden from row 8 on;
# request 1: no plan (plain causal), 3 prefix + 5 new tokens.
plans = [
    [ExtendSegment(0, 3, ()), ExtendSegment(3, 8, ((1, 4),)), ExtendSegment(8, 10, ((1, 4), (7, 9)))],
    None,
]
prefix_lens, extend_lens = [6, 3], [10, 5]
mask, mask_indptr = flat_extend_masks(plans, prefix_lens, extend_lens)

pool = 64
k_buffer, v_buffer = torch.randn(pool, kv_heads, dim), torch.randn(pool, kv_heads, dim)
slots = [torch.randperm(pool)[: p + e] for p, e in zip(prefix_lens, extend_lens, strict=True)]
q = torch.randn(sum(extend_lens), heads, dim)
k_extend = torch.cat([k_buffer[s[p:]] for s, p in zip(slots, prefix_lens, strict=True)])
v_extend = torch.cat([v_buffer[s[p:]] for s, p in zip(slots, prefix_lens, strict=True)])
qo_indptr = torch.tensor([0, extend_lens[0], sum(extend_lens)], dtype=torch.int32)
kv_indptr = torch.tensor([0, prefix_lens[0], sum(prefix_lens)], dtype=torch.int32)
kv_indices = torch.cat([s[:p] for s, p in zip(slots, prefix_lens, strict=True)]).to(torch.int64)
out = torch.empty_like(q)
extend_attention_fwd(
    q, k_extend, v_extend, out, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
    mask, True, mask_indptr, max(extend_lens), 1.0, 1.0, sm_scale=None,
    skip_prefix_custom_mask=False,
)  # fmt: skip

worst = 0.0
for i, (plan, p, e) in enumerate(zip(plans, prefix_lens, extend_lens, strict=True)):
    qi = q[int(qo_indptr[i]) : int(qo_indptr[i + 1])].movedim(0, 1)
    ki, vi = k_buffer[slots[i]].movedim(0, 1), v_buffer[slots[i]].movedim(0, 1)
    want = dense_reference(qi, ki, vi, plan or [ExtendSegment(0, e, ())], prefix_len=p)
    got = out[int(qo_indptr[i]) : int(qo_indptr[i + 1])].movedim(0, 1)
    worst = max(worst, (want - got).abs().max().item())
print(f"max_abs_err={worst:.3e}")
