"""The helpers every benchmark shares: one percentile method for every recorded latency."""

from __future__ import annotations

import pytest

from bench.common import latency_ms, percentile


def test_percentile_interpolates_between_the_nearest_ranks():
    values = [float(i) for i in range(20, 0, -1)]  # 20 latencies, unsorted
    # Rank 0.95 x 19 = 18.05: 5% of the way from the 19th smallest (19) to the 20th (20).
    assert percentile(values, 95) == pytest.approx(19.05)
    assert percentile(values, 50) == pytest.approx(10.5)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_latency_ms_reports_milliseconds():
    seconds = [0.001 * i for i in range(1, 101)]
    latency = latency_ms(seconds)
    assert latency == {"p50_ms": 50.5, "p95_ms": 95.05, "p99_ms": 99.01, "mean_ms": 50.5}
    assert latency_ms([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
