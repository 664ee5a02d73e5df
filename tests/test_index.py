"""Indexing and the store: incremental runs, instructions, crash safety, corrupt files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.documents import Document, read_corpus
from indexer.indexing import model_for_index, update_index
from indexer.search import search_queries
from indexer.store import Store

TOPICS = {
    "plants.txt": "Photosynthesis lets plants make sugar from light, water and carbon dioxide.",
    "tcp.md": "# TCP\nThe TCP handshake sends SYN, then SYN-ACK, then ACK before data flows.",
    "volcano.txt": "Shield volcanoes erupt runny basalt lava that flows far from the vent.",
    "chess.md": "# Castling\nIn chess, castling moves the king two squares toward a rook.",
}


def write_corpus(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def stored_vectors(index_dir: Path) -> dict[str, bytes]:
    store = Store.open(index_dir)
    rows = store.db.execute(
        "SELECT d.doc_id, v.vector FROM documents d JOIN vectors v ON v.id = d.id"
    ).fetchall()
    store.close()
    return dict(rows)


def assert_consistent(index_dir: Path, expected_doc_ids: set[str]) -> None:
    """FAISS count == SQLite count, every FAISS id resolves, no duplicate, none missing."""
    store = Store.open(index_dir)
    index = store.load_faiss()
    faiss_ids = {int(index.id_map.at(i)) for i in range(index.ntotal)}
    doc_ids = store.doc_ids()
    assert index.ntotal == store.count() == len(doc_ids)
    assert faiss_ids == set(doc_ids)
    assert sorted(doc_ids.values()) == sorted(expected_doc_ids)
    store.close()


def test_incremental_runs_encode_only_changes(tmp_path, default_encoder):
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    first = update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    assert (first.added, first.encoded, first.total) == (4, 4, 4)
    before = stored_vectors(index_dir)

    (corpus / "tcp.md").write_text("# TCP\nA TCP connection closes with FIN and ACK segments.")
    (corpus / "volcano.txt").unlink()
    (corpus / "new" / "bread.txt").parent.mkdir()
    (corpus / "new" / "bread.txt").write_text("A sourdough starter is wild yeast living in flour.")
    second = update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    assert (second.added, second.updated, second.removed, second.unchanged) == (1, 1, 1, 2)
    assert second.encoded == 2
    after = stored_vectors(index_dir)
    assert after["plants.txt"] == before["plants.txt"]  # untouched documents keep their bytes
    assert after["tcp.md"] != before["tcp.md"]
    assert_consistent(index_dir, {"plants.txt", "tcp.md", "chess.md", "new/bread.txt"})

    third = update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    assert (third.encoded, third.removed, third.unchanged) == (0, 0, 4)
    hits = search_queries(
        index_dir, ["how does a bread starter work"], k=1, encoder=default_encoder
    )
    assert hits[0][0].doc_id == "new/bread.txt"


def test_instruction_changes_only_the_query(tmp_path, default_encoder):
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    before = stored_vectors(index_dir)
    query = "how do plants make sugar"
    plain = default_encoder.encode_queries([query])
    a = default_encoder.encode_queries(
        [query], "Given a question, retrieve passages that answer it"
    )
    b = default_encoder.encode_queries([query], "Retrieve documents about geology")
    assert not np.allclose(plain, a) and not np.allclose(a, b)
    # Dense scores: an instruction changes the query's embedding (fused ranks may not move).
    hits_a = search_queries(
        index_dir,
        [query],
        k=4,
        instruction="Given a question",
        encoder=default_encoder,
        mode="dense",
    )
    hits_b = search_queries(
        index_dir, [query], k=4, instruction="Find geology", encoder=default_encoder, mode="dense"
    )
    assert [h.score for h in hits_a[0]] != [h.score for h in hits_b[0]]

    runner = CliRunner()
    for instruct in ("Given a question, retrieve passages that answer it", "Find geology facts"):
        result = runner.invoke(
            cli, ["search", query, "--index", str(index_dir), "--instruct", instruct]
        )
        assert result.exit_code == 0, result.output
    # A new default instruction is a settings change, not a re-encode.
    result = runner.invoke(
        cli,
        ["index", str(corpus), "--index", str(index_dir), "--instruct", "Find geology", "--json"],
    )
    assert json.loads(result.stdout)["encoded"] == 0
    assert stored_vectors(index_dir) == before
    assert Store.open(index_dir).settings["default_instruction"] == "Find geology"


def test_rebuild_and_model_mismatch(tmp_path, default_encoder, tiny_mistral_path):
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    tiny = Encoder.load(str(tiny_mistral_path))
    with pytest.raises(EngineError, match="--rebuild"):
        update_index(index_dir, tiny, read_corpus(corpus), progress=False)
    result = CliRunner().invoke(
        cli, ["search", "sugar", "--index", str(index_dir), "--model", str(tiny_mistral_path)]
    )
    assert result.exit_code == 1
    assert "built with model" in result.stderr and "Traceback" not in result.output

    report = update_index(index_dir, tiny, read_corpus(corpus), rebuild=True, progress=False)
    assert report.added == 4
    store = Store.open(index_dir)
    assert store.settings["model"] == str(tiny_mistral_path.resolve())
    assert len(list(index_dir.glob("index-*.db"))) == 1  # the old database is gone
    assert_consistent(index_dir, set(TOPICS))


def test_duplicate_keys_are_indexed_once(tmp_path, default_encoder):
    docs = [Document("a", "s", "", "one text"), Document("a", "s", "", "other text")]
    report = update_index(tmp_path / "index", default_encoder, docs, progress=False)
    assert (report.added, report.duplicates) == (1, 1)


def test_folder_is_read_encoded_and_committed_as_a_stream(tmp_path, tiny_bert_path, monkeypatch):
    """`update_index` pulls a lazy corpus reader chunk by chunk: no document is read more
    than one chunk ahead of what is already committed (and published), so memory holds a
    chunk of text, never the corpus; deletions and the reader's reports still come out whole."""
    import indexer.indexing

    monkeypatch.setattr(indexer.indexing, "STREAM_DOCUMENTS", 8)
    monkeypatch.setenv("ENGINE_CHECKPOINT_DOCUMENTS", "4")
    words = "plants make sugar from light and water in the sun".split()
    corpus = write_corpus(
        tmp_path / "corpus",
        {f"{n // 10}/doc{n:02}.txt": " ".join(words[n % 7 :] + words[: n % 5]) for n in range(40)},
    )
    (corpus / "3" / "binary.txt").write_bytes(b"\x00 not text")
    encoder = Encoder.load(str(tiny_bert_path))
    index_dir = tmp_path / "index"
    scan = read_corpus(corpus)

    committed_when_read: list[int] = []

    def watched():
        for doc in scan:
            committed_when_read.append(committed(index_dir))
            yield doc

    report = update_index(
        index_dir, encoder, watched(), keep_sources=scan.failed_sources, progress=False
    )
    assert (report.added, report.total) == (40, 40)
    for read, stored in enumerate(committed_when_read, start=1):
        assert read - stored <= 8, (read, stored)  # at most one chunk read ahead
    assert committed_when_read[-1] == 32  # the first 4 chunks went in before the last was read
    assert [(s.source, s.reason) for s in scan.skipped] == [("3/binary.txt", "binary file")]

    (corpus / "0" / "doc03.txt").unlink()
    again = update_index(index_dir, encoder, read_corpus(corpus), progress=False)
    assert (again.encoded, again.unchanged, again.removed) == (0, 39, 1)
    assert_consistent(index_dir, {f"{n // 10}/doc{n:02}.txt" for n in range(40) if n != 3})


