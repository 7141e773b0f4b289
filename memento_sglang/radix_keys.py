"""Radix-tree keys of a compacted Memento row.

A compacted row has dropped each evicted block, yet the KV of everything after the
block still depends on it: the memento attended to it, and every later token sits
at a logical RoPE position shifted by its length. The tree therefore keys a row by
its physical token ids, except that the first token after each evicted span is
keyed by a fingerprint of that token and the span's content. Equal keys then mean
equal KV, and the stock radix tree needs no other change. Pure Python, no SGLang.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

from memento_sglang.spans import SpanMap

# Fingerprints live above every vocabulary (2^40) and fit an int64 key.
FINGERPRINT_BASE = 1 << 40
_DIGEST_BYTES = 7


def fingerprint(content: Sequence[int], token_id: int) -> int:
    """A key id standing for `token_id` preceded by the evicted `content`."""
    data = array("q", content).tobytes() + array("q", [token_id]).tobytes()
    digest = hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()
    return FINGERPRINT_BASE + int.from_bytes(digest, "little")


def is_fingerprint(key_id: int) -> bool:
    return key_id >= FINGERPRINT_BASE


def radix_key(ids: Sequence[int], spans: SpanMap, length: int | None = None) -> array:
    """The tree key of the first `length` physical tokens (all when None) of the row
    that logical `ids` leave once `spans` are out."""
    out = array("q")
    cursor = 0
    for start, end in spans:
        out.extend(ids[cursor:start])
        if end >= len(ids) or (length is not None and len(out) >= length):
            cursor = end
            break
        out.append(fingerprint(ids[start:end], ids[end]))
        cursor = end + 1
    out.extend(ids[cursor:])
    return out if length is None else out[:length]
