"""`engine bench serve` end to end: a real server subprocess on a tiny BEIR index."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.common import machine
from engine.app.cli import cli
from tests.test_bench_beir import QUERIES, write_beir


@pytest.mark.slow
def test_bench_serve_records_every_way(tmp_path, tiny_bert_path):
    data = write_beir(tmp_path / "data" / "scifact")
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "serve",
            "--data-dir",
            str(data),
            "--model",
            str(tiny_bert_path),
            "--max-length",
            "64",
            "--clients",
            "1,4",
            "--duration",
            "1",
            "--cold-queries",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "server, 4 client(s)" in result.stdout and "in-process search()" in result.stdout
    (written,) = (tmp_path / "out").glob("serve-*-scifact-64.json")
    record = json.loads(written.read_text())
    assert record["queries"] == len(QUERIES) - 1  # judged queries only
    assert record["machine"] == machine()  # this machine, as bench/common.py records it
    # The command that reproduces the run, from the click context (not this process's argv).
    options = f"--data-dir {data} --model {tiny_bert_path} --max-length 64 --clients 1,4"
    assert record["command"].startswith(f"engine bench serve {options} ")
    assert [run["clients"] for run in record["server"]] == [1, 4]
    for run in [*record["server"], record["in_process"], record["cli_cold"]]:
        assert run["errors"] == 0 and run["ok"] > 0 and run["p50_ms"] > 0, run
    for run in record["server"]:  # where the time goes: the server's and the client's CPU
        assert run["server_cpu_ms_per_request"] > 0 and run["client_cpu_ms_per_request"] > 0
    assert record["cli_cold_with_server"]["ok"] == 1
    assert record["server_exit_code"] == 0
