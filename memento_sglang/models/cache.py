"""Where built models live, and how a build is published without a half-written folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    """`$MEMENTO_SGLANG_HOME` or `~/.cache/memento-sglang`."""
    root = os.environ.get("MEMENTO_SGLANG_HOME")
    return Path(root) if root else Path.home() / ".cache" / "memento-sglang"


def publish_atomically(dest: Path, fill: Callable[[Path], None], *, complete: Callable[[Path], bool]) -> Path:
    """Build into a temp folder beside `dest`, then rename it into place: a reader never
    sees half a model, and a concurrent builder that wins the race (its copy `complete`)
    leaves the same result."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
