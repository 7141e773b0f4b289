"""The house rules that code review alone would let slip.

- SGLang's internals (private names, the engine's event loop and tokenizer manager, the
  interpreter's `StreamExecutor`, its log lines) are touched only in `sglang_plugin/`.
- The front end depends on the plugin, never the other way round; no import cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "memento_sglang" / "sglang_plugin"
SGLANG_INTERNALS = re.compile(
    r"\bengine\.loop\b|\btokenizer_manager\b|\bStreamExecutor\b|from sglang[\w.]* import \(?\s*_\w"
    r"|\"Decode batch"
)


def _modules() -> dict[str, Path]:
    """Every module of the package by import name (`frontend/`, `kernels/` mapped in)."""
    folders = {"memento_sglang": ROOT / "memento_sglang", "memento_sglang.frontend": ROOT / "frontend",
               "memento_sglang.kernels": ROOT / "kernels"}  # fmt: skip
    modules = {}
    for package, folder in folders.items():
        for path in folder.rglob("*.py"):
            if "_cpu_stubs" in path.parts:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # importing a submodule runs its parent packages first: not a dependency of interest
    return {name: {t for t in deps if not name.startswith(t + ".")} for name, deps in graph.items()}


def test_sglang_internals_are_touched_only_in_the_plugin():
    offenders = []
    for folder in ("memento_sglang", "frontend", "kernels", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if PLUGIN in path.parents or "_cpu_stubs" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if SGLANG_INTERNALS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_plugin_never_imports_the_front_end():
    graph = _graph()
    back = {(m, t) for m, deps in graph.items() if m.startswith("memento_sglang.sglang_plugin")
            for t in deps if t.startswith("memento_sglang.frontend")}  # fmt: skip
    assert not back


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_graph_sees_real_imports():
    """The checks above would pass vacuously on an empty graph."""
    graph = _graph()
    assert "memento_sglang.sglang_plugin.runtime" in graph["memento_sglang.sglang_plugin.hooks"]
    assert "memento_sglang.sglang_plugin.interpreter" in graph["memento_sglang.frontend.dsl"]
    assert "memento_sglang.spans" in graph["memento_sglang.sequence"]
