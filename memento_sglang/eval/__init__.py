"""Accuracy and KV side by side: problem sets that work offline, Memento modes on one
server, answers checked, statistics and plots. `memento-sglang eval` is the command."""

from memento_sglang.eval.answers import RULES, extract_answer, math_equal
from memento_sglang.eval.problems import Problem, load_problems
from memento_sglang.eval.report import summarize, write_report
from memento_sglang.eval.runner import (
    MODES,
    EngineTarget,
    EvalSettings,
    HttpTarget,
    Sampling,
    Structure,
    run_eval,
)

__all__ = [
    "MODES",
    "RULES",
    "EngineTarget",
    "EvalSettings",
    "HttpTarget",
    "Problem",
    "Sampling",
    "Structure",
    "extract_answer",
    "load_problems",
    "math_equal",
    "run_eval",
    "summarize",
    "write_report",
]
