"""FAISS index types over real SQLite stores: updates, deletes, catch-up after a kill, fp16."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.errors import EngineError
from indexer import vector_index
from indexer.schema import MIGRATIONS, PAGE_SIZE, quick_check_problems
from indexer.store import Store, Writer
from indexer.vector_index import SearchKnobs

DIM = 32


def settings(index_type: str | None) -> dict:
    return {
        "model": "random-vectors",
        "fingerprint": "f" * 64,
        "dim": DIM,
        "max_length": 16,
        "engine_version": "test",
        "index_type": index_type,
    }


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 centres (not uniform noise, like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows(names: list[str], ids: dict[str, int] | None = None) -> list[dict]:
    return [
        {
            "id": (ids or {}).get(name),
            "doc_id": name,
            "source": "s",
            "title": "",
            "text": f"text of {name}",
            "content_hash": name,
            "token_count": 3,
        }
        for name in names
    ]


def fill(folder, index_type, n=1500, rebuild=False):
    vectors = clustered(n, seed=1)
    with Writer(folder, settings(index_type), rebuild=rebuild) as store:
        store.load_faiss()
        for start in range(0, n, 500):
            names = [f"d{i}" for i in range(start, min(n, start + 500))]
            store.commit(upsert=rows(names), vectors=vectors[start : start + 500])
    return vectors


def live_ids(store: Store) -> set[int]:
    index = store.load_faiss()
    return set(vector_index.index_ids(index).tolist()) - set(store.snapshots.tombstones.tolist())


def recall_at_10(store: Store, queries: np.ndarray, **knobs) -> float:
    ids = np.asarray(sorted(store.doc_ids()))
    exact = store.vectors(ids.tolist())
    truth = ids[np.argsort(-(queries @ exact.T), axis=1)[:, :10]]
    _, found = store.search(queries, 10, SearchKnobs(**knobs))
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


@pytest.mark.parametrize(
    ("index_type", "factory_start", "min_recall"),
    [
        ("flat", "Flat", 1.0),
        ("flat-fp16", "SQfp16", 0.97),
        ("sq8", "SQ8", 0.85),
        ("hnsw", "HNSW32", 0.95),
        ("ivf-flat", "IVF", 0.9),
        ("ivf-pq", "IVF", 0.9),  # coarse 4-bit codes, re-scored with the stored vectors
        ("IVF16,SQ8", "IVF16", 0.8),
    ],
)
def test_every_type_updates_deletes_and_reopens(tmp_path, index_type, factory_start, min_recall):
    folder = tmp_path / "index"
    vectors = fill(folder, index_type)
    with Writer(folder, settings(None), rebuild=False) as store:
        store.load_faiss()
        ids = {v: k for k, v in store.doc_ids().items()}
        store.commit(remove=[ids[f"d{i}"] for i in range(10)])  # delete d0..d9
        moved = clustered(5, seed=9)  # d10..d14 change: new vectors, new ids
        store.commit(upsert=rows([f"d{i}" for i in range(10, 15)], ids), vectors=moved)
    reader = Store.open(folder)  # a reader: the snapshot is mapped, not copied
    assert reader.spec.factory.startswith(factory_start)
    assert reader.count() == 1490
    assert live_ids(reader) == set(reader.doc_ids())
    _, found = reader.search(vectors[:10], 5)
    assert not set(found.ravel().tolist()) & set(ids[f"d{i}"] for i in range(15))
    _, top = reader.search(moved, 1)
    names = reader.doc_ids()
    if min_recall >= 0.9:
        assert [names[int(i)] for i in top[:, 0]] == [f"d{i}" for i in range(10, 15)]
    assert recall_at_10(reader, clustered(50, seed=5), nprobe=8, ef_search=64) >= min_recall


def test_changing_type_reuses_stored_vectors(tmp_path):
    folder = tmp_path / "index"
    fill(folder, "flat", n=1200)
    before = Store.open(folder)
    blobs = before.db.execute("SELECT id, vector FROM vectors").fetchall()
    for index_type in ("hnsw", "ivf-flat", "flat"):
        with Writer(folder, settings(index_type), rebuild=False) as store:
            assert store.count() == 1200
        after = Store.open(folder)
        assert after.spec.type == index_type
        assert after.db.execute("SELECT id, vector FROM vectors").fetchall() == blobs
        assert live_ids(after) == set(after.doc_ids())
        assert len(list(folder.glob("*.faiss"))) == 1


def test_killed_writer_is_caught_up_from_the_last_snapshot(tmp_path):
    """A writer that dies after committing (no publish): readers see every committed change."""
    for index_type in ("hnsw", "ivf-flat"):
        folder = tmp_path / index_type
        fill(folder, index_type, n=1200)
        writer = Writer(folder, settings(None), rebuild=False)
        store = writer.__enter__()
        store.load_faiss()
        ids = {v: k for k, v in store.doc_ids().items()}
        store.commit(remove=[ids["d0"], ids["d1"]])
        store.commit(upsert=rows(["late"]), vectors=clustered(1, seed=7))
        store.commit(upsert=rows(["d2"], ids), vectors=clustered(1, seed=8))
        writer._lock.release()  # killed: no publish, no new snapshot
        store.close()
        reader = Store.open(folder)
        assert not reader.snapshots.path().is_file()
        assert live_ids(reader) == set(reader.doc_ids())
        assert reader.count() == 1199
        _, top = reader.search(clustered(1, seed=7), 1)
        assert reader.doc_ids()[int(top[0, 0])] == "late"
        # The next writer publishes a caught-up snapshot with nothing lost or duplicated.
        with Writer(folder, settings(None), rebuild=False) as again:
            again.load_faiss()
        final = Store.open(folder)
        assert final.snapshots.path().is_file()
        assert live_ids(final) == set(final.doc_ids())


def undo_metadata_values(conn: sqlite3.Connection) -> None:
    """Take migration 5 (the metadata_values table and its triggers) out of a database."""
    for trigger in ("insert", "delete", "update"):
        conn.execute(f"DROP TRIGGER metadata_values_{trigger}")
    conn.execute("DROP TABLE metadata_values")


def test_fp32_index_is_migrated_to_fp16(tmp_path):
    folder = tmp_path / "index"
    fill(folder, "flat", n=50)
    store = Store.open(folder)
    name = store.db_name
    original = store.vectors(sorted(store.doc_ids()))
    store.close()
    # Turn it back into a version-1 (fp32) database, as older engines wrote it.
    with sqlite3.connect(folder / name) as conn:
        for doc_id, blob in conn.execute("SELECT id, vector FROM vectors").fetchall():
            fp32 = np.frombuffer(blob, dtype=np.float16).astype(np.float32).tobytes()
            conn.execute("UPDATE vectors SET vector = ? WHERE id = ?", (fp32, doc_id))
        conn.execute("DELETE FROM settings WHERE key IN ('vector_dtype', 'index')")
        conn.execute("DROP TABLE tombstones")
        conn.execute("DROP TABLE passages")  # migration 3, after this version
        undo_metadata_values(conn)  # migration 5
        conn.execute("ALTER TABLE documents DROP COLUMN metadata")  # migration 4
        conn.execute("PRAGMA user_version = 1")
    for snapshot in folder.glob("*.faiss"):
        snapshot.unlink()
    migrated = Store.open(folder)
    assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrated.vector_dtype == np.float16
    blob = migrated.db.execute("SELECT vector FROM vectors LIMIT 1").fetchone()[0]
    assert len(blob) == DIM * 2
    np.testing.assert_array_equal(migrated.vectors(sorted(migrated.doc_ids())), original)
    assert migrated.spec.type == "flat"  # indexes from before types were exact fp32
    _, top = migrated.search(original[:3], 1)
    assert top[:, 0].tolist() == sorted(migrated.doc_ids())[:3]


def test_auto_is_exact_when_small_and_ivf_pq_when_large():
    assert vector_index.resolve("auto", 1000, 384).factory == "Flat"
    large = vector_index.resolve("auto", 1_000_000, 384)
    assert large.factory == "IVF2048,PQ48x8" and large.params["rerank"] == 10
    small = vector_index.resolve("auto", 1000, 384)
    assert not vector_index.is_stale(small, 2000)
    assert vector_index.is_stale(small, 1_000_000)
    # auto's IVF lists are retrained only when the corpus grows or shrinks 4x, as ivf-pq's.
    assert not vector_index.is_stale(large, 2_000_000) and vector_index.is_stale(large, 5_000_000)
    assert vector_index.is_stale(large, 1000)  # back to exact
    # An auto index an older engine made hnsw keeps its graph while it stays large.
    old_auto = vector_index.IndexSpec("auto", "HNSW32,SQfp16", 384, 0, {"ef_search": 128})
    assert not vector_index.is_stale(old_auto, 2_000_000)
    assert vector_index.is_stale(old_auto, 1000)
    ivf = vector_index.resolve("ivf-flat", 100_000, 384)
    assert ivf.params["nlist"] == 512 and ivf.params["nprobe"] == 64
    assert not vector_index.is_stale(ivf, 300_000) and vector_index.is_stale(ivf, 500_000)
    assert vector_index.resolve("ivf-pq", 100_000, 384).params["rerank"] == 10
    assert vector_index.resolve("ivf-pq", 500, 384).factory == "Flat"  # too few to train
    # 48-byte codes at 384-d either way: 4-bit below 256 x 39 vectors, 8-bit above.
    assert vector_index.resolve("ivf-pq", 5000, 384).factory == "IVF128,PQ96x4"
    assert vector_index.resolve("ivf-pq", 100_000, 384).factory == "IVF512,PQ48x8"
    with pytest.raises(EngineError, match="unknown --index-type"):
        vector_index.validate_type("nonsense-type")
    for graph in ("HNSW0,Flat", "HNSW1", "IVF16_HNSW1,Flat"):  # faiss would abort on add
        with pytest.raises(EngineError, match="at least 2 links"):
            vector_index.validate_type(graph)
    assert vector_index.validate_type("HNSW2,Flat") == "HNSW2,Flat"


def test_cli_index_type_info_and_knobs(tmp_path, tiny_bert_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(["plants make sugar", "blue sky", "green grass", "the sun"]):
        (corpus / f"{i}.txt").write_text(text)
    index = str(tmp_path / "index")
    runner = CliRunner()
    common = ["--index", index, "--model", str(tiny_bert_path)]
    made = runner.invoke(cli, ["index", str(corpus), *common, "--index-type", "hnsw", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["index_type"].startswith("hnsw (HNSW32,SQfp16")
    info = json.loads(runner.invoke(cli, ["info", "--index", index, "--json"]).stdout)
    assert (info["index_type"], info["vector_dtype"]) == ("hnsw", "float16")
    assert info["index_params"]["ef_search"] == vector_index.DEFAULT_EF_SEARCH
    found = runner.invoke(cli, ["search", "sugar", *common, "--ef-search", "8", "--json"])
    assert found.exit_code == 0, found.output
    assert len(found.stdout.splitlines()) == 4
    again = runner.invoke(cli, ["index", str(corpus), *common, "--index-type", "flat", "--json"])
    assert json.loads(again.stdout)["encoded"] == 0  # a new type, the same vectors
    bad = runner.invoke(cli, ["index", str(corpus), *common, "--index-type", "bogus"])
    assert bad.exit_code == 1 and "unknown --index-type" in bad.stderr
    assert "Traceback" not in bad.output


def test_old_auto_hnsw_index_keeps_its_graph(tmp_path, monkeypatch):
    """auto now builds ivf-pq at scale; an index an older engine made hnsw under auto still
    updates and searches as hnsw, and a new large auto index becomes ivf-pq."""
    monkeypatch.setattr(vector_index, "AUTO_EXACT_LIMIT", 10_000)  # 1500 x 32 is "large"
    monkeypatch.setattr(vector_index, "AUTO_APPROXIMATE_TYPE", "hnsw")  # the older choice
    old = tmp_path / "old"
    vectors = fill(old, "auto")
    assert Store.open(old).spec.factory.startswith("HNSW32")
    monkeypatch.setattr(vector_index, "AUTO_APPROXIMATE_TYPE", "ivf-pq")
    with Writer(old, settings(None), rebuild=False) as store:
        store.load_faiss()
        store.commit(upsert=rows(["late"]), vectors=clustered(1, seed=7))
    reader = Store.open(old)
    assert (reader.spec.type, reader.spec.factory[:6]) == ("auto", "HNSW32")
    assert live_ids(reader) == set(reader.doc_ids()) and reader.count() == 1501
    _, top = reader.search(clustered(1, seed=7), 1)
    assert reader.doc_ids()[int(top[0, 0])] == "late"
    assert recall_at_10(reader, vectors[:20]) >= 0.95
    new = tmp_path / "new"
    fill(new, "auto")
    fresh = Store.open(new)
    assert fresh.spec.type == "auto" and fresh.spec.factory.startswith("IVF")
    assert live_ids(fresh) == set(fresh.doc_ids()) and recall_at_10(fresh, vectors[:20]) >= 0.9


def test_new_databases_use_large_pages_and_old_ones_keep_theirs(tmp_path):
    """16 KiB pages hold fp16 vector rows with less waste; a 4 KiB database (older engines)
    keeps its pages and keeps working."""
    folder = tmp_path / "index"
    vectors = fill(folder, "flat", n=300)
    store = Store.open(folder)
    name = store.db_name
    assert store.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
    store.close()
    with sqlite3.connect(folder / name) as conn:  # as an older engine wrote it: 4 KiB pages
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("VACUUM")
    conn.close()
    with Writer(folder, settings(None), rebuild=False) as writer:
        writer.load_faiss()
        ids = {v: k for k, v in writer.doc_ids().items()}
        writer.commit(remove=[ids["d0"]])
        writer.commit(upsert=rows(["late"]), vectors=clustered(1, seed=7))
    reader = Store.open(folder)
    assert reader.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert quick_check_problems(reader.db) == [] and reader.count() == 300
    _, top = reader.search(np.vstack([clustered(1, seed=7), vectors[1:2]]), 1)
    assert [reader.doc_ids()[int(i)] for i in top[:, 0]] == ["late", "d1"]
