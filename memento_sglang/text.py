"""The Memento structure in decoded text: string functions the chat server and the
front end share (no SGLang, no tokenizer)."""

from __future__ import annotations

import re

from memento_sglang.constants import SUMMARY_END, SUMMARY_START

_CLOSED_MEMENTO = re.compile(re.escape(SUMMARY_START) + "(.*?)" + re.escape(SUMMARY_END), re.DOTALL)


def closed_mementos(reasoning: str) -> list[str]:
    """The mementos closed so far in (possibly unfinished) reasoning text, in order.

    Lenient on purpose: a stream cut by a budget still reports what closed.
    """
    return _CLOSED_MEMENTO.findall(reasoning)
