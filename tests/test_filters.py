"""Metadata filters (``--where``, ``--source``): the parser, exact counts inside every FAISS
index type, the metadata migration, and the CLI end to end with a real model."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.errors import EngineError
from indexer import vector_index
from indexer.filters import parse, source_glob
from indexer.schema import MIGRATIONS
from indexer.search import ranked
from indexer.store import Store, Writer
from tests.test_vector_index import clustered, settings, undo_metadata_values

N = 1500
GROUPS = 50  # document i is in group i % 50: a group is 30 documents, 2% of them


def metadata_rows(start: int, stop: int) -> list[dict]:
    return [
        {
            "doc_id": f"d{i}",
            "source": f"{'docs' if i % 2 else 'notes'}/f{i}.{'md' if i % 3 else 'txt'}",
            "title": "",
            "text": f"text of {i}",
            "content_hash": str(i),
            "token_count": 3,
            "metadata": json.dumps(
                {"group": i % GROUPS, "size": i, "lang": "en" if i % 4 else "de"}
            ),
        }
        for i in range(start, stop)
    ]


def filled(folder, index_type: str) -> tuple[Store, np.ndarray, dict[int, dict]]:
    """A store of N documents with metadata; documents d0..d99 are then deleted."""
    vectors = clustered(N, seed=1)
    with Writer(folder, settings(index_type), rebuild=False) as store:
        store.load_faiss()
        for start in range(0, N, 500):
            store.commit(
                upsert=metadata_rows(start, start + 500), vectors=vectors[start : start + 500]
            )
        by_name = {name: i for i, name in store.doc_ids().items()}
        store.commit(remove=[by_name[f"d{i}"] for i in range(100)])
    reader = Store.open(folder)
    rows = {
        row["id"]: {**row, **json.loads(row["metadata"])} for row in reader.get(reader.doc_ids())
    }
    return reader, vectors, rows


def truth(store: Store, rows: dict[int, dict], query: np.ndarray, keep) -> list[int]:
    """The exact ranking (by the stored vectors) of the live documents ``keep`` lets through."""
    ids = [i for i, row in rows.items() if keep(row)]
    scores = store.vectors(ids) @ query if ids else np.zeros(0)
    return [ids[j] for j in np.argsort(-scores, kind="stable")]


FILTERS = [
    # (expression, python predicate): 28-30 documents, ~600, ~1000, none
    ("group = 7", lambda r: r["group"] == 7),
    ("group in (3, 4) and not lang = 'de'", lambda r: r["group"] in (3, 4) and r["lang"] != "de"),
    (
        "size >= 900 or source glob 'notes/*.txt'",
        lambda r: (
            r["size"] >= 900 or (r["source"].startswith("notes/") and r["source"].endswith(".txt"))
        ),
    ),
    ("group > 1000", lambda r: False),
]


@pytest.mark.parametrize("exact_limit", [vector_index.EXACT_FILTERED, 0])
@pytest.mark.parametrize("index_type", ["flat", "flat-fp16", "sq8", "hnsw", "ivf-flat", "ivf-pq"])
def test_filters_give_exact_counts_on_every_index_type(
    tmp_path, monkeypatch, index_type, exact_limit
):
    """k hits whenever k documents match, each one matching, none deleted; with the FAISS
    selector path forced (exact_limit 0) as well as the exact-scoring paths (a flat
    index's decoded codes, or the stored vectors)."""
    monkeypatch.setattr(vector_index, "EXACT_FILTERED", exact_limit)
    if not exact_limit:
        monkeypatch.setattr(vector_index, "DECODED_FILTERED", 0)
    store, _, rows = filled(tmp_path / "index", index_type)
    queries = clustered(4, seed=7)
    for expression, keep in FILTERS:
        allowed = store.matching(parse(expression))
        assert sorted(allowed.tolist()) == sorted(i for i, r in rows.items() if keep(r))
        decoded = vector_index.decoded_top_k(
            store.snapshots.search_index(), queries, np.unique(allowed), 10
        )
        assert (decoded is not None) == (index_type in ("flat", "flat-fp16"))
        for k in (10, 50):
            _, ids = ranked(store, queries, [], k, allowed=allowed)
            for query, found in zip(queries, ids, strict=True):
                hits = [int(i) for i in found if i >= 0]
                expected = truth(store, rows, query, keep)
                assert len(hits) == min(k, len(expected)), (expression, k)
                assert len(set(hits)) == len(hits) and set(hits) <= set(expected)
                if index_type == "flat" or exact_limit:
                    # a flat index, or the exact path (all these filters allow < 1400): exact
                    assert hits[:3] == expected[:3]


def test_passage_ids_and_source_glob(tmp_path):
    store, _, rows = filled(tmp_path / "index", "flat")
    matched = store.matching(source_glob("docs/*.md"))
    assert sorted(matched.tolist()) == sorted(
        i
        for i, r in rows.items()
        if r["source"].startswith("docs/") and r["source"].endswith(".md")
    )


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        ("size >", 7, "expected a quoted string or a number"),
        ("group = 1 lang", 11, "expected 'and', 'or' or the end"),
        ("(group = 1", 11, "expected ')'"),
        ("size ~ 3", 6, "unexpected character '~'"),
        ("lang in 'en'", 9, "expected '(' after 'in'"),
        ("and = 1", 1, "expected a field name or '('"),
    ],
)
def test_bad_expressions_name_the_position(expression, position, message):
    with pytest.raises(EngineError) as error:
        parse(expression)
    assert f"{message}" in str(error.value) and f"at position {position}:" in str(error.value)
    assert "\n" not in str(error.value)


