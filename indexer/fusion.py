"""Fusing a dense and a lexical ranking into one (hybrid search).

Two ways, each over the top ``depth`` candidates of each side (at least 100):

- ``rrf``: reciprocal rank fusion, ``sum 1 / (rrf_k + rank)`` over the rankings a document
  is in (Cormack et al. 2009, k = 60); scores' scales do not matter, only ranks.
- ``weighted``: each side's scores min-max normalised to [0, 1] over its candidates, then
  ``alpha * dense + (1 - alpha) * lexical``; a document missing from one side gets 0 there
  (the floor of that side's candidates). ``alpha`` 1 is dense alone, 0 lexical alone.

Ties are broken by the smaller id, so fused rankings are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("rrf", "weighted")
MODES = ("dense", "lexical", "hybrid")
# What a search without --mode / --fusion / --alpha does where the index has a lexical side
# (a Milvus collection has none: dense there). Chosen by `engine bench beir --sweep`, see
# bench/results/README.md.
DEFAULT_MODE = "hybrid"
DEFAULT_METHOD = "weighted"
DEFAULT_ALPHA = 0.5
RRF_K = 60
# Candidates taken from each side before fusing (at least; k if more).
MIN_DEPTH = 100


@dataclass(frozen=True)
class Fusion:
    """How a hybrid search fuses its two rankings."""

    method: str = DEFAULT_METHOD
    alpha: float = DEFAULT_ALPHA
    rrf_k: int = RRF_K
    depth: int = MIN_DEPTH

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fusion {self.method!r} (choose {', '.join(METHODS)})")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], not {self.alpha}")
        if self.rrf_k < 1 or self.depth < 1:
            raise ValueError("rrf_k and depth must be positive")

    def candidates(self, k: int) -> int:
        """How many candidates to take from each side for ``k`` fused hits."""
        return max(self.depth, MIN_DEPTH, k)

    def describe(self) -> str:
        if self.method == "rrf":
            return f"rrf (k={self.rrf_k})"
        return f"weighted (alpha={self.alpha:g})"


def resolve(method: str | None = None, alpha: float | None = None) -> Fusion:
    """The fusion a search asked for: ``alpha`` alone means weighted; nothing, the default."""
    if method is None:
        method = "weighted" if alpha is not None else DEFAULT_METHOD
    if method == "rrf" and alpha is not None:
        raise ValueError("alpha applies to the weighted fusion, not to rrf")
    return Fusion(method, DEFAULT_ALPHA if alpha is None else float(alpha))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose {', '.join(MODES)})")
    return mode


def fuse(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    k: int,
    fusion: Fusion = Fusion(),  # noqa: B008 - frozen
) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` fused (scores, ids) of one query from its dense and lexical
    (scores, ids), each best first; ids < 0 (empty slots) are ignored."""
    dense_scores, dense_ids = _valid(*dense)
    lexical_scores, lexical_ids = _valid(*lexical)
    fused: dict[int, float] = {}
    if fusion.method == "rrf":
        for ids in (dense_ids, lexical_ids):
            for rank, doc in enumerate(ids.tolist(), start=1):
                fused[doc] = fused.get(doc, 0.0) + 1.0 / (fusion.rrf_k + rank)
    else:
        for weight, scores, ids in (
            (fusion.alpha, dense_scores, dense_ids),
            (1.0 - fusion.alpha, lexical_scores, lexical_ids),
        ):
            for doc, value in zip(ids.tolist(), min_max(scores).tolist(), strict=True):
                fused[doc] = fused.get(doc, 0.0) + weight * value
    ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return (
        np.asarray([score for _, score in ranked], dtype=np.float32),
        np.asarray([doc for doc, _ in ranked], dtype=np.int64),
    )


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over the candidates (all 1 when they are all equal)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0.0:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


def _valid(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).reshape(-1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    keep = ids >= 0
    return scores[keep], ids[keep]
