"""Export for Stage-2 SFT: input ids, labels, logical positions and the Memento mask.

Stage 2 trains under the attention the server runs: a block is invisible to every token
after its memento's `<|summary_end|>`. The mask is therefore not re-derived here: a
`MementoSequence` (the runtime's tracker, `evict_prompt_blocks=True`) decides the
evictions and `memento_sglang.masks.extend_segments` (the server's masked prefill, prefix
0, extend n) turns them into hidden spans, so a model is trained on exactly the
visibility it is served with.

Hidden spans are stored compactly, `(query_from, key_lo, key_hi)`: queries at positions
`>= query_from` do not see keys `[key_lo, key_hi)`. A few triples per block instead of an
`n x n` matrix keeps a dataset small; `TrainingFeatures.dense_mask` and `MementoCollator`
expand them.

Training with HF `Trainer` / TRL `SFTTrainer`::

    ds = to_dataset(example_features(ex, tokenizer=tok) for ex in examples)
    ds.save_to_disk("memento_sft")                     # later: datasets.load_from_disk(...)
    args = TrainingArguments(..., remove_unused_columns=False)  # keep `hidden_spans`
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")  # or "eager"
    collator = MementoCollator(tokenizer=tok, mask_dtype=torch.bfloat16)  # the model's dtype
    Trainer(model, args, train_dataset=ds, data_collator=collator)

The collator's mask is a 4D additive float mask `[batch, 1, T, T]` (0 = attend, dtype min =
hidden), the form transformers' `masking_utils` passes through unchanged ("already
prepared 4D mask") and that both the eager path (adds it to the scores) and SDPA accept.
Its dtype must be the model's compute dtype for SDPA. FlashAttention-2 takes no custom
mask, so it cannot train Stage 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memento_sglang.config import MementoConfig, MementoSpec
from memento_sglang.data.assemble import MementoExample
from memento_sglang.masks import ExtendSegment, extend_segments, segments_to_dense
from memento_sglang.resolver import tokenizer_encoder, tokenizer_vocab
from memento_sglang.sequence import MementoSequence
from memento_sglang.tracker import Phase

if TYPE_CHECKING:
    import datasets

__all__ = [
    "IGNORE_INDEX",
    "DEFAULT_CONFIG",
    "MementoCollator",
    "TrainingFeatures",
    "example_features",
    "features_from_row",
    "hidden_spans",
    "resolve_spec",
    "to_dataset",
    "training_features",
    "write_jsonl",
]

IGNORE_INDEX = -100
#: Qwen3-style, delimiters stay visible, each block leaves at its memento's end (what the test
#: servers and the README run); pass the served model's config when it differs
DEFAULT_CONFIG = MementoConfig(enable=True, mask_delimiters=False)

Span = tuple[int, int, int]  # (query_from, key_lo, key_hi)


@dataclass(frozen=True, slots=True)
class TrainingFeatures:
    """One training sequence: ids, labels (-100 on the prompt), logical positions 0..n-1,
    and the keys each query may not see."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    #: `(query_from, key_lo, key_hi)`: queries >= query_from do not see keys [key_lo, key_hi)
    hidden_spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if n == 0:
            raise ValueError("a training sequence needs at least one token")
        if len(self.labels) != n or len(self.position_ids) != n:
            raise ValueError(
                f"input_ids, labels and position_ids differ in length "
                f"({n}, {len(self.labels)}, {len(self.position_ids)})"
            )
        for q, lo, hi in self.hidden_spans:
            if not 0 <= lo < hi <= q < n:
                raise ValueError(f"hidden span {(q, lo, hi)} is not a key range before its queries (n={n})")

    def __len__(self) -> int:
        return len(self.input_ids)

    def dense_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[n, n]` bool, True = may attend: causal and not hidden (the server's dense form)."""
        segments = [ExtendSegment(q, len(self), ((lo, hi),)) for q, lo, hi in self.hidden_spans]
        return segments_to_dense(segments, prefix_len=0, extend_len=len(self), device=device)

    def to_row(self) -> dict[str, Any]:
        """A dataset/JSONL row (positions are 0..n-1: not stored)."""
        return {
            "input_ids": list(self.input_ids),
            "labels": list(self.labels),
            "hidden_spans": [list(s) for s in self.hidden_spans],
        }


# --------------------------------------------------------------------------- features


def resolve_spec(spec: MementoSpec | MementoConfig | None = None, tokenizer: Any = None) -> MementoSpec:
    """A spec as the server resolves it: a config (default `DEFAULT_CONFIG`) against the tokenizer."""
    if isinstance(spec, MementoSpec):
        return spec
    if tokenizer is None:
        raise ValueError("resolving a Memento config needs the tokenizer (or pass a MementoSpec)")
    config = DEFAULT_CONFIG if spec is None else spec
    return config.resolve(tokenizer_vocab(tokenizer), len(tokenizer), tokenizer_encoder(tokenizer))


def hidden_spans(ids: Sequence[int], spec: MementoSpec, *, strict: bool = True) -> list[Span]:
    """The runtime's decisions for `ids` prefilled at once, as `(query_from, key_lo, key_hi)`.

    `strict`: refuse a sequence the tracker reads as malformed (a stray delimiter, a block
    left open), which would train on a structure the server does not evict.
    """
    if not spec.config.enable:
        return []  # Stage 1: full causal attention
    seq = MementoSequence(spec, ids, evict_prompt_blocks=True)
    if strict:
        _refuse_malformed(seq)
    segments = extend_segments(seq.due_evictions(), prefix_len=0, extend_len=len(ids))
    return [] if segments is None else _spans(segments)


def _refuse_malformed(seq: MementoSequence) -> None:
    tracker = seq.tracker
    if tracker.anomalies:
        described = ", ".join(f"{a.kind.value} at {a.position}" for a in tracker.anomalies[:3])
        raise ValueError(f"malformed Memento structure: {described}")
    if tracker.phase in (Phase.IN_BLOCK, Phase.AWAIT_SUMMARY, Phase.IN_SUMMARY):
        raise ValueError("the sequence ends inside a block or memento")


def _spans(segments: list[ExtendSegment]) -> list[Span]:
    """Each hidden range once, from the first segment (row) that stops seeing it."""
    out: list[Span] = []
    seen: set[tuple[int, int]] = set()
    for seg in segments:
        for lo, hi in seg.hidden:
            if (lo, hi) not in seen:
                seen.add((lo, hi))
                out.append((seg.row_start, lo, hi))
    return out


def training_features(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    spec: MementoSpec | MementoConfig | None = None,
    *,
    tokenizer: Any = None,
    strict: bool = True,
) -> TrainingFeatures:
    """Features of prompt + completion; loss on the completion only (paper §4).

    `spec`: a resolved spec, or a config resolved against `tokenizer` (default: the
    server's `DEFAULT_CONFIG`); a config with `enable=False` gives plain causal attention.
    """
    resolved = resolve_spec(spec, tokenizer)
    ids = [*prompt_ids, *completion_ids]
    return TrainingFeatures(
        input_ids=ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids),
        position_ids=list(range(len(ids))),
        hidden_spans=hidden_spans(ids, resolved, strict=strict),
    )


def example_features(
    example: MementoExample,
    spec: MementoSpec | MementoConfig | None = None,
    *,
    tokenizer: Any = None,
    strict: bool = True,
) -> TrainingFeatures:
    """`training_features` of an assembled example."""
    return training_features(
        example.prompt_ids, example.completion_ids, spec, tokenizer=tokenizer, strict=strict
    )


def features_from_row(row: Mapping[str, Any]) -> TrainingFeatures:
    """Rebuild features from a dataset / JSONL row (`TrainingFeatures.to_row`)."""
    ids = list(row["input_ids"])
    positions = row.get("position_ids")
    return TrainingFeatures(
        input_ids=ids,
        labels=list(row["labels"]),
        position_ids=list(range(len(ids))) if positions is None else list(positions),
        hidden_spans=[(int(q), int(lo), int(hi)) for q, lo, hi in row.get("hidden_spans") or ()],
    )


# --------------------------------------------------------------------------- collator


@dataclass
class MementoCollator:
    """`data_collator` for HF `Trainer`: right-pads a batch and builds its 4D Memento mask.

    Returns `input_ids`, `labels` (padded with -100), `position_ids` (padded with 0) and
    `attention_mask` `[batch, 1, T, T]`: additive float in `mask_dtype` (0 = attend, dtype
    min = hidden), or bool (True = attend) with `mask_dtype=torch.bool`, which only SDPA
    reads. No query sees a padding key; padding queries see the real keys (no empty rows).
    """

    tokenizer: Any = None
    pad_token_id: int | None = None
    mask_dtype: torch.dtype = torch.float32
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_token_id is None and self.tokenizer is not None:
            tok = self.tokenizer
            self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("MementoCollator needs pad_token_id or a tokenizer with a pad or eos token")

    def __call__(self, batch: Sequence[TrainingFeatures | Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        features = [f if isinstance(f, TrainingFeatures) else features_from_row(f) for f in batch]
        if not features:
            raise ValueError("an empty batch")
        width = self._width(max(len(f) for f in features))
        pad = int(self.pad_token_id)  # type: ignore[arg-type]  # set in __post_init__
        return {
            "input_ids": _padded([f.input_ids for f in features], width, pad),
            "labels": _padded([f.labels for f in features], width, IGNORE_INDEX),
            "position_ids": _padded([f.position_ids for f in features], width, 0),
            "attention_mask": self._mask(features, width),
        }

    def _width(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        return longest if not multiple else -(-longest // multiple) * multiple

    def _mask(self, features: list[TrainingFeatures], width: int) -> torch.Tensor:
        allowed = torch.zeros(len(features), 1, width, width, dtype=torch.bool)
        for i, f in enumerate(features):
            n = len(f)
            allowed[i, 0, :n, :n] = f.dense_mask()
            allowed[i, 0, n:, :n] = True  # padding queries: ignored by the loss, never all-masked
        if self.mask_dtype == torch.bool:
            return allowed
        additive = torch.zeros(allowed.shape, dtype=self.mask_dtype)
        return additive.masked_fill_(~allowed, torch.finfo(self.mask_dtype).min)


def _padded(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


# ------------------------------------------------------------------------ persistence


def write_jsonl(items: Iterable[MementoExample | TrainingFeatures], path: str | Path) -> int:
    """Write examples (all fields) or features (`to_row`, compact spans), one per line;
    return the count. Read back with `MementoExample.model_validate_json(line)` or
    `features_from_row(json.loads(line))`."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for item in items:
            if isinstance(item, MementoExample):
                fh.write(item.model_dump_json())
            elif isinstance(item, TrainingFeatures):
                fh.write(json.dumps(item.to_row()))
            else:
                raise TypeError(f"cannot write {type(item).__name__} as a Memento JSONL row")
            fh.write("\n")
            count += 1
    return count


def dataset_features() -> datasets.Features:
    """The dataset schema: int32 ids/labels and `(query_from, key_lo, key_hi)` triples."""
    from datasets import Features, List, Value

    return Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            "hidden_spans": List(List(Value("int32"), length=3)),
        }
    )


def to_dataset(features: Iterable[TrainingFeatures]) -> datasets.Dataset:
    """A `datasets.Dataset` of compact rows; persist with `ds.save_to_disk(dir)`, reload with
    `datasets.load_from_disk(dir)` and rebuild each row with `features_from_row`."""
    from datasets import Dataset

    return Dataset.from_list([f.to_row() for f in features], features=dataset_features())
