"""The LLM stages of the data pipeline without a model: windows, answer models and their grammars,
prompts, verdicts, the refine loop, retries, and the runner's checkpoint and resume."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from memento_sglang.data.assemble import MementoExample, QualityFilter
from memento_sglang.data.llm import (
    Answer,
    Ask,
    Call,
    CallStats,
    ChatFormat,
    LLMFailure,
    OpenAICompleter,
    OpenAITarget,
    Prompt,
    ServerTarget,
    SGLangCompleter,
    StructuredLLM,
    UnsupportedSchema,
    message_text,
    require,
    schema_regex,
    strip_fences,
    token_budget,
)
from memento_sglang.data.main import add_parser, config_from_args, parser
from memento_sglang.data.pipeline import Checkpoint, PipelineConfig, run_pipeline
from memento_sglang.data.score import (
    BoundaryScores,
    boundary_windows,
    pinned_to_zero,
    score_boundaries,
    scores_model,
    window_prompt,
)
from memento_sglang.data.summarize import (
    BlockSummary,
    Iteration,
    SummarizeSettings,
    memento_chars,
    memento_model,
    needs_refinement,
    summarize_blocks,
    to_ascii,
    verdict_model,
)
from memento_sglang.frontend.trace import MementoTrace

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cot_sample.jsonl"
VERDICT = verdict_model(2, 24, 40)


def verdict_json(score: int, missing: list[str] | None = None, feedback: str = "keep the formula") -> str:
    subs = {"formulas": 3, "values": 2, "method": 2, "validation": 1, "correctness": 1, "result_first": 1}
    return json.dumps({**subs, "score": score, "missing": missing or [], "feedback": feedback})


class FakeCompleter:
    """Answers by the answer model asked for; `judge` decides a verdict from the prompt."""

    description = "fake"

    def __init__(self, judge=None, broken: int = 0) -> None:
        self.rounds: list[list[Call]] = []
        self.judge = judge or (lambda call: 9)
        self.broken = broken  # the first `broken` rounds answer garbage

    def complete(self, calls):
        self.rounds.append(list(calls))
        if len(self.rounds) <= self.broken:
            return ["not json" for _ in calls]
        return [self.answer(c) for c in calls]

    def answer(self, call: Call) -> str:
        name = call.answer.__name__
        if name.startswith("BoundaryScores"):
            count = call.answer.model_json_schema()["properties"]["scores"]["maxItems"]
            return json.dumps({"scores": [(i % 3) + 1 for i in range(count)]})
        if name.startswith("Memento"):
            kind = "refined" if "PREVIOUS MEMENTO" in call.prompt.user else "first"
            return json.dumps({"memento": f"{kind}: x = 3; y = 4"})
        return verdict_json(self.judge(call))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------- windows


@pytest.mark.parametrize("n", [0, 1, 2, 3, 16, 17, 18, 33, 40, 100])
def test_windows_cover_every_boundary_once_and_are_balanced(n):
    windows = boundary_windows(n, 16)
    covered = [b for w in windows for b in w]
    assert covered == list(range(max(n - 1, 0)))
    assert all(1 <= len(w) <= 16 for w in windows)
    if windows:
        assert max(map(len, windows)) - min(map(len, windows)) <= 1
        assert len(windows) == -(-(n - 1) // 16)


def test_window_answer_model_takes_exactly_its_count():
    model = scores_model(5)
    assert model.model_validate_json('{"scores": [0, 1, 2, 3, 3]}').scores == [0, 1, 2, 3, 3]
    for bad in (
        '{"scores": [0, 1, 2, 3]}',
        '{"scores": [0, 1, 2, 3, 3, 0]}',
        '{"scores": [0, 1, 2, 3, 4]}',
        '{"scores": [0, 1, 2, 3, 3], "extra": 1}',
        '{"scores": [0, 1, 2, 3, "3"]}',
    ):
        with pytest.raises(ValidationError):
            model.model_validate_json(bad)
    schema = model.model_json_schema()["properties"]["scores"]
    assert schema["minItems"] == schema["maxItems"] == 5
    assert scores_model(5) is model  # one class (and one compiled grammar) per count


def test_window_prompt_marks_every_boundary_of_its_window():
    sentences = [f"Sentence {i} says something. " for i in range(40)]
    window = boundary_windows(40)[1]
    prompt = window_prompt(sentences, window)
    markers = re.findall(r"<<<B(\d+)>>>", prompt.user)
    assert [int(m) for m in markers] == list(range(1, len(window) + 1))
    shown = re.findall(r"Sentence (\d+)", prompt.user)
    assert [int(s) for s in shown] == list(range(window.start, window.stop + 1))
    assert f"exactly {len(window)} integers" in prompt.user
    assert "0 = inside one thought" in prompt.system and "Therefore" in prompt.system


def test_hard_rules_pin_boundaries_to_zero():
    assert pinned_to_zero("The total is:", "5 apples.")
    assert pinned_to_zero("x = ", "3 + 4.")
    assert pinned_to_zero("We found 7.", "Therefore the answer is 7.")
    assert pinned_to_zero("We found 7.", "So it works.")
    assert pinned_to_zero("Let's compute the sum.", "It is 12.")
    assert not pinned_to_zero("We found 7.", "Next, check the second case.")
    assert not pinned_to_zero("We found 7.", "Someone said so.")


def test_scores_come_back_per_boundary_in_one_round():
    completer = FakeCompleter()
    sentences = [f"Step {i} is done. " for i in range(20)] + ["Thus we stop."]
    stats = CallStats()
    result = score_boundaries(StructuredLLM(completer), sentences, stats=stats)
    assert isinstance(result, BoundaryScores)
    assert len(result.scores) == len(sentences) - 1
    assert result.windows == [(0, 10), (10, 10)]
    assert len(completer.rounds) == 1 and len(completer.rounds[0]) == 2
    assert result.pinned == [19] and result.scores[19] == 0.0
    assert all(s in (0.0, 1.0, 2.0, 3.0) for s in result.scores)
    assert stats.calls["score"] == 2 and stats.rounds["score"] == 1
    assert score_boundaries(StructuredLLM(completer), ["Only one sentence."]).scores == []


# -------------------------------------------------------------- schema -> regex


def test_regex_accepts_exactly_the_valid_documents():
    regex = re.compile(schema_regex(scores_model(3).model_json_schema()).regex)
    assert regex.fullmatch('{"scores":[1,2,3]}') and regex.fullmatch('{ "scores" : [ 1 , 2 , 3 ] }')
    for bad in (
        '{"scores":[1,2]}',
        '{"scores":[1,2,3,0]}',
        '{"scores":[1,2,4]}',
        '{"scores":[1,2,3]}  ',
        '{"scores":[1,2,3],"x":1}',
        '{  "scores":[1,2,3]}',
    ):
        assert not regex.fullmatch(bad), bad


def test_verdict_regex_bounds_strings_and_lists():
    constraint = schema_regex(VERDICT.model_json_schema())
    regex = re.compile(constraint.regex)
    good = VERDICT.model_validate_json(verdict_json(7, ["the product 391"]))
    assert regex.fullmatch(good.model_dump_json())
    assert not regex.fullmatch(verdict_json(7, ["a", "b", "c"]))  # three items, two allowed
    assert not regex.fullmatch(verdict_json(7, feedback="x" * 41))
    assert not regex.fullmatch(verdict_json(11))
    assert not regex.fullmatch(verdict_json(7, feedback="caf\u00e9"))  # ASCII only
    fields = [
        ("formulas", "3"),
        ("values", "2"),
        ("method", "2"),
        ("validation", "1"),
        ("correctness", "1"),
        ("result_first", "1"),
        ("score", "10"),
        ("missing", "[ " + " , ".join(['"' + '\\"' * 24 + '"'] * 2) + " ]"),
        ("feedback", '"' + "\\n" * 40 + '"'),
    ]
    longest = "{ " + " , ".join(f'"{k}" : {v}' for k, v in fields) + " }"  # every optional space taken
    assert regex.fullmatch(longest) and len(longest) == constraint.max_chars
    assert VERDICT.model_validate_json(longest).missing == ['"' * 24] * 2
    assert token_budget(VERDICT) == constraint.max_chars + 16
    unbounded = schema_regex(VERDICT.model_json_schema(), bounded_strings=False).regex
    assert "{0,40}" not in unbounded and re.fullmatch(unbounded, verdict_json(7, feedback="x" * 500))


def test_regex_refuses_schemas_it_cannot_bound():
    from pydantic import BaseModel, ConfigDict

    class Free(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str

    class Open(BaseModel):
        text: str

    with pytest.raises(UnsupportedSchema, match="maxLength"):
        schema_regex(Free.model_json_schema())
    with pytest.raises(UnsupportedSchema, match="additionalProperties"):
        schema_regex(Open.model_json_schema())


def _answer_models():
    return [scores_model(1), scores_model(16), memento_model(320), VERDICT]


def test_every_grammar_backend_takes_the_answer_models(tokenizer):
    """xgrammar, llguidance and outlines compile the regexes and schemas SGLang would get, and
    enforce the exact score count; SGLang's own schema checks accept the schemas."""
    import llguidance
    import llguidance.hf
    import xgrammar as xgr
    from outlines.fsm.guide import RegexGuide
    from outlines.models.transformers import TransformerTokenizer
    from sglang.srt.constrained.json_schema_validation import (
        validate_outlines_json_schema,
        validate_xgrammar_json_schema,
    )

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer)))
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    outlines_tokenizer = TransformerTokenizer(tokenizer)
    for model in _answer_models():
        schema = model.model_json_schema()
        validate_xgrammar_json_schema(schema)
        validate_outlines_json_schema(schema)
        bounded = schema_regex(schema).regex
        compiler.compile_regex(bounded)
        compiler.compile_json_schema(json.dumps(schema))
        for kind, grammar in (("regex", bounded), ("json_schema", json.dumps(schema))):
            m = llguidance.LLMatcher(ll_tokenizer, llguidance.grammar_from(kind, grammar))
            assert not m.is_error(), m.get_error()
        RegexGuide.from_regex(schema_regex(schema, bounded_strings=False).regex, outlines_tokenizer)

    model = scores_model(3)
    for grammar in (
        compiler.compile_regex(schema_regex(model.model_json_schema()).regex),
        compiler.compile_json_schema(json.dumps(model.model_json_schema())),
    ):
        for doc, ok in (
            ('{"scores": [1, 2, 3]}', True),
            ('{"scores": [1, 2, 3, 0]}', False),
            ('{"scores": [1, 2]}', False),
        ):
            matcher = xgr.GrammarMatcher(grammar)
            assert (matcher.accept_string(doc) and matcher.is_completed()) == ok, doc


