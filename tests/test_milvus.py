"""Milvus export and search on a real Milvus Lite database (no server, no mocks)."""

from __future__ import annotations

import json
import random
import re
import socket
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer.documents import Document
from indexer.indexing import update_index
from indexer.milvus import MilvusIndex, export_index
from indexer.search import search_queries
from indexer.store import Store

SUBJECTS = "plants volcanoes routers bread chess rivers stars bees glaciers engines".split()
VERBS = "absorb erupt forward rise capture carve emit pollinate grind power".split()
OBJECTS = "sunlight lava packets dough kings valleys photons flowers rock pistons".split()
QUERIES = [
    "how do plants use sunlight",
    "what happens when a volcano erupts",
    "how are network packets forwarded",
    "why does dough rise",
    "what makes stars shine",
]


def corpus(seed: int = 0, count: int = 40) -> list[Document]:
    """Short distinct documents, so exact top-10 lists have no ties."""
    rng = random.Random(seed)
    documents = []
    for n in range(count):
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        text = f"Document {n}: {' '.join(words)}, and {rng.choice(SUBJECTS)} {rng.choice(VERBS)}."
        documents.append(Document(f"doc-{n}", "corpus.jsonl", f"Note {n}", text))
    return documents


@pytest.fixture()
def index_dir(tmp_path, default_encoder) -> Path:
    folder = tmp_path / "index"
    update_index(folder, default_encoder, corpus(), progress=False)
    return folder


def manifest(index: MilvusIndex) -> dict[int, str]:
    rows = index.client.query(index.collection, filter="id >= 0", output_fields=["content_hash"])
    return {int(row["id"]): row["content_hash"] for row in rows}


@pytest.mark.precision
def test_exact_search_matches_faiss_top10(tmp_path, index_dir, default_encoder):
    uri = str(tmp_path / "vectors.db")
    store = Store.open(index_dir)
    report = export_index(store, uri, index_type="flat", progress=False)
    assert (report.upserted, report.removed, report.total, report.created) == (40, 0, 40, True)
    milvus = MilvusIndex.open(uri)
    local = search_queries(store, QUERIES, k=10, encoder=default_encoder, mode="dense")
    remote = search_queries(milvus, QUERIES, k=10, encoder=default_encoder)
    for faiss_hits, milvus_hits in zip(local, remote, strict=True):
        assert [h.doc_id for h in milvus_hits] == [h.doc_id for h in faiss_hits]
        assert [h.id for h in milvus_hits] == [h.id for h in faiss_hits]
        assert [h.snippet for h in milvus_hits] == [h.snippet for h in faiss_hits]
        for a, b in zip(faiss_hits, milvus_hits, strict=True):
            assert b.score == pytest.approx(a.score, abs=1e-5)
    assert milvus.settings["fingerprint"] == default_encoder.fingerprint
    assert milvus.settings["index_type"] == "flat"

    # A second export with nothing changed writes nothing.
    again = export_index(store, uri, progress=False)
    assert (again.upserted, again.removed, again.unchanged) == (0, 0, 40)
    milvus.close()
    store.close()


def test_changes_and_deletes_are_mirrored(tmp_path, index_dir, default_encoder):
    uri = str(tmp_path / "vectors.db")
    with closing(Store.open(index_dir)) as store:
        export_index(store, uri, index_type="flat", progress=False)
    documents = corpus()
    changed = Document("doc-3", "corpus.jsonl", "Note 3", "Honey bees dance to show flowers.")
    documents = [changed if d.doc_id == "doc-3" else d for d in documents if d.doc_id != "doc-7"]
    documents.append(Document("doc-new", "corpus.jsonl", "New", "Glaciers grind rock to flour."))
    update_index(index_dir, default_encoder, documents, progress=False)

    with closing(Store.open(index_dir)) as store:
        report = export_index(store, uri, progress=False)
        # A changed document gets a new store id (ids are never reused): its old id goes.
        assert (report.upserted, report.removed, report.unchanged) == (2, 2, 38)
        assert report.index_type == "flat"  # auto keeps the collection's index
        milvus = MilvusIndex.open(uri)
        local = {i: row["content_hash"] for i, row in _rows(store).items()}
        assert manifest(milvus) == local  # same ids, same hashes: nothing stale, nothing missing
        hits = search_queries(
            milvus, ["how do bees show where flowers are"], k=3, encoder=default_encoder
        )
        assert hits[0][0].doc_id == "doc-3"
        assert "doc-7" not in {
            h.doc_id for h in search_queries(milvus, QUERIES, k=40, encoder=default_encoder)[0]
        }
        milvus.close()


