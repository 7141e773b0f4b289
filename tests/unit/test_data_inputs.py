"""Input reading: good rows, ShareGPT rows, every kind of bad row (with its line), stable ids; split_cot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memento_sglang.data.inputs import BadRow, CotParts, TraceRecord, read_traces, split_cot

COT = "<think>\nFirst I add. Then I check.\n</think>\n\nThe answer is 4.\n"


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), "utf-8")
    return path


def read(path: Path) -> list[TraceRecord | BadRow]:
    return list(read_traces(path))


# ---------------------------------------------------------------------------- good rows


def test_flat_rows_keep_every_other_key(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {"task_id": "a", "cot": COT, "problem": "2+2?", "source": "s", "domain": "math", "difficulty": 3},
            {"task_id": 7, "full_cot": COT},
            {"task_id": "c", "cot": COT, "full_cot": "kept", "problem": None},
        ],
    )
    a, b, c = read(path)
    assert a == TraceRecord(
        task_id="a", problem="2+2?", cot=COT, metadata={"source": "s", "domain": "math", "difficulty": 3}
    )
    assert b == TraceRecord(task_id="7", problem=None, cot=COT, metadata={})
    assert c == TraceRecord(task_id="c", problem=None, cot=COT, metadata={"full_cot": "kept"})


def test_sharegpt_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {
                "task_id": "g",
                "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": COT}],
                "source": "open-thoughts",
            },
            {
                "conversations": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "3+3?"},
                    {"role": "assistant", "content": COT},
                ]
            },
        ],
    )
    first, second = read(path)
    assert first == TraceRecord(task_id="g", problem="2+2?", cot=COT, metadata={"source": "open-thoughts"})
    assert isinstance(second, TraceRecord)
    assert second.problem == "3+3?" and second.cot == COT and second.metadata == {"system": "Be brief."}


def test_records_are_frozen(tmp_path: Path) -> None:
    (record,) = read(write_lines(tmp_path / "t.jsonl", [{"cot": COT}]))
    with pytest.raises(ValueError):
        record.task_id = "other"  # type: ignore[misc]


# ------------------------------------------------------------------------------ bad rows


def test_bad_rows_are_reported_with_their_line_and_reading_goes_on(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {"task_id": "ok1", "cot": COT},  # 1
            "{not json",  # 2
            "",  # 3: blank, skipped
            "[1, 2]",  # 4
            {"task_id": "x", "problem": "p"},  # 5
            {"task_id": "y", "cot": "no closing tag here"},  # 6
            "   ",  # 7: blank, skipped
            {"task_id": "z", "cot": 42},  # 8
            {"task_id": "ok1", "cot": COT},  # 9: duplicate
            {"conversations": [{"from": "human", "value": "q"}]},  # 10
            {"conversations": [{"from": "bot", "value": "q"}]},  # 11
            {"conversations": "text"},  # 12
            {"task_id": "e", "cot": "<think>  \n</think>answer"},  # 13
            {"task_id": ["list"], "cot": COT},  # 14
            {"task_id": "p", "cot": COT, "problem": 3},  # 15
            {"task_id": "ok2", "cot": COT},  # 16
        ],
    )
    rows = read(path)
    good = [r.task_id for r in rows if isinstance(r, TraceRecord)]
    bad = {r.line: r.reason for r in rows if isinstance(r, BadRow)}
    assert good == ["ok1", "ok2"]
    assert sorted(bad) == [2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]
    assert bad[2].startswith("not JSON:")
    assert "not a JSON object" in bad[4]
    assert bad[5] == "no `cot` and no `conversations`"
    assert "</think>" in bad[6]
    assert "`cot` is not a string" in bad[8]
    assert "duplicate task_id 'ok1'" in bad[9]
    assert "1 human and 0 assistant" in bad[10]
    assert "unknown speaker 'bot'" in bad[11]
    assert "not a list" in bad[12]
    assert "empty reasoning" in bad[13]
    assert "`task_id`" in bad[14]
    assert "`problem`" in bad[15]


def test_encoding_problems_are_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = json.dumps({"task_id": "a", "cot": COT}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n\xff\xfe\n" + good.replace(b'"a"', b'"b"') + b"\n")
    first, second, third = read(path)
    assert isinstance(first, TraceRecord) and first.task_id == "a"  # a BOM is not part of the row
    assert second == BadRow(2, second.reason) and second.reason.startswith("not UTF-8")
    assert isinstance(third, TraceRecord) and third.task_id == "b"


def test_an_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------- task ids


def test_generated_task_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    lines = [{"cot": COT}, {"cot": COT}, {"cot": COT.replace("4", "5")}]
    first = [r.task_id for r in read(write_lines(tmp_path / "a.jsonl", lines))]  # type: ignore[union-attr]
    again = [r.task_id for r in read(write_lines(tmp_path / "b.jsonl", lines))]  # type: ignore[union-attr]
    assert first == again
    assert len(set(first)) == 3
    assert all(t.startswith("trace-") for t in first)
    # an explicit id elsewhere does not shift them; a blank line before does (the line moves)
    assert read(write_lines(tmp_path / "c.jsonl", lines[:1]))[0].task_id == first[0]  # type: ignore[union-attr]
    assert read(write_lines(tmp_path / "d.jsonl", ["", *lines[:1]]))[0].task_id != first[0]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ split_cot


def test_split_cot_parts() -> None:
    assert split_cot(COT) == CotParts("\n", "First I add. Then I check.\n", "The answer is 4.")
    assert split_cot("Reasoning without an opening tag.</think>42") == CotParts(
        "", "Reasoning without an opening tag.", "42"
    )
    assert split_cot("\n<think>x</think>") == CotParts("", "x", "")


@pytest.mark.parametrize(
    ("cot", "message"),
    [
        ("<think>never closed", "no </think>"),
        ("<think>a</think>b</think>c", "more than one"),
        ("preamble <think>a</think>b", "text before <think>"),
        ("<think>a <think> b</think>c", "second <think>"),
        ("<think>a</think>b<think>", "after </think>"),
    ],
)
def test_split_cot_refuses_malformed_traces(cot: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_cot(cot)


tag_free = st.text(alphabet=st.characters(exclude_characters="<>"), max_size=40)


@given(st.sampled_from(["", "\n", " \n "]), tag_free, tag_free, st.booleans())
def test_split_cot_gives_the_trace_back(prefix: str, reasoning: str, answer: str, opened: bool) -> None:
    body = prefix + reasoning
    parts = split_cot(("<think>" if opened else "") + body + "</think>" + answer)
    assert parts.think_prefix + parts.reasoning == body
    assert not parts.reasoning[:1].isspace()
    assert parts.answer == answer.strip()
