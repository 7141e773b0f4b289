"""Sentence splitting of a reasoning trace: the units that boundary scoring and segmentation work on.

Blocks are made of whole sentences, so a sentence must never cut through something a
block cannot be cut through: a fenced code block, display math (`$$...$$`, `\\[...\\]`), a
`\\begin{env}...\\end{env}` environment, a derivation that carries on from a colon or a
"Therefore" line, a list. Sentences shorter than 5 tokens are merged away: a boundary after
"Wait." is not a place where a block can usefully end.

Representation: every sentence keeps the whitespace that follows it (and the first one
any leading whitespace), so `"".join(split_sentences(text, count))` is exactly `text`, and
no sentence is empty. Every merge joins neighbours, which keeps that invariant by
construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["MIN_SENTENCE_TOKENS", "split_sentences"]

#: shorter sentences are merged into a neighbour
MIN_SENTENCE_TOKENS = 5

#: "word." endings that do not end a sentence (compared lowercased, without the final dot)
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "cf", "approx", "resp", "al", "dr", "mr", "mrs", "ms", "prof", "fig", "figs"}
    | {"eq", "eqs", "sec", "ch", "viz", "w.r.t", "wrt"}
)
#: characters that may close a sentence after its terminator: quotes, markdown emphasis
_CLOSERS = "\"'\u201d\u2019*_"
#: a next sentence never starts with these: "5! = 120", "... . + 3", ", where"
_CONTINUES = "=<>+*/^,;:)]}|"
_OPENERS = re.compile(r"```|\$\$|\\\[|\\begin\{([^{}\n]+)\}")
_WORD_BEFORE = re.compile(r"(?<![A-Za-z.])[A-Za-z][A-Za-z.]*$")
_LIST_MARKER_PREFIX = re.compile(r"\s*(?:[-*+]\s+)?(?:\*\*)?\d{1,3}")
_LIST_ITEM = re.compile(r"\s*(?:[-*+\u2022]|\d{1,3}[.)])\s")
_LIST_LINE = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])\s", re.MULTILINE)
_CONTINUATION = re.compile(r"\s*(?:[*_]{1,2})?(?:therefore|thus|so|hence|then)\b", re.IGNORECASE)
_MATH = re.compile(r"\$|\\[a-zA-Z]+|\\[(\[]|[=<>^\u2264\u2265\u2260]|\d\s*[-+*/\u00d7\u00f7]\s*[\d(]")


def split_sentences(reasoning: str, count_tokens: Callable[[str], int]) -> list[str]:
    """Split `reasoning` into sentences; each keeps its trailing whitespace, so they join back to it.

    `count_tokens` measures a sentence in the target model's tokens (used for the 5-token
    minimum). A text with no split point, or whitespace only, is one sentence; "" is none.
    """
    if not reasoning.strip():
        return [reasoning] if reasoning else []
    pieces = _cut(reasoning, sorted(set(_cut_points(reasoning))))
    pieces = _merge_colon(pieces)
    pieces = _merge_continuations(pieces)
    pieces = _merge_lists(pieces)
    return _merge_short(pieces, count_tokens)


# ----------------------------------------------------------------------- split points


def _atomic_spans(text: str) -> dict[int, int]:
    """start -> end of every closed code fence, display math and environment; unclosed ones are text."""
    spans: dict[int, int] = {}
    pos = 0
    while match := _OPENERS.search(text, pos):
        end = _closing(text, match)
        if end is None:
            pos = match.end()
            continue
        spans[match.start()] = end
        pos = end
    return spans


def _closing(text: str, opener: re.Match[str]) -> int | None:
    """End of the span `opener` starts, or None when it is never closed."""
    token = opener.group(0)
    if opener.group(1) is None:
        close = {"```": "```", "$$": "$$", "\\[": "\\]"}[token]
        at = text.find(close, opener.end())
        return None if at < 0 else at + len(close)
    name = re.escape(opener.group(1))
    depth = 1
    for tag in re.finditer(rf"\\(begin|end)\{{{name}\}}", text[opener.end() :]):
        depth += 1 if tag.group(1) == "begin" else -1
        if depth == 0:
            return opener.end() + tag.end()
    return None


def _cut_points(text: str) -> list[int]:
    """Indices where a new sentence starts (never 0 or len(text), never inside an atomic span).

    Brackets, `$...$` and backticks are tracked only within a line: one stray "(" must not
    swallow the rest of a long trace.
    """
    spans = _atomic_spans(text)
    cuts: list[int] = []
    depth, in_math, in_code = 0, False, False
    i, n = 0, len(text)
    while i < n:
        if i in spans:
            end = spans[i]
            if (cut := _after_block(text, i, end)) is not None:
                cuts.append(cut)
            depth, in_math, in_code = 0, False, False
            i = end
            continue
        char = text[i]
        if char.isspace():
            end = _whitespace_end(text, i)
            if "\n" in text[i:end]:
                depth, in_math, in_code = 0, False, False
                if text.count("\n", i, end) >= 2 and end < n and i > 0:
                    cuts.append(end)  # a paragraph break
            i = end
            continue
        if char == "\\" and text.startswith("$", i + 1):
            i += 2  # an escaped dollar is text
            continue
        if char == "`":
            run_end = i
            while run_end < n and text[run_end] == "`":
                run_end += 1
            if run_end - i < 3:  # `code` or ``code``; a longer run is an unclosed fence: text
                in_code = not in_code
            i = run_end
            continue
        if in_code:
            pass
        elif char == "$":
            in_math = not in_math
        elif in_math:
            pass
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char in ".?!" and depth == 0 and (cut := _after_terminator(text, i)) is not None:
            cuts.append(cut)
        i += 1
    return cuts


def _whitespace_end(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _line_start(text: str, i: int) -> int:
    return text.rfind("\n", 0, i) + 1


def _after_terminator(text: str, i: int) -> int | None:
    """Where the next sentence starts if the `.`, `?` or `!` at `i` ends one, else None."""
    q = i + 1
    while q < len(text) and text[q] in _CLOSERS:
        q += 1
    if q >= len(text) or not text[q].isspace():
        return None  # "3.14", "x.append", "!=", "e.g.," and the end of the text
    start = _whitespace_end(text, q)
    if start >= len(text):
        return None
    if text[i] == "." and _dot_is_not_an_end(text, i):
        return None
    following = text[start]
    if following.islower() or following in _CONTINUES:
        return None
    return start


def _dot_is_not_an_end(text: str, i: int) -> bool:
    """An ellipsis, an abbreviation, or a list marker ("1. " at the start of a line)."""
    if i > 0 and text[i - 1] in ".\u2026":
        return True
    word = _WORD_BEFORE.search(text, max(0, i - 16), i)
    if word is not None and word.group(0).lower() in _ABBREVIATIONS:
        return True
    return _LIST_MARKER_PREFIX.fullmatch(text, _line_start(text, i), i) is not None


def _after_block(text: str, start: int, end: int) -> int | None:
    """A span alone on its lines ends a sentence unless the text after it carries the sentence on."""
    if text[_line_start(text, start) : start].strip():
        return None
    line_end = text.find("\n", end)
    if text[end : len(text) if line_end < 0 else line_end].strip():
        return None
    nxt = _whitespace_end(text, end)
    if nxt >= len(text):
        return None
    following = text[nxt]
    if (following.islower() or following in _CONTINUES or following in ".") and text.count(
        "\n", end, nxt
    ) < 2:
        return None
    return nxt


def _cut(text: str, cuts: list[int]) -> list[str]:
    """Pieces between the cuts; a whitespace-only piece joins its neighbour."""
    bounds = [0, *(c for c in cuts if 0 < c < len(text)), len(text)]
    pieces: list[str] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        piece = text[lo:hi]
        if pieces and not (piece.strip() and pieces[-1].strip()):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


# -------------------------------------------------------------------------- merges


def _ends_with_colon(piece: str) -> bool:
    return piece.rstrip().rstrip("*_").endswith(":")


def _merge_colon(pieces: list[str]) -> list[str]:
    """ "We have:" introduces what follows; it never ends a sentence."""
    out: list[str] = []
    carry = ""
    for piece in pieces:
        joined = carry + piece
        if _ends_with_colon(joined):
            carry = joined
        else:
            out.append(joined)
            carry = ""
    if carry:
        out.append(carry)
    return out


def _has_math(piece: str) -> bool:
    return _MATH.search(piece) is not None


def _merge_continuations(pieces: list[str]) -> list[str]:
    """ "Therefore x = 3." after a derivation is the derivation's last step."""
    out: list[str] = []
    for piece in pieces:
        if out and _CONTINUATION.match(piece) and _has_math(piece) and _has_math(out[-1]):
            out[-1] += piece
        else:
            out.append(piece)
    return out


