"""`engine bench passkey`: exact-length documents, determinism, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench.passkey import build_passkey_task, passkey_sentence, top1
from engine.app.cli import cli
from engine.encoder import Encoder


@pytest.fixture(scope="module")
def tiny_mistral(tiny_mistral_path):
    return Encoder.load(str(tiny_mistral_path), device="cpu")


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path):
    return Encoder.load(str(tiny_bert_path), device="cpu")


@pytest.mark.parametrize("encoder_name", ["tiny_mistral", "tiny_bert", "default_encoder"])
@pytest.mark.parametrize("length", [64, 300])
def test_documents_have_exactly_the_target_length(request, encoder_name, length):
    encoder = request.getfixturevalue(encoder_name)
    task = build_passkey_task(encoder, length, documents=12, queries=6, seed=3)
    counts = [len(ids) for ids in encoder.tokenize(task.documents, max_length=10 * length)]
    assert counts == [length] * 12
    assert len(set(task.names)) == 12
    assert len(set(task.passkeys)) == 12
    for document, name, key, (start, end) in zip(
        task.documents, task.names, task.passkeys, task.spans, strict=True
    ):
        assert passkey_sentence(name, key) in document
        assert 0 < start < end <= length
    assert len(set(task.targets)) == 6
    for query, target in zip(task.queries, task.targets, strict=True):
        assert task.names[target] in query


def test_passkey_span_points_at_the_sentence(default_encoder):
    """The recorded token span holds the tokens of the passkey sentence."""
    task = build_passkey_task(default_encoder, 200, documents=5, queries=2, seed=1)
    for document, name, key, (start, end) in zip(
        task.documents, task.names, task.passkeys, task.spans, strict=True
    ):
        ids = default_encoder.tokenize([document], max_length=400)[0]
        key_ids = default_encoder.tokenizer(key, add_special_tokens=False)["input_ids"]
        window = ids[max(start - 1, 0) : end + 1]
        assert any(window[i : i + len(key_ids)] == key_ids for i in range(len(window))), (
            f"passkey {key} of {name} not within tokens {start}-{end}"
        )


def test_same_seed_same_task_other_seed_other_task(tiny_mistral):
    first = build_passkey_task(tiny_mistral, 96, documents=10, queries=5, seed=7)
    again = build_passkey_task(tiny_mistral, 96, documents=10, queries=5, seed=7)
    other = build_passkey_task(tiny_mistral, 96, documents=10, queries=5, seed=8)
    assert first == again
    assert first.documents != other.documents
    assert first.names != other.names


def test_top1_breaks_exact_ties_among_tied_documents_only():
    scores = np.array([[0.5, 0.9, 0.9, 0.1], [0.2, 0.1, 0.3, 0.0]])
    picks = {tuple(top1(scores, np.random.default_rng(seed))) for seed in range(20)}
    assert {pick[0] for pick in picks} == {1, 2}
    assert {pick[1] for pick in picks} == {2}


def test_cli_table_json_and_plot(tmp_path, tiny_mistral_path):
    runner = CliRunner()
    out = tmp_path / "results"
    args = [
        "bench",
        "passkey",
        "--model",
        str(tiny_mistral_path),
        "--lengths",
        "64,128,300",
        "--documents",
        "8",
        "--queries",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "top-1 acc" in result.output and "hits in window" in result.output
    assert "truncated to the model's maximum" in result.output
    assert "Given a person's name" in result.output  # e5-mistral profile: instruction-tuned
    json_file = out / "passkey-tiny-e5-mistral-7b-instruct.json"
    png_file = out / "passkey-tiny-e5-mistral-7b-instruct.png"
    assert png_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(json_file.read_text())
    rows = {row["length"]: row for row in report["results"]}
    assert sorted(rows) == [64, 128, 300]
    # The tiny model takes 256 positions: 300 is truncated to it, the rest are whole.
    assert rows[300]["encoded_tokens"] == 256 and rows[300]["truncated"] is True
    assert rows[128]["encoded_tokens"] == 128 and rows[128]["truncated"] is False
    for row in rows.values():
        assert row["queries"] == 4
        assert 0 <= row["accuracy"] <= 1
        assert row["correct"] == round(row["accuracy"] * 4)
        assert 0 <= row["in_window"] <= 4
        assert row["correct_in_window"] + row["correct_outside"] == row["correct"]
        assert row["correct_in_window"] <= row["in_window"]
    assert rows[64]["in_window"] == 4

    as_json = runner.invoke(cli, [*args, "--lengths", "64", "--json", "--no-instruct"])
    assert as_json.exit_code == 0, as_json.output
    printed = json.loads(as_json.output)
    assert printed["instruction"] is None
    assert [row["length"] for row in printed["results"]] == [64]


def test_cli_rejects_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    too_many = runner.invoke(
        cli, ["bench", "passkey", "--documents", "4", "--queries", "5", "--out", str(tmp_path)]
    )
    assert too_many.exit_code == 1
    assert "cannot exceed --documents" in too_many.output
    assert "Traceback" not in too_many.output
    bad_lengths = runner.invoke(cli, ["bench", "passkey", "--lengths", "12,x"])
    assert bad_lengths.exit_code == 1
    assert "--lengths" in bad_lengths.output
