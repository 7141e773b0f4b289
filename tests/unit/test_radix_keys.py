"""Radix keys of compacted rows and the exact reuse cut of a cached prefix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.radix_keys import fingerprint, is_fingerprint, radix_key
from memento_sglang.sequence import MementoSequence
from memento_sglang.spans import EMPTY, SpanMap
from tests.support.synthetic import BS, SE, spec, tokens

# "A [ w w ] ( s ) [ w w w ] ( s s ) w": positions
#  0 1 | 2 3 4 5 | 6 7 8 | 9 10 11 12 13 | 14 15 16 17 | 18
TRACE = "A [ w w ] ( s ) [ w w w ] ( s s ) w"


def prompt_sequence(text: str = TRACE, **options) -> MementoSequence:
    return MementoSequence(spec(mask_delimiters=False, **options), tokens(text), evict_prompt_blocks=True)


def test_key_replaces_the_token_after_each_span_by_a_fingerprint():
    ids = tokens(TRACE)
    spans = SpanMap(((3, 5), (10, 13)))
    key = radix_key(ids, spans)
    assert len(key) == len(spans.strip(ids)) == len(ids) - 5
    assert [i for i, k in enumerate(key) if is_fingerprint(k)] == [3, 8]
    assert key[3] == fingerprint(ids[3:5], ids[5])
    assert radix_key(ids, spans, 7) == key[:7]
    assert list(radix_key(ids, EMPTY)) == list(EMPTY.strip(ids)) == tokens(TRACE)


CONTENT = st.lists(st.integers(50, 60), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(CONTENT, CONTENT)
def test_different_evicted_content_gives_different_keys(a, b):
    """The memento after a block attended to it: other content must be another key."""
    head = tokens("A [")
    tail = tokens("] ( s ) w")
    key_a = radix_key(head + a + tail, EMPTY.with_span(len(head), len(head) + len(a)))
    key_b = radix_key(head + b + tail, EMPTY.with_span(len(head), len(head) + len(b)))
    assert (key_a == key_b) == (a == b)


def test_full_match_covers_every_closed_block_but_the_last_query():
    seq = prompt_sequence(TRACE)
    key = seq.prospective_key()
    cut = seq.adopt_cached_prefix(len(key), logical_limit=seq.total_len - 1)
    assert cut == len(key) - 1  # everything but `w`, whose logits the request needs
    assert seq.map.spans == ((3, 5), (10, 13)) and not seq.has_due()
    assert seq.stats().reused_blocks == 2 and seq.stats().reused_prompt_tokens == 18
    assert list(seq.physical_ids()) == list(SpanMap(((3, 5), (10, 13))).strip(tokens(TRACE)))


def test_a_cut_inside_a_memento_falls_back_to_its_block():
    """The memento's uncached tokens must attend to the block: prefill it again."""
    seq = prompt_sequence(TRACE)
    key = seq.prospective_key()
    in_second_memento = key.index(SE, 7)  # cut right before the 2nd memento closes
    cut = seq.adopt_cached_prefix(in_second_memento, logical_limit=seq.total_len - 1)
    assert cut == 8  # the slot right after the 2nd `[`: its content is prefilled again
    assert seq.map.spans == ((3, 5),)
    assert [(ev.start, ev.end) for ev in seq.due_evictions()] == [(10, 13)]


def test_logical_limit_counts_the_skipped_blocks():
    seq = prompt_sequence(TRACE)
    seq.prospective_key()
    cut = seq.adopt_cached_prefix(100, logical_limit=9)  # up to the 2nd `[` (logical 9)
    assert cut == 9 - 2 and seq.map.spans == ((3, 5),)
    seq.prospective_key()
    cut = seq.adopt_cached_prefix(100, logical_limit=12)  # inside the 2nd block: stop before it
    assert cut == 8 and seq.map.spans == ((3, 5),)


def test_rematch_forgets_an_earlier_adoption():
    seq = prompt_sequence(TRACE)
    seq.adopt_cached_prefix(len(seq.prospective_key()), logical_limit=seq.total_len - 1)
    key = seq.prospective_key()
    assert seq.adopt_cached_prefix(0, logical_limit=seq.total_len - 1) == 0
    assert seq.map.spans == () and len(seq.due_evictions()) == 2 and len(key) == seq.total_len - 5


