"""Request builders and the oracle check shared by the server tests."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from tests.support.mask_rule import hidden_spans, visible_matrix


def chat_prompt(tokenizer, user_text: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )


WORDS = [
    "we", "add", "the", "numbers", "then", "check", "the",
    "sum", "and", "the", "product", "of", "the", "primes",
]  # fmt: skip


def prompt_with_closed_blocks(
    tokenizer, token_ids, n_closed: int, question: str = "Continue the reasoning."
) -> list[int]:
    ids = chat_prompt(tokenizer, question)
    ids.append(tokenizer.convert_tokens_to_ids("<think>"))
    for i in range(n_closed):
        block = " ".join(WORDS[i : i + 4 + i % 3])
        memento = " ".join(WORDS[-2 - i % 2 :])
        ids += [token_ids.block_start, *tokenizer.encode(block, add_special_tokens=False)]
        ids += [token_ids.block_end, token_ids.summary_start]
        ids += [*tokenizer.encode(memento, add_special_tokens=False), token_ids.summary_end]
    return ids


def memento_body(
    prompt_ids: list[int],
    blocks: Sequence[tuple[int, int]],
    *,
    answer_tokens: int = 4,
    memento: dict | None = None,
    max_new_tokens: int = 400,
    resume_open_block: tuple[int, int] | None = None,
    in_think: bool = False,
    **extra,
) -> dict:
    """A greedy request whose output structure is forced by a structural tag."""
    tag = memento_structural_tag(
        [BlockBudget(b, s) for b, s in blocks],
        answer_tokens=answer_tokens,
        resume_open_block=BlockBudget(*resume_open_block) if resume_open_block else None,
        in_think=in_think,
    )
    params = {
        "temperature": 0.0,
        "max_new_tokens": max_new_tokens,
        "structural_tag": tag,
        "skip_special_tokens": False,
    }
    if memento is not None:
        params["custom_params"] = {"memento": memento}
    return {"input_ids": prompt_ids, "sampling_params": params, **extra}


RULE_KEYS = ("keep_last_n_blocks", "mask_delimiters", "keep_last_block_for_answer")


def rule_of(memento: dict | None, server_default: dict) -> dict:
    cfg = {**server_default, **(memento or {})}
    return {k: cfg[k] for k in RULE_KEYS if k in cfg}


def assert_matches_reference(reference, token_ids, prompt_ids, output_ids, rule) -> None:
    ids = list(prompt_ids) + list(output_ids)
    visible = visible_matrix(ids, token_ids, **rule)  # masked prefill: prompt blocks too
    mismatches = reference.greedy_mismatches(ids, len(prompt_ids), visible)
    assert not mismatches, f"server != HF Memento reference at {mismatches[:5]} (rule {rule})"


def expected_stats(token_ids, prompt_ids, output_ids, rule) -> dict:
    """`meta_info["memento"]` computed from the token ids by the oracle's mask rule."""
    ids = list(prompt_ids) + list(output_ids)
    n, p = len(ids), len(prompt_ids)
    visible = visible_matrix(ids, token_ids, **rule)
    last_query = max(n - 2, p - 1)
    keys_seen = [sum(visible[q][: q + 1]) for q in range(p - 1, last_query + 1)]
    spans = hidden_spans(ids, token_ids, **rule)
    return {
        "live_kv_tokens": keys_seen[-1],
        "peak_live_kv_tokens": max(keys_seen),
        "peak_kv_tokens_without_eviction": last_query + 1,
        "tokens_evicted": last_query + 1 - keys_seen[-1],
        "blocks_evicted": sum(1 for _, _, trig in spans if trig < last_query),
    }


SERVER_DEFAULT = {"keep_last_n_blocks": 0, "mask_delimiters": False}
#: the `chunked` test server's `prefill_mask_budget`: tight enough to cut its 16-token chunks
CHUNKED_MASK_BUDGET = 600


def opt_in(memento: dict | None) -> dict:
    """Per-request config; the second server has Memento off unless a request enables it."""
    return {"enable": True, **(memento or {})}


def run_and_check(server, reference, token_ids, prompt, blocks, memento=None, *, prompt_blocks=0, **kw):
    """Generate with forced structure; check the HF oracle and `meta_info["memento"]`."""
    out = server.generate(memento_body(prompt, blocks, memento=opt_in(memento), **kw))
    output_ids = out["output_ids"]
    rule = rule_of(memento, SERVER_DEFAULT)
    assert_matches_reference(reference, token_ids, prompt, output_ids, rule)
    stats = out["meta_info"]["memento"]
    expected = expected_stats(token_ids, prompt, output_ids, rule)
    assert {k: stats[k] for k in expected} == expected
    resumed = 1 if kw.get("resume_open_block") else 0
    assert stats["blocks_closed"] == prompt_blocks + len(blocks) + resumed
    return out, stats


def mixed_jobs(tokenizer, question: str, n: int = 8, step: int = 3, keeps: int = 3) -> list[tuple]:
    """`n` requests of different lengths and per-request policies: (prompt, blocks, memento)."""
    jobs = []
    for i in range(n):
        prompt = chat_prompt(tokenizer, question + " again" * i + "?")
        blocks = [(4 + (i * step) % 9, 1 + i % 3)] * (1 + i % 4)
        memento = {"keep_last_n_blocks": i % keeps, "mask_delimiters": bool(i % 2)}
        jobs.append((prompt, blocks, memento))
    return jobs


def run_concurrently_and_check(server, reference, token_ids, jobs: list[tuple]) -> list[dict]:
    """Send every job at once; each output equals the HF oracle and closes its blocks."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: server.generate(memento_body(j[0], j[1], memento=opt_in(j[2]))), jobs))
    for (prompt, blocks, memento), out in zip(jobs, outs, strict=True):
        rule = rule_of(memento, SERVER_DEFAULT)
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], rule)
        assert out["meta_info"]["memento"]["blocks_closed"] == len(blocks)
    return outs
