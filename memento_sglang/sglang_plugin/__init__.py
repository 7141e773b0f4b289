"""The SGLang plugin: the one place that touches SGLang internals.

SGLang loads `load()` through the `sglang.srt.plugins` entry point in every process
it starts (launcher, scheduler, detokenizer, `sgl.Engine`). `load()` checks the
SGLang version, resolves every hook target before registering anything (so an
incompatible SGLang is refused whole, never half-patched), registers the hooks and
applies them, then checks that each target really was replaced.

SGLang's plugin loader logs and swallows ordinary exceptions from plugins and from
hook application; a refusal here therefore raises `SystemExit`, which it does not
catch, so the process stops with our message instead of serving without Memento.
"""

from __future__ import annotations

import logging
import pkgutil
from importlib.metadata import version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memento_sglang.sglang_plugin.hooks import HookSpec

logger = logging.getLogger(__name__)

SUPPORTED_SGLANG_VERSION = "0.5.23"
_loaded = False


class MementoPluginError(SystemExit):
    """The plugin refuses to load; the message says why and how to proceed."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"memento-sglang: {reason}. To run stock SGLang without Memento, set "
            "SGLANG_PLUGINS to a list that does not include 'memento'."
        )


def load() -> None:
    """Entry point called by SGLang's `load_plugins()`; idempotent per process."""
    global _loaded
    if _loaded:
        return
    installed = version("sglang")
    if installed != SUPPORTED_SGLANG_VERSION:
        raise MementoPluginError(
            f"SGLang {installed} is not supported (this release targets {SUPPORTED_SGLANG_VERSION} exactly)"
        )
    from sglang.srt.plugins.hook_registry import HookRegistry

    from memento_sglang.sglang_plugin.hooks import HOOKS

    originals = {spec.target: _resolve(spec) for spec in HOOKS}

    for spec in HOOKS:
        HookRegistry.register(spec.target, spec.fn, spec.kind)
    _register_radix_cache()
    _register_reasoning_parser()
    HookRegistry.apply_hooks()
    not_applied = [t for t, orig in originals.items() if _current(t) is orig]
    if not_applied:
        raise MementoPluginError("hooks failed to apply to " + ", ".join(not_applied))
    _loaded = True
    logger.info("memento-sglang plugin loaded: %d hooks on SGLang %s", len(HOOKS), installed)


def _register_radix_cache() -> None:
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    from memento_sglang.sglang_plugin.radix_cache import BACKEND_NAME, factory

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, factory)


def _register_reasoning_parser() -> None:
    from memento_sglang.sglang_plugin.chat import register_reasoning_parser

    register_reasoning_parser()


def _resolve(spec: HookSpec) -> object:
    owner_path, attr = spec.target.rsplit(".", 1)
    try:
        owner = pkgutil.resolve_name(owner_path)
    except (ImportError, AttributeError) as exc:
        raise MementoPluginError(f"hook target {spec.target} cannot be imported: {exc}") from exc
    if not callable(getattr(owner, attr, None)):
        raise MementoPluginError(f"hook target {spec.target} does not exist in this SGLang")
    return _current(spec.target)


def _current(target: str) -> object:
    owner_path, attr = target.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_path)
    # class attributes are compared in the class's own namespace (None if inherited)
    return owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr)
