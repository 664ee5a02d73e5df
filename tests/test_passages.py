"""Passages: windows of real tokenizers, streamed whole documents, document-level search."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.encoder import Encoder
from engine.errors import EngineError
from indexer import passages as passages_module
from indexer.documents import read_corpus
from indexer.filters import parse
from indexer.indexing import update_index
from indexer.passages import PassageSpec, best_per_document, split_passages
from indexer.search import hits_for
from indexer.store import Store

# The generated file of the streaming test (a 60 MB one streams the same; this keeps the test short).
SIZE = 8 * 2**20

TEXT = (
    "Plants make sugar from light and water. The sky is blue, the grass is green. "
    "Where does the energy of the sun go? 1234 5678 answers a question."
)


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path):
    return Encoder.load(str(tiny_bert_path))


def _windows(tokenizer, text, window, overlap, pieces=None, max_tokens=10**6):
    return list(split_passages(tokenizer, pieces or [text], window, overlap, max_tokens))


@pytest.mark.parametrize("which", ["default", "tiny_mistral"])
def test_windows_cover_the_text_with_exact_token_and_character_offsets(
    which, default_encoder, tiny_mistral_path
):
    tokenizer = (
        default_encoder.tokenizer
        if which == "default"
        else Encoder.load(str(tiny_mistral_path)).tokenizer
    )
    text = " ".join([TEXT] * 6)
    all_spans = [
        (s, e)
        for s, e in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if e > s
    ]
    window, overlap = 20, 5
    split = _windows(tokenizer, text, window, overlap)
    assert [p.position for p in split] == list(range(len(split)))
    for passage in split[:-1]:
        assert passage.token_end - passage.token_start == window
    for before, after in zip(split, split[1:], strict=False):
        assert after.token_start == before.token_start + window - overlap
    assert split[-1].token_end == len(all_spans)
    for passage in split:
        assert passage.text == text[passage.char_start : passage.char_end]
        assert passage.char_start == all_spans[passage.token_start][0]
        assert passage.char_end == all_spans[passage.token_end - 1][1]
    # A short document is one passage; max_tokens stops reading.
    assert len(_windows(tokenizer, "Plants make sugar.", window, overlap)) == 1
    capped = _windows(tokenizer, text, window, overlap, max_tokens=30)
    assert capped[-1].token_end == 30


def test_windows_do_not_depend_on_how_the_stream_is_cut(default_encoder, monkeypatch):
    """Pieces cut mid-word, and tokenizing a few characters at a time, give the same windows."""
    monkeypatch.setattr(passages_module, "TOKENIZE_CHARS", 64)
    tokenizer = default_encoder.tokenizer
    text = " ".join([TEXT] * 8)
    whole = _windows(tokenizer, text, 24, 4, max_tokens=10**6)
    monkeypatch.setattr(passages_module, "TOKENIZE_CHARS", 1 << 16)
    reference = _windows(tokenizer, text, 24, 4)
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    monkeypatch.setattr(passages_module, "TOKENIZE_CHARS", 64)
    streamed = _windows(tokenizer, text, 24, 4, pieces=pieces)
    assert streamed == whole == reference


def test_a_60_mb_file_streams_through_windows(tmp_path, tiny_mistral_path):
    """The file is read, hashed and split piece by piece: what is held stays far below its size."""
    tokenizer = Encoder.load(str(tiny_mistral_path)).tokenizer
    big = tmp_path / "corpus" / "big.txt"
    big.parent.mkdir()
    line = ("scientific document retrieve question passage answer " * 4 + "\n").encode()
    with big.open("wb") as out:
        for _ in range(SIZE // len(line) + 1):
            out.write(line)
    assert big.stat().st_size >= SIZE
    scan = read_corpus(big.parent, max_tokens=10**8, whole=True)
    tracemalloc.start()
    try:
        (document,) = list(scan)
        assert len(document.text) < 2**17  # only the head is held
        digest = document.content_hash  # streamed
        count = last = 0
        for passage in split_passages(tokenizer, document.stream(), 4096, 0, 10**8):
            count += 1
            last = passage.char_end
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(digest) == 64 and count > 100
    assert last >= SIZE - len(line)  # the whole file went through
    assert peak < SIZE / 2, f"{peak / 2**20:.1f} MiB held for a {SIZE / 2**20:.0f} MiB file"


def test_best_passage_rule():
    """A document scores its best passage's score; k distinct documents, best first."""
    ranked = [(0.9, "a", "a2"), (0.8, "a", "a1"), (0.7, "b", "b1"), (0.6, "c", "c1")]
    assert best_per_document(ranked, 2) == [(0.9, "a", "a2"), (0.7, "b", "b1")]
    assert [key for _, key, _ in best_per_document(ranked, 10)] == ["a", "b", "c"]