# ----------------------------------------------------------------- asks and retries


def test_invalid_answers_are_asked_again_then_reported():
    completer = FakeCompleter(broken=1)
    llm = StructuredLLM(completer, max_attempts=2, temperature=0.0, retry_temperature=0.5)
    stats = CallStats()
    answers = llm.ask([Ask(Prompt("s", "u"), scores_model(2))] * 3, stage="score", stats=stats)
    assert all(a.ok and a.attempts == 2 for a in answers)
    assert [c.temperature for c in completer.rounds[1]] == [0.5] * 3
    assert stats.calls["score"] == 6 and stats.invalid["score"] == 3 and stats.rounds["score"] == 2

    failing = StructuredLLM(FakeCompleter(broken=5), max_attempts=3)
    answers = failing.ask([Ask(Prompt("s", "u"), scores_model(2))], stage="score")
    assert not answers[0].ok and answers[0].attempts == 3 and len(answers[0].errors) == 3
    with pytest.raises(LLMFailure, match="score: 1 of 1 calls gave no valid answer after 3 attempts"):
        require(answers, "score")


def test_transport_errors_count_as_attempts():
    class Down(FakeCompleter):
        def complete(self, calls):
            self.rounds.append(list(calls))
            return [ConnectionError("refused") for _ in calls]

    answers = StructuredLLM(Down(), max_attempts=2, retry_backoff_s=0).ask(
        [Ask(Prompt("s", "u"), scores_model(1))], stage="score"
    )
    assert answers[0].errors == ["ConnectionError: refused"] * 2