def committed(index_dir: Path) -> int:
    """Documents a reader of the published index sees now (0 before the first publish)."""
    try:
        store = Store.open(index_dir)
    except EngineError:
        return 0
    try:
        return store.count()
    finally:
        store.close()


def test_corrupt_and_missing_index_fail_in_one_line(tmp_path, default_encoder):
    runner = CliRunner()
    missing = runner.invoke(cli, ["search", "x", "--index", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no index at" in missing.stderr
    assert "Traceback" not in missing.output

    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    empty = runner.invoke(cli, ["search", "  ", "--index", str(index_dir)])
    assert empty.exit_code == 1 and "empty query" in empty.stderr

    # A damaged FAISS snapshot is rebuilt from SQLite, the source of truth.
    for snapshot in index_dir.glob("*.faiss"):
        snapshot.write_bytes(b"garbage")
    healed = runner.invoke(cli, ["search", "castling", "--index", str(index_dir), "--json"])
    assert healed.exit_code == 0, healed.output
    assert json.loads(healed.stdout.splitlines()[0])["doc_id"] == "chess.md"

    for db in index_dir.glob("index-*.db"):
        db.write_bytes(b"this is not a database" * 100)
    for side in index_dir.glob("index-*.db-*"):
        side.unlink()
    broken = runner.invoke(cli, ["search", "x", "--index", str(index_dir)])
    assert broken.exit_code == 1 and "corrupt" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1

    (index_dir / "CURRENT").write_text("{not json")
    pointer = runner.invoke(cli, ["info", "--index", str(index_dir)])
    assert pointer.exit_code == 1 and "corrupt" in pointer.stderr


@pytest.mark.slow
def test_killed_run_leaves_a_searchable_index(tmp_path):
    """kill -9 in the middle of a run: the old index answers, the next run ends consistent."""
    corpus = tmp_path / "corpus"
    old = {
        f"old/{i:03d}.txt": f"Note {i}: the castle tower number {i} is made of stone."
        for i in range(8)
    }
    write_corpus(corpus, old)
    index_dir = tmp_path / "index"
    env = {**os.environ, "ENGINE_CHECKPOINT_DOCUMENTS": "16", "ENGINE_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "engine", "index", str(corpus), "--index", str(index_dir)]
    subprocess.run(command, env=env, check=True, capture_output=True)

    new = {
        f"new/{i:03d}.txt": f"Entry {i}. "
        + "Rivers carry sediment to the sea and build deltas. " * 6
        for i in range(400)
    }
    write_corpus(corpus, new)
    (corpus / "old" / "000.txt").unlink()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_mid_run = False
    while time.time() < deadline and process.poll() is None:
        if _committed_new_documents(index_dir) >= 16:
            process.send_signal(signal.SIGKILL)
            killed_mid_run = True
            break
        time.sleep(0.05)
    process.wait()
    assert killed_mid_run, "the run finished before it could be killed"

    store = Store.open(index_dir)
    assert store.load_faiss().ntotal == store.count()
    assert 7 <= store.count() < 400 + 7
    store.close()
    runner = CliRunner()
    answer = runner.invoke(
        cli, ["search", "stone castle tower", "--index", str(index_dir), "--json"]
    )
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout.splitlines()[0])["doc_id"].startswith("old/")

    finish = subprocess.run(command, env=env, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    expected = {k for k in old if k != "old/000.txt"} | set(new)
    assert_consistent(index_dir, expected)


def _committed_new_documents(index_dir: Path) -> int:
    try:
        name = json.loads((index_dir / "CURRENT").read_text())["db"]
        with sqlite3.connect(f"file:{index_dir / name}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(
                "SELECT count(*) FROM documents WHERE doc_id LIKE 'new/%'"
            ).fetchone()[0]
    except (sqlite3.Error, OSError, ValueError):
        return 0


def test_lost_pointer_is_recovered_by_the_next_run_never_replaced(tmp_path, default_encoder):
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    runner = CliRunner()
    first = runner.invoke(
        cli, ["index", str(corpus), "--index", str(index_dir), "--max-length", "64"]
    )
    assert first.exit_code == 0, first.output
    database = json.loads((index_dir / "CURRENT").read_text())["db"]
    (index_dir / "CURRENT").unlink()

    refused = runner.invoke(cli, ["search", "castling", "--index", str(index_dir)])
    assert refused.exit_code == 1 and "engine check --repair" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    again = runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir), "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["encoded"], summary["max_length"]) == (0, 64)  # same index, same settings
    assert "recovered it from " + database in again.stderr
    assert json.loads((index_dir / "CURRENT").read_text())["db"] == database
    assert_consistent(index_dir, set(TOPICS))


def test_empty_database_and_bad_options_fail_in_one_line(tmp_path, default_encoder, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    runner = CliRunner()
    for args in (["--max-length", "0"], ["--max-length", "-5"], ["--batch-tokens", "0"]):
        bad = runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir), *args])
        assert bad.exit_code == 2 and "Invalid value" in bad.stderr, args
    assert not index_dir.exists()  # nothing was created
    monkeypatch.setenv("ENGINE_CHECKPOINT_DOCUMENTS", "0")
    bad = runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir)])
    assert bad.exit_code == 1 and "ENGINE_CHECKPOINT_DOCUMENTS" in bad.stderr
    monkeypatch.delenv("ENGINE_CHECKPOINT_DOCUMENTS")

    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    for database in index_dir.glob("index-*.db"):
        database.write_bytes(b"")
    for command in (
        ["search", "castling", "--index", str(index_dir)],
        ["info", "--index", str(index_dir)],
        ["index", str(corpus), "--index", str(index_dir)],
    ):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1 and not isinstance(result.exception, Exception), command
        assert result.stderr.startswith("Error:") and "--rebuild" in result.stderr, command
        assert len(result.stderr.strip().splitlines()) == 1, command


