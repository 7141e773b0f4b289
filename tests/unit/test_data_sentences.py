"""Sentence splitting: each rule on an example, and the exact-reconstruction invariant on random texts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.data.sentences import MIN_SENTENCE_TOKENS, split_sentences


def words(text: str) -> int:
    return len(text.split())


def never_short(_text: str) -> int:
    return 10**6  # turns the short-sentence merge off: the split rules alone


def split(text: str) -> list[str]:
    out = split_sentences(text, never_short)
    assert "".join(out) == text
    return out


# -------------------------------------------------------------------------- split rules


def test_terminators_split_and_keep_trailing_whitespace() -> None:
    assert split("First one. Second one?  Third one!\nFourth") == [
        "First one. ",
        "Second one?  ",
        "Third one!\n",
        "Fourth",
    ]


def test_no_split_inside_brackets_or_inline_math_or_code() -> None:
    assert split("See (this one. Not here) now. Next") == ["See (this one. Not here) now. ", "Next"]
    assert split("We get $x = 1. Y = 2$ here. Next") == ["We get $x = 1. Y = 2$ here. ", "Next"]
    assert split("Call `a. B` here. Next") == ["Call `a. B` here. ", "Next"]
    assert split("Interval $[0, 1)$ works. Next") == ["Interval $[0, 1)$ works. ", "Next"]


def test_a_stray_bracket_only_holds_until_the_line_ends() -> None:
    assert split("Smile :( Not split. Here\nNew line. Split") == [
        "Smile :( Not split. Here\nNew line. ",
        "Split",
    ]


def test_no_split_after_decimals_abbreviations_list_markers_ellipses_operators() -> None:
    assert split("Pi is 3.14 roughly. Next") == ["Pi is 3.14 roughly. ", "Next"]
    assert split("Fruits, e.g. Apples, etc. And more. Next") == [
        "Fruits, e.g. Apples, etc. And more. ",
        "Next",
    ]
    assert split("As Dr. Who says, see Fig. 3 now. Next") == ["As Dr. Who says, see Fig. 3 now. ", "Next"]
    assert split("1. First item\n2. Second item") == ["1. First item\n2. Second item"]
    assert split("Hmm... Maybe. Next") == ["Hmm... Maybe. ", "Next"]
    assert split("Since 5! = 120 and a != b. Next") == ["Since 5! = 120 and a != b. ", "Next"]
    assert split("Then x.append(3) runs. Next") == ["Then x.append(3) runs. ", "Next"]
    assert split("It is done. then more. Next") == ["It is done. then more. ", "Next"]


def test_paragraph_breaks_split() -> None:
    assert split("No terminator here\n\nNew paragraph\n \n\nThird") == [
        "No terminator here\n\n",
        "New paragraph\n \n\n",
        "Third",
    ]


def test_code_fences_and_display_math_are_atomic() -> None:
    code = "```python\nx = 1. \ny = 2. \n\nprint(x)\n```\n"
    assert split("Let me write it.\n" + code + "This prints one.") == [
        "Let me write it.\n",
        code,
        "This prints one.",
    ]
    assert split("Now.\n$$a = 1. B = 2.$$\nDone.") == ["Now.\n", "$$a = 1. B = 2.$$\n", "Done."]
    assert split("Now.\n\\[a = 1. B = 2.\\]\nDone.") == ["Now.\n", "\\[a = 1. B = 2.\\]\n", "Done."]
    env = "\\begin{align}\na &= 1. \\\\\n\n\\begin{align}B. C\\end{align}\nb &= 2.\n\\end{align}\n"
    assert split(env + "Done here.") == [env, "Done here."]


def test_display_math_inside_a_sentence_does_not_end_it() -> None:
    assert split("We compute\n$$x = 1$$\nwhich is small. Next") == [
        "We compute\n$$x = 1$$\nwhich is small. ",
        "Next",
    ]
    assert split("Inline $$x. Y$$ math. Next") == ["Inline $$x. Y$$ math. ", "Next"]


def test_unclosed_spans_are_text() -> None:
    assert split("Open ``` fence. Next one.") == ["Open ``` fence. ", "Next one."]
    assert split("Open $$ math. Next one.") == ["Open $$ math. ", "Next one."]


# --------------------------------------------------------------------------------- merges


def test_colon_merges_with_what_follows() -> None:
    assert split("We have:\n\n$$x = 1$$\nDone. Next") == ["We have:\n\n$$x = 1$$\n", "Done. ", "Next"]
    assert split("**Plan:**\n\nFirst. Then") == ["**Plan:**\n\nFirst. ", "Then"]
    assert split("A: \n\nB:\n\nC. D") == ["A: \n\nB:\n\nC. ", "D"]
    assert split("Last:") == ["Last:"]


def test_continuation_with_math_merges_into_math() -> None:
    assert split("So $x = 2$ here. Therefore $y = 4$. Next") == [
        "So $x = 2$ here. Therefore $y = 4$. ",
        "Next",
    ]
    assert split("Plain words here. Therefore $y = 4$.") == ["Plain words here. ", "Therefore $y = 4$."]
    assert split("So $x = 2$ here. Thus we stop.") == ["So $x = 2$ here. ", "Thus we stop."]


def test_consecutive_list_items_merge() -> None:
    text = "Steps:\n1. Do a.\n2. Do b.\n- Check c.\nAfter the list. End"
    assert split(text) == ["Steps:\n1. Do a.\n2. Do b.\n- Check c.\n", "After the list. ", "End"]


def test_short_sentences_merge_forward_or_backward() -> None:
    text = (
        "Wait. Let me check the sum again now. It holds for every value of n.\n\nYes.\n\n"
        "Next we turn to the product."
    )
    assert split_sentences(text, words) == [
        "Wait. Let me check the sum again now. ",
        "It holds for every value of n.\n\nYes.\n\n",
        "Next we turn to the product.",
    ]
    assert split_sentences("Only a long enough sentence here. Ok.", words) == [
        "Only a long enough sentence here. Ok."
    ]


def test_degenerate_texts() -> None:
    assert split_sentences("", words) == []
    assert split_sentences(" \n ", words) == [" \n "]
    assert split_sentences("\n\nTwo words.", words) == ["\n\nTwo words."]


# ------------------------------------------------------------------------------ invariant

PIECES = [
    "word", "Okay", "so", "x", "3.14", "e.g.", "etc.", "Dr.", "1.", "2)", "-", "...", "!=", "5!", "=",
    ".", "?", "!", ":", ",", "(", ")", "[", "]", "{", "}", "$", "$$", "```", "`", "\\[", "\\]",
    "\\begin{align}", "\\end{align}", "Therefore", "Thus", "So", "Then", "\\frac{a}{b}", "**", "\"",
    "\u2026", "\u00e9t\u00e9", "\\$",
]  # fmt: skip
SPACES = [" ", "  ", "\n", "\n\n", "\n \n", "\t", ""]


@st.composite
def texts(draw) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SPACES)), max_size=80))
    lead = draw(st.sampled_from(["", " ", "\n"]))
    return lead + "".join(p + s for p, s in parts)


@settings(max_examples=500, deadline=None)
@given(texts(), st.sampled_from(["words", "chars", "never"]))
def test_sentences_rebuild_the_text(text: str, counter: str) -> None:
    count = {"words": words, "chars": len, "never": never_short}[counter]
    out = split_sentences(text, count)
    assert "".join(out) == text
    assert all(out)
    if text.strip():
        assert all(s.strip() for s in out)
    if len(out) > 1:
        assert all(count(s) >= MIN_SENTENCE_TOKENS for s in out)


ATOMS = ["```py\nx = 1. Y\n\nz\n```", "$$a. B\n\nc$$", "\\[p. Q\\]", "\\begin{cases}u. V\n\nw\\end{cases}"]


@st.composite
def texts_with_atoms(draw) -> tuple[str, list[tuple[int, int]]]:
    """Prose with closed atomic spans (and no other delimiters), and where the spans are."""
    prose = st.sampled_from(["Word.", "More words here.", "Why?", "Yes!", "x = 1.", "so", "1."])
    text, spans = "", []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            atom = draw(st.sampled_from(ATOMS))
            spans.append((len(text), len(text) + len(atom)))
            text += atom
        else:
            text += draw(prose)
        text += draw(st.sampled_from([" ", "\n", "\n\n"]))
    return text, spans


@settings(max_examples=300, deadline=None)
@given(texts_with_atoms(), st.sampled_from([words, never_short]))
def test_atomic_spans_are_never_cut(case, count) -> None:
    text, spans = case
    out = split_sentences(text, count)
    assert "".join(out) == text
    cuts = {sum(len(s) for s in out[:i]) for i in range(1, len(out))}
    assert not any(start < cut < end for cut in cuts for start, end in spans)