def test_fences_and_reasoning_fields_are_read():
    assert strip_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fences(' {"a": 1} ') == '{"a": 1}'
    assert message_text({"content": "", "reasoning_content": "{}"}) == "{}"
    assert message_text({"content": "[]", "reasoning_content": "x"}) == "[]"


def test_request_shapes_of_the_three_targets(tokenizer):
    call = Call(Prompt("sys", "user"), scores_model(2), 0.3)
    chat = ChatFormat(tokenizer)
    sgl_regex = SGLangCompleter(None, chat).arguments(call)
    assert sgl_regex["prompt"].startswith("<|im_start|>system\nsys") and sgl_regex["prompt"].endswith(
        "<|im_start|>assistant\n<think></think>"
    )
    assert sgl_regex["max_tokens"] == token_budget(scores_model(2)) and "json_schema" not in sgl_regex
    memento = Call(Prompt("s", "u"), memento_model(128), 0.0)
    assert "{1,128}" in SGLangCompleter(None, chat).arguments(memento)["regex"]
    assert (
        "{1,128}" not in SGLangCompleter(None, chat, grammar_backend="outlines").arguments(memento)["regex"]
    )
    schema_args = SGLangCompleter(None, chat, constraint="json_schema").arguments(call)
    assert json.loads(schema_args["json_schema"]) == scores_model(2).model_json_schema()

    body = OpenAICompleter("http://x/v1", "m", extra_body={"seed": 1}).body(call)
    assert body["messages"] == call.prompt.messages() and body["seed"] == 1
    assert body["response_format"]["json_schema"]["schema"] == scores_model(2).model_json_schema()
    assert body["response_format"]["json_schema"]["strict"] is False and "regex" not in body
    regex_body = OpenAICompleter("http://x/v1", "m", constraint="regex").body(call)
    assert "response_format" not in regex_body and regex_body["regex"]


