"""`engine train --eval-data`: the BEIR benchmark before and after training, on a toy dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.beir import evaluate_dataset
from bench.datasets import instruction_for
from engine.app.cli import cli
from engine.encoder import Encoder
from tests.test_train_trainer import make_data
from train.evaluate import beir_evaluator, format_comparison

DOCS = {
    "d1": ("Plants", "plants make sugar from light and water"),
    "d2": ("Sky", "the sky is blue"),
    "d3": ("Grass", "grass is green"),
    "d4": ("Sun", "the sun gives light energy"),
    "d5": ("Water", "water is a liquid"),
    "d6": ("Key", "a pass key opens the document"),
}
QUERIES = {"q1": "how do plants make sugar", "q2": "why is the sky blue", "q3": "what is green"}
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n"


def write_beir_test(folder: Path) -> Path:
    """A 6-document BEIR dataset with a test split."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in DOCS.items())
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items())
    )
    (folder / "qrels" / "test.tsv").write_text(QRELS)
    return folder


def test_eval_data_benchmarks_before_and_after(tmp_path, tiny_bert_path, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    # Named like a BEIR dataset, so the benchmark knows its paper instruction.
    beir = write_beir_test(tmp_path / "beir" / "scifact")
    data = make_data(tmp_path / "train.jsonl", n=8)
    out = tmp_path / "model"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--base",
            str(tiny_bert_path),
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--max-length",
            "32",
            "--eval-data",
            str(beir),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training_args.json").read_text())
    before, after = record["eval_before"]["scifact"], record["eval_after"]["scifact"]
    # The base model is not instruction-tuned; the model trained with instructions is.
    assert before["instruction"] is None
    assert after["instruction"] == instruction_for("scifact")
    assert before["max_length"] == after["max_length"] == 32
    # The hook's figures are the benchmark's own on the saved model.
    direct = evaluate_dataset(
        Encoder.load(str(out), max_length=32), beir, cache_dir=tmp_path / "direct"
    )
    assert after["metrics"]["ndcg@10"] == pytest.approx(direct["metrics"]["ndcg@10"], abs=1e-4)
    base = evaluate_dataset(Encoder.load(str(tiny_bert_path), max_length=32), beir)
    assert before["metrics"] == base["metrics"]
    # Both printed, one line per dataset.
    line = next(row for row in result.output.splitlines() if row.startswith("scifact"))
    b, a, change = (float(x) for x in line.split()[1:])
    assert b == pytest.approx(before["metrics"]["ndcg@10"], abs=1e-4)
    assert a == pytest.approx(after["metrics"]["ndcg@10"], abs=1e-4)
    assert change == pytest.approx(a - b, abs=2e-4)
    # The base index was built once, in the benchmark's cache, and reused.
    assert len(list((tmp_path / "cache" / "beir").iterdir())) == 2  # base + trained


def test_eval_data_errors_come_before_training(tmp_path, tiny_bert_path):
    with pytest.raises(Exception, match="not a BEIR dataset folder|not found"):
        beir_evaluator([tmp_path / "nope"], 32, trains_instruction=True)
    toy = write_beir_test(tmp_path / "toy")
    with pytest.raises(Exception, match="no task instruction is known for dataset 'toy'"):
        beir_evaluator([toy], 32, trains_instruction=True)
    # Without instructions an unknown dataset is fine: it is scored, with no instruction, at
    # the evaluator's length, and the encoder gets its own length back.
    evaluate = beir_evaluator([toy], 32, trains_instruction=False, cache_dir=tmp_path / "cache")
    encoder = Encoder.load(str(tiny_bert_path), max_length=64)
    results = evaluate(encoder)
    assert list(results) == ["toy"] and encoder.max_length == 64
    toy_result = results["toy"]
    assert (toy_result["documents"], toy_result["queries"], toy_result["max_length"]) == (6, 3, 32)
    assert toy_result["instruction"] is None and 0 <= toy_result["metrics"]["ndcg@10"] <= 1


def test_comparison_table():
    before = {"scifact": {"split": "test", "max_length": 256, "metrics": {"ndcg@10": 0.6451}}}
    after = {"scifact": {"split": "test", "max_length": 256, "metrics": {"ndcg@10": 0.6912}}}
    table = format_comparison(before, after).splitlines()
    assert table[0].startswith("BEIR ndcg@10 (test, 256 tokens)")
    assert table[1].split() == ["scifact", "0.6451", "0.6912", "+0.0461"]
