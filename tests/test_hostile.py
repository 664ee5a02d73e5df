"""Issue 23's hostile cases, each against real `engine` processes, real files and a real server
on a free port (the cases live in bench/hostile.py, shared with `engine bench reliability`)."""

from __future__ import annotations

import pytest

from bench import hostile
from bench.reliability import in_process_runner, planted_files, write_corpus
from engine.app.cli import cli

click_run = in_process_runner(cli)


def assert_held(case: hostile.Case) -> None:
    assert case.held, case
    assert (case.lost, case.wrong_answers, case.tracebacks, case.server_crashes) == (0, 0, 0, 0), (
        case
    )


@pytest.fixture(scope="module")
def planted_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus, index_dir = root / "corpus", root / "index"
    write_corpus(corpus, planted_files())
    outcome = click_run(["index", str(corpus), "--index", str(index_dir)])
    assert outcome.exit_code == 0, outcome.stderr
    return root, corpus, index_dir


def test_corpus_with_lone_surrogate_and_non_utf8_name_is_indexed(tmp_path):
    assert_held(hostile.corpus_with_bad_text(tmp_path, click_run))


def test_cli_query_that_is_not_utf8_answers(planted_index):
    assert_held(hostile.cli_query_not_utf8(planted_index[2]))


@pytest.mark.parametrize("point", hostile.PUBLISH_POINTS)
def test_first_run_killed_in_publish_resumes(tmp_path, point):
    assert_held(hostile.first_run_killed_in_publish(tmp_path, click_run, point))


def test_empty_api_key_is_refused_at_start(planted_index):
    assert_held(hostile.empty_api_key(planted_index[2]))


def test_server_cases(planted_index):
    """Surrogates over HTTP, an oversized request line, HEAD, the served snapshot overwritten and
    truncated in place, a failing reopen: one real server."""
    root, corpus, index_dir = planted_index
    for case in hostile.server_cases(root, index_dir, corpus, click_run):
        assert_held(case)


def test_deadline_answers_504_and_a_client_that_hangs_up_costs_nothing(planted_index):
    root, _, index_dir = planted_index
    assert_held(hostile.deadline_and_disconnect(index_dir, root))


def test_sigterm_answers_every_request_in_flight_and_exits_0(planted_index):
    root, _, index_dir = planted_index
    case = hostile.sigterm_in_flight(index_dir, root)
    assert_held(case)
    assert case.details["exit_seconds"] < 20 + 5, case


def test_one_query_is_not_held_up_by_a_large_batch(planted_index):
    """Scaled down for the suite (2 cores shared with other work): 64 queries of 2,048
    characters and a loose bound (before: the query waited for the whole batch); the full
    256-query figure under the 1 s goal is recorded by `engine bench reliability`."""
    root, _, index_dir = planted_index
    assert_held(hostile.fairness(index_dir, root, batch=64, chars=2048, limit_s=5.0))