# ------------------------------------------------------------- mementos and verdicts


def test_verdicts_parse_with_their_caps():
    verdict = VERDICT.model_validate_json(verdict_json(6, ["x_1 = 2"], "add the value of x_1"))
    assert verdict.score == 6 and verdict.missing == ["x_1 = 2"]
    assert verdict.subscores() == {
        "formulas": 3,
        "values": 2,
        "method": 2,
        "validation": 1,
        "correctness": 1,
        "result_first": 1,
    }
    for bad in (
        verdict_json(11),
        verdict_json(6, ["a", "b", "c"]),
        verdict_json(6, ["y" * 25]),
        verdict_json(6, feedback="z" * 41),
        verdict_json(6)[:-1] + ', "extra": 1}',
    ):
        with pytest.raises(ValidationError):
            VERDICT.model_validate_json(bad)


def test_memento_answers_refuse_structure_and_emptiness():
    model = memento_model(64)
    assert model.model_validate_json('{"memento": "x = 2; y: 3"}').memento == "x = 2; y: 3"
    for bad in (
        '{"memento": "   "}',
        '{"memento": "a <|block_end|> b"}',
        '{"memento": "</think>"}',
        '{"memento": "' + "x" * 65 + '"}',
    ):
        with pytest.raises(ValidationError):
            model.model_validate_json(bad)
    assert memento_chars("x" * 1000, SummarizeSettings()) == 320
    assert memento_chars("short", SummarizeSettings()) == 128
    assert to_ascii("x \u2265 3 \u00d7 \u03c0, caf\u00e9 \u2192 ok") == "x >= 3 * pi, cafe -> ok"


def _iteration(i: int, score: int) -> Iteration:
    return Iteration(
        iteration=i,
        kind="compress" if i == 1 else "refine",
        memento=f"m{i}",
        memento_tokens=i,
        compression_ratio=0.1 * i,
        score=score,
        subscores={},
        missing=[],
        feedback="",
        non_ascii=0,
    )


