"""Scheduler side, requests: attach Memento state to a `Req`, keep it in sync, and
decide what a request may reuse, keep or must redo.

Requests carry their state as `req.memento` (a `MementoSequence`, or absent). The
sequence is synced lazily from `req.output_ids`, which SGLang only appends to after
a forward's result is processed, so whatever the sequence decides is already
"processed" in the overlap scheduler's sense.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from memento_sglang.config import MementoConfigError
from memento_sglang.constants import GRAMMAR_BACKENDS
from memento_sglang.resolver import ConfigResolver
from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin import runtime
from memento_sglang.sglang_plugin.radix_cache import MementoRadixCache, keyed_sequence

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache

logger = logging.getLogger("memento_sglang")

STATE = "memento"  # attribute on Req
OUTPUT_SEEN = "_memento_outputs_seen"


def sequence_of(req: Req) -> MementoSequence | None:
    return getattr(req, STATE, None)


def synced(req: Req) -> MementoSequence | None:
    """The request's sequence, fed every output token appended since the last call."""
    seq = getattr(req, STATE, None)
    if seq is None:
        return None
    seen = getattr(req, OUTPUT_SEEN, 0)
    out = req.output_ids
    if len(out) > seen:
        before = len(seq.tracker.closed_blocks)
        seq.on_output_tokens(out[seen:])
        setattr(req, OUTPUT_SEEN, len(out))
        closed = seq.tracker.closed_blocks[before:]
        if closed:
            rt = runtime.current()
            rt.admission.observe(seq)
            rt.metrics.blocks_closed.inc(len(closed))
        if seq.spec.config.debug:
            for block in closed:
                logger.info("[memento] rid=%s memento closed: %s", req.rid, block)
    return seq


def attach(
    req: Req, resolver: ConfigResolver | None, tree_cache: BasePrefixCache, *, masked_prefill: bool
) -> None:
    """Give a new request its Memento state, or abort it on a bad per-request config.

    With a masked prefill, closed blocks inside the prompt are hidden from the
    prompt tokens after them and compacted before the first decode step. The
    Memento radix cache keys such rows in a namespace of their own (the policy
    decides what the KV means); a stock tree would be poisoned, so there such a
    request stays out of the tree.
    """
    if resolver is None:  # not a Memento scheduler
        return
    try:
        spec = resolver.spec_for(req.sampling_params.custom_params)
    except MementoConfigError as exc:  # normally rejected earlier with HTTP 400
        req.set_finish_with_abort(str(exc))
        return
    if spec is None:
        return
    if (reason := refused_mode(req.sampling_params)) is not None:  # normally HTTP 400 earlier
        req.set_finish_with_abort(reason)
        return
    if spec.config.restart_mode and not masked_prefill:
        req.set_finish_with_abort("restart_mode needs a prefill attention backend that can mask")
        return
    seq = MementoSequence(spec, list(req.origin_input_ids), evict_prompt_blocks=masked_prefill)
    setattr(req, STATE, seq)
    setattr(req, OUTPUT_SEEN, 0)
    if seq.tracker.closed_blocks:
        runtime.current().metrics.blocks_closed.inc(len(seq.tracker.closed_blocks))
    if isinstance(tree_cache, MementoRadixCache) and not tree_cache.disable:
        seq.radix_keyed = True
        req.extra_key = f"{req.extra_key or ''}|{spec.kv_namespace(masked_prefill=masked_prefill)}"
    elif seq.has_due():
        req.skip_radix_cache_insert = True
    if spec.config.debug:
        logger.info(
            "[memento] rid=%s tracking: prompt %d tokens, %d closed blocks in the prompt (%s)",
            req.rid,
            seq.prompt_len,
            len(seq.tracker.closed_blocks),
            "masked prefill" if masked_prefill else "kept visible",
        )