def test_index_type_swap_keeps_the_data(tmp_path, index_dir, default_encoder):
    uri = str(tmp_path / "vectors.db")
    with closing(Store.open(index_dir)) as store:
        export_index(store, uri, index_type="flat", progress=False)
        report = export_index(store, uri, index_type="hnsw", progress=False)
        assert (report.index_type, report.upserted, report.total) == ("hnsw", 0, 40)
        milvus = MilvusIndex.open(uri)
        assert milvus.settings["index_type"] == "hnsw"
        exact = search_queries(store, QUERIES, k=1, encoder=default_encoder, mode="dense")
        approximate = search_queries(milvus, QUERIES, k=1, encoder=default_encoder)
        assert [h[0].doc_id for h in approximate] == [h[0].doc_id for h in exact]
        wider = search_queries(milvus, QUERIES, k=1, encoder=default_encoder, ef_search=256)
        assert [h[0].doc_id for h in wider] == [h[0].doc_id for h in exact]
        milvus.close()
        with pytest.raises(EngineError, match="unknown --index-type"):
            export_index(store, uri, index_type="annoy", progress=False)


def test_collection_of_another_model_is_refused(tmp_path, index_dir, tiny_bert_path):
    uri = str(tmp_path / "vectors.db")
    with closing(Store.open(index_dir)) as store:
        export_index(store, uri, progress=False)
    tiny = Encoder.load(str(tiny_bert_path))
    other_dir = tmp_path / "other"
    update_index(other_dir, tiny, corpus(count=5), progress=False)
    with closing(Store.open(other_dir)) as other:
        with pytest.raises(EngineError, match="built with model 'all-MiniLM-L6-v2'.*--rebuild"):
            export_index(other, uri, progress=False)
        report = export_index(other, uri, rebuild=True, progress=False)
        assert (report.created, report.total) == (True, 5)
    result = CliRunner().invoke(
        cli, ["search", "sugar", "--backend", uri, "--model", "all-MiniLM-L6-v2"]
    )
    assert result.exit_code == 1
    assert "built with model" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_export_and_search_backend(tmp_path, index_dir):
    uri = str(tmp_path / "vectors.db")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["export", "milvus", uri, "--index", str(index_dir), "--collection", "notes", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["upserted"], summary["documents"], summary["index_type"]) == (40, 40, "flat")

    local = runner.invoke(cli, ["search", QUERIES[0], "--index", str(index_dir), "--json"])
    remote = runner.invoke(
        cli, ["search", QUERIES[0], "--backend", uri, "--collection", "notes", "--json"]
    )
    assert remote.exit_code == 0, remote.output
    local_hits = [json.loads(line) for line in local.stdout.splitlines()]
    remote_hits = [json.loads(line) for line in remote.stdout.splitlines()]
    assert len(remote_hits) == 10
    assert [h["doc_id"] for h in remote_hits] == [h["doc_id"] for h in local_hits]
    assert set(remote_hits[0]) == set(local_hits[0])

    missing = runner.invoke(cli, ["search", "x", "--backend", uri, "--collection", "nope"])
    assert missing.exit_code == 1 and "no collection 'nope'" in missing.stderr


