"""Block tracker: documented behaviour on well-formed and malformed streams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.tracker import AnomalyKind, BlockTracker, Phase
from tests.support.mask_rule import visible_matrix
from tests.support.synthetic import ASSISTANT, BE, BS, IM, SE, SS, TE, USER, spec, tokens

W = 50  # an ordinary word


def evictions(cfg: dict, ids: list[int]):
    tracker = BlockTracker(spec(**cfg))
    return tracker, [(e.start, e.end, e.trigger) for e in tracker.feed_many(ids)]


def test_one_block_content_only():
    ids = tokens("A [ w w w ] ( s s ) w")
    _, evs = evictions({"mask_delimiters": False}, ids)
    # positions: A=0,1 [=2 w=3,4,5 ]=6 (=7 s=8,9 )=10
    assert evs == [(3, 6, 10)]


def test_one_block_with_delimiters():
    _, evs = evictions({"mask_delimiters": True}, tokens("A [ w w w ] ( s s ) w"))
    assert evs == [(2, 7, 10)]


def test_restart_mode_hides_the_block_with_delimiters_from_its_memento_on():
    _, evs = evictions({"mask_delimiters": False, "restart_mode": True}, tokens("A [ w w w ] ( s s ) w"))
    assert evs == [(2, 7, 6)]  # decided at `)` (10); queries from `(` (7) on do not see it


def test_restart_re_prefill_is_needed_once_per_new_memento():
    from memento_sglang.sequence import MementoSequence

    seq = MementoSequence(spec(mask_delimiters=False, restart_mode=True), tokens("A [ w ] ( s )"),
                          evict_prompt_blocks=True)  # fmt: skip
    assert seq.has_due() and not seq.needs_restart()  # the prompt's block: masked prefill suffices
    seq.on_output_tokens(tokens("[ w w ] ( s"))
    assert not seq.needs_restart()
    seq.on_output_tokens(tokens(")"))
    assert seq.needs_restart()
    seq.on_row_released()  # retracted: the re-prefill covers it
    assert not seq.needs_restart() and len(seq.due_evictions()) == 2


def test_normal_mode_never_needs_a_re_prefill():
    from memento_sglang.sequence import MementoSequence

    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"), evict_prompt_blocks=True)
    seq.on_output_tokens(tokens("[ w w ] ( s )"))
    assert seq.has_due() and not seq.needs_restart()


def test_keep_last_two():
    ids = tokens("A [ w ] ( s ) [ w w ] ( s ) [ w ] ( s ) [ w ] ( s )")
    _, evs = evictions({"mask_delimiters": False, "keep_last_n_blocks": 2}, ids)
    # blocks close at 7, 14, 20, 26; with keep 2 the first leaves at the third close
    assert evs == [(3, 4, 20), (9, 11, 26)]


def test_keep_minus_one_and_no_compaction_evict_nothing():
    ids = tokens("A [ w ] ( s ) [ w ] ( s )")
    tracker, evs = evictions({"mask_delimiters": False, "keep_last_n_blocks": -1}, ids)
    assert evs == [] and len(tracker.closed_blocks) == 2
    tracker, evs = evictions({"mask_delimiters": False, "compact_on_summary_end": False}, ids)
    assert evs == [] and len(tracker.closed_blocks) == 2


def test_keep_last_block_for_answer_defers_until_next_block():
    ids = tokens("A [ w ] ( s ) [ w w ] ( s ) T answer")
    _, evs = evictions({"mask_delimiters": False, "keep_last_block_for_answer": True}, ids)
    # first block flushed when the second opens (position 8); the last stays for the answer
    assert evs == [(3, 4, 8)]


def test_require_assistant_section_ignores_user_delimiters():
    ids = [IM, USER, 7, BS, W, BE, SS, W, SE, 9] + tokens("A [ w ] ( s )")
    tracker, evs = evictions({"mask_delimiters": False}, ids)
    assert [a.kind for a in tracker.anomalies] == [AnomalyKind.OUTSIDE_SECTION] * 4
    assert evs == [(13, 14, 17)]


def test_without_assistant_requirement_tracks_everywhere():
    ids = [BS, W, BE, SS, W, SE]
    _, evs = evictions({"mask_delimiters": False, "require_assistant_section": False}, ids)
    assert evs == [(1, 2, 5)]


def test_assistant_must_follow_im_start_closely():
    ids = [IM, W, W, W, ASSISTANT, BS, W, BE, SS, W, SE]
    tracker, evs = evictions({"mask_delimiters": False}, ids)
    assert evs == [] and tracker.phase is Phase.OUTSIDE


PIECE_A, PIECE_B, HEADER_END, NEWLINE = 60, 61, 62, 63  # "ass", "istant", <|end_header_id|>, "\n"


@pytest.mark.parametrize(
    "role, turn",
    [
        ([PIECE_A, PIECE_B], [IM, PIECE_A, PIECE_B, NEWLINE]),  # ChatML, role split (SmolLM2)
        ([ASSISTANT], [IM, ASSISTANT, HEADER_END, NEWLINE]),  # Llama 3: start_header, role, end_header
        ([ASSISTANT], [IM, ASSISTANT, NEWLINE]),  # ChatML: Qwen3, Phi-4, Olmo 3
        ([PIECE_A, PIECE_B], [IM, NEWLINE, PIECE_A, PIECE_B]),  # one token of slack, as before
    ],
)
def test_the_assistant_role_is_a_token_sequence(role, turn):
    ids = [*turn, BS, W, BE, SS, W, SE, W]
    tracker, evs = evictions({"mask_delimiters": False, "assistant_token": role}, ids)
    first = len(turn)
    assert evs == [(first + 1, first + 2, first + 5)] and not tracker.anomalies
    # the oracle's rule reads the same section
    assert not all(visible_matrix(ids, spec(mask_delimiters=False, assistant_token=role).ids)[-1])


@pytest.mark.parametrize(
    "turn",
    [
        [IM, PIECE_B, NEWLINE],  # the second piece alone is not the role any more
        [IM, PIECE_A, NEWLINE, PIECE_B],  # interrupted
        [IM, USER, NEWLINE, PIECE_A, PIECE_B],  # too far from the turn's start
        [IM, PIECE_B, PIECE_A],  # wrong order
    ],
)
def test_a_partial_or_late_role_is_not_the_assistant(turn):
    ids = [*turn, BS, W, BE, SS, W, SE]
    tracker, evs = evictions({"mask_delimiters": False, "assistant_token": [PIECE_A, PIECE_B]}, ids)
    assert evs == [] and tracker.phase is Phase.OUTSIDE


@pytest.mark.parametrize(
    "stream, kind",
    [
        ("A ] ( s )", AnomalyKind.STRAY_BLOCK_END),
        ("A ( s )", AnomalyKind.STRAY_SUMMARY_START),
        ("A )", AnomalyKind.STRAY_SUMMARY_END),
        ("A [ w [ w ] ( s )", AnomalyKind.NESTED_BLOCK_START),
        ("A [ w ] [ w ] ( s )", AnomalyKind.BLOCK_WITHOUT_SUMMARY),
        ("A [ w T w ] ( s )", AnomalyKind.UNCLOSED_AT_SECTION_END),
    ],
)
def test_malformed_streams_record_anomalies(stream, kind):
    tracker, evs = evictions({"mask_delimiters": False}, tokens(stream))
    assert kind in [a.kind for a in tracker.anomalies]
    for start, end, _ in evs:  # whatever is evicted is a well-formed block's content
        block = next(b for b in tracker.closed_blocks if b.block_start + 1 == start)
        assert end == block.block_end


def test_nested_start_is_content_of_the_outer_block():
    _, evs = evictions({"mask_delimiters": False}, tokens("A [ w [ w ] ( s )"))
    assert evs == [(3, 6, 9)]


def test_block_without_summary_is_never_evicted():
    _, evs = evictions({"mask_delimiters": False}, tokens("A [ w ] [ w w ] ( s )"))
    assert evs == [(6, 8, 11)]  # only the second block


def test_new_turn_abandons_open_block():
    ids = tokens("A [ w w") + [IM, USER, W] + tokens("A [ w ] ( s )")
    tracker, evs = evictions({"mask_delimiters": False}, ids)
    assert AnomalyKind.UNCLOSED_AT_SECTION_END in [a.kind for a in tracker.anomalies]
    assert evs == [(11, 12, 15)]


def test_block_budget():
    tracker = BlockTracker(spec(mask_delimiters=False, max_block_tokens=3))
    tracker.feed_many(tokens("A [ w w"))
    assert tracker.open_block_content_tokens == 2 and not tracker.block_budget_exhausted
    tracker.feed(W)
    assert tracker.block_budget_exhausted
    tracker.feed(BE)
    assert tracker.open_block_content_tokens == 0 and not tracker.block_budget_exhausted


# ------------------------------------------------------------------- fuzzing

ALPHABET = [IM, ASSISTANT, USER, BS, BE, SS, SE, TE, W, W + 1]
configs = st.fixed_dictionaries(
    {
        "mask_delimiters": st.booleans(),
        "keep_last_n_blocks": st.integers(-1, 3),
        "require_assistant_section": st.booleans(),
        "compact_on_summary_end": st.booleans(),
    }
)


@settings(max_examples=400, deadline=None)
@given(cfg=configs, ids=st.lists(st.sampled_from(ALPHABET), max_size=80), defer=st.booleans())
def test_fuzz_invariants(cfg, ids, defer):
    if defer and cfg["keep_last_n_blocks"] == 0:
        cfg = {**cfg, "keep_last_block_for_answer": True}
    tracker = BlockTracker(spec(**cfg))
    evs = []
    for pos, tid in enumerate(ids):
        for ev in tracker.feed(tid):
            assert ev.trigger == pos  # decided by the token that triggers it
            evs.append(ev)
    assert tracker.position == len(ids)
    closed = {b.block_start: b for b in tracker.closed_blocks}
    last_end = -1
    for ev in evs:
        block = closed[ev.block.block_start]  # only closed (summarised) blocks leave
        assert block.block_start < block.block_end < block.summary_start < block.summary_end
        assert ev.trigger >= block.summary_end
        assert ev.start >= last_end  # spans are disjoint and in order
        last_end = ev.end
        for b in tracker.closed_blocks:  # a memento never leaves (a stray `(` in a block may)
            assert ev.end <= b.summary_start or ev.start > b.summary_end
        assert ids[block.block_start] == BS and ids[block.block_end] == BE
        assert ids[block.summary_start] == SS and ids[block.summary_end] == SE
    assert len({ev.block.index for ev in evs}) == len(evs)  # each block leaves once
    if not cfg["compact_on_summary_end"] or cfg["keep_last_n_blocks"] < 0:
        assert evs == []


@settings(max_examples=200, deadline=None)
@given(
    n_blocks=st.integers(0, 5),
    lens=st.lists(st.integers(0, 4), min_size=10, max_size=10),
    keep=st.integers(-1, 3),
    mask_delims=st.booleans(),
)
def test_tracker_matches_independent_mask_rule(n_blocks, lens, keep, mask_delims):
    """On well-formed traces the tracker's decisions equal the oracle's mask rule."""
    text = "A"
    for i in range(n_blocks):
        text += " [" + " w" * lens[2 * i] + " ] (" + " s" * lens[2 * i + 1] + " )"
    ids = tokens(text + " T w")
    tracker = BlockTracker(spec(mask_delimiters=mask_delims, keep_last_n_blocks=keep))
    hidden = [[False] * len(ids) for _ in ids]
    for ev in tracker.feed_many(ids):
        for q in range(ev.trigger + 1, len(ids)):
            for k in range(ev.start, ev.end):
                hidden[q][k] = True
    expected = visible_matrix(ids, ids_of_spec(), keep_last_n_blocks=keep, mask_delimiters=mask_delims)
    for q in range(len(ids)):
        for k in range(q + 1):
            assert expected[q][k] == (not hidden[q][k]), (q, k)


def ids_of_spec():
    return spec(mask_delimiters=False).ids
