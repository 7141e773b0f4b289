"""MementoSequence: due evictions, logical/physical map, statistics, retraction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.growth import CycleBounds, Growth
from memento_sglang.sequence import MementoSequence
from memento_sglang.spans import EMPTY
from tests.support.mask_rule import visible_matrix
from tests.support.synthetic import spec, tokens


def test_span_map_physical_indices():
    m = EMPTY.with_span(5, 10)
    assert m.to_physical(20) == 15
    m = m.with_span(20, 23)
    assert m.evicted_tokens == 8
    assert [m.to_physical(i) for i in (0, 4, 10, 19, 23, 30)] == [0, 4, 5, 14, 15, 22]
    with pytest.raises(ValueError):
        m.with_span(21, 22)


def test_due_only_once_trigger_kv_is_in_the_row():
    prompt = tokens("A")
    seq = MementoSequence(spec(mask_delimiters=False), prompt)
    seq.on_output_tokens(tokens("[ w w ] ( s )"))  # summary_end at position 8
    assert seq.has_due()
    assert seq.take_due(8) == []  # summary_end's KV not allocated yet
    (ev,) = seq.take_due(9)
    assert (ev.start, ev.end, ev.trigger) == (3, 5, 8)
    assert not seq.has_due() and seq.take_due(100) == []


def test_due_in_a_compacted_row_counts_physical_slots():
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"))
    seq.on_output_tokens(tokens("[ w w ] ( s ) [ w ] ( s )"))
    (first,) = seq.take_due(9)
    assert seq.apply_eviction(first) == (first.start, first.end)  # physical before removal
    assert seq.map.spans == ((first.start, first.end),) and seq.position_offset == first.size
    second = seq.due_evictions()[0]
    row_len = second.trigger - first.size  # the trigger's own slot is not in the row yet
    assert seq.take_due_in_row(row_len) == []
    assert seq.take_due_at_release(row_len) == [second]  # the last token triggers it
    start, end = seq.apply_eviction(second)
    assert (start, end) == (second.start - first.size, second.end - first.size)


def test_prompt_closed_blocks_are_kept():
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A [ w ] ( s )"))
    assert len(seq.tracker.closed_blocks) == 1 and not seq.has_due()


def test_row_release_requeues_applied_evictions():
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"))
    seq.on_output_tokens(tokens("[ w ] ( s ) [ w w ] ( s )"))
    for ev in seq.take_due(100):
        seq.apply_eviction(ev)
    assert seq.position_offset == 3
    seq.on_row_released()
    assert seq.position_offset == 0
    assert [(e.start, e.end) for e in seq.take_due(100)] == [(3, 4), (9, 11)]


@settings(max_examples=150, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=5),
    keep=st.integers(-1, 2),
    delims=st.booleans(),
    tail=st.integers(0, 4),
    prompt_blocks=st.integers(0, 2),
)
def test_stats_equal_keys_seen_under_the_mask(lens, keep, delims, tail, prompt_blocks):
    """live/peak KV = rows of the oracle's mask; independent of the tracker."""
    prompt_text = "A" + " [ w ] ( s )" * prompt_blocks
    out_text = "".join(" [" + " w" * b + " ] (" + " s" * s + " )" for b, s in lens)
    out_text += " T" + " w" * tail
    prompt, output = tokens(prompt_text), tokens(out_text)
    sp = spec(mask_delimiters=delims, keep_last_n_blocks=keep)
    seq = MementoSequence(sp, prompt)
    seq.on_output_tokens(output)
    ids = prompt + output
    visible = visible_matrix(
        ids, sp.ids, keep_last_n_blocks=keep, mask_delimiters=delims, prompt_len=len(prompt)
    )
    last = len(ids) - 2
    seen = [sum(visible[q][: q + 1]) for q in range(len(prompt) - 1, last + 1)]
    stats = seq.stats()
    assert stats.live_kv_tokens == seen[-1]
    assert stats.peak_live_kv_tokens == max(seen)
    assert stats.peak_kv_tokens_without_eviction == last + 1
    assert stats.tokens_evicted == last + 1 - seen[-1]
    assert stats.blocks_closed == prompt_blocks + len(lens)


def test_cycles_and_growth_inputs_follow_the_structure():
    """Cycles run from after one memento to the end of the next; `</think>` ends them."""
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"))
    assert seq.tracker.open_cycle_tokens == 0
    seq.on_output_tokens(tokens("w [ w w w ] ( s )"))  # 9 tokens, block content 3
    assert seq.take_new_cycles() == [(9, 3)] and seq.take_new_cycles() == []
    seq.on_output_tokens(tokens("[ w ]"))
    assert seq.tracker.open_cycle_tokens == 3
    bounds = CycleBounds(cycle_tokens=10, kept_share=0.5)
    growth = seq.future_growth(100, bounds)
    assert growth == Growth(open=7, total=7 + 47, rate=0.5)
    seq.on_output_tokens(tokens("( s ) T"))
    assert seq.tracker.answering and seq.future_growth(100, bounds) is None  # the answer stays


@pytest.mark.parametrize(
    "options",
    [{"compact_on_summary_end": False}, {"keep_last_n_blocks": -1}, {"admission_estimate": False}],
)
def test_no_memento_estimate_where_nothing_leaves_the_row(options):
    seq = MementoSequence(spec(mask_delimiters=False, **options), tokens("A w"))
    assert seq.future_growth(100, CycleBounds(10, 0.5)) is None
    assert MementoSequence(spec(mask_delimiters=False), tokens("A w")).future_growth(100, None) is None


def test_admission_error_is_reserved_minus_real_growth():
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A x y"))
    seq.note_admission(20)
    seq.on_output_tokens(tokens("[ w w w ] ( s ) w"))
    stats = seq.stats()
    assert stats.admission_growth_bound == 20 and stats.admission_live_kv_tokens == 4
    assert seq.admission_error == 20 - (stats.peak_live_kv_tokens - 4)
