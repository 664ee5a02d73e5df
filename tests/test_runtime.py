"""The OpenVINO runtime: same vectors as torch fp32, chosen by auto only where it should be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.encoder import Encoder
from engine.errors import EngineError
from engine.precision import cpu_has_int8_dot_products
from engine.runtime import OPENVINO, RUNTIME_ENV, TORCH, resolve_runtime

TEXTS = [
    "plants make sugar from light and water",
    "the sky is blue",
    "what is the key " * 30,  # long enough to be cut at max_length, padding the others
    "sun",
]
QUERIES = ["how do plants make sugar", "why is the sky blue"]
INSTRUCTION = "Given a question, retrieve passages that answer it"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One cache folder for the module: a model converted once is read back by later tests."""
    return tmp_path_factory.mktemp("engine-cache")


def test_auto_picks_openvino_for_fp32_by_auto_and_for_int8_with_int8_dot_products(monkeypatch):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: True)
    monkeypatch.setattr("engine.precision.cpu_has_int8_dot_products", lambda: True)
    assert resolve_runtime(None, "cpu", "auto", "fp32") == OPENVINO  # a CPU without bf16
    assert resolve_runtime(None, "cpu", "auto", "mixed") == TORCH  # a CPU with bf16
    assert resolve_runtime(None, "cpu", "fp32", "fp32") == TORCH  # the strict reference
    assert resolve_runtime(None, "cpu", "int8", "int8") == OPENVINO  # AVX512-VNNI or AMX
    assert resolve_runtime(None, "cuda", "auto", "bf16") == TORCH
    monkeypatch.setattr("engine.precision.cpu_has_int8_dot_products", lambda: False)
    assert resolve_runtime(None, "cpu", "int8", "int8") == TORCH  # AVX2: torch's int8
    assert resolve_runtime(None, "cpu", "auto", "fp32") == OPENVINO
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert resolve_runtime(None, "cpu", "auto", "fp32") == TORCH
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: not int8)
    monkeypatch.setattr("engine.precision.cpu_has_int8_dot_products", lambda: True)
    assert resolve_runtime("auto", "cpu", "int8", "int8") == TORCH  # no nncf: torch's int8
    assert resolve_runtime("auto", "cpu", "auto", "fp32") == OPENVINO
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: False)
    assert resolve_runtime("auto", "cpu", "auto", "fp32") == TORCH  # not installed: torch


def test_explicit_openvino_is_checked(monkeypatch):
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: True)
    assert resolve_runtime("OpenVINO", "cpu", "fp32", "fp32") == OPENVINO
    assert resolve_runtime("openvino", "cpu", "auto", "mixed") == OPENVINO  # computes in fp32
    assert resolve_runtime("openvino", "cpu", "int8", "int8") == OPENVINO
    with pytest.raises(EngineError, match="computes in fp32 or int8, not bf16"):
        resolve_runtime("openvino", "cpu", "bf16", "bf16")
    with pytest.raises(EngineError, match="CPU only"):
        resolve_runtime("openvino", "cuda", "auto", "bf16")
    with pytest.raises(EngineError, match="runtime must be one of"):
        resolve_runtime("onnx", "cpu", "auto", "fp32")
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: not int8)
    with pytest.raises(EngineError, match="pip install nncf"):
        resolve_runtime("openvino", "cpu", "int8", "int8")
    monkeypatch.setattr("engine.runtime.openvino_available", lambda int8=False: False)
    with pytest.raises(EngineError, match="pip install openvino"):
        resolve_runtime("openvino", "cpu", "auto", "fp32")


@pytest.mark.parametrize(
    ("variable", "cap"),
    [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("OV_CPU_MAX_ISA", "avx512_core"), ("OV_CPU_MAX_ISA", "AVX")],
)
def test_an_isa_cap_below_vnni_leaves_no_int8_dot_products(variable, cap, monkeypatch):
    """An emulated CPU without VNNI: auto's int8 stays on torch (OpenVINO's int8 was slower
    than its fp32 there)."""
    monkeypatch.setenv(variable, cap)
    assert cpu_has_int8_dot_products() is False


