"""The Memento attention rule written independently of the runtime's tracker.

For well-formed traces only: it reads blocks as (block_start, block_end,
summary_start, summary_end) quadruples in assistant sections and answers, for each
query position q and key position k <= q, whether q may attend to k.
"""

from __future__ import annotations

from memento_sglang.config import MementoTokenIds


def read_blocks(ids: list[int], tok: MementoTokenIds, require_assistant: bool = True):
    blocks: list[tuple[int, int, int, int]] = []
    think_ends: list[int] = []
    in_section = not require_assistant
    im_at = None
    cur: list[int] = []
    for i, t in enumerate(ids):
        if require_assistant and t == tok.im_start:
            in_section, im_at, cur = False, i, []
        elif not in_section:
            role = list(tok.assistant or ())
            start = i - len(role) + 1  # the role may be several tokens, 1-2 after im_start
            if im_at is not None and start - im_at in (1, 2) and ids[start : i + 1] == role:
                in_section = True
        elif t == tok.think_end:
            think_ends.append(i)
            cur = []
        elif t == tok.block_start:
            cur = [i]
        elif (t, len(cur)) in ((tok.block_end, 1), (tok.summary_start, 2), (tok.summary_end, 3)):
            cur.append(i)
            if len(cur) == 4:
                blocks.append(tuple(cur))
                cur = []
    return blocks, think_ends


def hidden_spans(
    ids: list[int],
    tok: MementoTokenIds,
    *,
    keep_last_n_blocks: int = 0,
    mask_delimiters: bool = False,
    keep_last_block_for_answer: bool = False,
    restart_mode: bool = False,
    prompt_len: int = 0,
) -> list[tuple[int, int, int]]:
    """(start, end, trigger): keys in [start, end) are hidden from queries > trigger.

    `restart_mode` describes the KV once every memento in `ids` has closed: each
    block, delimiters included, is hidden from its own memento on.
    """
    blocks, think_ends = read_blocks(ids, tok)
    if restart_mode:
        return [(bs, be + 1, ss - 1) for bs, be, ss, _se in blocks]
    out = []
    for j, (bs, be, _ss, se) in enumerate(blocks):
        if keep_last_n_blocks < 0:
            break
        if keep_last_block_for_answer:
            nxt = blocks[j + 1][0] if j + 1 < len(blocks) else None
            if nxt is None or any(se < te < nxt for te in think_ends):
                continue
            trigger = nxt
        elif j + keep_last_n_blocks < len(blocks):
            trigger = blocks[j + keep_last_n_blocks][3]
        else:
            continue
        if trigger < prompt_len:
            continue  # decided inside the prompt: prefilled causally, kept visible
        start, end = (bs, be + 1) if mask_delimiters else (bs + 1, be)
        if end > start:
            out.append((start, end, trigger))
    return out


def visible_matrix(ids: list[int], tok: MementoTokenIds, **rule) -> list[list[bool]]:
    n = len(ids)
    allowed = [[k <= q for k in range(n)] for q in range(n)]
    for start, end, trigger in hidden_spans(ids, tok, **rule):
        for q in range(trigger + 1, n):
            for k in range(start, end):
                allowed[q][k] = False
    return allowed
