"""Small helpers shared by the passkey and speed benchmarks."""

from __future__ import annotations


def file_slug(name: str) -> str:
    """A file-name-safe short name: the last part of a model path or hub id."""
    last = name.rstrip("/").split("/")[-1] or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in last)
