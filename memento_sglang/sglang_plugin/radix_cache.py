"""The Memento radix cache: mementos as shareable nodes, closed blocks leave the tree.

SGLang's radix tree pairs token ids with KV slots one to one, which a compacted
row breaks. This subclass of SGLang's pure-Python `RadixCache` keys a Memento
request by its compacted row (`memento_sglang.radix_keys`), under its own
`extra_key` namespace, and leaves every other request to the stock code:

* match: a request with closed blocks in its prompt matches through its mementos;
  the blocks the match covers are never prefilled (they are applied to the
  request's map at once), the rest go through the masked prefill;
* insert: never past the end of a block that may still leave the row;
* compaction: when a block the tree holds leaves a row, the request's lock moves
  to the block's start and the block's nodes that no request still needs are
  evicted at once; a fork still inside the block keeps them locked.

Why not the Rust core: moving a lock to a split point and deleting one branch on
demand need the node objects, which only the Python tree exposes.
"""

from __future__ import annotations

import logging
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from memento_sglang.constants import RADIX_CACHE_BACKEND, MementoStartupError
from memento_sglang.sequence import MementoSequence

logger = logging.getLogger("memento_sglang")

BACKEND_NAME = RADIX_CACHE_BACKEND


def keyed_sequence(req: Any) -> MementoSequence | None:
    """The request's Memento state when the tree keys it the Memento way.

    SGLang may still replace a prompt after the state was attached (an abort's
    one-token stub, auto-truncation): such a request falls back to the stock path.
    """
    seq = getattr(req, "memento", None) if req is not None else None
    if seq is None or not seq.radix_keyed:
        return None
    if len(req.origin_input_ids) != seq.prompt_len:
        seq.radix_keyed = False
        req.skip_radix_cache_insert = True
        return None
    return seq


class MementoRadixCache(RadixCache):
    """`RadixCache` with Memento keys, exact reuse cuts and block-subtree eviction."""

    # ---------------------------------------------------------------- match

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        seq = keyed_sequence(params.req)
        if seq is None or self.disable:
            return super().match_prefix(params)
        req = params.req
        if req.kv.holds_kv:  # SGLang matches only waiting requests
            raise RuntimeError(f"Memento radix cache: match for request {req.rid}, which holds KV")
        key = seq.prospective_key()
        if len(params.key) == 0:  # SGLang disabled matching (e.g. embedding overrides)
            seq.forget_adoption()
            req.full_untruncated_fill_ids = seq.physical_ids()
            return self._empty_match_result
        node, matched = self._walk(key, req)
        logical_limit = req._compute_max_prefix_len(seq.total_len)
        if req.return_logprob and req.logprob_start_len >= 0 and seq.due_evictions():
            # input logprobs are indexed by prompt position: skip no block before them
            logical_limit = min(logical_limit, seq.due_evictions()[0].start)
        cut = seq.adopt_cached_prefix(matched, logical_limit, self.page_size)
        if cut < matched:
            node = self._node_at_depth(node, matched, cut)
        # SGLang slices the extend from the fill ids by the matched length: they
        # must be the row's (physical) ids, without the blocks just adopted.
        req.full_untruncated_fill_ids = seq.physical_ids()
        return self._result(node, cut)

    def _walk(self, key_ids, req: Any) -> tuple[TreeNode, int]:
        key = RadixKey(key_ids, req.extra_key, cache_salt=req.cache_salt).page_aligned(self.page_size)
        if len(key) == 0:
            return self.root_node, 0
        values, node = self._match_prefix_helper(self.root_node, key)
        return node, sum(len(v) for v in values)

    @staticmethod
    def _result(node: TreeNode, depth: int) -> MatchResult:
        return MatchResult(
            device_prefix_len=depth, last_device_node=node, last_host_node=node, best_match_node=node
        )

    def _depth(self, node: TreeNode) -> int:
        depth = 0
        while node is not self.root_node:
            depth += len(node.key)
            node = node.parent
        return depth

    def _node_at_depth(self, node: TreeNode, node_depth: int, depth: int) -> TreeNode:
        """The node whose path ends exactly `depth` slots from the root (split if needed)."""
        while node is not self.root_node and node_depth - len(node.key) >= depth:
            node_depth -= len(node.key)
            node = node.parent
        if node_depth == depth:
            return node
        return self._split_node(node.key, node, depth - (node_depth - len(node.key)))

    # --------------------------------------------------------------- insert

    def checkpoint(self, req: Any, *, up_to: int) -> None:
        seq = keyed_sequence(req)
        if seq is None or self.disable:
            return super().checkpoint(req, up_to=up_to)
        up_to = min(up_to, seq.insert_limit(self.page_size))
        if up_to <= req.kv.cache_protected_len:
            return
        radix_key, _, _ = self._insert_cache(req, seq.radix_key(up_to))
        new_last_node = self.match_prefix(MatchPrefixParams(key=radix_key)).last_device_node
        new_indices = self.path_device_indices(new_last_node)
        protected = req.kv.cache_protected_len
        self.req_to_token_pool.write(
            (req.kv.req_pool_idx, slice(protected, len(new_indices))), new_indices[protected:]
        )
        req.kv.cache_protected_len = len(new_indices)
        self.unlock(req.lock)
        req.lock = self.lock(new_last_node)
        req.last_node = new_last_node

    # ----------------------------------------------------------- compaction

    def release_block(self, req: Any, start: int, end: int) -> int:
        """Row slots `[start, end)` (a closed block) are leaving `req`'s row.

        The tree part of it stops being the request's: its lock moves to the node
        ending at `start`, and the block's nodes no request still needs are evicted.
        Returns the number of KV slots freed that way.
        """
        protected = req.kv.cache_protected_len
        if self.disable or req.lock is None or protected <= start:
            return 0  # nothing of the block in the tree
        if protected > end:  # never by construction (insert_limit): keep the lock, insert no more
            logger.warning("[memento] rid=%s: tree slots after a closed block; not re-inserted", req.rid)
            req.skip_radix_cache_insert = True
            return 0
        old = req.lock.node
        new = self._node_at_depth(old, self._depth(old), start)
        lock = self.lock(new)
        self.unlock(req.lock)
        req.lock, req.last_node = lock, new
        block_root = old
        while block_root.parent is not new:
            block_root = block_root.parent
        return self._evict_unlocked(block_root)

    def _evict_unlocked(self, root: TreeNode) -> int:
        """Free every node of `root`'s subtree that no request locks (leaves first).

        Below a block's first content slot the tree holds only that block's content
        (insertion stops at a block's end while its memento may still close), so the
        whole unlocked subtree is the closed block, as written by any request.
        """
        freed = 0
        stack, order = [root], []
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(node.children.values())
        for node in reversed(order):  # children before parents
            if node.lock_ref == 0 and not node.children:
                self.token_to_kv_pool_allocator.free_segment(node.value, start_pos=0)
                freed += len(node.value)
                self._delete_leaf(node)
                self.kv_events.record_remove(node)
        return freed


def factory(ctx: Any) -> MementoRadixCache:
    """`--radix-cache-backend memento` (registered by the plugin)."""
    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm or ctx.enable_hierarchical_cache:
        raise MementoStartupError(
            "the Memento radix cache serves full-attention models without hierarchical "
            "caching; pass --radix-cache-backend with another cache, or --disable-radix-cache"
        )
    return MementoRadixCache(ctx.params)
