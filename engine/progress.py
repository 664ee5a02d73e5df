"""Progress output for long work, one switch for every command.

Kept apart from :mod:`engine.encoder` so commands can show progress without
importing torch (``engine --help`` and ``engine info`` stay fast).
"""

from __future__ import annotations

import os


def progress_enabled(requested: bool = True) -> bool:
    """Progress output when asked for, unless ``ENGINE_NO_PROGRESS`` is set (CI, tests, logs)."""
    return requested and not os.environ.get("ENGINE_NO_PROGRESS")


def progress_bar(total: int | None, desc: str, *, enabled: bool, unit: str = "doc"):
    """A tqdm bar, or None when progress output is off (``total`` None: unknown;
    ``unit`` "B": bytes, shown as kB/MB/GB)."""
    if not progress_enabled(enabled):
        return None
    from tqdm.auto import tqdm

    scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **scale)
