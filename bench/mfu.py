"""Model FLOP utilisation on a GPU: the known dense bf16 peaks and the arithmetic."""

from __future__ import annotations

# Dense bf16 tensor-core peak (TFLOP/s) by device-name fragment; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def non_embedding_parameters(model) -> int:
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings()
    return total - (embeddings.weight.numel() if embeddings is not None else 0)


def peak_tflops_for(device) -> tuple[float | None, str | None]:
    """The dense bf16 peak of a known GPU, by name; (None, name) when unknown."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment.lower() in name.lower():
            return tflops, name
    return None, name


def model_flop_utilisation(parameters: int, tokens_per_second: float, peak_tflops: float | None):
    """2 x non-embedding parameters x real tokens/s over the peak (attention FLOPs left out)."""
    if not peak_tflops:
        return None
    return round(2 * parameters * tokens_per_second / (peak_tflops * 1e12), 4)