def test_openvino_int8_vectors_stay_close_to_fp32(tiny_bert_path, model_cache, monkeypatch):
    """int8 weights and run-time activation quantization: near fp32, not equal to it, and
    cached apart from the fp32 copy."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(model_cache))
    path = str(tiny_bert_path)
    reference = Encoder.load(path, device="cpu", precision="fp32", runtime="torch")
    fp32 = Encoder.load(path, device="cpu", runtime="openvino")
    fp32.encode_texts(TEXTS)
    before = set((model_cache / "openvino").iterdir())
    encoder = Encoder.load(path, device="cpu", precision="int8", runtime="openvino")
    assert (encoder.describe()["runtime"], encoder.describe()["precision"]) == (OPENVINO, "int8")
    for reference_side, side in [
        (reference.encode_texts(TEXTS), encoder.encode_texts(TEXTS)),
        (
            reference.encode_queries(QUERIES, INSTRUCTION),
            encoder.encode_queries(QUERIES, INSTRUCTION),
        ),
    ]:
        cosines = np.sum(side * reference_side, axis=1)
        assert cosines.min() > 0.99, cosines
        assert np.abs(side - reference_side).max() > 1e-6  # the int8 copy ran, not fp32
    after = set((model_cache / "openvino").iterdir())
    assert len(after - before) == 1  # its own cache folder
    again = Encoder.load(path, device="cpu", precision="int8", runtime="openvino")
    assert np.abs(again.encode_texts(TEXTS) - encoder.encode_texts(TEXTS)).max() < 1e-6


@pytest.mark.parametrize("model_path", ["tiny_bert_path", "tiny_mistral_path"])
def test_openvino_vectors_match_torch_fp32(model_path, request, model_cache, monkeypatch):
    """Documents of different lengths in one padded batch (right padding for BERT, left for
    the Mistral profile) and queries whose instruction is left out of the mean."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(model_cache))
    path = str(request.getfixturevalue(model_path))
    reference = Encoder.load(path, device="cpu", precision="fp32", runtime="torch")
    encoder = Encoder.load(path, device="cpu", runtime="openvino")
    assert (encoder.runtime, encoder.precision) == (OPENVINO, "fp32")
    assert encoder.describe()["runtime"] == OPENVINO
    for reference_side, side in [
        (reference.encode_texts(TEXTS), encoder.encode_texts(TEXTS)),
        (
            reference.encode_queries(QUERIES, INSTRUCTION),
            encoder.encode_queries(QUERIES, INSTRUCTION),
        ),
    ]:
        assert side.shape == reference_side.shape
        assert np.abs(side - reference_side).max() < 1e-4
    assert encoder.inference_network() is not encoder.model  # the OpenVINO copy ran


def test_the_converted_model_is_cached_and_reused(tiny_bert_path, model_cache, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(model_cache))
    first = Encoder.load(str(tiny_bert_path), device="cpu", runtime="openvino")
    vectors = first.encode_texts(TEXTS)
    key = first._cache_key
    saved = [p for p in (model_cache / "openvino").glob("*/model.xml") if p.stat().st_size]
    assert saved and all(p.with_suffix(".bin").stat().st_size > 0 for p in saved)
    assert key == first.fingerprint

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr("engine.runtime._convert", no_conversion)
    second = Encoder.load(str(tiny_bert_path), device="cpu", runtime="openvino")
    assert np.abs(second.encode_texts(TEXTS) - vectors).max() < 1e-6


def test_the_copy_follows_weight_updates(tiny_bert_path, model_cache, monkeypatch):
    """Weights changed in place (a training step): a fresh conversion, never the stale cache."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(model_cache))
    encoder = Encoder.load(str(tiny_bert_path), device="cpu", runtime="openvino")
    before = encoder.encode_texts(TEXTS)
    cached = sorted((model_cache / "openvino").iterdir())
    with torch.no_grad():
        for parameter in encoder.model.parameters():
            parameter.mul_(1.5)
    after = encoder.encode_texts(TEXTS)
    assert np.abs(after - before).max() > 1e-3
    encoder.runtime = TORCH
    assert np.abs(encoder.encode_texts(TEXTS) - after).max() < 1e-4
    assert sorted((model_cache / "openvino").iterdir()) == cached  # changed weights: not cached


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_bench_speed_records_the_runtime(
    precision, tmp_path, model_cache, monkeypatch, tiny_bert_path
):
    """The JSON on stdout stays clean (NNCF prints its own progress when it compresses)."""
    pytest.importorskip("openvino")
    if precision == "int8":
        pytest.importorskip("nncf")
    import json

    from click.testing import CliRunner

    from bench.cli import bench

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(model_cache))
    result = CliRunner().invoke(
        bench,
        [
            "speed",
            "--synthetic",
            "12",
            "--model",
            str(tiny_bert_path),
            "--max-length",
            "32",
            "--no-baseline",
            "--runtime",
            "openvino",
            "--precision",
            precision,
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["runtime"], report["precision"]) == (OPENVINO, precision)
    suffix = "-cpu-openvino.json" if precision == "fp32" else "-cpu-int8-openvino.json"
    assert report["json"].endswith(suffix)
