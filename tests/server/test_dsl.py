"""`memento_block()` in `@sgl.function` programs against the CPU server (RuntimeEndpoint)."""

from __future__ import annotations

import re

import pytest

from memento_sglang.frontend.trace import MementoTrace
from tests.support.client import chat_prompt

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def solve():
    import sglang as sgl

    from memento_sglang.frontend.dsl import memento_block, memento_gen

    @sgl.function
    def solve(s, question):
        s += question + "<think>"
        for i in range(2):
            s += memento_block(f"step{i}", max_block_tokens=6, max_memento_tokens=3, temperature=0)
        s += "</think>" + memento_gen("answer", max_tokens=4, temperature=0)

    return solve


def check(state, prompt_text: str) -> MementoTrace:
    trace = MementoTrace.from_text(state.text()[len(prompt_text) :])
    assert [b.text for b in trace.blocks] == [state["step0"], state["step1"]]
    assert trace.mementos == [state["step0_memento"], state["step1_memento"]]
    for name, budget in [("step0", 6), ("step0_memento", 3), ("step1", 6), ("step1_memento", 3)]:
        assert state.get_meta_info(name)["completion_tokens"] <= budget + 1  # + its closing delimiter
    return trace


def test_memento_blocks_land_in_program_variables(default_server, tokenizer, solve):
    import sglang as sgl

    backend = sgl.RuntimeEndpoint(default_server.url)
    prompt_text = tokenizer.decode(chat_prompt(tokenizer, "Solve it"))
    state = solve.run(question=prompt_text, backend=backend)
    trace = check(state, prompt_text)
    assert len(trace.blocks) == 2
    # the second block's request held the first block closed: the server hid and compacted it
    assert state.get_meta_info("step1")["memento"]["blocks_evicted"] >= 1

    prompts = [tokenizer.decode(chat_prompt(tokenizer, f"Question {i}")) for i in range(2)]
    states = solve.run_batch([{"question": p} for p in prompts], backend=backend)
    for state, prompt in zip(states, prompts, strict=True):
        check(state, prompt)


def test_one_call_reasoning_sets_blocks_mementos_and_answer(default_server, tokenizer):
    import sglang as sgl

    from memento_sglang.frontend.dsl import memento_reasoning

    @sgl.function
    def reason(s, question):
        s += question
        branches = s.fork(2)
        for branch in branches:
            shape = {"max_blocks": 2, "max_block_tokens": 5, "max_memento_tokens": 2}
            branch += memento_reasoning("r", **shape, answer_regex="[0-9]{2}", temperature=0)
        s["traces"] = [b["r_trace"] for b in branches]
        s["answers"] = [b["r_answer"] for b in branches]
        s["blocks"] = [b["r_blocks"] for b in branches]
        s["mementos"] = [b["r_mementos"] for b in branches]
        s["texts"] = [b["r"] for b in branches]

    backend = sgl.RuntimeEndpoint(default_server.url)
    prompts = [tokenizer.decode(chat_prompt(tokenizer, f"Count {i}")) for i in range(2)]
    for state in reason.run_batch([{"question": p} for p in prompts], backend=backend):
        for trace, answer, blocks, mementos, text in zip(
            state["traces"], state["answers"], state["blocks"], state["mementos"], state["texts"], strict=True
        ):
            assert trace == MementoTrace.from_text(text.removesuffix("<|im_end|>"), stats=trace.stats)
            assert re.fullmatch("[0-9]{2}", answer) and answer == trace.answer
            assert 1 <= len(blocks) <= 2 and blocks == [b.text for b in trace.blocks]
            assert mementos == trace.mementos
            assert trace.stats.blocks_evicted == len(blocks)  # the server evicted every block
        assert state["texts"][0] == state["texts"][1]  # greedy forks agree


def test_one_call_reasoning_refuses_contradictions():
    from memento_sglang.frontend.dsl import memento_reasoning

    with pytest.raises(ValueError, match="not both"):
        memento_reasoning("r", max_block_tokens=4, max_memento_tokens=2, blocks=2, max_blocks=3)
    with pytest.raises(ValueError, match="fork"):
        memento_reasoning("r", max_block_tokens=4, max_memento_tokens=2, n=2)
    with pytest.raises(ValueError, match="max_tokens"):
        memento_reasoning("r", max_block_tokens=4, max_memento_tokens=2)
