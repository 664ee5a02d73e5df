"""`engine bench speed`: the random-model path, a real folder, and the --index pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.peak_memory import PeakMemory
from bench.random_models import build_random_encoder
from bench.speed import baseline_padding, compare_rankings, engine_padding
from bench.workloads import random_ids, synthetic_lengths, synthetic_texts
from engine.app.cli import cli
from engine.precision import PRECISION_ENV
from tests.tolerances import score_tolerance


def run_speed(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["bench", "speed", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def assert_throughput(figures: dict) -> None:
    assert figures["docs_per_second"] > 0
    assert figures["tokens_per_second"] > figures["docs_per_second"]
    assert figures["padding_waste"] >= 1
    assert figures["peak_memory_mb"] > 0


@pytest.fixture
def beir_folder(tmp_path) -> Path:
    folder = tmp_path / "tinybeir"
    (folder / "qrels").mkdir(parents=True)
    topics = [
        ("Photosynthesis", "Plants make sugar from light, water and carbon dioxide."),
        ("Castling", "In chess the king and a rook move together once per game."),
        ("TCP", "A three-way handshake opens a TCP connection between two hosts."),
        ("Volcanoes", "Magma rises through the crust and erupts as lava and ash."),
        ("Vaccines", "A vaccine trains the immune system to recognise a pathogen."),
        ("Tides", "The moon's gravity pulls the oceans and makes the tides."),
    ]
    with (folder / "corpus.jsonl").open("w") as corpus:
        for number, (title, text) in enumerate(topics):
            corpus.write(json.dumps({"_id": f"d{number}", "title": title, "text": text}) + "\n")
    queries = ["how do plants make sugar", "how does a tcp connection start", "why are there tides"]
    with (folder / "queries.jsonl").open("w") as handle:
        for number, query in enumerate(queries):
            handle.write(json.dumps({"_id": f"q{number}", "text": query}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td2\t1\nq2\td5\t1\n"
    )
    return folder


def test_random_tiny_model_on_synthetic_lengths(tmp_path):
    report = run_speed(
        ["--random-model", "tiny", "--synthetic", "24", "--max-length", "128", "--device", "cpu"]
        + ["--batch-tokens", "1024", "--out", str(tmp_path)]
    )
    assert report["model"] == "random-tiny"
    assert report["corpus"]["documents"] == 24
    assert report["corpus"]["max_tokens"] <= 128
    assert_throughput(report["engine"])
    assert report["engine"]["batch_tokens"] == 1024
    assert "random-weight" in report["baseline"]["skipped"]
    assert Path(report["json"]).is_file()
    assert json.loads(Path(report["json"]).read_text())["engine"] == report["engine"]


def test_random_model_is_a_mistral_with_the_e5_profile():
    encoder = build_random_encoder("tiny", "cpu")
    assert encoder.model.config.model_type == "mistral"
    assert encoder.profile.pooling == "last" and encoder.profile.require_eos
    ids = random_ids(encoder, [5, 40, 5000])
    assert [len(x) for x in ids] == [5, 40, encoder.max_length]
    assert all(x[0] == encoder.bos_id and x[-1] == encoder.eos_id for x in ids)
    vectors = encoder.encode_ids(ids)
    assert vectors.shape == (3, 64)


@pytest.mark.precision
def test_real_folder_against_sentence_transformers(tmp_path, beir_folder):
    report = run_speed(
        ["--data-dir", str(beir_folder), "--max-length", "64", "--out", str(tmp_path), "-q"]
    )
    assert report["model"] == "all-MiniLM-L6-v2"
    assert report["corpus"]["documents"] == 6
    assert_throughput(report["engine"])
    assert_throughput(report["baseline"])
    assert report["speedup"] > 0
    # Same model, same inputs: the vectors agree to float noise.
    assert report["vector_agreement"]["min_cosine"] > 0.9999


def test_rounds_let_the_two_sides_take_turns(tmp_path, beir_folder, monkeypatch):
    """--rounds 3: three slices, each encoded by both sides; the vectors keep document order
    (fp32 on both sides: they agree to float noise) and the run records the ISA caps."""
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    report = run_speed(
        ["--data-dir", str(beir_folder), "--max-length", "64", "--precision", "fp32"]
        + ["--rounds", "3", "--out", str(tmp_path), "-q"]
    )
    rounds = report["engine"]["rounds"]
    assert [r["documents"] for r in rounds] == [2, 2, 2]
    assert all(r["engine_seconds"] > 0 and r["baseline_seconds"] > 0 for r in rounds)
    assert report["engine"]["seconds"] == pytest.approx(
        sum(r["engine_seconds"] for r in rounds), abs=0.01
    )
    ratios = sorted(r["speedup"] for r in rounds)
    assert report["engine"]["median_round_speedup"] == pytest.approx(ratios[1], abs=1e-3)
    assert all(report[side]["cpu_seconds"] > 0 for side in ("engine", "baseline"))
    assert report["vector_agreement"]["min_cosine"] > 0.9999
    assert report["machine"]["isa_caps"]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert "--rounds 3" in report["command"]


def test_rounds_are_for_encoding_mode(beir_folder):
    result = CliRunner().invoke(
        cli, ["bench", "speed", "--data-dir", str(beir_folder), "--index", "--rounds", "2"]
    )
    assert result.exit_code != 0
    assert "--rounds is for encoding mode" in result.output


@pytest.mark.precision
def test_index_mode_matches_the_baseline_rankings(tmp_path, beir_folder):
    report = run_speed(["--data-dir", str(beir_folder), "--index", "--out", str(tmp_path)])
    assert report["mode"] == "index"
    assert report["corpus"]["split"] == "test"
    for side in ("engine", "baseline"):
        assert_throughput(report[side])
        latency = report[side]["query_latency"]
        assert latency["queries"] == 3
        assert 0 < latency["p50_ms"] <= latency["p95_ms"]
    assert report["retrieval"]["identical_top_k_share"] == 1.0
    # The baseline runs in strict fp32; the engine in this machine's default precision.
    tolerance = score_tolerance(report["precision"])
    assert report["retrieval"]["max_abs_score_difference"] < tolerance
    assert Path(report["json"]).name.startswith("index-all-MiniLM-L6-v2-tinybeir")
    # nDCG@10 of each side's index: every query finds its one relevant document first.
    assert report["engine"]["ndcg@10"] == report["baseline"]["ndcg@10"] == 1.0
    # $ENGINE_PRECISION (the fp32 CI run sets it) and $ENGINE_RUNTIME (tests/conftest.py sets
    # it) are recorded as the options they stand for.
    from_env = os.environ.get(PRECISION_ENV)
    precision = f" --precision {from_env}" if from_env else ""
    runtime = (
        f" --runtime {os.environ['ENGINE_RUNTIME']}" if os.environ.get("ENGINE_RUNTIME") else ""
    )
    expected = (
        f"engine bench speed --data-dir {beir_folder}{precision}{runtime} --index --out {tmp_path}"
    )
    assert report["command"] == expected
    assert report["precision"] in ("fp32", "mixed")
    assert "torch" in report["machine"]


def test_precision_option_reaches_the_encoder(tmp_path, beir_folder):
    report = run_speed(
        ["--data-dir", str(beir_folder), "--max-length", "64", "--no-baseline"]
        + ["--precision", "bf16", "--out", str(tmp_path)]
    )
    assert report["precision"] == "bf16"
    assert Path(report["json"]).name.endswith("-cpu-bf16.json")
    assert "--precision bf16" in report["command"]


def test_synthetic_texts_follow_the_requested_lengths(default_encoder):
    texts = synthetic_texts(default_encoder, 30, seed=1)
    measured = [len(x) for x in default_encoder.tokenize(texts)]
    wanted = synthetic_lengths(30, default_encoder.max_length, seed=1)
    assert measured == wanted
    assert texts != synthetic_texts(default_encoder, 30, seed=2)


def test_padding_and_ranking_arithmetic():
    # One batch of [10, 2]: 20 padded slots for 12 real tokens.
    assert engine_padding([10, 2], batch_tokens=100) == pytest.approx(20 / 12)
    assert engine_padding([10, 10], batch_tokens=100) == 1
    assert baseline_padding(["aaaa", "a"], [10, 2], batch_size=1) == 1
    assert baseline_padding(["aaaa", "a"], [10, 2], batch_size=2) == pytest.approx(20 / 12)
    same = {"q": [("a", 0.9), ("b", 0.5)]}
    swapped = {"q": [("b", 0.9), ("a", 0.5)]}
    assert compare_rankings(same, same)["identical_top_k_share"] == 1
    flipped = compare_rankings(same, swapped)
    assert flipped["identical_top_k_share"] == 0 and flipped["same_top_k_set_share"] == 1


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as memory:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    assert memory.to_dict()["peak_memory_increase_mb"] >= 60


def test_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    neither = runner.invoke(cli, ["bench", "speed", "--out", str(tmp_path)])
    assert neither.exit_code == 1 and "exactly one of --data-dir and --synthetic" in neither.output
    index_random = runner.invoke(
        cli, ["bench", "speed", "--random-model", "tiny", "--synthetic", "3", "--index"]
    )
    assert index_random.exit_code == 1 and "--index needs" in index_random.output
    missing = runner.invoke(cli, ["bench", "speed", "--data-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "not found" in missing.output
    assert "Traceback" not in neither.output + index_random.output + missing.output


@pytest.mark.gpu
def test_random_model_on_gpu_reports_mfu(tmp_path):
    report = run_speed(
        ["--random-model", "tiny", "--synthetic", "16", "--device", "cuda"]
        + ["--peak-tflops", "100", "--out", str(tmp_path)]
    )
    assert report["dtype"] == "bfloat16"
    assert report["engine"]["memory_kind"] == "cuda allocated"
    assert report["peak_tflops"] == 100
    assert report["engine"]["mfu"] > 0
