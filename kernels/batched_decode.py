"""Decode attention for a whole batch in one SDPA call (the CPU backend's decode step).

SGLang's torch_native backend runs one SDPA call per request of a decode batch, so a
step's cost grows by a Python loop iteration (gather, SDPA, copy) per running request
and per layer: on a CPU the batch Memento frees room for costs almost linearly more
time. Here the batch's rows are gathered once into a padded `[batch, longest]` block
and attended with a key-padding mask: the same softmax over each request's own keys.
`per_request_decode` is SGLang's loop, the reference.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention

#: above this many gathered key elements the padded block is not worth its memory
MAX_GATHERED_ELEMENTS = 1 << 26


def batched_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """`[batch, heads, head_dim]` queries (one per request) -> `[batch, heads, v_dim]`."""
    longest = int(seq_lens.max())
    slots = req_to_token[req_pool_indices, :longest]  # [batch, longest]
    keys = k_cache[slots].permute(0, 2, 1, 3).to(query.dtype)  # [batch, kv_heads, longest, dim]
    values = v_cache[slots].permute(0, 2, 1, 3).to(query.dtype)
    valid = torch.arange(longest, device=seq_lens.device)[None, :] < seq_lens[:, None]
    mask = valid[:, None, None, :]  # each request's own keys
    out = scaled_dot_product_attention(
        query.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=enable_gqa
    )
    return out.squeeze(2)


def fits(k_cache: torch.Tensor, seq_lens: torch.Tensor) -> bool:
    """Whether the padded block stays small (its size is batch x longest x a slot's size)."""
    slot = k_cache[0].numel()
    return seq_lens.shape[0] * int(seq_lens.max()) * slot <= MAX_GATHERED_ELEMENTS


def per_request_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """SGLang's loop: one SDPA call per request over its own keys."""
    outs = []
    for i in range(seq_lens.shape[0]):
        slots = req_to_token[req_pool_indices[i], : int(seq_lens[i])]
        keys = k_cache[slots].movedim(0, 1).to(query.dtype)
        values = v_cache[slots].movedim(0, 1).to(query.dtype)
        q = query[i].unsqueeze(1)[None]  # [1, heads, 1, dim]
        out = scaled_dot_product_attention(q, keys[None], values[None], scale=scale, enable_gqa=enable_gqa)
        outs.append(out[0, :, 0])
    return torch.stack(outs)
