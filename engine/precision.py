"""Inference precision: how encoding uses a CPU's (or GPU's) bf16 hardware.

* ``fp32``: strict fp32, the reference (sentence-transformers' numbers).
* ``mixed``: fp32 tensors, but oneDNN may compute fp32 matrix products with bf16
  instructions (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``). On
  the AVX512-BF16 EPYC where it was measured, vectors stay within 2e-7 of
  fp32 (the same top-10 lists) and encoding is about 1.5x as fast.
* ``bf16``: on CPU, ``torch.autocast("cpu", dtype=torch.bfloat16)`` (2-3x as
  fast as fp32; vectors within about 2e-3, so SciFact nDCG@10 moves by up to
  0.003); on CUDA, bf16 weights.
* ``auto``: bf16 on CUDA; ``mixed`` on a CPU with native bf16 (AVX512-BF16 or
  AMX), fp32 on other CPUs, which would only emulate bf16.

Figures: bench/results/README.md, "Precision on CPU". Only inference is affected:
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
PRECISIONS = (AUTO, FP32, MIXED, BF16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX tiles)."""
    import torch

    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, check, lambda: False)()) for check in checks)


def resolve_precision(requested: str | None, device_type: str) -> str:
    """``fp32``, ``mixed`` or ``bf16`` for ``requested`` (None: ``$ENGINE_PRECISION``, else ``auto``)."""
    from engine.errors import EngineError

    choice = (requested or os.environ.get(PRECISION_ENV) or AUTO).strip().lower()
    if choice not in PRECISIONS:
        raise EngineError(
            f"precision must be one of {', '.join(PRECISIONS)}, not {choice!r} "
            f"(--precision or ${PRECISION_ENV})"
        )
    if choice != AUTO:
        return choice
    if device_type == "cuda":
        return BF16
    if device_type == "cpu" and cpu_has_native_bf16():
        return MIXED
    return FP32
