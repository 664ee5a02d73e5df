"""Inference precision: how encoding uses a CPU's (or GPU's) bf16 hardware.

* ``fp32``: strict fp32, the reference (sentence-transformers' numbers).
* ``mixed``: fp32 tensors, but oneDNN may compute fp32 matrix products with bf16
  instructions (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``). On
  the AVX512-BF16 EPYC where it was measured, vectors stay within 2e-7 of
  fp32 (the same top-10 lists) and encoding is about 1.5x as fast.
* ``bf16``: on CPU, ``torch.autocast("cpu", dtype=torch.bfloat16)`` (2-3x as
  fast as fp32; vectors within about 2e-3, so SciFact nDCG@10 moves by up to
  0.003); on CUDA, bf16 weights.
* ``int8`` (CPU only, opt-in: vectors move well beyond what keeps BEIR top-10 sets):
  int8 weights, activations quantized at run time. On a CPU with int8 dot products
  (AVX512-VNNI or AMX) and the ``openvino`` extra installed it runs on OpenVINO
  (engine/runtime.py: weights per output channel, activations per token in groups of
  32; vectors within ~1.3e-3 in cosine of fp32); elsewhere on torch's dynamic
  quantization of a copy's linear layers (activations per batch: vectors move by up to
  ~5e-2). Figures: bench/results/README.md, "CPUs without bf16".
* ``auto``: bf16 on CUDA; ``mixed`` on a CPU with native bf16 (AVX512-BF16 or
  AMX), fp32 on other CPUs, which would only emulate bf16 (there run by OpenVINO when
  it is installed: engine/runtime.py). A oneDNN ISA cap
  (``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16``, e.g. ``AVX2``) counts as a
  CPU without bf16: oneDNN then cannot use the instructions ``mixed`` relies on.

Figures: bench/results/README.md, "Precision on CPU" and "CPUs without bf16". Only inference is affected:
training's forward/backward never runs under these settings. No torch import at
module level: the CLI's options import the names below.
"""

from __future__ import annotations

import os

PRECISION_ENV = "ENGINE_PRECISION"
AUTO = "auto"
FP32 = "fp32"
MIXED = "mixed"
BF16 = "bf16"
INT8 = "int8"
PRECISIONS = (AUTO, FP32, MIXED, BF16, INT8)

# oneDNN's ISA cap (its documented environment variable) and the caps that leave no
# native bf16 dot products (AVX2_VNNI_2 only converts to bf16).
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
ISA_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)

# The ISA caps (oneDNN's and OpenVINO's variables) that leave no AVX512-VNNI or AMX int8
# dot products. AVX2_VNNI counts as none: OpenVINO's int8 path was not measured there.
OPENVINO_ISA_ENV = "OV_CPU_MAX_ISA"
ISA_CAPS_WITHOUT_INT8_DOT = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"}
)


def cpu_has_int8_dot_products() -> bool:
    """Whether this CPU has AVX512-VNNI or AMX int8 dot products and neither oneDNN nor
    OpenVINO is capped below them: what makes OpenVINO's int8 faster than its fp32 (on
    AVX2 alone it was slower: bench/results/cpu-without-bf16-trials.txt)."""
    return _cpu_offers(
        ("_is_vnni_supported", "_is_amx_tile_supported"),
        (ONEDNN_ISA_ENV, OPENVINO_ISA_ENV),
        ISA_CAPS_WITHOUT_INT8_DOT,
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX tiles)
    and oneDNN may use them (no ``ONEDNN_MAX_CPU_ISA`` cap below bf16)."""
    return _cpu_offers(
        ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
        (ONEDNN_ISA_ENV,),
        ISA_CAPS_WITHOUT_BF16,
    )


def _cpu_offers(checks: tuple[str, ...], cap_variables: tuple[str, ...], caps_without) -> bool:
    """Any of torch's CPU feature ``checks`` true, unless one of ``cap_variables`` holds an
    ISA cap in ``caps_without`` (an emulated older CPU)."""
    for variable in cap_variables:
        if os.environ.get(variable, "").strip().upper() in caps_without:
            return False
    import torch

    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def precision_choice(requested: str | None) -> str:
    """The precision asked for: ``requested``, else ``$ENGINE_PRECISION``, else ``auto``."""
    from engine.errors import EngineError

    choice = (requested or os.environ.get(PRECISION_ENV) or AUTO).strip().lower()
    if choice not in PRECISIONS:
        raise EngineError(
            f"precision must be one of {', '.join(PRECISIONS)}, not {choice!r} "
            f"(--precision or ${PRECISION_ENV})"
        )
    return choice


def resolve_precision(requested: str | None, device_type: str) -> str:
    """``fp32``, ``mixed``, ``bf16`` or ``int8`` for ``requested`` (None: ``$ENGINE_PRECISION``,
    else ``auto``)."""
    from engine.errors import EngineError

    choice = precision_choice(requested)
    if choice == INT8 and device_type != "cpu":
        raise EngineError(f"precision int8 runs on CPU only, not on {device_type}")
    if choice != AUTO:
        return choice
    if device_type == "cuda":
        return BF16
    if device_type == "cpu" and cpu_has_native_bf16():
        return MIXED
    return FP32


def quantize_linear_layers(model):
    """An int8 copy of ``model`` for CPU inference: every ``nn.Linear`` dynamically quantized.

    Weights are quantized per output channel once; activations per batch at run time.
    A PEFT model is merged first (its LoRA layers wrap the linear layers). The
    original stays untouched, for training and the other precisions.
    """
    import copy
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    network = copy.deepcopy(model)
    if hasattr(network, "merge_and_unload"):
        network = network.merge_and_unload()
    with warnings.catch_warnings():
        # torch points eager-mode quantization users to torchao; this API still works.
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            network, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        ).eval()