def _corpus(tmp_path, files):
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _passage_rows(index_dir):
    conn = sqlite3.connect(next(index_dir.glob("index-*.db")))
    try:
        return conn.execute(
            "SELECT p.id, d.doc_id, p.position, p.text FROM passages p "
            "JOIN documents d ON d.id = p.document ORDER BY p.id"
        ).fetchall()
    finally:
        conn.close()


def test_a_changed_document_replaces_all_its_passages_in_one_commit(
    tmp_path, tiny_bert, monkeypatch
):
    monkeypatch.setenv("ENGINE_CHECKPOINT_DOCUMENTS", "1")  # a commit per document
    long = " ".join(["plants make sugar from light"] * 60)
    folder = _corpus(tmp_path, {"a.txt": long, "b.txt": "the sky is blue"})
    index_dir = tmp_path / "index"
    spec = PassageSpec(32, 8)
    first = update_index(
        index_dir, tiny_bert, read_corpus(folder, whole=True), passages=spec, progress=False
    )
    before = _passage_rows(index_dir)
    a_before = [row for row in before if row[1] == "a.txt"]
    assert first.added == 2 and len(a_before) > 5 and first.passages == len(before)
    store = Store.open(index_dir)  # the lexical side holds the passages, by their ids
    try:
        assert store.lexical.load().ids().tolist() == [row[0] for row in before]
        _, found = store.lexical_search(["the sky is blue"], 1)
        assert [row[1] for row in before if row[0] == int(found[0][0])] == ["b.txt"]
    finally:
        store.close()

    (folder / "a.txt").write_text(long + " the grass is green")
    second = update_index(
        index_dir, tiny_bert, read_corpus(folder, whole=True), passages=spec, progress=False
    )
    after = _passage_rows(index_dir)
    assert second.updated == 1 and second.unchanged == 1
    a_after = [row for row in after if row[1] == "a.txt"]
    assert not {row[0] for row in a_before} & {row[0] for row in a_after}  # all new ids
    assert min(row[0] for row in a_after) > max(row[0] for row in before)  # never reused
    assert "green" in a_after[-1][3]
    assert [row for row in after if row[1] == "b.txt"] == [
        row for row in before if row[1] == "b.txt"
    ]
    store = Store.open(index_dir)  # the old passages left the lexical side with their vectors
    try:
        assert store.lexical.load().ids().tolist() == [row[0] for row in after]
    finally:
        store.close()

    # A commit that fails half-way (a vector short) changes nothing: the old passages stay.
    store = Store.open(index_dir, writer=True)
    try:
        (stored,) = [s for k, s in store.existing().items() if k[1] == "a.txt"]
        row = {"id": stored.id, "doc_id": "a.txt", "source": "a.txt", "title": "", "text": "x",
               "content_hash": "0" * 64, "token_count": 2,
               "passages": [{"position": i, "token_start": i, "token_end": i + 1, "char_start": i,
                             "char_end": i + 1, "text": "x"} for i in range(3)]}  # fmt: skip
        with pytest.raises(ValueError):
            store.commit(upsert=[row], vectors=np.ones((2, tiny_bert.dim), np.float32))
    finally:
        store.close()
    assert _passage_rows(index_dir) == after

    # Another passage setting is refused without a rebuild.
    with pytest.raises(EngineError, match="passages"):
        update_index(
            index_dir,
            tiny_bert,
            read_corpus(folder, whole=True),
            passages=PassageSpec(64, 8),
            progress=False,
        )
    with pytest.raises(EngineError, match="passages"):
        update_index(index_dir, tiny_bert, read_corpus(folder), progress=False)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_k_distinct_documents_and_removed_ones_never_come_back(
    tmp_path, default_encoder, index_type
):
    """Many passages of one document match best; k documents still come back, removed
    documents' passages (deleted, or tombstones in a graph) are never hits."""
    sugar = "Plants make sugar from light and water by photosynthesis. "
    folder = _corpus(
        tmp_path,
        {
            "sugar.txt": sugar * 80,
            "leaves.txt": "Green leaves hold chlorophyll that captures sunlight. " * 3,
            "gone.txt": sugar * 3,
            "tcp.txt": "A TCP handshake opens a connection between two hosts. " * 3,
        },
    )
    index_dir = tmp_path / "index"
    spec = PassageSpec(64, 8)
    update_index(index_dir, default_encoder, read_corpus(folder, whole=True), passages=spec,
                 index_type=index_type, progress=False)  # fmt: skip
    query = default_encoder.encode_queries(["how do plants make sugar"])
    store = Store.open(index_dir)
    (hits,) = hits_for(store, query, 3)
    store.close()
    assert len(hits) == 3 and len({h.doc_id for h in hits}) == 3
    assert {"sugar.txt", "gone.txt"} <= {h.doc_id for h in hits}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.passage is not None and h.snippet for h in hits)
    # A filter inside a passage search: only the matching documents' passages compete.
    (filtered,) = hits_for(Store.open(index_dir), query, 3, where=parse("source glob 't*'"))
    assert [h.doc_id for h in filtered] == ["tcp.txt"] and filtered[0].passage is not None

    (folder / "gone.txt").unlink()
    report = update_index(index_dir, default_encoder, read_corpus(folder, whole=True),
                          passages=spec, progress=False)  # fmt: skip
    assert report.removed == 1
    store = Store.open(index_dir)
    (hits,) = hits_for(store, query, 10)
    store.close()
    assert sorted(h.doc_id for h in hits) == ["leaves.txt", "sugar.txt", "tcp.txt"]


