"""Training data: format, validation errors that name the line, weighted mixing, negatives."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from engine.errors import EngineError
from train.arguments import DataSource
from train.data import (
    MixedDataset,
    TrainDocument,
    allocate,
    load_examples,
    load_sources,
)


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good(i: int, negatives: int = 2, instruction: str | None = "Find passages") -> dict:
    return {
        "instruction": instruction,
        "query": f"query {i}",
        "positive": {"title": f"title {i}", "text": f"positive text {i}"},
        "negatives": [f"negative {i}.{j}" for j in range(negatives)],
    }


def test_documents_may_be_strings_or_title_text(tmp_path):
    path = write_lines(
        tmp_path / "a.jsonl",
        [
            {"query": "q", "positive": "plain positive", "negatives": [{"text": "n"}]},
            {"instruction": None, "query": "q2", "positive": {"title": "T", "text": "x"}},
        ],
    )
    first, second = load_examples(path)
    assert first.positive == TrainDocument("", "plain positive")
    assert first.negatives == (TrainDocument("", "n"),)
    assert first.instruction is None
    assert second.positive == TrainDocument("T", "x")
    assert second.negatives == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"query": "q"}', "missing field(s) positive"),
        ('{"query": "", "positive": "p"}', "query must be a non-empty string"),
        ('{"query": "q", "positive": "p", "negative": ["n"]}', "unknown field(s) negative"),
        ('{"query": "q", "positive": "  "}', "positive is an empty string"),
        ('{"query": "q", "positive": {"title": "t"}}', "positive.text is missing"),
        ('{"query": "q", "positive": "p", "negatives": "n"}', "negatives must be a list"),
        ('{"query": "q", "positive": "p", "negatives": ["n", 3]}', "negatives[1] must be a string"),
        ('{"query": "q", "positive": "p", "instruction": 5}', "instruction must be a string"),
        ('{"query": "q", "positive": {"body": "p"}}', "unknown field(s) body"),
    ],
)
def test_validation_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [good(0), "", good(1), line])
    with pytest.raises(EngineError) as info:
        load_examples(path)
    text = str(info.value)
    assert text.startswith(f"{path}:4: "), text
    assert message in text


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EngineError, match="training data not found"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EngineError, match="empty.jsonl: no training examples"):
        load_examples(tmp_path / "empty.jsonl")


def test_data_source_weights():
    assert DataSource.parse("a.jsonl") == DataSource(Path("a.jsonl"))
    assert DataSource.parse("dir/a.jsonl:0.3") == DataSource(Path("dir/a.jsonl"), 0.3)
    assert DataSource.parse("C:/x/a.jsonl") == DataSource(Path("C:/x/a.jsonl"))
    with pytest.raises(EngineError, match="positive number"):
        DataSource.parse("a.jsonl:0")


def test_allocate_is_exact():
    assert allocate([0.3, 0.7], 10) == [3, 7]
    assert sum(allocate([1, 1, 1], 100)) == 100
    assert allocate([0.5, 0.25, 0.25], 7) in ([4, 2, 1], [3, 2, 2], [4, 1, 2])


def test_weighted_mix_draws_by_weight(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [good(i) for i in range(10)])
    b = write_lines(tmp_path / "b.jsonl", [good(100 + i) for i in range(90)])
    # Without weights: a concatenation (10 + 90).
    plain = MixedDataset(load_sources([DataSource(a), DataSource(b)]))
    assert plain.counts == [10, 90]
    # 50/50: the small file is cycled (each of its examples drawn 5 times).
    mixed = MixedDataset(
        load_sources([DataSource(a, 0.5), DataSource(b, 0.5)]), examples_per_epoch=100
    )
    drawn = Counter(mixed[i].query for i in range(len(mixed)))
    from_a = {q: n for q, n in drawn.items() if int(q.split()[1]) < 100}
    assert sum(from_a.values()) == 50
    assert set(from_a.values()) == {5}
    # Another epoch draws another order, the same epoch the same one.
    first = [mixed[i].query for i in range(len(mixed))]
    mixed.set_epoch(1)
    assert [mixed[i].query for i in range(len(mixed))] != first
    mixed.set_epoch(0)
    assert [mixed[i].query for i in range(len(mixed))] == first


def test_negatives_are_sampled_and_filled(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [good(0, negatives=5), good(1, negatives=0), good(2)])
    dataset = MixedDataset(load_sources([DataSource(path)]), negatives_per_query=3, seed=1)
    groups = {dataset[i].query: dataset[i] for i in range(len(dataset))}
    assert len(groups["query 0"].negatives) == 3
    assert all(n.text.startswith("negative 0.") for n in groups["query 0"].negatives)
    # No hard negatives: filled with other queries' positives, never its own.
    filler = groups["query 1"].negatives
    assert len(filler) == 3
    assert all(n.text.startswith("positive text") and n.text != "positive text 1" for n in filler)


def test_positive_keys_cover_every_positive_of_a_query(tmp_path):
    rows = [good(0), {**good(0), "positive": "second positive of query 0"}, good(1)]
    path = write_lines(tmp_path / "a.jsonl", rows)
    dataset = MixedDataset(load_sources([DataSource(path)]))
    group = next(dataset[i] for i in range(len(dataset)) if dataset[i].query == "query 0")
    assert group.positive_keys == {
        TrainDocument("title 0", "positive text 0").key,
        TrainDocument("", "second positive of query 0").key,
    }
