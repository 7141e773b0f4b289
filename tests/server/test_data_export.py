"""The training mask of an exported example is what the server's masked prefill does.

An assembled Memento example (prompt + completion with closed blocks) goes to the
server as a prompt, which hides its closed blocks at prefill; its prompt logprobs must
equal the HF oracle's logits under the *export's* attention mask and position ids, so a
model trained on the export sees exactly what it will see when served.
"""

from __future__ import annotations

import pytest
import torch

from memento_sglang.config import MementoConfig
from memento_sglang.data.assemble import assemble
from memento_sglang.data.export import MementoCollator, training_features

pytestmark = pytest.mark.server


def example(tokenizer, blocks: int):
    return assemble(
        task_id=f"t{blocks}",
        problem=f"What is {blocks} + {blocks}?",
        think_prefix="",
        blocks=[f"Block {i} adds the numbers one at a time and checks the sum." for i in range(blocks)],
        mementos=[f"sum {i}" for i in range(blocks)],
        answer=str(2 * blocks),
        tokenizer=tokenizer,
    )


@pytest.mark.parametrize("blocks", [2, 3])
def test_the_export_mask_is_the_servers_masked_prefill(blocks, default_server, reference, tokenizer):
    ex = example(tokenizer, blocks)
    # the default server's config: Memento on, delimiters kept visible
    config = MementoConfig(enable=True, mask_delimiters=False)
    features = training_features(ex.prompt_ids, ex.completion_ids, config, tokenizer=tokenizer)
    ids = features.input_ids
    assert features.position_ids == list(range(len(ids)))  # logical positions, no gaps
    assert features.hidden_spans, "an example with closed blocks hides them"
    got = default_server.generate(
        {"input_ids": ids, "return_logprob": True, "logprob_start_len": 0,
         "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}}
    )["meta_info"]["input_token_logprobs"]  # fmt: skip
    assert [entry[1] for entry in got] == ids
    # the collator's 4D mask, as HF Trainer would hand it to the model
    batch = MementoCollator(tokenizer=tokenizer)([features])
    mask4d = batch["attention_mask"][0, 0]
    visible = (mask4d == 0).tolist()
    assert torch.equal(torch.tensor(visible), features.dense_mask())
    want = torch.log_softmax(reference.logits(ids, visible).float(), dim=-1)
    worst = max(abs(entry[0] - want[t - 1, ids[t]].item()) for t, entry in enumerate(got) if t > 0)
    assert worst < 2e-3, worst
    # plain causal attention scores the tokens after the first memento differently
    plain = torch.log_softmax(reference.logits(ids, None).float(), dim=-1)
    assert (
        max(abs(plain[t - 1, ids[t]].item() - want[t - 1, ids[t]].item()) for t in range(1, len(ids))) > 1e-2
    )
