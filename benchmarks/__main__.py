"""One entry point for every benchmark: `python benchmarks NAME [ARGS]`.

Each benchmark starts its own CPU server(s) on the embedded tiny model, shows
progress, writes JSON under `artifacts/` (`--out`) and prints a table.

    python benchmarks                      # list them
    python benchmarks kv_profile --scale 0.1
    python benchmarks throughput --help
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    path.stem: (path.read_text().split('"""')[1].strip().splitlines() or [""])[0]
    for path in sorted(HERE.glob("[a-z]*.py"))
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(__doc__)
        for name, summary in BENCHMARKS.items():
            print(f"  {name:<22} {summary}")
        sys.exit(0 if len(sys.argv) < 2 else 2)
    name = sys.argv[1]
    sys.argv = [str(HERE / f"{name}.py"), *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
