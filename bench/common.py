"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def file_slug(name: str) -> str:
    """A file-name-safe short name: the last part of a model path or hub id."""
    last = name.rstrip("/").split("/")[-1] or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in last)


def machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