def refused_mode(sampling_params: Any, grammar_backend: str | None = None) -> str | None:
    """Why a request that Memento tracks cannot run with its sampling options (None if it can).

    Beam search forks member rows from the leader's row and scores them together; a
    member's blocks would close at its own steps, which one row's compaction cannot follow.
    A structural tag or EBNF grammar (how the front end writes the Memento structure)
    needs a grammar backend that emits each delimiter as its single token id; outlines
    compiles neither (SGLang would abort the request with a bare "failed to compile"),
    and its regex guides match text, which ordinary tokens can spell.
    """
    beam_width = getattr(sampling_params, "beam_width", None) or 1
    if beam_width > 1:
        return (
            f"beam search (beam_width={beam_width}) is not supported with Memento; send this request "
            'with custom_params {"memento": {"enable": false}} to search without eviction'
        )
    kinds = [k for k in ("structural_tag", "ebnf") if getattr(sampling_params, k, None)]
    if grammar_backend == "outlines" and kinds:
        return (
            f"{' and '.join(kinds)} constraints need --grammar-backend {' or '.join(GRAMMAR_BACKENDS)} "
            "(this server runs outlines, which cannot emit a Memento delimiter as its single token id); "
            "json_schema and regex constraints work on outlines too"
        )
    if grammar_backend == "none" and kinds:
        return f"{' and '.join(kinds)} constraints need a grammar backend; this server runs none"
    return None


def cap_prefix_match(req: Req, max_prefix_len: int) -> int:
    """A cached prefix is reusable only up to the first query that must not see a block;
    with pages, only up to the page where that block starts (compaction rewrites and
    frees pages from there on, which must be the request's)."""
    seq = sequence_of(req)
    if seq is None or seq.radix_keyed:  # the Memento radix cache cuts its own matches
        return max_prefix_len
    first = seq.first_due_trigger
    limit = max_prefix_len if first is None else min(max_prefix_len, first + 1)
    page = runtime.current().page_size
    start = seq.first_leaving_start()
    return limit if page == 1 or start is None else min(limit, start // page * page)


def physical_fill_ids(req: Req) -> bool:
    """A tree-keyed request's fill ids are its row's ids (compacted spans removed),
    so SGLang's length arithmetic (prefix, extend) stays in row slots. False
    leaves the request to SGLang."""
    seq = synced(req)
    if seq is None or keyed_sequence(req) is None:
        return False
    req.full_untruncated_fill_ids = seq.physical_ids()
    return True


def keeps_work_on_retraction(req: Req, tree_cache: BasePrefixCache) -> bool:
    """Whether a retracted request's compacted row should go into the Memento tree.

    Its re-admission then matches the tree through its mementos and prefills only
    what the tree lost meanwhile, instead of prompt + every output token. Only for
    releases that make room: rows retracted for new weights, or about to be aborted
    (`to_finish`), must not be reused. (`restart_mode` retracts to recompute mementos.)
    """
    seq = keyed_sequence(req)
    return (
        seq is not None
        and runtime.current().releases.memory > 0
        and getattr(req, "to_finish", None) is None
        and not req.finished()
        and isinstance(tree_cache, MementoRadixCache)
        and not tree_cache.disable
        and not seq.spec.config.restart_mode
    )


def on_row_released(req: Req) -> None:
    seq = synced(req)
    if seq is not None:
        seq.on_row_released()


def retract_for_restart(scheduler: Scheduler, batch: ScheduleBatch) -> None:
    """`restart_mode`: send requests whose memento just closed back to prefill.

    SGLang's own retraction frees the row (a result still in flight for it is
    dropped) and queues the request; its re-prefill recomputes every memento with
    its block masked, and the blocks are then compacted as usual.
    """
    restart = [
        i for i, req in enumerate(batch.reqs)
        if not req.finished() and req.beam_group is None
        and (seq := synced(req)) is not None and seq.needs_restart()
    ]  # fmt: skip
    if not restart:
        return
    batch.batch_is_full = False  # room for the re-queued requests
    reqs = [batch.reqs[i] for i in restart]
    for n, i in enumerate(restart):
        batch.release_req(i, len(batch.reqs) - n - 1, offload_kv=False)
    batch.filter_batch(reqs_to_exclude=reqs)
    runtime.current().metrics.restarts.inc(len(reqs))
    for req in reqs:
        seq = sequence_of(req)
        if seq is not None and seq.spec.config.debug:
            logger.info("[memento] rid=%s restart: re-prefill with the closed block masked", req.rid)
        scheduler._add_request_to_queue(req, is_retracted=True)
