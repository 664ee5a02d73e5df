"""The ``--eval-data`` hook: the bench engineer's BEIR benchmark, before and after training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.encoder import Encoder


def beir_evaluator(max_length: int | None) -> Callable[[Encoder, Path], dict]:
    """A function scoring an encoder on one BEIR folder (test split)."""

    def evaluate(encoder: Encoder, data_dir: Path) -> dict:
        from bench.beir import evaluate_dataset  # noqa: F401  (filled in once bench/beir.py exists)

        raise NotImplementedError

    return evaluate
