"""How close floats must be across CPUs: ids and order compare exactly up to near-ties, scores
within a tolerance.

The same query can score a little differently in a batch of 1 and in a batch of 20 (other
matrix shapes, other summation order), and differently again on a CPU with bf16 hardware,
where the default precision (``auto`` -> ``mixed``) lets oneDNN compute fp32 products in bf16.
"""

from __future__ import annotations

import pytest
import torch

from engine.precision import FP32, MIXED

# Strict fp32: only the summation order differs (measured ~1e-7 on AVX2 and AVX-512 CPUs).
FP32_TOLERANCE = 1e-4
# bf16 products round each input to 8 bits of mantissa: unit vectors move by up to ~1e-3.
BF16_TOLERANCE = 1e-2
# mixed was measured within 2e-7 of fp32 on an AVX512-BF16 CPU; with AMX tiles oneDNN rounds
# to bf16 in one pass (8e-4 seen), so there it only has to be as close as bf16.
MIXED_TOLERANCE = BF16_TOLERANCE if torch.cpu._is_amx_tile_supported() else 1e-5


def vector_tolerance(precision: str) -> float:
    """The largest difference of two unit vectors' entries for one text encoded in other
    batches (other shapes, padding) or compared with a plain forward pass, under ``precision``."""
    if precision == FP32:
        return 1e-5
    if precision == MIXED:
        return MIXED_TOLERANCE
    return BF16_TOLERANCE


def score_tolerance(precision: str) -> float:
    """The largest difference of cosine scores (or vector entries) expected under ``precision``."""
    if precision == FP32:
        return FP32_TOLERANCE
    if precision == MIXED:
        return max(MIXED_TOLERANCE, FP32_TOLERANCE)
    return BF16_TOLERANCE


def assert_same_hits(got: list[dict], expected: list[dict], precision: str) -> None:
    """Hit dicts equal field by field and scores within the tolerance; ids in the same order
    except where two hits score within the tolerance of each other (a near-tie may swap, and
    at the k-th place a near-tie may bring in another document)."""
    assert len(got) == len(expected)
    tolerance = score_tolerance(precision)
    got_scores = [hit["score"] for hit in got]
    assert got_scores == pytest.approx([hit["score"] for hit in expected], abs=tolerance)
    assert [hit.get("rank") for hit in got] == [hit.get("rank") for hit in expected]
    cutoff = min(got_scores + [hit["score"] for hit in expected], default=0.0)
    mine = {hit["doc_id"]: hit for hit in got}
    for place, theirs in enumerate(expected):
        doc_id = theirs["doc_id"]
        if got[place]["doc_id"] != doc_id:  # allowed only among near-ties
            assert got[place]["score"] == pytest.approx(theirs["score"], abs=2 * tolerance), (
                f"place {place}: {got[place]['doc_id']} instead of {doc_id}"
            )
        if doc_id not in mine:  # dropped past k: only a near-tie with the last hit may be
            assert theirs["score"] == pytest.approx(cutoff, abs=2 * tolerance), doc_id
            continue
        unranked = {"score": None, "rank": None}
        assert {**mine[doc_id], **unranked} == {**theirs, **unranked}
        assert mine[doc_id]["score"] == pytest.approx(theirs["score"], abs=tolerance)


def assert_same_results(got: list[list[dict]], expected: list[list[dict]], precision: str) -> None:
    """:func:`assert_same_hits` for every query of a batch."""
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert_same_hits(mine, theirs, precision)
