"""Inference precision on CPU: fp32, mixed (oneDNN bf16 matmuls), bf16 autocast, and auto."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.encoder import Encoder
from engine.errors import EngineError
from engine.precision import (
    BF16,
    FP32,
    INT8,
    MIXED,
    ONEDNN_ISA_ENV,
    PRECISION_ENV,
    cpu_has_native_bf16,
    resolve_precision,
)
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


def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32(tiny_bert_path, monkeypatch):
    """``ONEDNN_MAX_CPU_ISA=AVX2`` (how a CPU without bf16 is emulated) is a CPU without bf16."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setenv(ONEDNN_ISA_ENV, "avx2")
    assert not cpu_has_native_bf16()
    assert resolve_precision(None, "cpu") == FP32
    assert Encoder.load(str(tiny_bert_path), device="cpu").precision == FP32
    monkeypatch.setenv(ONEDNN_ISA_ENV, "AVX512_CORE_VNNI")
    assert resolve_precision("auto", "cpu") == FP32
    # A cap that keeps bf16 leaves the hardware's answer.
    monkeypatch.delenv(ONEDNN_ISA_ENV)
    native = cpu_has_native_bf16()
    monkeypatch.setenv(ONEDNN_ISA_ENV, "AVX512_CORE_AMX")
    assert cpu_has_native_bf16() == native


def test_int8_is_for_cpus_only():
    with pytest.raises(EngineError, match="int8 runs on CPU only"):
        resolve_precision(INT8, "cuda")
    assert resolve_precision("INT8", "cpu") == INT8


QUANTIZED_LINEAR = torch.ao.nn.quantized.dynamic.Linear
INT8_TEXTS = ["plants make sugar from light and water", "the sky is blue", "what is the key " * 20]


@pytest.mark.parametrize("model_path", ["tiny_bert_path", "tiny_mistral_path"])
def test_int8_vectors_stay_close_to_fp32(model_path, request):
    """int8 runs a quantized copy; the vectors stay within 0.05 of fp32 (cosine > 0.99) on the
    tiny models, and the model itself (what training uses) keeps its fp32 linear layers."""
    path = str(request.getfixturevalue(model_path))
    reference = Encoder.load(path, device="cpu", precision=FP32).encode_texts(INT8_TEXTS)
    encoder = Encoder.load(path, device="cpu", precision=INT8)
    assert encoder.describe()["precision"] == INT8
    vectors = encoder.encode_texts(INT8_TEXTS)
    network = encoder.inference_network()
    assert any(isinstance(m, QUANTIZED_LINEAR) for m in network.modules())
    assert not any(isinstance(m, QUANTIZED_LINEAR) for m in encoder.model.modules())
    assert vectors.dtype == np.float32
    assert 1e-7 < np.abs(vectors - reference).max() < 0.05
    assert ((vectors * reference).sum(axis=1) > 0.99).all()
    assert encoder.inference_network() is network  # made once, not per batch


def test_int8_copy_follows_weight_updates(tiny_bert_path):
    """After an in-place weight change (a training step) the quantized copy is made anew."""
    encoder = Encoder.load(str(tiny_bert_path), device="cpu", precision=INT8)
    before = encoder.encode_texts(INT8_TEXTS)
    first = encoder.inference_network()
    with torch.no_grad():
        encoder.model.encoder.layer[0].intermediate.dense.weight.mul_(3.0)
    after = encoder.encode_texts(INT8_TEXTS)
    assert encoder.inference_network() is not first
    assert np.abs(after - before).max() > 1e-3
    encoder.precision = FP32
    assert np.abs(encoder.encode_texts(INT8_TEXTS) - after).max() < 0.05


def test_int8_merges_a_lora_adapter(tiny_bert_path):
    """A PEFT model is merged before quantizing: its LoRA update is in the int8 vectors."""
    from peft import LoraConfig, get_peft_model

    base = Encoder.load(str(tiny_bert_path), device="cpu", precision=FP32)
    plain = base.encode_texts(INT8_TEXTS)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 2.0)  # a trained adapter: B is no longer zero
    adapted = Encoder.from_model(peft_model, base.tokenizer, base.profile, precision=FP32)
    reference = adapted.encode_texts(INT8_TEXTS)
    assert np.abs(reference - plain).max() > 0.1  # the adapter matters
    adapted.precision = INT8
    vectors = adapted.encode_texts(INT8_TEXTS)
    assert np.abs(vectors - reference).max() < 0.05
    assert ((vectors * reference).sum(axis=1) > 0.99).all()
    assert not any("lora" in name for name, _ in adapted.inference_network().named_modules())


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
