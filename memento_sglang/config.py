"""Memento configuration: the reference overlay's options, validated strictly.

`MementoConfig` is what users write (server-wide JSON or per request in
`sampling_params.custom_params["memento"]`); `MementoSpec` is the same thing with
every delimiter resolved to a token id against a concrete vocabulary. Nothing here
imports SGLang, so it is usable from any process and from tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memento_sglang.constants import (
    BLOCK_END,
    BLOCK_START,
    CHATML_TOKENS,
    END_THINK,
    SUMMARY_END,
    SUMMARY_START,
)

#: Key under which a request carries its overrides in `sampling_params.custom_params`.
CUSTOM_PARAMS_KEY = "memento"


class MementoConfigError(ValueError):
    """A Memento configuration (server-wide or per request) is invalid."""


TokenRef = str | int


#: options that shape the whole server's batches, so a request cannot override them
SERVER_WIDE_OPTIONS = frozenset({"prefill_mask_budget", "admission_margin_sigmas"})


class MementoConfig(BaseModel):
    """Options of a Memento run, with the reference (vLLM overlay) semantics.

    `keep_last_n_blocks`: -1 never evicts, 0 evicts each block when its memento
    closes, N > 0 keeps the N most recent summarised blocks visible.
    `mask_delimiters`: True evicts `<|block_start|> ... <|block_end|>` inclusive
    (Phi-style), False only the content between them (Qwen3-style); required when
    enabled because the right choice depends on how the model was trained.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    enable: bool = False
    keep_last_n_blocks: int = Field(default=0, ge=-1)
    mask_delimiters: bool | None = None
    compact_on_summary_end: bool = True
    require_assistant_section: bool = True
    keep_last_block_for_answer: bool = False
    max_block_tokens: int = Field(default=0, ge=0)
    restart_mode: bool = False
    #: admission reserves what the request can still hold live (mementos + open block),
    #: learned from blocks closed on the server, instead of its whole max_new_tokens
    admission_estimate: bool = True
    #: server-wide: the running batch's open blocks are reserved at their expected length
    #: plus this many standard deviations of their sum (never more than the p95 bound);
    #: null reserves the bound itself (no bet, no retraction while traces keep to it)
    admission_margin_sigmas: float | None = Field(default=3.0, ge=0.0)
    #: server-wide: the most (query, key) mask entries one masked prefill batch may build;
    #: longer masked prompts are prefilled in smaller chunks (int32 kernel offsets, memory)
    prefill_mask_budget: int = Field(default=1 << 28, ge=1, le=(1 << 31) - 1)
    debug: bool = False

    block_start_token: TokenRef = BLOCK_START
    block_end_token: TokenRef = BLOCK_END
    summary_start_token: TokenRef = SUMMARY_START
    summary_end_token: TokenRef = SUMMARY_END
    think_end_token: TokenRef = END_THINK
    im_start_token: TokenRef = CHATML_TOKENS[0]
    #: the assistant role after `im_start_token`: one token, a list of tokens, or a string the
    #: tokenizer splits (SmolLM2's "ass" + "istant"), matched as a sequence
    assistant_token: TokenRef | list[TokenRef] = "assistant"

    @model_validator(mode="after")
    def _check_combinations(self) -> MementoConfig:
        if self.enable and self.mask_delimiters is None:
            raise ValueError(
                "mask_delimiters is required when Memento is enabled: true evicts the "
                "delimiters with the block (Phi-style), false keeps them (Qwen3-style)"
            )
        if self.keep_last_block_for_answer and self.keep_last_n_blocks != 0:
            raise ValueError("keep_last_block_for_answer only applies with keep_last_n_blocks=0")
        if self.restart_mode and (self.keep_last_n_blocks != 0 or self.keep_last_block_for_answer):
            raise ValueError(
                "restart_mode recomputes each memento as its block leaves; it needs "
                "keep_last_n_blocks=0 and no keep_last_block_for_answer"
            )
        return self

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, raw: str | Mapping[str, Any] | MementoConfig | None) -> MementoConfig:
        """Parse a JSON string or mapping; raise `MementoConfigError` naming what is wrong."""
        if raw is None:
            return cls()
        if isinstance(raw, MementoConfig):
            return raw
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise MementoConfigError(f"Memento config is not valid JSON: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise MementoConfigError(f"Memento config must be a JSON object, got {type(raw).__name__}")
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            raise MementoConfigError(_describe(exc)) from None

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> MementoConfig:
        """This config with a request's overrides applied (validated as a whole)."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise MementoConfigError(
                f"custom_params[{CUSTOM_PARAMS_KEY!r}] must be an object, got {type(overrides).__name__}"
            )
        if server_wide := sorted(SERVER_WIDE_OPTIONS & overrides.keys()):
            raise MementoConfigError(
                f"{', '.join(server_wide)} is server-wide: set it in --memento-config, not per request"
            )
        return MementoConfig.parse({**self.model_dump(exclude_unset=True), **overrides})

    # --------------------------------------------------------------- resolving

    def resolve(
        self, vocab: Mapping[str, int], vocab_size: int, encode: Callable[[str], list[int]] | None = None
    ) -> MementoSpec:
        """Resolve token strings/ids against a vocabulary; missing tokens are errors.

        `encode` (the tokenizer, no special tokens) lets an `assistant_token` string that
        is not one token resolve to the sequence the tokenizer writes for it.
        """

        def tid(field: str) -> int:
            ref = getattr(self, field)
            if isinstance(ref, int):
                if not 0 <= ref < vocab_size:
                    raise MementoConfigError(f"{field}={ref} is outside the vocabulary (size {vocab_size})")
                return ref
            if ref not in vocab:
                raise MementoConfigError(
                    f"{field}={ref!r} is not a single token of this tokenizer's vocabulary"
                )
            return vocab[ref]

        def role() -> tuple[int, ...]:
            ref = self.assistant_token
            if isinstance(ref, list):
                if not ref:
                    raise MementoConfigError("assistant_token must not be an empty list")
                return tuple(_resolved(item) for item in ref)
            if isinstance(ref, str) and ref not in vocab and encode is not None:
                pieces = [t for t in encode(ref) if 0 <= t < vocab_size]
                if pieces and len(pieces) <= 4:
                    return tuple(pieces)
            return (tid("assistant_token"),)

        def _resolved(item: TokenRef) -> int:
            if isinstance(item, int) and 0 <= item < vocab_size:
                return item
            if isinstance(item, str) and item in vocab:
                return vocab[item]
            raise MementoConfigError(f"assistant_token entry {item!r} is not a token of this vocabulary")

        ids = MementoTokenIds(
            block_start=tid("block_start_token"),
            block_end=tid("block_end_token"),
            summary_start=tid("summary_start_token"),
            summary_end=tid("summary_end_token"),
            think_end=tid("think_end_token"),
            im_start=tid("im_start_token") if self.require_assistant_section else None,
            assistant=role() if self.require_assistant_section else None,
        )
        delimiters = [ids.block_start, ids.block_end, ids.summary_start, ids.summary_end]
        if len(set(delimiters)) != 4 or ids.think_end in delimiters:
            raise MementoConfigError(f"Memento delimiter tokens must be distinct ids: {ids}")
        return MementoSpec(config=self, ids=ids)


@dataclass(frozen=True, slots=True)
class MementoTokenIds:
    """Token ids the block tracker reacts to."""

    block_start: int
    block_end: int
    summary_start: int
    summary_end: int
    think_end: int
    im_start: int | None = None
    #: the assistant role's token sequence, right after `im_start` (one token of slack)
    assistant: tuple[int, ...] | None = None

    @property
    def delimiters(self) -> tuple[int, int, int, int]:
        return (self.block_start, self.block_end, self.summary_start, self.summary_end)


@dataclass(frozen=True, slots=True)
class MementoSpec:
    """A validated config with resolved ids: everything a request's tracker needs."""

    config: MementoConfig
    ids: MementoTokenIds

    # Options that change which tokens a query sees, hence what cached KV means.
    _VISIBILITY_FIELDS = (
        "keep_last_n_blocks", "mask_delimiters", "compact_on_summary_end",
        "require_assistant_section", "keep_last_block_for_answer", "restart_mode",
    )  # fmt: skip

    def kv_namespace(self, *, masked_prefill: bool) -> str:
        """A radix-cache namespace: requests share KV only under the same visibility rule."""
        fields = {name: getattr(self.config, name) for name in self._VISIBILITY_FIELDS}
        fields.update(ids=asdict(self.ids), masked_prefill=masked_prefill)
        digest = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=8).hexdigest()
        return f"memento:{digest}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "invalid Memento config: " + "; ".join(parts)
