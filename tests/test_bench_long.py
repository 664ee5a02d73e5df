"""`engine bench long`, `engine bench beir --passages` and `engine bench passkey --passages`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bench.long import file_qrels, pack_files, subset_qrels
from engine.app.cli import cli
from indexer.documents import Document
from tests.test_bench_beir import write_beir

CORPUS = {
    f"d{i}": (title, text)
    for i, (title, text) in enumerate(
        [
            ("plants", "plants make sugar from light and water"),
            ("sun", "the sun is a star of energy and light"),
            ("grass", "grass is green"),
            ("sky", "the sky is blue"),
            ("", "water is what plants and grass need"),
            ("key", "the pass key is 1234"),
        ]
        * 4
    )
}
QRELS = {"q1": {"d0": 2, "d4": 1}, "q2": {"d3": 1}, "q3": {"d5": 1, "d11": 1}}
QUERIES = {
    "q1": "how do plants make sugar",
    "q2": "why is the sky blue",
    "q3": "what is the pass key",
}


def test_files_pack_documents_in_order_and_take_their_best_grade():
    documents = [Document(f"d{i}", "c", "", "x") for i in range(5)]
    files, owner = pack_files(documents, [3, 3, 3, 3, 1], 5)
    assert [f.doc_id for f in files] == ["file00000", "file00001", "file00002"]
    assert owner == {"d0": "file00000", "d1": "file00000", "d2": "file00001",
                     "d3": "file00001", "d4": "file00002"}  # fmt: skip
    assert files[0].text == "x\n\nx"
    judged = file_qrels({"q": {"d0": 1, "d1": 2, "d4": 0}}, owner)
    assert judged == {"q": {"file00000": 2, "file00002": 0}}
    # A subset keeps the judgements on its documents, and only queries with a relevant one.
    assert subset_qrels(
        {"q": {"d0": 1, "d9": 2}, "r": {"d9": 1}, "s": {"d1": 0}}, {"d0", "d1"}
    ) == {"q": {"d0": 1}}


def test_bench_long_records_both_modes_per_file_size(tmp_path, tiny_bert_path):
    folder = write_beir(tmp_path / "scifact", CORPUS, QUERIES, QRELS)
    out = tmp_path / "out"
    args = ["bench", "long", "--data-dir", str(folder), "--model", str(tiny_bert_path),
            "--file-tokens", "16,40", "--passages", "16", "--passage-overlap", "4",
            "--max-length", "32", "--documents", "20", "--out", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["machine"]["cpu"] and summary["command"].startswith("engine bench long")
    assert [row["file_tokens"] for row in summary["long_documents"]] == [16, 40]
    for row in summary["long_documents"]:
        first, split = row["first_tokens"], row["passages"]
        assert row["files"] < len(CORPUS)
        assert 0 <= first["ndcg@10"] <= 1 and 0 <= split["ndcg@10"] <= 1
        assert split["vectors"] > row["files"] == first["vectors"]  # files split into passages
        assert split["index_bytes_per_corpus_token"] > 0 and first["index_seconds"] >= 0
        # The same indexes ranked otherwise: hybrid on both, the sum of 3 passages on passages.
        assert set(first["rankings"]) == {"hybrid"}
        assert set(split["rankings"]) == {"hybrid", "dense, sum of the best 3 passages"}
        assert all(0 <= r["ndcg@10"] <= 1 for r in split["rankings"].values())
    assert list(out.glob("long-scifact-*.json"))


def test_bench_beir_with_passages_keeps_its_own_cache(tmp_path, tiny_bert_path):
    write_beir(tmp_path / "data" / "scifact")
    base = ["bench", "beir", "--data-dir", str(tmp_path / "data"), "--datasets", "scifact",
            "--model", str(tiny_bert_path), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    runner = CliRunner()
    whole = json.loads(runner.invoke(cli, base).stdout)
    split = runner.invoke(cli, [*base, "--passages", "16", "--passage-overlap", "2"])
    assert split.exit_code == 0, split.output
    saved = json.loads(split.stdout)
    result = saved["datasets"][0]
    assert saved["passages"]["tokens"] == 16 and result["index"]["passages"] >= 6
    assert result["index"]["folder"] != whole["datasets"][0]["index"]["folder"]
    assert 0 < result["metrics"]["ndcg@10"] <= 1
    assert list((tmp_path / "out").glob("beir-*-scifact-128*-passages16.json"))
    lexical = runner.invoke(cli, [*base, "--passages", "16", "--passage-overlap", "2",
                                  "--mode", "lexical"])  # fmt: skip
    assert lexical.exit_code == 0, lexical.output
    lexical_result = json.loads(lexical.stdout)["datasets"][0]
    assert lexical_result["index"]["folder"] == result["index"]["folder"]  # the same index
    assert 0 < lexical_result["metrics"]["ndcg@10"] <= 1
    assert lexical_result["mode"] == "lexical" and result["mode"] == "dense"
    refused = runner.invoke(cli, [*base, "--passages", "16", "--index-type", "hnsw"])
    assert refused.exit_code == 1 and "--passages" in refused.output


def test_bench_passkey_with_passages_runs_both_curves(tmp_path, default_encoder):
    out = tmp_path / "out"
    args = ["bench", "passkey", "--lengths", "128,768", "--documents", "3", "--queries", "3",
            "--passages", "128", "--passage-overlap", "48", "--out", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["length"] for r in report["results"]] == [128, 768]
    # One index per length, searched in each mode: engine search's default (hybrid) first.
    assert [(r["length"], r["mode"]) for r in report["passage_results"]] == [
        (length, mode) for length in (128, 768) for mode in ("hybrid", "dense", "lexical")
    ]
    deep = {r["mode"]: r for r in report["passage_results"] if r["length"] == 768}
    assert deep["dense"]["passages"] > 3 and deep["dense"]["queries"] == 3
    assert deep["lexical"]["accuracy"] == 1.0  # both words of a name: in one document only
    assert all(r["sentence_in_one_passage"] == 3 for r in deep.values())  # 48 overlap > sentence
    assert all(0 <= r["misses_on_another_passkey"] <= 3 - r["correct"] for r in deep.values())
    assert report["results"][1]["sentence_alone_accuracy"] == 1.0
    assert report["results"][1]["truncated"] is True  # the model alone reads 512 of 768
    assert (out / "passkey-all-MiniLM-L6-v2-passages128.json").is_file()