def _merge_lists(pieces: list[str]) -> list[str]:
    """Consecutive list items make one unit: a list is read (and summarised) as a whole."""
    out: list[str] = []
    for piece in pieces:
        if out and _LIST_ITEM.match(piece) and _LIST_LINE.search(out[-1]):
            out[-1] += piece
        else:
            out.append(piece)
    return out


def _merge_short(pieces: list[str], count_tokens: Callable[[str], int]) -> list[str]:
    """Merge each sentence under the token minimum into a neighbour until none is left (or one sentence)."""
    pieces = list(pieces)
    counts = [count_tokens(p) for p in pieces]
    i = 0
    while len(pieces) > 1 and i < len(pieces):
        if counts[i] >= MIN_SENTENCE_TOKENS:
            i += 1
            continue
        lo = i - 1 if _merges_backward(pieces, i) else i
        merged = pieces[lo] + pieces[lo + 1]
        pieces[lo : lo + 2] = [merged]
        counts[lo : lo + 2] = [count_tokens(merged)]
        i = lo  # everything before `lo` is long enough already
    return pieces


def _merges_backward(pieces: list[str], i: int) -> bool:
    """A short sentence that ends a paragraph (or the text) closes the thought before it;
    any other one ("Wait.", "Step 2.") opens the thought after it."""
    if i == 0:
        return False
    if i == len(pieces) - 1:
        return True
    tail = pieces[i][len(pieces[i].rstrip()) :]
    return tail.count("\n") >= 2