def test_unreachable_server_is_one_line(tmp_path, index_dir):
    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    runner = CliRunner()
    for args in (
        ["search", "x", "--backend", uri],
        ["export", "milvus", uri, "--index", str(index_dir)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: cannot reach Milvus at {uri}")
        assert len(result.stderr.strip().splitlines()) == 1
    bad = runner.invoke(cli, ["search", "x", "--backend", str(tmp_path / "vectors")])
    assert bad.exit_code == 1 and "ending in .db" in bad.stderr


def _rows(store: Store) -> dict[int, dict]:
    return {row["id"]: row for row in store.db.query("SELECT id, content_hash FROM documents")}


def test_bench_milvus_records_cost_and_recall(tmp_path, index_dir):
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "milvus",
            "--index",
            str(index_dir),
            "--queries",
            "10",
            "--index-types",
            "flat",
            "--out",
            str(tmp_path / "results"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    flat = summary["results"]["milvus-lite flat"]
    assert flat["recall_at_10"] == 1.0  # exact search finds what FAISS finds
    assert flat["export_docs_per_second"] > 0 and summary["documents"] == 40
    assert (tmp_path / "results" / f"milvus-{index_dir.name}.json").is_file()


def test_server_answers_from_milvus(tmp_path, index_dir, default_encoder):
    """`engine serve --backend URI`: the same hits as the local index, /info names the collection."""
    import httpx

    from engine.app.server import create_app
    from tests.test_server import LiveServer

    uri = str(tmp_path / "vectors.db")
    with closing(Store.open(index_dir)) as store:
        export_index(store, uri, index_type="flat", progress=False)
        expected = search_queries(store, QUERIES[:1], k=5, encoder=default_encoder, mode="dense")[0]
    server = LiveServer(create_app(index_dir, default_encoder, backend=MilvusIndex.open(uri)))
    try:
        got = httpx.get(f"{server.url}/search", params={"q": QUERIES[0], "k": 5}).json()
        assert [hit["doc_id"] for hit in got["results"][0]] == [hit.doc_id for hit in expected]
        assert got["results"][0][0]["snippet"] == expected[0].snippet
        info = httpx.get(f"{server.url}/info").json()
        assert (info["collection"], info["documents"], info["index_type"]) == ("engine", 40, "flat")
    finally:
        server.stop()


def test_api_searches_a_collection_like_the_index(tmp_path, index_dir):
    from engine import Index

    uri = str(tmp_path / "vectors.db")
    with Index.open(index_dir) as local:
        assert local.export_milvus(uri, index_type="flat").upserted == 40
    with Index.open(index_dir) as local, Index.open_milvus(uri) as remote:
        expected = [h.doc_id for h in local.search(QUERIES[1], k=10, mode="dense")]
        assert [h.doc_id for h in remote.search(QUERIES[1], k=10)] == expected
        info = remote.info()
        assert (info["collection"], info["documents"], info["backend"]) == ("engine", 40, uri)
        assert remote.count() == 40
        with pytest.raises(EngineError, match="needs a lexical index"):
            remote.search(QUERIES[1], mode="lexical")
        for change in (
            lambda: remote.delete(["doc-1"]),
            lambda: remote.add([{"id": "x", "text": "new"}]),
            lambda: remote.index_folder(tmp_path),
            remote.check,
            remote.drop,
        ):
            with pytest.raises(EngineError, match="is searched only"):
                change()
        assert remote.count() == 40  # still open, nothing dropped


MILVUS_FILTERS = [
    "group = 7",
    "group in (3, 4) and not lang = 'de'",
    "size >= 900 or source glob 'notes/*.txt'",
    "not (group < 5 or lang = 'de')",
    "not group not in (1, 2)",
    "lang glob 'e*' and size < 400",
    "source glob 'docs/f1?.md' or doc_id in ('d200', 'd201')",
    "group > 1000",
]


def test_filters_are_applied_inside_a_milvus_search_with_exact_counts(tmp_path):
    """Milvus's filter expressions match exactly what the local store's filters match
    (every id, with k large), and k hits come back whenever k documents match."""
    from indexer.filters import milvus_expression, parse
    from indexer.search import hits_for
    from tests.test_filters import filled
    from tests.test_vector_index import clustered

    store, _, _ = filled(tmp_path / "index", "flat")
    uri = str(tmp_path / "vectors.db")
    export_index(store, uri, progress=False)
    milvus = MilvusIndex.open(uri)
    queries = clustered(2, seed=7)
    for expression in MILVUS_FILTERS:
        condition = parse(expression)
        expected = set(store.matching(condition).tolist())
        _, every = milvus.search(queries, 2000, allowed=milvus.matching(condition))
        for row in every:
            assert {int(i) for i in row if i >= 0} == expected, milvus_expression(condition)
        for hits in hits_for(milvus, queries, 10, where=condition):
            assert len(hits) == min(10, len(expected)) and {h.id for h in hits} <= expected
    for expression, refused in [
        ("lang glob 'e_*'", "literal %, _ or \\"),
        ("source glob '[dn]*'", "[...]"),
        ("title = 'a\x01'", "control character"),
    ]:
        with pytest.raises(EngineError, match=re.escape(refused)):
            milvus.matching(parse(expression))
    milvus.has_metadata = False  # as a collection exported before metadata is read
    with pytest.raises(EngineError, match="exported before metadata"):
        milvus.matching(parse("group = 7"))
    milvus.close()
    store.close()


def test_cli_where_on_the_milvus_backend(tmp_path, index_dir):
    uri = str(tmp_path / "vectors.db")
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", "milvus", uri, "--index", str(index_dir)])
    assert exported.exit_code == 0, exported.output
    found = runner.invoke(
        cli,
        [
            "search",
            QUERIES[0],
            "--backend",
            uri,
            "--json",
            "--where",
            "doc_id in ('doc-1', 'doc-2')",
        ],
    )
    assert found.exit_code == 0, found.output
    assert sorted(json.loads(line)["doc_id"] for line in found.stdout.splitlines()) == [
        "doc-1",
        "doc-2",
    ]
    refused = runner.invoke(cli, ["search", "x", "--backend", uri, "--source", "[ab]*"])
    assert refused.exit_code == 1 and "[...]" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_new_metadata_alone_reaches_filters_locally_and_in_milvus(
    tmp_path, index_dir, default_encoder
):
    """A document whose text is unchanged but whose metadata changed (a record's other
    fields, a touched file) is not re-encoded, yet filters see the new value: in the local
    index and, after the next export, in the Milvus collection."""
    from indexer.filters import parse
    from indexer.search import hits_for

    uri = str(tmp_path / "vectors.db")
    with closing(Store.open(index_dir)) as store:
        export_index(store, uri, progress=False)
    documents = [
        replace(d, metadata={"year": 2024}) if d.doc_id in ("doc-3", "doc-5") else d
        for d in corpus()
    ]
    report = update_index(index_dir, default_encoder, documents, progress=False)
    assert (report.encoded, report.unchanged, report.metadata_updated) == (0, 40, 2)
    again = update_index(index_dir, default_encoder, documents, progress=False)
    assert again.metadata_updated == 0  # stored as given: nothing changes twice
    condition = parse("year = 2024")
    queries = default_encoder.encode_queries(["bees"])
    with closing(Store.open(index_dir)) as store:
        local = {h.doc_id for h in hits_for(store, queries, 10, where=condition)[0]}
        assert local == {"doc-3", "doc-5"}
        exported = export_index(store, uri, progress=False)
    assert (exported.upserted, exported.removed, exported.unchanged) == (2, 0, 38)
    milvus = MilvusIndex.open(uri)
    try:
        remote = {h.doc_id for h in hits_for(milvus, queries, 10, where=condition)[0]}
    finally:
        milvus.close()
    assert remote == {"doc-3", "doc-5"}