def test_passkey_beyond_512_tokens_is_found_with_passages(tmp_path, default_encoder):
    """The paper's personalized passkey at 2048 tokens: the first 512 tokens cannot see most
    passkeys, passages find every one."""
    from bench.passkey import build_passkey_task

    task = build_passkey_task(default_encoder, 2048, documents=8, queries=8, seed=0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for number, text in enumerate(task.documents):
        (folder / f"doc{number}.txt").write_text(text)
    beyond = [t for t in task.targets if task.spans[t][0] > 512]
    assert beyond  # the test means something: passkeys past the first 512 tokens
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(folder, whole=True),
                 passages=PassageSpec(256, 32), progress=False)  # fmt: skip
    store = Store.open(index_dir)
    vectors = default_encoder.encode_queries(task.queries)
    found = hits_for(store, vectors, 1)
    # engine search's default mode on it: hybrid, BM25 over the passages fused in.
    hybrid = hits_for(store, vectors, 1, queries=task.queries, mode="hybrid")
    store.close()
    top = [int(hits[0].doc_id.removeprefix("doc").removesuffix(".txt")) for hits in found]
    assert top == task.targets
    assert [hits[0].doc_id for hits in hybrid] == [hits[0].doc_id for hits in found]
    for hits, target in zip(found, task.targets, strict=True):
        passage = hits[0].passage
        assert passage["token_start"] <= task.spans[target][0] < passage["token_end"] + 8


