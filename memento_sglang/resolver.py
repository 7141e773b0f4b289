"""Per-request Memento configs: server defaults + request overrides, resolved once.

Used both where requests enter (the tokenizer manager: bad overrides become HTTP
400) and in the scheduler (attaching a `MementoSequence` to each request).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from memento_sglang.config import (
    CUSTOM_PARAMS_KEY,
    MementoConfig,
    MementoConfigError,
    MementoSpec,
)

#: Environment fallback for the server-wide config (any launch path).
CONFIG_ENV_VAR = "MEMENTO_SGLANG_CONFIG"


def server_config_text(explicit: str | None) -> str | None:
    """The server-wide config JSON: the flag/kwarg if given, else the env var."""
    return explicit if explicit is not None else os.environ.get(CONFIG_ENV_VAR)


class ConfigResolver:
    """Resolves request configs against one server config and one vocabulary."""

    def __init__(
        self,
        server_config: MementoConfig,
        vocab: Mapping[str, int],
        vocab_size: int,
        *,
        unsupported_reason: str | None = None,
        block_budget_unsupported_reason: str | None = None,
        restart_unsupported_reason: str | None = None,
        encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        self.server_config = server_config
        self._vocab = dict(vocab)
        self._vocab_size = vocab_size
        self._encode = encode
        self.unsupported_reason = unsupported_reason
        self.block_budget_unsupported_reason = block_budget_unsupported_reason
        self.restart_unsupported_reason = restart_unsupported_reason
        self._resolve_json = lru_cache(maxsize=256)(self._resolve_uncached)
        if server_config.enable:
            if unsupported_reason:
                raise MementoConfigError(f"Memento cannot run on this server: {unsupported_reason}")
            self.server_spec: MementoSpec | None = self._checked(server_config)
        else:
            self.server_spec = None

    def spec_for(self, custom_params: Mapping[str, Any] | None) -> MementoSpec | None:
        """The request's spec, or None when Memento is off for it; raises on bad input."""
        overrides = (custom_params or {}).get(CUSTOM_PARAMS_KEY)
        if overrides is None:
            return self.server_spec
        if not isinstance(overrides, Mapping):
            raise MementoConfigError(
                f"custom_params[{CUSTOM_PARAMS_KEY!r}] must be an object, got {type(overrides).__name__}"
            )
        return self._resolve_json(json.dumps(overrides, sort_keys=True))

    def _resolve_uncached(self, overrides_json: str) -> MementoSpec | None:
        config = self.server_config.with_overrides(json.loads(overrides_json))
        if not config.enable:
            return None
        if self.unsupported_reason:
            raise MementoConfigError(f"Memento cannot run on this server: {self.unsupported_reason}")
        return self._checked(config)

    def _checked(self, config: MementoConfig) -> MementoSpec:
        if config.max_block_tokens > 0 and self.block_budget_unsupported_reason:
            raise MementoConfigError(
                f"max_block_tokens is not available here: {self.block_budget_unsupported_reason}"
            )
        if config.restart_mode and self.restart_unsupported_reason:
            raise MementoConfigError(f"restart_mode is not available here: {self.restart_unsupported_reason}")
        return config.resolve(self._vocab, self._vocab_size, self._encode)


def tokenizer_encoder(tokenizer: Any) -> Callable[[str], list[int]] | None:
    """The tokenizer's encoding without special tokens (a multi-token role); None without one."""
    if tokenizer is None:
        return None
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_vocab(tokenizer: Any) -> dict[str, int]:
    """Vocabulary of an HF tokenizer (added tokens included); empty without one."""
    if tokenizer is None:
        return {}
    return dict(tokenizer.get_vocab())
