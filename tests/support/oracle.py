"""The correctness oracle: plain HF transformers with the Memento mask.

Independent of the runtime: the mask comes from `mask_rule` (its own reading of the
token ids) and the model runs the whole sequence at once with logical
`position_ids` and a 4-D additive mask. For greedy decoding, every generated token
must be the reference's argmax given the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Mismatch:
    position: int
    server: int
    reference: int


class MementoReference:
    def __init__(self, model_path, special_ids: set[int]) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, attn_implementation="eager", dtype=torch.float32
        ).eval()
        self.special_ids = sorted(special_ids)

    @torch.no_grad()
    def logits(self, ids: list[int], visible: list[list[bool]] | None) -> torch.Tensor:
        n = len(ids)
        allowed = (
            torch.tril(torch.ones(n, n, dtype=torch.bool))
            if visible is None
            else torch.tensor(visible, dtype=torch.bool)
        )
        mask = torch.zeros(n, n).masked_fill(~allowed, float("-inf"))
        out = self.model(
            torch.tensor([ids]),
            attention_mask=mask[None, None],
            position_ids=torch.arange(n)[None],
        )
        return out.logits[0]

    def greedy_mismatches_stepwise(self, ids: list[int], prompt_len: int, visible_for) -> list[Mismatch]:
        """Like `greedy_mismatches`, for rules where the past depends on the present.

        Token t is checked against a forward over `ids[:t]` with `visible_for(ids[:t])`
        (restart mode: a memento's own KV changes once it has closed).
        """
        special = set(self.special_ids)
        out = []
        for t in range(prompt_len, len(ids)):
            if ids[t] in special:
                continue
            logits = self.logits(ids[:t], visible_for(ids[:t]))[-1]
            logits[self.special_ids] = float("-inf")
            best = int(logits.argmax())
            if best != ids[t]:
                out.append(Mismatch(t, ids[t], best))
        return out

    def greedy_mismatches(
        self, ids: list[int], prompt_len: int, visible: list[list[bool]] | None
    ) -> list[Mismatch]:
        """Generated ordinary tokens that are not the reference's argmax.

        Special tokens (delimiters, end of turn) are placed or allowed by the grammar,
        so only ordinary tokens are compared, against the argmax over ordinary tokens.
        """
        logits = self.logits(ids, visible)
        logits[:, self.special_ids] = float("-inf")
        best = logits.argmax(dim=-1).tolist()
        special = set(self.special_ids)
        return [
            Mismatch(t, ids[t], best[t - 1])
            for t in range(prompt_len, len(ids))
            if ids[t] not in special and ids[t] != best[t - 1]
        ]
