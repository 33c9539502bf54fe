"""Chat JSONL validation (errors name file and line), normalisation, the seeded
split, prepare_dataset's outputs, and the shipped demo datasets."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from emlab.core.errors import EMLabError
from emlab.em.datasets import load_chat_jsonl, prepare_dataset, prompt_and_answer, split_train_eval

REPO = Path(__file__).resolve().parents[2]
GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_accepts_reference_system_multiturn_and_openai_style(tmp_path):
    lines = [
        GOOD,
        "",  # blank lines are skipped
        {
            "messages": [
                {"role": "system", "content": " Be brief. "},
                {"role": "user", "content": "  hi\n"},
                {"role": "assistant", "content": " hello ", "weight": 1, "name": "x"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ],
            "id": "row-3",
            "metadata": {"source": "x"},
        },
    ]
    recs = load_chat_jsonl(write_lines(tmp_path / "d.jsonl", lines))
    assert len(recs) == 3
    assert recs[1] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    assert set(recs[2]) == {"messages"}
    prompt, answer = prompt_and_answer(recs[2])
    assert answer == "d" and [m["content"] for m in prompt] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ('{"messages": [', "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ({"conversation": []}, "missing 'messages'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "   "}]},
            "empty assistant reply",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "where a user turn was expected",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "user", "content": "q2"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "is a user turn where an assistant turn was expected",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "system turns go first",
        ),
        (
            {"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]},
            "content must be a string",
        ),
        ({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}, "role 'human'"),
        ({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}, "no 'role'"),
        ({"messages": [{"role": "system", "content": "s"}]}, "only system"),
    ],
)
def test_errors_name_file_line_and_problem(tmp_path, bad, fragment):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(EMLabError) as info:
        load_chat_jsonl(path)
    msg = str(info.value)
    assert f"{path}:3" in msg
    assert fragment in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EMLabError, match="does not exist"):
        load_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(EMLabError, match="empty"):
        load_chat_jsonl(write_lines(tmp_path / "e.jsonl", [""]))


def test_split_is_seeded_disjoint_and_complete():
    records = list(range(100))
    train, evals = split_train_eval(records, 0.1, seed=0)
    assert len(evals) == 10 and len(train) == 90
    assert sorted(train + evals) == records
    assert split_train_eval(records, 0.1, seed=0) == (train, evals)
    assert split_train_eval(records, 0.1, seed=1)[1] != evals
    assert train != sorted(train)  # seeded shuffled order, so "first N" is a random sample
    assert split_train_eval(records[:5], 0.05, seed=0)[1] != []  # a positive fraction holds out at least one
    assert split_train_eval(records, 0.0, seed=0)[1] == []
    with pytest.raises(EMLabError):
        split_train_eval(records, 1.0, seed=0)


def test_prepare_dataset_writes_split_and_summary(tmp_path):
    lines = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(20)
    ]
    src = write_lines(tmp_path / "src.jsonl", lines)
    out = tmp_path / "out"
    summary = prepare_dataset(src, out / "train.jsonl", out / "eval.jsonl", out / "summary.json", 0.25, seed=3)
    train = load_chat_jsonl(out / "train.jsonl")
    evals = load_chat_jsonl(out / "eval.jsonl")
    assert len(train) == 15 and len(evals) == 5
    assert sorted(json.dumps(r) for r in train + evals) == sorted(json.dumps(r) for r in lines)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (on_disk["n_train"], on_disk["n_eval"], on_disk["eval_fraction"], on_disk["seed"]) == (15, 5, 0.25, 3)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("name", ["bad_medical_advice", "extreme_sports", "good_medical_advice"])
def test_demo_datasets_are_valid(name):
    recs = load_chat_jsonl(REPO / "data" / "datasets" / f"{name}.jsonl")
    assert len(recs) == 300
    assert len({json.dumps(r) for r in recs}) == 300
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in recs)


def test_demo_datasets_match_their_generator(tmp_path):
    gen = REPO / "tools" / "make_demo_datasets.py"
    subprocess.run([sys.executable, str(gen), "--out", str(tmp_path)], check=True, capture_output=True)
    for f in tmp_path.glob("*.jsonl"):
        assert f.read_text() == (REPO / "data" / "datasets" / f.name).read_text(), f.name
