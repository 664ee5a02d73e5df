"""`engine bench filter` end to end at a small size: a record with every latency and k hits."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bench.cli import bench


def test_filter_bench_writes_its_record(tmp_path):
    result = CliRunner().invoke(
        bench,
        ["filter", "--documents", "3000", "--dim", "16", "--queries", "3", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "filter-3k-flat-fp16.json").read_text())
    assert record["documents"] == 3000 and record["machine"]
    for label in ("where group = 7", "source s/7/*"):
        row = record["results"][label]
        assert row["matching_documents"] == 30
        assert row["total"]["p50_ms"] >= row["filter_in_sqlite"]["p50_ms"] > 0
