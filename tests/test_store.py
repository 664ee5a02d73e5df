"""The store's guards on real SQLite files and FAISS indexes: one writer, graph compaction,
databases from a newer engine."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.errors import EngineError
from indexer import vector_index
from indexer.folder import WriterLock, read_pointer
from indexer.schema import MIGRATIONS
from indexer.snapshots import COMPACT_TOMBSTONES
from indexer.store import Store, Writer
from indexer.vector_index import SearchKnobs
from tests.test_vector_index import clustered, fill, rows, settings


def one_line_error(result) -> str:
    assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    return lines[0]


def test_a_second_writer_is_refused_and_the_first_finishes(tmp_path, tiny_bert_path):
    folder = tmp_path / "index"
    fill(folder, "flat", n=50)
    with Writer(folder, settings(None), rebuild=False) as store:
        store.load_faiss()
        with pytest.raises(EngineError, match="another `engine index` is writing"):
            Writer(folder, settings(None), rebuild=False).__enter__()
        # Every writer of the CLI takes the same lock: refused with one line, nothing written.
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        (corpus / "a.txt").write_text("a document that must wait for the running writer")
        databases = sorted(folder.glob("index-*.db"))
        index = CliRunner().invoke(
            cli, ["index", str(corpus), "--index", str(folder), "--model", str(tiny_bert_path)]
        )
        assert "another `engine index` is writing" in one_line_error(index)
        repair = CliRunner().invoke(cli, ["check", "--repair", "--index", str(folder)])
        assert "another `engine index` is writing" in one_line_error(repair)
        assert sorted(folder.glob("index-*.db")) == databases
        store.commit(upsert=rows(["late"]), vectors=clustered(1, seed=3))
    reader = Store.open(folder)
    assert reader.count() == 51 and "late" in reader.doc_ids().values()
    reader.close()
    with WriterLock(folder):  # released by both: the next writer gets it
        pass


def test_hnsw_tombstones_are_compacted_past_a_quarter(tmp_path):
    """An HNSW graph cannot drop nodes: removals are tombstones until they pass 25% of the
    index, then publishing rebuilds the graph from SQLite without them."""
    folder = tmp_path / "index"
    vectors = clustered(400, seed=1)
    fill(folder, "hnsw", n=400)

    def remove(names: list[str]) -> None:
        with Writer(folder, settings(None), rebuild=False) as store:
            store.load_faiss()
            ids = {v: k for k, v in store.doc_ids().items()}
            store.commit(remove=[ids[name] for name in names])

    def tombstone_rows(store: Store) -> int:
        return store.db.execute("SELECT count(*) FROM tombstones").fetchone()[0]

    remove([f"d{i}" for i in range(60)])  # 60 of 340 live: under a quarter, kept as tombstones
    below = Store.open(folder)
    assert 60 <= COMPACT_TOMBSTONES * below.count()
    assert below.load_faiss().ntotal == 400
    assert tombstone_rows(below) == 60 and len(below.snapshots.tombstones) == 60
    generation = int(below.settings.get("index_generation", 0))
    below.close()

    remove([f"d{i}" for i in range(60, 100)])  # 100 of 300 live: past a quarter
    after = Store.open(folder)
    index = after.load_faiss()
    assert tombstone_rows(after) == 0 and len(after.snapshots.tombstones) == 0
    assert index.ntotal == after.count() == 300
    assert int(after.settings["index_generation"]) > generation  # a new graph, built afresh
    assert set(vector_index.index_ids(index).tolist()) == set(after.doc_ids())
    # Searches over the rebuilt graph are exact here (ef_search covers the whole index).
    names = after.doc_ids()
    ids = np.asarray(sorted(names))
    stored = after.vectors(ids.tolist())
    queries = vectors[100:120]
    truth = ids[np.argsort(-(queries @ stored.T), axis=1)[:, :10]]
    _, found = after.search(queries, 10, SearchKnobs(ef_search=512))
    assert [names[int(i)] for i in found[:, 0]] == [f"d{i}" for i in range(100, 120)]
    assert [set(row) for row in found.tolist()] == [set(row) for row in truth.tolist()]
    after.close()


def test_a_database_from_a_newer_engine_is_refused_untouched(tmp_path):
    folder = tmp_path / "index"
    fill(folder, "flat", n=20)
    path = folder / read_pointer(folder)
    newer = len(MIGRATIONS) + 1
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(EngineError, match="made by a newer engine; upgrade engine"):
        Store.open(folder)
    for command in (["info"], ["search", "anything"]):
        result = CliRunner().invoke(cli, [*command, "--index", str(folder)])
        assert "made by a newer engine" in one_line_error(result), command
    with pytest.raises(EngineError, match="newer engine"):
        Writer(folder, settings(None), rebuild=False).__enter__()
    assert path.read_bytes() == before  # neither migrated nor rewritten
