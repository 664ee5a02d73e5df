"""Peak memory of one block of work: process RSS on CPU, allocated memory on CUDA."""

from __future__ import annotations

from pathlib import Path

from bench.common import peak_rss_mb


class PeakMemory:
    """Peak memory during a block: process RSS on CPU, allocated memory on CUDA.

    On Linux the RSS high-water mark is reset at entry (``/proc/self/clear_refs``),
    so each phase reports its own peak; elsewhere the process lifetime peak is used.
    """

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.start_mb: float | None = None
        self.kind = "cuda allocated" if self.device.type == "cuda" else "rss"

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "rss (process lifetime peak)"
        self.start_mb = _proc_status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        peak = _proc_status_mb("VmHWM")
        if peak is None:
            peak = peak_rss_mb()
        self.peak_mb = peak

    def to_dict(self) -> dict:
        increase = None
        if self.peak_mb is not None and self.start_mb is not None:
            increase = round(self.peak_mb - self.start_mb, 1)
        return {
            "peak_memory_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "peak_memory_increase_mb": increase,
            "memory_kind": self.kind,
        }


def _proc_status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
