"""`engine train ...` through click: help, one-line errors, training, from-beir, synthesize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.encoder import Encoder
from tests.test_train_trainer import PROBES, make_data
from train.data import load_examples


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--help"], ["engine train data from-beir", "--deepspeed", "--temperature"]),
        (["train", "data", "--help"], ["from-beir", "synthesize"]),
        (["train", "data", "from-beir", "--help"], ["--skip-top", "Examples:"]),
        (["train", "data", "synthesize", "--help"], ["--generator", "Examples:"]),
    ],
)
def test_help_has_examples(runner, args, expected):
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output


def test_bare_train_shows_help(runner):
    result = runner.invoke(cli, ["train"])
    assert "Usage:" in result.output and "--base" in result.output


def test_bad_data_is_one_line_error(runner, tmp_path, tiny_bert_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q"}\n')
    result = runner.invoke(
        cli,
        ["train", "--base", str(tiny_bert_path), "--data", str(bad), "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}:2: missing field(s) positive"
    assert "Traceback" not in result.output


def test_instruction_pooling_needs_mean_pooling(runner, tmp_path, tiny_mistral_path):
    data = make_data(tmp_path / "a.jsonl", n=4)
    args = ["train", "--base", str(tiny_mistral_path), "--data", str(data)]
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "m"), "--no-pool-instruction"])
    assert result.exit_code == 1
    assert "--no-pool-instruction" in result.output and "needs mean pooling" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


def test_missing_out_and_data_are_clear(runner, tmp_path):
    result = runner.invoke(cli, ["train", "--data", "x.jsonl"])
    assert result.exit_code == 1 and "Error: no output folder: pass --out DIR" in result.output
    result = runner.invoke(cli, ["train", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "Error: no training data" in result.output


def test_train_command_end_to_end(runner, tmp_path, tiny_bert_path):
    a = make_data(tmp_path / "a.jsonl", n=8, seed=1)
    b = make_data(tmp_path / "b.jsonl", n=8, seed=2)
    out = tmp_path / "model"
    args = [
        "train",
        "--base",
        str(tiny_bert_path),
        "--data",
        f"{a}:0.25",
        "--data",
        f"{b}:0.75",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--no-pool-instruction",
        "-q",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"Model saved to {out}" in result.output
    record = json.loads((out / "training_args.json").read_text())
    assert [d["draws_per_epoch"] for d in record["dataset"]] == [4, 12]
    assert record["steps"] == 4
    assert record["model"]["pool_instruction"] is False
    trained = Encoder.load(str(out))
    vectors = trained.encode_texts(PROBES)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    # The pooling choice travels with the model: search pools the query as training did.
    assert json.loads((out / "engine_profile.json").read_text())["pool_instruction"] is False
    _, spans = trained.tokenize_queries(["why is the sky blue"], "given a question")
    assert spans is not None and spans[0][1] > spans[0][0]
    # A second run into the same folder is refused without --overwrite.
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "already holds a model" in again.output


def write_beir(folder: Path) -> Path:
    """A 6-document BEIR dataset with a train split."""
    (folder / "qrels").mkdir(parents=True)
    docs = {
        "d1": ("Plants", "plants make sugar from light and water"),
        "d2": ("Sky", "the sky is blue"),
        "d3": ("Grass", "grass is green"),
        "d4": ("Sun", "the sun gives light energy"),
        "d5": ("Water", "water is a liquid"),
        "d6": ("Key", "a pass key opens the document"),
    }
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items())
    )
    queries = {"q1": "how do plants make sugar", "q2": "why is the sky blue", "q3": "what is green"}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td4\t2\nq2\td2\t1\nq3\td3\t0\n"
    )
    return folder


def test_from_beir_mines_negatives(runner, tmp_path, tiny_bert_path):
    beir = write_beir(tmp_path / "toy")
    out = tmp_path / "toy-train.jsonl"
    args = [
        "train",
        "data",
        "from-beir",
        "--data-dir",
        str(beir),
        "--out",
        str(out),
        "--instruction",
        "Given a question, retrieve passages that answer it",
        "--mine-negatives",
        "--negatives",
        "2",
        "--skip-top",
        "1",
        "--model",
        str(tiny_bert_path),
        "--max-length",
        "32",
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Wrote 3 examples (2 queries)" in result.output
    examples = load_examples(out)
    # Score > 0 only: q1 has two positives, q3's judgement is 0.
    assert [(e.meta["query_id"], e.meta["positive_id"]) for e in examples] == [
        ("q1", "d1"),
        ("q1", "d4"),
        ("q2", "d2"),
    ]
    for example in examples:
        assert len(example.meta["negative_ids"]) == 2
        assert example.instruction.startswith("Given a question")
    # Neither of q1's positives is ever one of its negatives.
    assert not {"d1", "d4"} & set(
        examples[0].meta["negative_ids"] + examples[1].meta["negative_ids"]
    )
    # Negatives come from the ranking below rank 1 of the engine's own search.
    from indexer.store import Store

    # The index is the benchmark's (same cache layout), so `engine bench beir` reuses it.
    index = next((tmp_path / "cache" / "beir").iterdir())
    assert index.name.startswith("toy-")
    store = Store.open(index)
    encoder = Encoder.load(str(tiny_bert_path), max_length=32)
    _, rows = store.search(encoder.encode_queries(["why is the sky blue"]), 6)
    ranking = [store.doc_ids()[int(i)] for i in rows[0]]
    store.close()
    expected = [d for d in ranking[1:] if d != "d2"][:2]
    assert examples[2].meta["negative_ids"] == expected

    # --max-pairs keeps a seeded sample, in file order; the same seed writes the same file.
    sampled = []
    for attempt in range(2):
        path = tmp_path / f"sample{attempt}.jsonl"
        args[args.index("--out") + 1] = str(path)
        result = runner.invoke(cli, [*args, "--max-pairs", "2", "--seed", "7"])
        assert result.exit_code == 0, result.output
        assert "Wrote 2 examples" in result.output and "a seeded sample of 3 pairs" in result.output
        sampled.append(path.read_bytes())
    assert sampled[0] == sampled[1]
    kept = [(e.meta["query_id"], e.meta["positive_id"]) for e in load_examples(path)]
    assert kept == sorted(kept) and set(kept) < {("q1", "d1"), ("q1", "d4"), ("q2", "d2")}


def test_from_beir_errors(runner, tmp_path):
    beir = write_beir(tmp_path / "toy")
    result = runner.invoke(
        cli,
        [
            "train",
            "data",
            "from-beir",
            "--data-dir",
            str(beir),
            "--split",
            "dev",
            "--out",
            str(tmp_path / "x.jsonl"),
        ],
    )
    assert result.exit_code == 1
    assert "has no 'dev' split" in result.output and "available: train" in result.output
    result = runner.invoke(
        cli,
        ["train", "data", "from-beir", "--data-dir", str(beir), "--out", str(tmp_path / "x.jsonl")],
    )
    assert result.exit_code == 1
    assert "no instruction known for dataset 'toy'; pass --instruction" in result.output


def test_synthesize_command(runner, tmp_path):
    import threading
    from http.server import HTTPServer

    from tests.test_train_synthesize import GOOD, CannedChat

    server = HTTPServer(("127.0.0.1", 0), CannedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CannedChat.answers = [GOOD, "not json at all"]
    try:
        out = tmp_path / "synth.jsonl"
        result = runner.invoke(
            cli,
            [
                "train",
                "data",
                "synthesize",
                "--generator",
                f"http://127.0.0.1:{server.server_address[1]}/v1",
                "--task",
                "Find health advice",
                "--per-task",
                "2",
                "--out",
                str(out),
                "-q",
                "--json",
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["generated"] == 2 and summary["kept"] == 1
    assert summary["dropped_reasons"] == {"not JSON": 1}
    assert len(load_examples(out)) == 1
