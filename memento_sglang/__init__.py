"""memento-sglang: Memento KV eviction for SGLang (block/memento reasoning models).

When a memento closes, the block it summarises leaves the KV cache; later tokens
see the prompt, the mementos and the open block at their logical RoPE positions.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"


def _map_source_checkout_folders() -> None:
    """Make top-level `frontend/` and `kernels/` importable as our subpackages.

    Installed builds map them with setuptools `package-dir`. When this package is
    imported from the checkout (`python -m pytest`, and the editable install, whose
    finder maps the package folder only), the folders sit beside it instead, so the
    repository root joins this package's search path (which also makes the root's other
    folders reachable as subpackages; nothing imports them that way). `kernels/` has no
    `__init__.py`, so it can never shadow the unrelated top-level `kernels` distribution
    that SGLang uses.
    """
    here = _Path(__file__).parent
    root = here.parent
    in_checkout = (root / "frontend").is_dir() and (root / "pyproject.toml").is_file()
    if in_checkout and not (here / "frontend").exists():
        __path__.append(str(root))  # noqa: F821 - module __path__


_map_source_checkout_folders()

from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from memento_sglang.config import MementoConfig, MementoConfigError
    from memento_sglang.engine import Engine
    from memento_sglang.frontend.trace import MementoTrace
    from memento_sglang.sequence import MementoStats

__all__ = ["Engine", "MementoConfig", "MementoConfigError", "MementoStats", "MementoTrace", "__version__"]


def __getattr__(name: str) -> Any:
    """The public names load on first use: the server's processes import this package for
    the plugin and need neither SGLang's engine nor the front end, and the kernels and the
    paging planner import with torch alone (a bare GPU image runs them)."""
    if name in ("MementoConfig", "MementoConfigError"):
        from memento_sglang import config

        return getattr(config, name)
    if name == "MementoStats":
        from memento_sglang.sequence import MementoStats

        return MementoStats
    if name == "Engine":
        from memento_sglang.engine import Engine

        return Engine
    if name == "MementoTrace":
        from memento_sglang.frontend.trace import MementoTrace

        return MementoTrace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