def test_cli_index_info_search_check_with_passages(tmp_path):
    folder = _corpus(
        tmp_path,
        {
            "manual.md": "# Pump manual\n\n"
            + "Checking the valves weekly. " * 120
            + "To bleed the hydraulic pump, open the release screw two turns. "
            + "Checking the valves weekly. " * 40,
            "plants.txt": "Plants make sugar from light.",
        },
    )
    index_dir = tmp_path / "index"
    runner = CliRunner()
    args = ["--index", str(index_dir)]
    done = runner.invoke(cli, ["index", str(folder), *args, "--passages", "128", "--json", "-q"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["passage_setting"] == {
        "tokens": 128,
        "overlap": 16,
        "max_document_tokens": 1_000_000,
    }
    assert summary["passages"] > 3
    info = json.loads(runner.invoke(cli, ["info", *args, "--json"]).output)
    assert info["passages"]["tokens"] == 128 and info["passage_count"] == summary["passages"]
    found = runner.invoke(
        cli, ["search", "how to bleed the hydraulic pump", *args, "--json", "-k", "2"]
    )
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.splitlines()]
    assert [h["doc_id"] for h in hits] == ["manual.md", "plants.txt"]
    passage = hits[0]["passage"]
    assert "bleed" in hits[0]["snippet"] and passage["position"] > 0
    text = (folder / "manual.md").read_text().split("\n\n", 1)[1]
    assert " ".join(text[passage["char_start"] : passage["char_end"]].split()) == hits[0]["snippet"]
    again = runner.invoke(cli, ["index", str(folder), *args, "-q"])  # keeps the stored setting
    assert again.exit_code == 0 and "2 unchanged" in again.output
    refused = runner.invoke(cli, ["index", str(folder), *args, "--passages", "64"])
    assert (
        refused.exit_code == 1
        and "--rebuild" in refused.output
        and "Traceback" not in refused.output
    )
    checked = runner.invoke(cli, ["check", *args, "--json"])
    assert checked.exit_code == 0 and json.loads(checked.output)["ok"]
    bad = runner.invoke(cli, ["index", str(folder), *args, "--passages", "4096"])
    assert bad.exit_code == 1 and "exceeds" in bad.output


def test_the_server_and_milvus_answer_documents_with_their_best_passage(tmp_path, default_encoder):
    """POST /search on an index of passages: the hit carries the passage's offsets, like
    `engine search --json`; a Milvus export answers the same documents and passages."""
    import httpx

    from engine.app.server import create_app
    from indexer.documents import Document
    from indexer.milvus import MilvusIndex, export_index
    from tests.test_server import LiveServer

    text = "Checking the valves weekly. " * 100 + "To bleed the pump, open the release screw."
    documents = [
        Document("manual", "m.jsonl", "Pump", text),
        Document("plants", "m.jsonl", "Plants", "Plants make sugar from light."),
    ]
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, documents, passages=PassageSpec(64, 8), progress=False)
    server = LiveServer(create_app(index_dir, default_encoder))
    try:
        answer = httpx.post(server.url + "/search", json={"query": "bleed the pump", "k": 2}).json()
    finally:
        server.stop()
    top = answer["results"][0][0]
    assert top["doc_id"] == "manual" and "bleed" in top["snippet"]
    assert top["passage"]["char_end"] == len(text) and top["passage"]["position"] > 0

    store = Store.open(index_dir)
    uri = str(tmp_path / "vectors.db")
    try:
        first = export_index(store, uri, progress=False)
        again = export_index(store, uri, progress=False)
        passages = store.vector_count()
        local = hits_for(store, default_encoder.encode_queries(["bleed the pump"]), 2)[0]
    finally:
        store.close()
    assert first.upserted == passages and first.total == passages
    assert again.upserted == 0 and again.unchanged == passages
    milvus = MilvusIndex.open(uri)
    try:
        remote = hits_for(milvus, default_encoder.encode_queries(["bleed the pump"]), 2)[0]
    finally:
        milvus.close()
    assert [h.doc_id for h in remote] == [h.doc_id for h in local] == ["manual", "plants"]
    assert remote[0].passage == local[0].passage == top["passage"]
    assert remote[0].snippet == local[0].snippet