def test_refine_selection_and_the_best_memento():
    summaries = [BlockSummary(block_index=i, block_tokens=100) for i in range(3)]
    summaries[0].iterations = [_iteration(1, 9)]
    summaries[1].iterations = [_iteration(1, 7)]
    summaries[2].iterations = [_iteration(1, 8)]
    assert needs_refinement(summaries, 8.0) == [1]
    summaries[1].iterations.append(_iteration(2, 6))  # the refinement got worse: the first one stays
    summaries[1].choose()
    assert summaries[1].memento == "m1" and summaries[1].final_iteration == 1 and summaries[1].score == 7
    summaries[2].iterations.append(_iteration(2, 8))  # a tie: the later one
    summaries[2].choose()
    assert summaries[2].final_iteration == 2


def test_the_loop_refines_only_low_blocks_in_batched_rounds(tokenizer):
    blocks = ["First block: 17 * 23 = 391. ", "Second block: 391 + 45 = 436. ", "Third: 436 - 8 = 428."]

    def judge(call: Call) -> int:
        if "Second block" in call.prompt.user:
            return 9 if "refined" in call.prompt.user.split("MEMENTO TO GRADE:")[1] else 5
        return 9

    completer = FakeCompleter(judge=judge)
    stats = CallStats()
    out = summarize_blocks(
        StructuredLLM(completer),
        problem="Compute 17*23+45-8.",
        blocks=blocks,
        count_tokens=lambda t: len(tokenizer.encode(t)),
        stats=stats,
        settings=SummarizeSettings(
            max_iterations=2, feedback_chars=40, missing_items=2, missing_item_chars=24
        ),
    )
    assert [len(s.iterations) for s in out] == [1, 2, 1]
    assert [len(r) for r in completer.rounds] == [3, 3, 1, 1]  # compress, judge, refine, judge
    assert out[1].memento.startswith("refined") and out[1].score == 9 and out[0].memento.startswith("first")
    refine_prompt = completer.rounds[2][0].prompt.user
    assert "PREVIOUS MEMENTO (scored 5/10)" in refine_prompt and "[1] first: x = 3; y = 4" in refine_prompt
    assert dict(stats.calls) == {"compress": 3, "judge": 4, "refine": 1}
    assert all(s.compression_ratio > 0 and s.memento_tokens > 0 for s in out)


# ------------------------------------------------------------- checkpoint and resume


def _record(task_id: str, status: str = "ok") -> dict:
    return {"task_id": task_id, "status": status, "reasons": [], "error": None}


def test_checkpoint_keeps_each_done_trace_once(tmp_path):
    cp = Checkpoint(tmp_path)
    for task_id, status in (("a", "ok"), ("b", "failed"), ("c", "rejected")):
        cp.append(_record(task_id, status))
    with cp.traces_path.open("a") as fh:  # a duplicate, a line without its done mark, a torn line
        fh.write(json.dumps(_record("a")) + "\n" + json.dumps(_record("d")) + "\n" + '{"task_id": "e", "sta')
    assert list(Checkpoint(tmp_path).load()) == ["a", "b", "c"]
    assert [json.loads(x)["task_id"] for x in cp.traces_path.read_text().splitlines()] == ["a", "b", "c"]
    assert cp.done_path.read_text().split() == ['"a"', '"b"', '"c"']
    assert list(Checkpoint(tmp_path).load(retry_failed=True)) == ["a", "c"]
    assert cp.done_path.read_text().split() == ['"a"', '"c"']
    (tmp_path / "done.txt").write_text('"a"\n"c"\n"x\n')  # a torn mark, and "c" lost its line below
    cp.traces_path.write_text(json.dumps(_record("a")) + "\n")
    assert list(Checkpoint(tmp_path).load()) == ["a"]


def test_traces_that_found_the_endpoint_down_are_redone_on_resume(tmp_path):
    """A failure with no response at all says nothing about the model: a rerun redoes it (the
    end-of-run summary still counts it as failed); a failure of the model stays failed."""
    cp = Checkpoint(tmp_path)
    cp.append({**_record("down", "failed"), "unreachable": True})
    cp.append({**_record("bad", "failed"), "unreachable": False})
    assert list(Checkpoint(tmp_path).load()) == ["down", "bad"]
    assert list(Checkpoint(tmp_path).load(redo_unreachable=True)) == ["bad"]


