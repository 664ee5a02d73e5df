"""The reliability suite: kill -9 during first and incremental runs, damage to every file of an
index. Real processes for the kills, real files, the real default model, FAISS and SQLite.

The same rounds, many more of them, are recorded by `engine bench reliability`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.reliability import (
    FAULTS,
    FILES,
    PLANTED,
    committed_documents,
    fault_round,
    filler_corpus,
    in_process_runner,
    index_state,
    kill_round,
    planted_files,
    write_corpus,
)
from engine.app.cli import cli

click_run = in_process_runner(cli)


@pytest.fixture(scope="module")
def fault_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    corpus, base = root / "corpus", root / "base"
    write_corpus(corpus, planted_files() | filler_corpus(12))
    outcome = click_run(["index", str(corpus), "--index", str(base), "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    return root, corpus, base


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("file", FILES)
def test_damaged_file_never_crashes_or_answers_wrongly_and_is_repaired(fault_base, file, fault):
    root, corpus, base = fault_base
    result = fault_round(base, corpus, root, file=file, fault=fault, run=click_run, seed=7)
    assert result.tracebacks == 0, result
    assert result.silent_wrong_answers == 0, result
    assert result.repair in ("check --repair", "index --rebuild"), result
    assert result.wrong_after_repair == 0, result
    assert result.lost_after_next_run == result.duplicated_after_next_run == 0, result
    assert result.lexical_consistent_after_next_run, result
    if file == "lexical":
        # The first lexical search finds the damage, says so and rebuilds the index from
        # SQLite (on disk, under the writer lock), so check finds it sound afterwards.
        assert result.warned_by_search or result.detected_by_check, result
    elif (file, result.fault) != ("snapshot", "delete"):  # a missing snapshot is no damage
        assert result.detected_by_check, result
    if file == "database":
        # Searches are refused in one line that names the repair, never answered from junk.
        assert result.refused_in_one_line >= len(PLANTED), result
    if file in ("pointer", "snapshot", "lexical"):
        assert result.encoded_by_next_run == 0, result  # nothing was re-encoded
    if file == "lexical":
        # Dense searches never touch it; lexical ones rebuild it from SQLite with a warning.
        assert result.refused_in_one_line == 0, result


@pytest.mark.parametrize(
    ("kind", "seed"),
    [("first", 1), pytest.param("first", 9, marks=pytest.mark.slow), ("incremental", 3)],
)
def test_kill_minus_nine_loses_nothing_and_resumes(tmp_path, kind, seed):
    """Seeds whose random kill point falls inside the encoding (8 and 29 of 60 committed)."""
    round_ = kill_round(
        tmp_path / "round",
        kind=kind,
        documents=60,
        seed=seed,
        search=click_run,
        checkpoint_documents=8,
    )
    assert not round_.finished_before_kill, round_
    assert round_.missing_before_next_run > 0, round_  # killed before the end of its encoding
    assert (round_.lost, round_.duplicated, round_.wrong_answers) == (0, 0, 0), round_
    assert round_.faiss_consistent, round_
    assert round_.reencoded == 0, round_  # the next run encoded only what was missing
    # The lexical index: caught up with what the killed run committed, in step after the next.
    assert round_.lexical_consistent, round_
    assert round_.lexical_wrong_answers == 0, round_
    if kind == "first" and round_.committed_at_kill:
        assert round_.searchable_during_run, round_
        assert round_.lexical_searchable_after_kill, round_


def test_first_run_answers_searches_from_its_first_checkpoint(tmp_path):
    """While a first run is going, searches answer from what it has committed."""
    corpus, index_dir = tmp_path / "corpus", tmp_path / "index"
    write_corpus(corpus, planted_files() | filler_corpus(400))
    env = {**os.environ, "ENGINE_CHECKPOINT_DOCUMENTS": "4", "ENGINE_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "engine", "index", str(corpus), "--index", str(index_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while committed_documents(index_dir) < 4 and time.time() < deadline:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
        outcome = click_run(["search", "river delta", "--index", str(index_dir), "--json"])
        lexical = click_run(
            ["search", "river delta", "--index", str(index_dir), "--json", "--mode", "lexical"]
        )
        still_running = process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert still_running, "the run ended before the search: nothing was tested"
    assert outcome.exit_code == 0, outcome.stderr
    hits = [json.loads(line)["doc_id"] for line in outcome.stdout.splitlines()]
    state = index_state(index_dir)
    assert 4 <= len(hits) and set(hits) <= set(state.doc_ids)  # answered from what is committed
    # Lexically too: the writer keeps the BM25 index in step from its first checkpoint.
    assert lexical.exit_code == 0, lexical.stderr
    lexical_hits = [json.loads(line)["doc_id"] for line in lexical.stdout.splitlines()]
    assert lexical_hits and set(lexical_hits) <= set(state.doc_ids)
    assert state.faiss_consistent and state.duplicated() == 0