def _write_pdf(path, pages):
    """A PDF with one line of Helvetica text per page (pypdf only; no PDF library needed)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 10 Tf 20 700 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    with open(path, "wb") as out:
        writer.write(out)


def test_every_source_type_is_split_into_passages(tmp_path, default_encoder):
    """txt, md, html, pdf (streamed page by page) and JSON lines records, read whole."""
    filler = "Checking the valves weekly keeps the plant running. " * 12
    pump = "To bleed the hydraulic pump, open the release screw two turns."
    folder = _corpus(
        tmp_path,
        {
            "a.txt": filler + pump,
            "b.md": "# Notes\n\n" + filler + "Plants make sugar from light.",
            "c.html": f"<html><head><title>Page</title></head><body><p>{filler}</p>"
            "<p>The TCP handshake opens a connection.</p></body></html>",
            "e.jsonl": json.dumps({"_id": "r1", "title": "Bread", "text": filler + "Yeast."})
            + "\n"
            + json.dumps({"_id": "r2", "text": "Volcanoes erupt lava."})
            + "\n",
        },
    )
    _write_pdf(folder / "d.pdf", [filler, "Chess: castling moves the king two squares."])
    index_dir = tmp_path / "index"
    report = update_index(index_dir, default_encoder, read_corpus(folder, whole=True),
                          passages=PassageSpec(48, 8), progress=False)  # fmt: skip
    assert report.added == 6
    rows = _passage_rows(index_dir)
    per_document = {doc_id: [r for r in rows if r[1] == doc_id] for doc_id in {r[1] for r in rows}}
    assert set(per_document) == {"a.txt", "b.md", "c.html", "d.pdf", "r1", "r2"}
    assert all(len(per_document[d]) > 1 for d in ("a.txt", "b.md", "c.html", "d.pdf", "r1"))
    assert len(per_document["r2"]) == 1
    store = Store.open(index_dir)
    try:
        queries = ["how do I bleed the hydraulic pump", "how does castling move the king"]
        found = hits_for(store, default_encoder.encode_queries(queries), 1)
    finally:
        store.close()
    assert [hits[0].doc_id for hits in found] == ["a.txt", "d.pdf"]
    assert all(hits[0].passage["position"] > 0 for hits in found)
    assert "castling" in found[1][0].snippet


def test_repeated_passages_are_encoded_once_with_the_same_vector(tmp_path, tiny_bert):
    """A log of one repeated line: identical windows share one encoding, and every passage's
    vector is what encoding that passage alone gives."""
    folder = _corpus(tmp_path, {"log.txt": "the sun is blue " * 200 + "the grass is green"})
    index_dir = tmp_path / "index"
    calls = []
    real = tiny_bert.iter_encode

    def counting(ids, **kwargs):
        calls.append(len(ids))
        return real(ids, **kwargs)

    tiny_bert.iter_encode = counting
    try:
        update_index(index_dir, tiny_bert, read_corpus(folder, whole=True),
                     passages=PassageSpec(32, 0), progress=False)  # fmt: skip
    finally:
        del tiny_bert.iter_encode
    rows = _passage_rows(index_dir)
    assert len(rows) > 20 and sum(calls) < 5  # 4 words a window step: a handful of distinct windows
    store = Store.open(index_dir)
    try:
        vectors = store.vectors([row[0] for row in rows])
    finally:
        store.close()
    alone = tiny_bert.encode_ids(tiny_bert.tokenize([rows[-1][3], rows[3][3]], max_length=32))
    assert np.allclose(vectors[-1], alone[0], atol=2e-3)
    assert np.allclose(vectors[3], alone[1], atol=2e-3)


def _passages_per_document(index_dir):
    store = Store.open(index_dir)
    try:
        rows = store.db.execute(
            "SELECT d.doc_id, count(p.id) FROM documents d LEFT JOIN passages p "
            "ON p.document = d.id GROUP BY d.id"
        ).fetchall()
        index = store.load_faiss()
        held = {int(index.id_map.at(i)) for i in range(index.ntotal)}
        passage_ids = {row[0] for row in store.db.execute("SELECT id FROM passages")}
    finally:
        store.close()
    return dict(rows), held == passage_ids


def test_kill_minus_nine_leaves_whole_documents_and_the_next_run_finishes(tmp_path):
    """A first run with passages killed with SIGKILL after a few commits: every committed
    document has all its passages (never a part), the index answers, and the next run encodes
    only the documents that were missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from bench.reliability import committed_documents

    files = {
        f"doc{i:02d}.txt": f"Entry {i}. " + " ".join(["plants make sugar from light"] * 40)
        for i in range(24)
    }
    folder = _corpus(tmp_path, files)
    reference, index_dir = tmp_path / "reference", tmp_path / "index"
    env = {**os.environ, "ENGINE_CHECKPOINT_DOCUMENTS": "8", "ENGINE_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "engine", "index", str(folder), "--passages", "48"]
    subprocess.run([*command, "--index", str(reference)], env=env, check=True, capture_output=True)
    expected, _ = _passages_per_document(reference)
    process = subprocess.Popen(
        [*command, "--index", str(index_dir)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if committed_documents(index_dir) >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed, consistent = _passages_per_document(index_dir)
    assert 3 <= len(committed) < len(files) and consistent
    assert all(count == expected[doc_id] for doc_id, count in committed.items())
    finish = subprocess.run(
        [*command, "--index", str(index_dir), "--json"], env=env, check=True, capture_output=True
    )
    report = json.loads(finish.stdout)
    assert report["added"] == len(files) - len(committed) and report["unchanged"] == len(committed)
    final, consistent = _passages_per_document(index_dir)
    assert final == expected and consistent
    checked = CliRunner().invoke(cli, ["check", "--index", str(index_dir), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.output)["ok"]


def _lexical_ids(index_dir):
    store = Store.open(index_dir)
    try:
        return store.lexical.load().ids().tolist(), [row[0] for row in _passage_rows(index_dir)]
    finally:
        store.close()


def test_lexical_and_hybrid_search_rank_documents_by_their_best_passage(tmp_path, default_encoder):
    """BM25 holds the passages: a word past token 512 is found by its passage, k distinct
    documents come back in every mode, filters and deletes apply, and the lexical side
    follows the passages through changes, a writer killed before its lexical commit and an
    older index whose lexical side held documents."""
    from indexer.integrity import check_index
    from indexer.lexical import LEXICAL_KEY, LexicalIndex, build
    from indexer.search import search_queries

    valves = "Checking the valves weekly keeps the plant running. "
    folder = _corpus(
        tmp_path,
        {
            "manual.txt": valves * 60 + "Firmware XK-4471 is recalled for overheating. " + valves,
            "valves.txt": valves * 2,
            "plants.txt": "Plants make sugar from light and water.",
            "tcp.txt": "The TCP handshake opens a connection between two hosts.",
        },
    )
    index_dir = tmp_path / "index"
    spec = PassageSpec(64, 8)
    update_index(index_dir, default_encoder, read_corpus(folder, whole=True), passages=spec,
                 progress=False)  # fmt: skip
    held, passages = _lexical_ids(index_dir)
    assert held == passages and len(passages) > 10

    (recall,) = search_queries(index_dir, ["XK-4471 recalled"], k=3, mode="lexical")
    assert [h.doc_id for h in recall] == ["manual.txt"]  # no other passage has either word
    assert recall[0].passage["token_start"] > 512 and "XK-4471" in recall[0].snippet
    text = (folder / "manual.txt").read_text()
    passage = recall[0].passage
    assert " ".join(text[passage["char_start"] : passage["char_end"]].split()) == recall[0].snippet

    # Dozens of manual.txt's passages match "valves" best; still k distinct documents.
    (lexical,) = search_queries(index_dir, ["checking the valves weekly"], k=3, mode="lexical")
    assert sorted(h.doc_id for h in lexical) == ["manual.txt", "valves.txt"]  # only two match
    for mode in (None, "hybrid", "dense"):
        (hits,) = search_queries(index_dir, ["checking the valves weekly"], k=3, mode=mode)
        assert len({h.doc_id for h in hits}) == 3, mode
        assert {h.doc_id for h in hits[:2]} == {"manual.txt", "valves.txt"}, mode
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Hybrid (the default): the recalled firmware's passage, though dense alone may miss it.
    (hybrid,) = search_queries(index_dir, ["XK-4471 recalled"], k=2)
    assert hybrid[0].doc_id == "manual.txt" and "XK-4471" in hybrid[0].snippet
    (filtered,) = search_queries(
        index_dir, ["checking the valves weekly"], k=3, mode="lexical", where="source glob 'v*'"
    )
    assert [h.doc_id for h in filtered] == ["valves.txt"]

    (folder / "manual.txt").unlink()
    update_index(index_dir, default_encoder, read_corpus(folder, whole=True), passages=spec,
                 progress=False)  # fmt: skip
    assert search_queries(index_dir, ["XK-4471"], k=3, mode="lexical") == [[]]
    held, passages = _lexical_ids(index_dir)
    assert held == passages and len(passages) == 3

    # A writer killed between its SQLite commit and its lexical one: caught up by passage ids.
    store = Store.open(index_dir)
    lexical = LexicalIndex.open(store.lexical.path)
    lexical.remove([passages[0]])
    lexical.add([10_000], ["zeppelin"])
    lexical.commit()
    lexical.close()
    record = store.settings[LEXICAL_KEY]
    store.write_settings({LEXICAL_KEY: {**record, "generation": record["generation"] - 1}})
    store.close()
    assert search_queries(index_dir, ["zeppelin"], k=1, mode="lexical") == [[]]
    assert _lexical_ids(index_dir)[0] == passages

    # An index of passages made when the lexical side held documents (by document ids, no
    # "keys" in the record): `engine check` says so, a search rebuilds it from the passages.
    store = Store.open(index_dir)
    documents = sorted(store.doc_ids())
    store.lexical.close()
    build(store.lexical.path, store.db.execute("SELECT id, title, text FROM documents")).close()
    store.write_settings({LEXICAL_KEY: {"generation": store.generation, "documents": 3}})
    store.close()
    report = check_index(index_dir)
    finding = next(f for f in report.findings if f.check == "lexical")
    assert not finding.ok and "holds documents, the index searches passages" in finding.detail
    assert documents != passages  # else the test could not tell the two apart
    (plants,) = search_queries(index_dir, ["sugar from light"], k=1, mode="lexical")
    assert [h.doc_id for h in plants] == ["plants.txt"]
    assert _lexical_ids(index_dir)[0] == passages
    report = check_index(index_dir)
    finding = next(f for f in report.findings if f.check == "lexical")
    assert report.ok and "holds the database's passages, one to one" in finding.detail
