"""Inference precision on CPU: fp32, mixed (oneDNN bf16 matmuls), bf16 autocast, and auto."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.encoder import Encoder
from engine.errors import EngineError
from engine.precision import BF16, FP32, MIXED, PRECISION_ENV, resolve_precision
from tests.tolerances import BF16_TOLERANCE, MIXED_TOLERANCE

TEXTS = [
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "short",
    "The TCP three-way handshake is SYN, SYN-ACK, ACK. " * 30,
    "Sourdough starters are wild yeast and lactic acid bacteria living in flour paste.",
]

# Every test here compares vectors that the CPU's precision moves: CI runs them again in fp32.
pytestmark = pytest.mark.precision


@pytest.fixture(scope="module")
def fp32_vectors(default_encoder) -> np.ndarray:
    default_encoder.precision = FP32
    try:
        return default_encoder.encode_texts(TEXTS, max_length=256)
    finally:
        default_encoder.precision = resolve_precision(None, "cpu")


@pytest.mark.parametrize(
    ("precision", "tolerance"), [(MIXED, MIXED_TOLERANCE), (BF16, BF16_TOLERANCE)]
)
def test_reduced_precision_vectors_stay_close_to_fp32(
    default_encoder, fp32_vectors, precision, tolerance
):
    previous = default_encoder.precision
    default_encoder.precision = precision
    try:
        vectors = default_encoder.encode_texts(TEXTS, max_length=256)
    finally:
        default_encoder.precision = previous
    assert vectors.dtype == np.float32
    difference = np.abs(vectors - fp32_vectors).max()
    assert difference < tolerance
    if precision == BF16:
        assert difference > 1e-6  # autocast really ran in bf16
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # Same nearest neighbour for every text.
    assert ((vectors @ vectors.T).argmax(1) == (fp32_vectors @ fp32_vectors.T).argmax(1)).all()


def test_settings_are_restored_after_encoding(default_encoder):
    """Neither autocast nor oneDNN's bf16 setting leaks to the caller (or to training)."""
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    saved = default_encoder.precision
    try:
        for precision in (MIXED, BF16):
            default_encoder.precision = precision
            for _positions, _vectors in default_encoder.iter_encode(
                default_encoder.tokenize(TEXTS)
            ):
                assert not torch.is_autocast_enabled("cpu")
                assert matmul.fp32_precision == before
    finally:
        default_encoder.precision = saved  # the shared fixture, as other tests expect it


def test_auto_follows_the_cpu_and_the_environment(monkeypatch):
    import engine.precision as precision

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision(None, "cpu") == MIXED
    assert resolve_precision("auto", "cuda") == BF16
    # A CPU without native bf16 would only emulate it: fp32.
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision(None, "cpu") == FP32
    assert resolve_precision("BF16", "cpu") == BF16
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision(None, "cpu") == FP32
    assert resolve_precision("mixed", "cpu") == MIXED  # an explicit choice beats the variable
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(EngineError, match="ENGINE_PRECISION"):
        resolve_precision(None, "cpu")


def test_load_records_the_precision(tiny_bert_path, monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    encoder = Encoder.load(str(tiny_bert_path), device="cpu")
    assert encoder.precision == BF16
    assert next(encoder.model.parameters()).dtype == torch.float32  # CPU weights stay fp32
    assert encoder.describe()["precision"] == BF16
    strict = Encoder.load(str(tiny_bert_path), device="cpu", precision="fp32")
    assert strict.describe()["precision"] == FP32
    # Weights loaded in bf16 are bf16, whatever was asked.
    bf16 = Encoder.load(str(tiny_bert_path), device="cpu", dtype=torch.bfloat16, precision="fp32")
    assert bf16.precision == BF16
    vectors = bf16.encode_texts(["a b c", "d e"])
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