def test_insert_limit_stops_at_an_unsettled_block():
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"))
    seq.on_output_tokens([BS, *tokens("w w")])
    assert seq.insert_limit() == 5  # an open block: its content may be shared
    seq.on_output_tokens(tokens("] ( s"))
    assert seq.insert_limit() == 5  # its memento is not: it changes when the block leaves
    seq.on_output_tokens(tokens(")"))
    assert seq.insert_limit() == 5  # decided, not compacted yet
    (ev,) = seq.take_due(100)
    assert seq.apply_eviction(ev) == (3, 5)
    assert seq.insert_limit() == seq.total_len - 2


def test_with_pages_the_tree_stops_before_the_page_of_a_block_that_may_leave():
    """With pages the tree never owns the page where an open or unsettled block's span
    starts, so compaction only rewrites and frees the request's own pages."""
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A w w"))  # 4 slots
    assert seq.insert_limit(4) == 4 and seq.insert_limit(3) == 3
    seq.on_output_tokens([BS, *tokens("w w")])  # `[` at 4: the open block's span starts at 5
    assert (seq.insert_limit(), seq.insert_limit(2), seq.insert_limit(4)) == (7, 4, 4)
    seq.on_output_tokens(tokens("] ( s )"))  # decided, not compacted yet
    assert (seq.insert_limit(), seq.insert_limit(2), seq.insert_limit(4)) == (7, 4, 4)
    (ev,) = seq.take_due(100)
    seq.apply_eviction(ev)  # nothing may leave any more: whole pages of the 9-slot row
    assert (seq.insert_limit(), seq.insert_limit(2), seq.insert_limit(4)) == (9, 8, 8)


def test_with_pages_a_cached_prefix_is_cut_at_a_page():
    """The full match (13 slots) floors to 12 at page 4; slot 12 is the 2nd memento's last
    token, which needs its block: the cut falls back to that block (slot 8), a page too."""
    seq = prompt_sequence(TRACE)
    key = seq.prospective_key()
    cut = seq.adopt_cached_prefix(len(key), logical_limit=seq.total_len - 1, page_size=4)
    assert cut == 8 and seq.map.spans == ((3, 5),)
    seq.prospective_key()
    assert seq.adopt_cached_prefix(len(key), logical_limit=seq.total_len - 1, page_size=16) == 0
    assert seq.map.spans == () and len(seq.due_evictions()) == 2


def test_kept_blocks_cap_the_match_and_the_insert():
    """keep_last_n_blocks=1: the 1st block leaves at the 2nd memento's close, and the
    2nd block (kept) may still leave, so nothing past the 1st block is reusable."""
    seq = prompt_sequence(TRACE, keep_last_n_blocks=1)
    key = seq.prospective_key()
    cut = seq.adopt_cached_prefix(len(key), logical_limit=seq.total_len - 1)
    assert cut == 3 and seq.map.spans == ()
    assert seq.insert_limit() == 5


def test_a_restart_memento_stays_out_of_the_tree_until_reprefilled():
    """restart_mode: a memento computed with its block visible must never be inserted."""
    restart = spec(restart_mode=True, mask_delimiters=False)
    seq = MementoSequence(restart, tokens("A"), evict_prompt_blocks=True)
    seq.on_output_tokens(tokens("[ w w ] ( s )"))
    assert seq.needs_restart()
    assert seq.insert_limit() == 2 + 4  # up to the block's end: `[ w w ]` may be shared, `( s )` not


def test_a_prompt_sglang_replaced_leaves_the_memento_tree():
    """An abort's one-token stub (or a truncated prompt) no longer matches the tracked ids."""
    from types import SimpleNamespace

    from memento_sglang.sglang_plugin.radix_cache import keyed_sequence

    seq = prompt_sequence(TRACE)
    seq.radix_keyed = True
    req = SimpleNamespace(memento=seq, origin_input_ids=tokens(TRACE), skip_radix_cache_insert=False)
    assert keyed_sequence(req) is seq
    req.origin_input_ids = [0]
    assert keyed_sequence(req) is None and req.skip_radix_cache_insert and not seq.radix_keyed
