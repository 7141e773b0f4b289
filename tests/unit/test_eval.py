"""The evaluation harness offline: answer extraction and checking on every set, statistics."""

from __future__ import annotations

import json
import math

import pytest

from memento_sglang.eval.answers import extract_answer, math_equal
from memento_sglang.eval.problems import load_problems
from memento_sglang.eval.report import markdown, summarize
from memento_sglang.eval.stats import bootstrap, paired_difference, pass_at_k


@pytest.mark.parametrize(
    "text, rule, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "boxed", "\\frac{1}{2}"),
        ("<think>maybe \\boxed{3}</think> it is \\boxed{4}", "boxed", "4"),  # blocks never count
        ("<think>\\boxed{3}</think> no box here", "boxed", None),
        ("cut off \\boxed{12", "boxed", None),
        ("<answer> 17 </answer> then <answer>18</answer>", "answer_tag", "18"),
        ('reasoning {"x": 1} done {"answer": 7}', "json", "7"),
        ("no json {", "json", None),
        ("work\n\nAnswer: 42.\n", "last_line", "42"),
        ("", "last_line", None),
    ],
)
def test_extraction_rules(text, rule, expected):
    assert extract_answer(text, rule) == expected


def test_an_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown extraction rule"):
        extract_answer("x", "regex")


@pytest.mark.parametrize(
    "predicted, gold, equal",
    [
        ("\\frac{1}{2}", "1/2", True),
        ("0.5", "\\frac{1}{2}", True),
        ("x = 3", "3", True),
        ("4", "3", False),
        (None, "3", False),
        ("Blue", "blue", True),
        ("red", "blue", False),
    ],
)
def test_math_answers(predicted, gold, equal):
    assert math_equal(predicted, gold) is equal


@pytest.mark.parametrize("spec", ["rg:basic_arithmetic:4", "rg:gsm_symbolic:3", "rg:chain_sum:3"])
def test_reasoning_gym_tasks_score_with_their_own_checker(spec):
    problems = load_problems(spec, seed=3)
    assert len(problems) == int(spec.rsplit(":", 1)[1])
    assert load_problems(spec, seed=3)[0].question == problems[0].question  # seeded
    for p in problems:
        assert p.score(p.answer) == 1.0
        assert p.score(None) == 0.0
        assert p.score(p.answer + "1") < 1.0  # another number


def test_champ_problems_score_with_math_verify():
    problems = load_problems("champ:5")
    assert len(problems) == 5 and all(p.id.startswith("champ/") for p in problems)
    for p in problems:
        assert p.question and p.score(p.answer) == 1.0
        assert p.score("123456789") == 0.0


def test_jsonl_problems(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"problem": "2+2?", "answer": "4", "id": "a"}) + "\n\n")
    (p,) = load_problems(f"jsonl:{path}")
    assert (p.id, p.question, p.score("4"), p.score("5")) == ("a", "2+2?", 1.0, 0.0)
    path.write_text(json.dumps({"problem": "no answer"}) + "\n")
    with pytest.raises(ValueError, match="mine.jsonl:1"):
        load_problems(f"jsonl:{path}")
    with pytest.raises(ValueError, match="unknown problem set"):
        load_problems("gsm8k")


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_bootstrap_and_paired_difference():
    flat = bootstrap([0.5] * 10)
    assert (flat.mean, flat.low, flat.high) == (0.5, 0.5, 0.5)
    spread = bootstrap([0.0, 1.0] * 20, seed=1)
    assert spread.low < 0.5 < spread.high and spread == bootstrap([0.0, 1.0] * 20, seed=1)
    assert math.isnan(bootstrap([]).mean)
    diff = paired_difference({"a": 1.0, "b": 0.0, "c": 1.0}, {"a": 0.0, "b": 0.0, "d": 1.0})
    assert diff.mean == pytest.approx(0.5)  # problems a and b only


def record(pid, mode, correct, peak, k=0):
    return {"problem_id": pid, "mode": mode, "sample": k, "correct": correct, "score": float(correct),
            "output_tokens": 10, "blocks": 2, "peak_kv": peak, "kv_area": 5 * peak,
            "seconds": 0.1}  # fmt: skip


def test_summary_by_hand():
    records = [
        record("p1", "memento", True, 50), record("p1", "memento", False, 50, 1),
        record("p2", "memento", True, 40), record("p2", "memento", True, 40, 1),
        record("p1", "no_eviction", True, 100), record("p1", "no_eviction", True, 100, 1),
        record("p2", "no_eviction", True, 100), record("p2", "no_eviction", False, 100, 1),
    ]  # fmt: skip
    summary = summarize(records, ["memento", "no_eviction"])
    mem = summary["modes"]["memento"]
    assert mem["pass@1"] == pytest.approx(0.75) and mem["pass@2"] == pytest.approx(1.0)
    assert mem["peak_kv"] == 45 and mem["peak_kv_vs_reference"] == pytest.approx(0.45)
    assert summary["paired"]["memento - no_eviction"]["mean"] == pytest.approx(0.0)
    table = markdown(summary)
    assert "| memento | 2 | 4 | 75.0%" in table and "0.45x" in table