def test_values_are_bound_never_formatted_into_sql():
    hostile = "x'); DROP TABLE documents; --"
    sql, params = parse(f'title = "{hostile}"').select()
    assert hostile not in sql and params == [hostile]
    sql, params = parse("a.b = 1 or a.b glob 'x*'").select()
    assert "a.b" not in sql and "x" not in sql and params[:2] == ["a.b", 1]


def test_migration_fills_the_extension_of_existing_documents(tmp_path):
    folder = tmp_path / "index"
    with Writer(folder, settings("flat"), rebuild=False) as store:
        store.commit(upsert=metadata_rows(0, 6), vectors=clustered(6, seed=1))
        name = store.db_name
    with sqlite3.connect(folder / name) as conn:  # as engine wrote it before migration 4
        undo_metadata_values(conn)
        conn.execute("ALTER TABLE documents DROP COLUMN metadata")
        conn.execute("PRAGMA user_version = 3")
    migrated = Store.open(folder)
    assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    markdown = migrated.matching(parse("extension = '.md'"))
    assert sorted(r["doc_id"] for r in migrated.get(markdown.tolist())) == ["d1", "d2", "d4", "d5"]


def test_metadata_values_follow_inserts_changes_and_deletes(tmp_path):
    """The rows filters read (migration 5) change with the documents in their transaction."""
    store, _, rows = filled(tmp_path / "index", "flat")
    assert store.db.execute("SELECT count(*) FROM metadata_values").fetchone()[0] == 3 * len(rows)
    first = min(rows)
    with store.db.atomic():
        store.db.execute(
            "UPDATE documents SET metadata = ? WHERE id = ?",
            [json.dumps({"group": 999, "flag": True, "tags": ["a"], "none": None}), first],
        )
    assert store.matching(parse("group = 999")).tolist() == [first]
    assert store.matching(parse("flag = 1 and tags = '[\"a\"]'")).tolist() == [first]
    assert first not in store.matching(parse(f"group = {rows[first]['group']}")).tolist()
    assert store.matching(parse("none = 1 or not none = 1")).tolist() == []
    with store.db.atomic():
        store.db.execute("DELETE FROM documents WHERE id = ?", [first])
    assert store.matching(parse("group = 999")).tolist() == []
    assert store.db.execute("SELECT count(*) FROM metadata_values").fetchone()[0] == 3 * (
        len(rows) - 1
    )
    assert store.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(
    ("expression", "keep"),
    [
        ("lang glob 'e*'", lambda r: r["lang"] == "en"),
        ("size glob '10?'", lambda r: 100 <= r["size"] <= 109),
        ("not (group < 5 or lang = 'de')", lambda r: r["group"] >= 5 and r["lang"] != "de"),
        ("not group not in (1, 2)", lambda r: r["group"] in (1, 2)),
        (
            "source glob 'notes/*' and not size >= 200",
            lambda r: r["size"] < 200 and not r["size"] % 2,
        ),
    ],
)
def test_globs_and_negations_count_exactly(tmp_path, expression, keep):
    """Globs on text and on numbers (their text form), and not pushed through and/or."""
    store, _, rows = filled(tmp_path / "index", "flat")
    expected = sorted(i for i, r in rows.items() if keep(r))
    assert expected and sorted(store.matching(parse(expression)).tolist()) == expected


def test_cli_where_and_source_with_a_real_model(tmp_path, tiny_bert_path):
    corpus = tmp_path / "corpus"
    (corpus / "docs").mkdir(parents=True)
    (corpus / "docs" / "a.md").write_text("# Plants\nPhotosynthesis makes sugar from light.")
    (corpus / "docs" / "b.txt").write_text("TCP opens a connection with a handshake.")
    (corpus / "c.md").write_text("# Rice\nRice grows in flooded paddies.")
    (corpus / "records.jsonl").write_text(
        "\n".join(
            json.dumps(
                {"_id": f"r{i}", "text": f"record number {i}", "year": 2015 + i, "lang": lang}
            )
            for i, lang in enumerate(["en", "de", "en", "fr"])
        )
    )
    index = str(tmp_path / "index")
    runner = CliRunner()
    common = ["--index", index, "--model", str(tiny_bert_path)]
    made = runner.invoke(cli, ["index", str(corpus), *common, "--json"])
    assert made.exit_code == 0, made.output

    def found(*args: str) -> list[str]:
        result = runner.invoke(cli, ["search", "sugar", *common, "-k", "10", "--json", *args])
        assert result.exit_code == 0, result.output
        return sorted(json.loads(line)["doc_id"] for line in result.stdout.splitlines())

    assert found("--where", "extension = '.md'") == ["c.md", "docs/a.md"]
    assert found("--where", "extension = '.md' and size < 40") == ["c.md"]
    assert found("--source", "docs/*") == ["docs/a.md", "docs/b.txt"]
    assert found("--where", "year >= 2016 and lang != 'fr'") == ["r1", "r2"]
    assert found("--where", "lang in ('de', 'fr')", "--mode", "lexical") == []  # no "sugar"
    assert found("--where", "not lang in ('de', 'fr')", "--mode", "hybrid") == ["r0", "r2"]
    bad = runner.invoke(cli, ["search", "sugar", *common, "--where", "year >> 3"])
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "at position 7" in bad.stderr and "Traceback" not in bad.output
