"""The Python API (``from engine import Index``) through its public surface only, with a real
(tiny) model, FAISS and SQLite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import Document, Hit, Index
from engine.errors import EngineError

DOCUMENTS = [
    Document("plants", "Photosynthesis turns light into sugar in leaves.", metadata={"year": 2021}),
    Document("tcp", "TCP opens a connection with a three-way handshake.", metadata={"year": 2015}),
    {
        "id": "rice",
        "text": "Rice grows in flooded paddies.",
        "title": "Rice",
        "metadata": {"year": 2023},
    },
]


@pytest.fixture
def made(tmp_path, tiny_bert_path):
    path = tmp_path / "index"
    with Index.create(path, model=str(tiny_bert_path), index_type="flat") as index:
        report = index.add(DOCUMENTS)
        assert (report.added, report.total) == (3, 3)
    return path


def test_add_search_filter_and_reopen(made):
    with Index.open(made) as index:
        hits = index.search("handshake", k=2, mode="lexical")
        assert [hit.doc_id for hit in hits] == ["tcp"] and isinstance(hits[0], Hit)
        dense = index.search("sugar in leaves", k=3, mode="dense")
        assert sorted(h.doc_id for h in dense) == ["plants", "rice", "tcp"]
        assert [h.rank for h in dense] == [1, 2, 3]
        recent = index.search("sugar in leaves", k=3, mode="dense", where="year >= 2020")
        assert sorted(h.doc_id for h in recent) == ["plants", "rice"]
        both = index.search(["handshake", "paddies"], k=1, mode="lexical")
        assert [[h.doc_id for h in hits] for hits in both] == [["tcp"], ["rice"]]
        info = index.info()
        assert info["documents"] == 3 and info["index_type"] == "flat"
        assert index.check().ok


def test_upsert_delete_and_index_folder_keep_each_other(made, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.md").write_text("# Bread\nBread rises with yeast.")
    with Index.open(made) as index:
        changed = index.upsert([Document("tcp", "UDP sends datagrams without a handshake.")])
        assert (changed.updated, changed.unchanged) == (1, 0)
        assert index.search("datagrams", k=1, mode="lexical")[0].doc_id == "tcp"
        files = index.index_folder(folder)
        assert (files.added, files.removed, files.total) == (1, 0, 4)
        assert index.search("yeast", k=1, where="extension = '.md'", mode="lexical")[0].doc_id == (
            "a.md"
        )
        assert index.delete(["plants", "missing"]) == 1
        assert sorted(h.doc_id for h in index.search("x sugar", k=10, mode="dense")) == [
            "a.md",
            "rice",
            "tcp",
        ]


def test_bad_use_is_one_clear_error(made, tmp_path):
    with pytest.raises(EngineError, match="no index at"):
        Index.open(tmp_path / "nothing")
    with pytest.raises(EngineError, match="already exists"):
        Index.create(made)
    with Index.open(made) as index:
        with pytest.raises(EngineError, match="unknown document fields: body"):
            index.add([{"id": "x", "body": "no"}])
        with pytest.raises(EngineError, match="at position 7"):
            index.search("sugar", where="year >")
        assert index.info()["documents"] == 3  # nothing lost


def test_importing_the_api_name_loads_no_torch():
    probe = (
        "import json, sys, engine; engine.Index; "
        "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_instruction_a_search_uses(tmp_path, tiny_bert_path):
    path = tmp_path / "index"
    with Index.create(path, model=str(tiny_bert_path), index_type="flat") as index:
        index.add(DOCUMENTS)
    with Index.open(path) as index:
        assert index.instruction_for() is None  # no default stored
        assert index.instruction_for("Find notes") == "Find notes"
        assert index.instruction_for("Find notes", mode="lexical") is None  # nothing embedded
        assert index.instruction_for("") is None
        with pytest.raises(EngineError, match="instruct"):
            index.instruction_for("Find notes", no_instruct=True)
        asked = index.search("sugar in leaves", k=3, mode="dense", instruct="Find notes")
        plain = index.search("sugar in leaves", k=3, mode="dense", no_instruct=True)
        assert len(asked) == len(plain) == 3
        assert [h.score for h in asked] != pytest.approx([h.score for h in plain], abs=1e-4)


def test_another_model_is_refused_when_searching(made, tmp_path, tiny_bert_path):
    from tests.models import build_tiny_bert

    other = build_tiny_bert(tmp_path / "other", seed=7)
    with Index.open(made, model=str(other)) as index:
        assert index.search("handshake", k=1, mode="lexical")[0].doc_id == "tcp"  # no model
        with pytest.raises(EngineError, match="search it with the model it was built with"):
            index.search("handshake", k=1, mode="dense")


def test_index_folder_takes_what_engine_index_takes(tmp_path, tiny_bert_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "long.txt").write_text(" ".join(f"word{n} sugar leaves" for n in range(60)))
    (folder / "short.md").write_text("# Rice\nRice grows in flooded paddies.")
    (folder / "broken.txt").write_bytes(b"\x00\x01\x02" * 50)
    with Index.create(tmp_path / "index", model=str(tiny_bert_path)) as index:
        done = index.index_folder(
            folder, passages=32, passage_overlap=4, default_instruction="Find notes"
        )
        assert done.passage_setting == {
            "tokens": 32,
            "overlap": 4,
            "max_document_tokens": 1_000_000,
        }
        assert (done.added, done.total, done.passages > 2) == (2, 2, True)
        summary = done.to_dict()
        assert (summary["skipped"], summary["skipped_detail"][0]["source"]) == (1, "broken.txt")
        assert summary["model"] == str(tiny_bert_path) and summary["documents"] == 2
        assert index.instruction_for() == "Find notes"
        top = index.search("sugar leaves", k=2, mode="dense")
        assert sorted(h.doc_id for h in top) == ["long.txt", "short.md"]
        assert all(hit.passage is not None for hit in top)
        again = index.index_folder(folder)  # the stored setting is kept
        assert (again.unchanged, again.encoded, again.passage_setting) == (
            2,
            0,
            done.passage_setting,
        )
        added = index.add([Document("bees", "Bees pollinate flowers. " * 30)])  # in passages too
        assert (added.added, added.passages > 1) == (1, True)
        bees = index.search("bees pollinate", k=1, mode="dense", where="source = ''")[0]
        assert bees.doc_id == "bees" and bees.passage is not None
        with pytest.raises(EngineError, match="passages"):
            index.index_folder(folder, passages=16)
        with pytest.raises(EngineError, match="corpus not found"):
            index.index_folder(tmp_path / "nowhere")
        assert index.info()["documents"] == 3  # nothing lost


def test_a_pinned_index_reads_the_generation_it_opened(made):
    with Index.open(made, pinned=True) as pinned, Index.open(made) as following:
        opened = pinned.generation
        with Index.open(made) as writer:
            writer.add([Document("bees", "Bees pollinate flowers.")])
        assert following.generation > opened == pinned.generation
        assert "bees" in [h.doc_id for h in following.search("bees", k=4, mode="dense")]
        assert sorted(h.doc_id for h in pinned.search("bees", k=4, mode="dense")) == [
            "plants",
            "rice",
            "tcp",
        ]


def test_search_with_embeddings_made_elsewhere(made):
    with Index.open(made) as index:
        assert index.mode_for("lexical") == "lexical"
        asked = ["sugar in leaves", "handshake"]
        embeddings = index.encoder.encode_queries(asked, "Find notes")
        given = index.search(asked, k=3, mode="dense", embeddings=embeddings)
        made_here = index.search(asked, k=3, mode="dense", instruct="Find notes")
        for ours, theirs in zip(given, made_here, strict=True):
            assert [h.doc_id for h in ours] == [h.doc_id for h in theirs]
            assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-5)


def test_a_damaged_database_is_one_line_naming_the_repair(tmp_path, tiny_bert_path):
    path = tmp_path / "index"
    with Index.create(path, model=str(tiny_bert_path), index_type="flat") as index:
        index.add([Document(str(n), f"text number {n} " * 30) for n in range(200)])
    (database,) = path.glob("*.db")
    data = bytearray(database.read_bytes())
    for page in range(2 * 16384, len(data), 16384):  # every page past the first two
        data[page : page + 200] = b"\xff" * 200
    database.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"is damaged .*engine check --repair"):
        with Index.open(path) as index:
            index.info()
    report = Index(path).check()
    assert not report.ok and "database" in [f.check for f in report.findings if not f.ok]
