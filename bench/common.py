"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def file_slug(name: str) -> str:
    """A file-name-safe short name: the last part of a model path or hub id."""
    last = name.rstrip("/").split("/")[-1] or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in last)


# Variables that cap the instruction sets torch's kernels use: how a run on this CPU
# emulates an older one (e.g. an AVX2 CPU without bf16; bench/results/README.md).
ISA_CAP_VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY",
    "FBGEMM_ENABLE_INSTRUCTIONS",
    # OpenVINO's CPU plugin: its oneDNN fork reads ONEDNN_MAX_CPU_ISA, its own kernels this.
    "OV_CPU_MAX_ISA",
)


def encoding_suffix(precision: str, runtime: str = "torch") -> str:
    """``-<precision>[-<runtime>]`` for result and cache names; torch fp32 (the reference)
    keeps the suffix-free name."""
    parts = ([] if precision == "fp32" else [precision]) + ([] if runtime == "torch" else [runtime])
    return "".join(f"-{part}" for part in parts)


def machine() -> dict[str, Any]:
    """The CPU, library versions and threads, and any instruction-set caps in force."""
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
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {name: os.environ[name] for name in ISA_CAP_VARIABLES if name in os.environ},
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def command_line(context) -> str:
    """The ``engine ...`` command that reproduces a click invocation (options that differ
    from their defaults), for the JSON records benchmarks write."""
    import shlex

    import click

    words = ["engine", *context.command_path.split()[1:]]
    for param in context.command.params:
        value = context.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        if value is None or value == param.default or param.name in ("as_json", "quiet"):
            continue
        if isinstance(param, click.Option) and param.is_flag:
            flags = param.opts if value else param.secondary_opts
            if flags:
                words.append(flags[0])
            continue
        words += [param.opts[0], str(value)]
    return " ".join(shlex.quote(word) for word in words)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation between the two nearest ranks
    (numpy's default method, R's type 7); None for no values. Every benchmark's p50/p95/p99
    comes from here, so recorded latencies compare across benchmarks."""
    import numpy as np

    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), p))


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and mean of latencies given in seconds, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 3)

    mean = sum(seconds) / len(seconds) if len(seconds) else None
    return {
        "p50_ms": ms(percentile(seconds, 50)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "mean_ms": ms(mean),
    }
