"""Token-level structural tags must not go through xgrammar's compiler cache.

xgrammar 0.2.7's compiler cache mixes up token-level structural tags of different
shapes (SGLang says so itself, and compiles its own framed grammars uncached). For
Memento tags this showed up as a mask that allowed `<|summary_start|>` where only
`<|summary_end|>` was legal, after other tags with the same budgets were compiled.
The compiler below sends such tags to an uncached compiler; everything else keeps
the cache. SGLang's own grammar cache (by key string) still avoids recompiling an
identical tag.
"""

from __future__ import annotations

from typing import Any

_TOKEN_LEVEL_MARKERS = ('"any_tokens"', '"token"', '"exclude_tokens"')


def is_token_level(tag: Any) -> bool:
    text = tag if isinstance(tag, str) else str(tag)
    return any(marker in text for marker in _TOKEN_LEVEL_MARKERS)


class TokenTagSafeCompiler:
    """Drop-in for `xgrammar.GrammarCompiler`: uncached for token-level structural tags."""

    def __init__(self, cached: Any, uncached: Any) -> None:
        self._cached = cached
        self._uncached = uncached

    def compile_structural_tag(self, tag: Any, *args: Any, **kwargs: Any) -> Any:
        compiler = self._uncached if is_token_level(tag) else self._cached
        return compiler.compile_structural_tag(tag, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cached, name)


def install(backend: Any) -> None:
    """Wrap an `XGrammarGrammarBackend`'s compiler (idempotent)."""
    if not isinstance(backend.grammar_compiler, TokenTagSafeCompiler):
        uncached = backend._new_framing_compiler(backend._tokenizer_info)
        backend.grammar_compiler = TokenTagSafeCompiler(backend.grammar_compiler, uncached)
