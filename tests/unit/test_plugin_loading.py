"""The plugin refuses an unsupported SGLang or a missing hook target, whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from memento_sglang.cpu import cpu_environment


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env=cpu_environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get("memento") == "memento_sglang.sglang_plugin:load"


REFUSALS = {
    "unsupported-version": (
        'plugin.version = lambda name: "0.5.99"',
        "REFUSED: memento-sglang: SGLang 0.5.99 is not supported",
    ),
    "missing-hook-target": (
        """bogus = hooks.HookSpec("sglang.srt.managers.scheduler.Scheduler.no_such_method",
                        hooks.compact_before_decode, hooks.HookType.BEFORE)
hooks.HOOKS = hooks.HOOKS + (bogus,)""",
        "Scheduler.no_such_method does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_stops_before_registering_anything(tmp_path, case):
    sabotage, message = REFUSALS[case]
    script = "\n".join([
        "import memento_sglang.sglang_plugin as plugin",
        "from memento_sglang.sglang_plugin import hooks",
        sabotage,
        "try:",
        "    plugin.load()",
        "except SystemExit as exc:",
        "    print('REFUSED:', exc)",
        "from sglang.srt.plugins.hook_registry import HookRegistry",
        "print('HOOKS:', len(HookRegistry._hooks))",
    ])  # fmt: skip
    done = run_python(script, tmp_path)
    assert message in done.stdout, done.stdout + done.stderr
    assert "HOOKS: 0" in done.stdout


def test_all_hooks_apply_on_this_sglang(tmp_path):
    done = run_python(
        """
        import memento_sglang.sglang_plugin as plugin
        from memento_sglang.sglang_plugin.hooks import HOOKS
        plugin.load()
        from sglang.srt.plugins.hook_registry import HookRegistry
        print("PATCHED:", sum(spec.target in HookRegistry._patched for spec in HOOKS), len(HOOKS))
        """,
        tmp_path,
    )
    n = done.stdout.split("PATCHED:")[-1].split()
    assert n[0] == n[1], done.stdout + done.stderr