def test_a_call_that_never_got_a_response_is_a_transport_failure():
    down = Answer(attempts=2, errors=["ConnectionError: refused"] * 2, transport_errors=2)
    invalid = Answer(
        attempts=2, errors=["ConnectionError: refused", "1 validation error"], transport_errors=1
    )
    with pytest.raises(LLMFailure) as caught:
        require([down], "score")
    assert caught.value.transport
    with pytest.raises(LLMFailure) as caught:
        require([down, invalid], "score")
    assert not caught.value.transport


def _config(**overrides) -> PipelineConfig:
    settings = {
        "target": ServerTarget(url="http://unused"),
        "min_block_tokens": 100,
        "feedback_chars": 40,
        "missing_items": 2,
        "missing_item_chars": 24,
        "quality": QualityFilter(max_compression_ratio=None),
        "plots": True,
        "concurrency": 2,
    }
    return PipelineConfig(**{**settings, **overrides})


def test_run_and_resume_without_a_model(tmp_path, tokenizer):
    source = tmp_path / "in.jsonl"
    source.write_text(FIXTURE.read_text() + "not json\n" + '{"cot": "no end of thinking"}\n')
    out = tmp_path / "out"
    completer = FakeCompleter(judge=lambda call: 9)
    summary = run_pipeline(
        source,
        out,
        _config(),
        llm=StructuredLLM(completer),
        tokenizer=tokenizer,
        progress=False,
        log=lambda _: None,
    )
    assert (summary.traces, summary.ok, summary.bad_rows, summary.processed) == (3, 3, 2, 3)
    assert [json.loads(x)["line"] for x in (out / "bad_rows.jsonl").read_text().splitlines()] == [4, 5]
    records = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    for r in records:
        assert len(r["boundary_scores"]) == len(r["sentences"]) - 1
        assert sum(count for _, count in r["windows"]) == len(r["sentences"]) - 1
        assert [b[0] for b in r["blocks"]] == [0] + [b[1] + 1 for b in r["blocks"][:-1]]
        assert r["blocks"][-1][1] == len(r["sentences"]) - 1
        example = MementoExample.model_validate(r["example"])
        trace = MementoTrace.from_text(example.text)
        assert trace.mementos == r["mementos"] and len(trace.blocks) == len(r["blocks"])
        assert r["llm"]["total_calls"] == sum(r["llm"]["calls"].values()) and r["seconds"]["score"] >= 0
    examples = (out / "examples.jsonl").read_text().splitlines()
    assert [MementoExample.model_validate_json(x).task_id for x in examples] == [
        "arith-0",
        "arith-1",
        "arith-2",
    ]
    import datasets

    assert datasets.load_from_disk(str(out / "dataset")).num_rows == 3
    for name in ("summary.json", "compression_ratio.png", "judge_score.png", "block_tokens.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["ok"] == 3

    # resume: the last trace's line and mark are gone, as if the run was killed before it
    lines = (out / "traces.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])["task_id"]
    (out / "traces.jsonl").write_text("".join(x + "\n" for x in lines[:-1]))
    marks = (out / "done.txt").read_text().splitlines()
    (out / "done.txt").write_text("".join(m + "\n" for m in marks if json.loads(m) != last))
    again = FakeCompleter(judge=lambda call: 9)
    summary = run_pipeline(
        source,
        out,
        _config(),
        llm=StructuredLLM(again),
        tokenizer=tokenizer,
        progress=False,
        log=lambda _: None,
    )
    assert (summary.processed, summary.resumed, summary.traces) == (1, 2, 3)
    before = next(r for r in records if r["task_id"] == last)
    assert sum(len(r) for r in again.rounds) == before["llm"]["total_calls"]  # that trace's calls only
    ids = [json.loads(x)["task_id"] for x in (out / "traces.jsonl").read_text().splitlines()]
    assert ids[-1] == last
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3
    assert len((out / "done.txt").read_text().splitlines()) == 3
    assert len((out / "examples.jsonl").read_text().splitlines()) == 3

    # nothing left to do: no call at all; other settings refuse to mix into this directory
    idle = FakeCompleter()
    assert (
        run_pipeline(
            source,
            out,
            _config(),
            llm=StructuredLLM(idle),
            tokenizer=tokenizer,
            progress=False,
            log=lambda _: None,
        ).processed
        == 0
        and not idle.rounds
    )
    with pytest.raises(ValueError, match="min_block_tokens"):
        run_pipeline(
            source,
            out,
            _config(min_block_tokens=150),
            llm=StructuredLLM(idle),
            tokenizer=tokenizer,
            progress=False,
            log=lambda _: None,
        )


def test_failed_traces_are_recorded_and_the_run_stops_when_everything_fails(tmp_path, tokenizer):
    source = tmp_path / "in.jsonl"
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()]
    source.write_text(
        "".join(json.dumps({**r, "task_id": f"{r['task_id']}-{k}"}) + "\n" for k in range(3) for r in rows)
    )
    summary = run_pipeline(
        source,
        tmp_path / "out",
        _config(stop_after_failures=2, concurrency=1),
        llm=StructuredLLM(FakeCompleter(broken=10**6), max_attempts=2),
        tokenizer=tokenizer,
        progress=False,
        log=lambda _: None,
    )
    assert summary.stopped_early and summary.failed == summary.traces == 2 and summary.examples == 0
    record = json.loads((tmp_path / "out" / "traces.jsonl").read_text().splitlines()[0])
    assert record["status"] == "failed" and "boundary scoring" in record["error"]
    assert record["sentences"] and "boundary_scores" not in record
    assert list(summary.failure_reasons.values()) == [2]


def test_rejected_traces_keep_their_reasons(tmp_path, tokenizer):
    summary = run_pipeline(
        FIXTURE,
        tmp_path / "out",
        _config(),
        llm=StructuredLLM(FakeCompleter(judge=lambda c: 6)),
        tokenizer=tokenizer,
        progress=False,
        log=lambda _: None,
    )
    assert (
        summary.rejected == 3 and summary.examples == 0 and summary.blocks_below_threshold == summary.blocks
    )
    assert summary.iterations_per_block == 2.0
    record = json.loads((tmp_path / "out" / "traces.jsonl").read_text().splitlines()[0])
    assert record["status"] == "rejected" and record["example"] is not None
    assert any("judge score" in reason for reason in record["reasons"])


# ------------------------------------------------------------------------------ CLI


def test_cli_arguments_make_the_config():
    args = parser().parse_args(["in.jsonl", "--out", "o", "--url", "http://h:1", "--min-judge-score", "-1"])
    config = config_from_args(args)
    assert config.target == ServerTarget(url="http://h:1") and config.quality.min_judge_score is None
    args = parser().parse_args(
        [
            "in.jsonl",
            "--out",
            "o",
            "--openai-url",
            "http://h/v1",
            "--openai-model",
            "m",
            "--tokenizer",
            "t",
            "--openai-extra",
            '{"seed": 3}',
        ]
    )
    config = config_from_args(args)
    assert config.target == OpenAITarget(url="http://h/v1", model="m", extra_body={"seed": 3})
    assert config.tokenizer == "t"
    args = parser().parse_args(["in.jsonl", "--out", "o", "--model-path", "p", "--constraint", "json_schema"])
    assert config_from_args(args).target.constraint == "json_schema"
    with pytest.raises(SystemExit):
        parser().parse_args(["in.jsonl", "--out", "o"])  # no target

    top = argparse.ArgumentParser()
    add_parser(top.add_subparsers(dest="command"))
    namespace = top.parse_args(["data", "in.jsonl", "--out", "o", "--url", "http://h:1"])
    assert namespace.func.__name__ == "main" and config_from_args(namespace).target.kind == "server"


def test_answer_defaults_are_empty():
    answer: Answer = Answer()
    assert not answer.ok and answer.errors == [] and answer.attempts == 0
