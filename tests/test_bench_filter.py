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


def test_a_kept_store_is_reused_and_another_size_refused(tmp_path):
    kept = tmp_path / "kept"
    args = ["filter", "--dim", "16", "--queries", "2", "--store", str(kept)]
    first = CliRunner().invoke(bench, [*args, "--documents", "1000", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(bench, [*args, "--documents", "1000", "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    built = json.loads((tmp_path / "a" / "filter-1k-flat-fp16.json").read_text())
    reused = json.loads((tmp_path / "b" / "filter-1k-flat-fp16.json").read_text())
    assert built["build_s"] > 0 and reused["build_s"] is None
    assert reused["results"]["where group = 7"]["matching_documents"] == 10
    other = CliRunner().invoke(bench, [*args, "--documents", "2000", "--out", str(tmp_path / "c")])
    assert other.exit_code == 1 and "holds 1000 documents" in other.output
