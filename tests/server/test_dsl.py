"""`memento_block()` in `@sgl.function` programs against the CPU server (RuntimeEndpoint)."""

from __future__ import annotations

import pytest
from support.client import chat_prompt

from memento_sglang.frontend.trace import MementoTrace

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
