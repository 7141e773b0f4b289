"""One entry point for every benchmark: `python -m benchmarks NAME [ARGS]`, from the repository root.

Each benchmark starts its own CPU server(s) on the embedded tiny model, shows
progress, writes JSON under `artifacts/` (`--out`) and prints a table.

    python -m benchmarks                      # list them
    python -m benchmarks kv_profile --scale 0.1
    python -m benchmarks throughput --help
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.resources import files

import benchmarks


def _summary(name: str) -> str:
    """The first line of a benchmark's docstring, read without importing it (no torch, no server)."""
    text = files(benchmarks).joinpath(f"{name}.py").read_text()
    return (text.split('"""')[1].strip().splitlines() or [""])[0]


BENCHMARKS = {
    info.name: _summary(info.name)
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda info: info.name)
    if not info.name.startswith("_")
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(__doc__)
        for name, summary in BENCHMARKS.items():
            print(f"  {name:<22} {summary}")
        sys.exit(0 if len(sys.argv) < 2 else 2)
    name = sys.argv[1]
    sys.argv = [f"python -m benchmarks {name}", *sys.argv[2:]]  # argparse's `prog`
    importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main()