def test_check_finds_text_altered_inside_a_sound_database(tmp_path, default_encoder):
    """quick_check sees structure only: the stored content hash catches an altered row."""
    corpus = write_corpus(tmp_path / "corpus", TOPICS)
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    store = Store.open(index_dir)
    with store.db.atomic():
        store.db.execute("UPDATE documents SET text = 'zzz' WHERE doc_id = 'chess.md'")
    store.close()
    runner = CliRunner()
    found = runner.invoke(cli, ["check", "--index", str(index_dir), "--json"])
    assert found.exit_code == 1
    assert "1 documents whose text no longer matches" in found.stdout
    repaired = runner.invoke(cli, ["check", "--repair", "--index", str(index_dir), "--json"])
    assert repaired.exit_code == 0, repaired.output
    assert "1 without a sound vector or text left out" in json.loads(repaired.stdout)["repairs"][0]
    again = update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)
    assert again.added == 1 and again.unchanged == 3  # only the dropped document is re-encoded
    assert_consistent(index_dir, set(TOPICS))


def test_an_existing_index_keeps_its_model(tmp_path, default_encoder):
    """`engine index` without --model continues with the index's model and length."""
    folder = tmp_path / "index"
    assert model_for_index(folder, None, None) == (None, None)
    assert model_for_index(folder, None, 64) == (None, 64)
    update_index(folder, default_encoder, [Document("a", "a.txt", "", "text")], progress=False)
    built = (default_encoder.name, default_encoder.max_length)
    assert model_for_index(folder, None, None) == built
    assert model_for_index(folder, None, 32) == (built[0], 32)
    assert model_for_index(folder, "another-model", None) == ("another-model", None)
    assert model_for_index(folder, None, None, rebuild=True) == (None, None)
