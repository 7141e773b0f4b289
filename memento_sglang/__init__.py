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
    imported straight from a source checkout (repository root on `sys.path`, e.g.
    `python -m pytest`), the folders sit beside it instead, so the repository root
    joins this package's search path (they have no `__init__.py` and can never
    shadow the unrelated top-level `kernels` distribution that SGLang uses).
    """
    here = _Path(__file__).parent
    root = here.parent
    in_checkout = (root / "frontend").is_dir() and (root / "pyproject.toml").is_file()
    if in_checkout and not (here / "frontend").exists():
        __path__.append(str(root))  # noqa: F821 - module __path__


_map_source_checkout_folders()

from memento_sglang.config import MementoConfig, MementoConfigError  # noqa: E402
from memento_sglang.sequence import MementoStats  # noqa: E402

__all__ = ["MementoConfig", "MementoConfigError", "MementoStats", "__version__"]
