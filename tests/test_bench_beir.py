"""`engine bench beir`: dataset reading, metrics (by hand and against pytrec_eval), the protocol,
the index cache and the CLI, on tiny BEIR folders built here with tiny random models."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
import pytrec_eval
from click.testing import CliRunner

from bench.beir import PAPER_INSTRUCTION, evaluate_dataset, retrieve
from bench.datasets import (
    BEIR_FOLDERS,
    INSTRUCTIONS,
    UnknownDataset,
    canonical_name,
    default_split,
    ignores_identical_ids,
    instruction_for,
    load_beir,
    locate_dataset,
)
from bench.metrics import evaluate_run, mrr_at, per_query_metrics, ranked
from engine.encoder import Encoder
from engine.errors import EngineError

SCIFACT_INSTRUCTION = (
    "Given a scientific claim, retrieve documents that support or refute the claim"
)

# Words the tiny models' vocabularies know (tests/models.py).
CORPUS = {
    "d1": ("plants", "plants make sugar from light and water"),
    "d2": ("sun", "the sun is a star of energy and light"),
    "d3": ("grass", "grass is green"),
    "d4": ("sky", "the sky is blue"),
    "d5": ("", "water is what plants and grass need"),
    "d6": ("key", "the pass key is 1234"),
}
QUERIES = {
    "q1": "how do plants make sugar",
    "q2": "why is the sky blue",
    "q3": "what is the pass key",
    "q9": "a query without judgements",
}
QRELS = {"q1": {"d1": 2, "d5": 1, "d3": 0}, "q2": {"d4": 1}, "q3": {"d6": 1}}


def write_beir(
    folder: Path,
    corpus: dict[str, tuple[str, str]] = CORPUS,
    queries: dict[str, str] = QUERIES,
    qrels: dict[str, dict[str, int]] = QRELS,
    split: str = "test",
) -> Path:
    """A BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as out:
        for doc_id, (title, text) in corpus.items():
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as out:
        for query_id, text in queries.items():
            out.write(json.dumps({"_id": query_id, "text": text, "metadata": {}}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{s}" for q, judged in qrels.items() for d, s in judged.items()]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path) -> Encoder:
    return Encoder.load(str(tiny_bert_path), device="cpu")


# ------------------------------------------------------------------ datasets
def test_load_beir_reads_corpus_judged_queries_and_graded_qrels(tmp_path):
    data = load_beir(write_beir(tmp_path / "scifact"))
    assert data.name == "scifact" and data.split == "test"
    assert [d.doc_id for d in data.corpus] == list(CORPUS)
    assert data.corpus[0].source == "corpus.jsonl"
    assert (data.corpus[0].title, data.corpus[0].text) == CORPUS["d1"]
    assert data.queries == {q: QUERIES[q] for q in ("q1", "q2", "q3")}  # q9 has no judgements
    assert data.qrels == QRELS  # score 0 rows are kept, as BEIR does


def test_load_beir_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        load_beir(tmp_path / "nowhere")
    folder = write_beir(tmp_path / "nfcorpus", split="train")
    with pytest.raises(EngineError, match=r"no 'test' split .*available: train"):
        load_beir(folder)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(EngineError, match="no queries.jsonl"):
        load_beir(folder, "train")
    bad = write_beir(tmp_path / "bad")
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(EngineError, match=r"test.tsv:2: expected"):
        load_beir(bad)


def test_aliases_instructions_and_splits():
    assert len(INSTRUCTIONS) == 15 and set(BEIR_FOLDERS) == set(INSTRUCTIONS)
    for canonical, folder in BEIR_FOLDERS.items():
        assert canonical_name(folder) == canonical
        assert canonical_name(canonical.upper()) == canonical
        assert instruction_for(folder) == INSTRUCTIONS[canonical]
    assert instruction_for("SciFact") == SCIFACT_INSTRUCTION
    assert instruction_for("nfcorpus") == (
        "Given a question, retrieve relevant documents that best answer the question"
    )
    assert instruction_for("arguana") == "Given a claim, find documents that refute the claim"
    assert canonical_name("webis-touche2020") == "Touche2020"
    assert canonical_name("cqadupstack/android") == "CQADupStack"
    assert canonical_name("CQADupstackAndroidRetrieval") == "CQADupStack"
    assert canonical_name("SciFactRetrieval") == "SciFact"
    with pytest.raises(KeyError):
        instruction_for("not-a-dataset")
    with pytest.raises(UnknownDataset, match="unknown BEIR dataset 'x'"):
        canonical_name("x")
    assert ignores_identical_ids("arguana") and ignores_identical_ids("Quora")
    assert not ignores_identical_ids("scifact") and not ignores_identical_ids("my-own")
    assert default_split("msmarco") == "dev" and default_split("scifact") == "test"


# ------------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}}
    run = {
        "q1": {"d3": 0.95, "d2": 0.9, "d5": 0.8, "d1": 0.7},
        "q2": {"d5": 0.9, "d6": 0.8, "d4": 0.7},
    }
    # q1 ranks d3 (judged 0), d2 (gain 1), d5 (unjudged), d1 (gain 2).
    #   Ideal: 2, 1 -> IDCG@3 = 2/log2(2) + 1/log2(3) = 2.63093.
    #   nDCG@1 = 0; nDCG@3 = (1/log2(3)) / 2.63093 = 0.23981;
    #   nDCG@5 = (1/log2(3) + 2/log2(5)) / 2.63093 = 1.49228 / 2.63093 = 0.56721.
    #   AP@10 = (1/2 + 2/4) / 2 = 0.5; recall@10 = 1; MRR@10 = 1/2 (the 0-judged d3 is no hit).
    # q2 ranks d4 third: nDCG@1 = 0, nDCG@3 = 1/log2(4) = 0.5, AP = 1/3, MRR = 1/3.
    per_query = per_query_metrics(qrels, run)
    assert per_query["q1"]["ndcg@1"] == 0
    assert per_query["q1"]["ndcg@3"] == pytest.approx(0.23981, abs=1e-5)
    assert per_query["q1"]["ndcg@5"] == pytest.approx(0.56721, abs=1e-5)
    assert per_query["q1"]["map@10"] == pytest.approx(0.5)
    assert per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    assert per_query["q2"]["ndcg@3"] == pytest.approx(0.5)
    assert per_query["q2"]["map@100"] == pytest.approx(1 / 3)
    assert per_query["q2"]["mrr@10"] == pytest.approx(1 / 3)
    averaged = evaluate_run(qrels, run)
    assert averaged["ndcg@5"] == pytest.approx((0.56721 + 0.5) / 2, abs=1e-5)
    assert averaged["map@10"] == pytest.approx((0.5 + 1 / 3) / 2, abs=1e-5)
    assert averaged["recall@10"] == 1.0
    assert averaged["mrr@10"] == pytest.approx((0.5 + 1 / 3) / 2, abs=1e-5)


def test_cutoffs_limit_recall_map_and_mrr():
    # Relevant r1 at rank 1 and r2 at rank 12 (ten unjudged fillers between).
    run = {"q": {"r1": 1.0, **{f"f{i:02d}": 0.9 - i / 100 for i in range(10)}, "r2": 0.5}}
    qrels = {"q": {"r1": 1, "r2": 1}}
    # recall@10 = 1/2, recall@100 = 1; AP@10 = (1/1)/2; AP@100 = (1/1 + 2/12)/2;
    # nDCG@10 = 1 / (1 + 1/log2(3)) = 0.61315; nDCG@100 = (1 + 1/log2(13)) / 1.63093 = 0.77884.
    metrics = evaluate_run(qrels, run)
    assert metrics["recall@10"] == 0.5 and metrics["recall@100"] == 1.0
    assert metrics["map@10"] == 0.5
    assert metrics["map@100"] == pytest.approx((1 + 2 / 12) / 2, abs=1e-5)
    assert metrics["ndcg@10"] == pytest.approx(0.61315, abs=1e-5)
    assert metrics["ndcg@100"] == pytest.approx(0.77884, abs=1e-5)
    late = {"q": {**{f"f{i:02d}": 1.0 - i / 100 for i in range(10)}, "r1": 0.5}}
    assert mrr_at(qrels, late, 10)["q"] == 0.0  # first hit at rank 11
    assert mrr_at({"q": {"r1": 1}}, {}, 10)["q"] == 0.0  # no run counts as 0


def test_metrics_agree_with_pytrec_eval_on_a_random_run_with_ties():
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(60)]
    qrels = {
        f"q{q}": {d: rng.choice([0, 1, 2]) for d in rng.sample(docs, rng.randint(1, 6))}
        for q in range(25)
    }
    # Scores on a coarse grid, so many ties: ordering must follow trec_eval's tie rule.
    run = {q: {d: rng.randint(0, 20) / 20 for d in rng.sample(docs, 40)} for q in qrels}
    ours = evaluate_run(qrels, run)
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.10", "map_cut.100", "recall.10", "recip_rank"}
    )
    theirs = evaluator.evaluate(run)
    mean = {
        key: sum(row[key] for row in theirs.values()) / len(theirs)
        for key in ("ndcg_cut_10", "map_cut_100", "recall_10")
    }
    assert ours["ndcg@10"] == pytest.approx(mean["ndcg_cut_10"], abs=1e-5)
    assert ours["map@100"] == pytest.approx(mean["map_cut_100"], abs=1e-5)
    assert ours["recall@10"] == pytest.approx(mean["recall_10"], abs=1e-5)
    # Without a cutoff, MRR is trec_eval's reciprocal rank, ties included.
    mrr_all = mrr_at(qrels, run, 10**6)
    for query_id, row in theirs.items():
        assert mrr_all[query_id] == pytest.approx(row["recip_rank"])
    assert ranked({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]


# ------------------------------------------------------------------ protocol
def test_evaluate_dataset_scores_and_reuses_the_cached_index(tmp_path, tiny_bert):
    folder = write_beir(tmp_path / "data" / "scifact")
    first = evaluate_dataset(tiny_bert, folder, cache_dir=tmp_path / "cache")
    assert first["dataset"] == "scifact" and first["split"] == "test"
    assert first["documents"] == 6 and first["queries"] == 3
    assert first["timing"]["encoded_documents"] == 6
    assert first["instruction"] is None  # tiny BERT is not instruction-tuned
    assert first["query_example"] == QUERIES["q1"]
    assert first["max_length"] == tiny_bert.max_length
    assert first["metrics"]["recall@1000"] == 1.0  # every document retrieved
    index_dir = Path(first["index"]["folder"])
    assert index_dir.parent == tmp_path / "cache" / "beir"
    # One cache per precision; fp32 keeps the suffix-free name of older caches.
    expected = f"scifact-{tiny_bert.fingerprint[:12]}-{tiny_bert.max_length}{precision_suffix()}"
    assert index_dir.name == expected
    second = evaluate_dataset(tiny_bert, folder, cache_dir=tmp_path / "cache")
    assert second["timing"]["encoded_documents"] == 0
    assert second["timing"]["docs_per_second"] is None
    assert second["metrics"] == first["metrics"]
    # The same run scored independently with pytrec_eval.
    run, _ = retrieve(tiny_bert, index_dir, second_queries(folder), instruction=None, k=1000)
    theirs = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10"}).evaluate(run)
    expected = sum(r["ndcg_cut_10"] for r in theirs.values()) / len(theirs)
    assert first["metrics"]["ndcg@10"] == pytest.approx(expected, abs=1e-5)


def precision_suffix() -> str:
    """Result files and caches name a precision other than fp32 (this CPU's auto choice)."""
    from engine.precision import resolve_precision

    precision = resolve_precision(None, "cpu")
    return "" if precision == "fp32" else f"-{precision}"


def second_queries(folder: Path) -> dict[str, str]:
    return load_beir(folder).queries


def test_instruction_follows_the_profile_or_the_options(tmp_path, tiny_mistral_path, tiny_bert):
    folder = write_beir(tmp_path / "scifact")
    mistral = Encoder.load(str(tiny_mistral_path), device="cpu")
    assert mistral.profile.instruction_tuned
    result = evaluate_dataset(mistral, folder, cache_dir=tmp_path / "cache")
    assert result["instruction"] == SCIFACT_INSTRUCTION
    assert result["query_example"] == f"Instruct: {SCIFACT_INSTRUCTION}\nQuery: {QUERIES['q1']}"
    bare = evaluate_dataset(mistral, folder, instruction=None, cache_dir=tmp_path / "cache")
    assert bare["instruction"] is None and bare["timing"]["encoded_documents"] == 0
    paper = evaluate_dataset(
        tiny_bert, folder, instruction=PAPER_INSTRUCTION, cache_dir=tmp_path / "cache"
    )
    assert paper["instruction"] == SCIFACT_INSTRUCTION
    custom = evaluate_dataset(tiny_bert, folder, instruction="Find it", cache_dir=tmp_path / "c")
    assert custom["instruction"] == "Find it"
    unknown = write_beir(tmp_path / "my-data")
    with pytest.raises(EngineError, match="no task instruction is known for dataset 'my-data'"):
        evaluate_dataset(mistral, unknown, cache_dir=tmp_path / "cache")


def test_arguana_never_counts_a_query_as_its_own_hit(tmp_path, tiny_bert):
    # Queries are documents of the corpus (same id, same text): the own document scores highest.
    corpus = {
        f"a{i}": ("", text)
        for i, text in enumerate(
            [
                "plants make sugar",
                "the sky is blue",
                "grass is green",
                "the sun is a star",
                "water and light",
                "the pass key",
            ]
        )
    }
    queries = {"a0": "plants make sugar", "a1": "the sky is blue"}
    qrels = {"a0": {"a4": 1}, "a1": {"a3": 1}}
    folder = write_beir(tmp_path / "arguana", corpus, queries, qrels)
    cache = tmp_path / "cache"
    result = evaluate_dataset(tiny_bert, folder, cache_dir=cache, k=3)
    assert result["ignore_identical_ids"] is True
    index_dir = Path(result["index"]["folder"])
    kept, _ = retrieve(tiny_bert, index_dir, queries, instruction=None, k=3)
    dropped, _ = retrieve(tiny_bert, index_dir, queries, instruction=None, k=3, exclude_own_id=True)
    for query_id in queries:
        assert ranked(kept[query_id])[0] == query_id
        assert query_id not in dropped[query_id] and len(dropped[query_id]) == 3
    assert result["metrics"] == evaluate_run(qrels, dropped)
    other = write_beir(tmp_path / "scifact", corpus, queries, qrels)
    assert evaluate_dataset(tiny_bert, other, cache_dir=cache)["ignore_identical_ids"] is False


# ----------------------------------------------------------------- locating
def test_missing_dataset_offline_names_the_folder_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError) as error:
        locate_dataset("scifact", tmp_path / "data", tmp_path / "cache")
    message = str(error.value)
    assert "offline" in message and str(tmp_path / "data" / "scifact") in message
    assert "scifact.zip" in message and "\n" not in message
    with pytest.raises(EngineError, match="not a dataset BEIR publishes"):
        locate_dataset("my-own", tmp_path / "data", tmp_path / "cache")


def test_missing_dataset_is_downloaded_and_unpacked(tmp_path, monkeypatch):
    # The official layout (a zip holding <name>/...) served from a file:// URL: no network.
    source = write_beir(tmp_path / "src" / "nfcorpus")
    archive = tmp_path / "mirror" / "nfcorpus.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in source.rglob("*"):
            bundle.write(file, file.relative_to(source.parent).as_posix())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ENGINE_OFFLINE", raising=False)
    monkeypatch.setenv("ENGINE_BEIR_URL", (tmp_path / "mirror").as_uri() + "/{name}.zip")
    folder = locate_dataset("NFCorpus", tmp_path / "data", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "nfcorpus"
    assert load_beir(folder).qrels == QRELS
    monkeypatch.setenv("ENGINE_BEIR_URL", (tmp_path / "gone").as_uri() + "/{name}.zip")
    with pytest.raises(EngineError, match=r"could not be downloaded .*provide the BEIR folder"):
        locate_dataset("scifact", tmp_path / "data", tmp_path / "cache")


# ----------------------------------------------------------------------- CLI
def test_cli_prints_the_table_writes_json_and_reuses_the_cache(tmp_path, tiny_bert_path):
    from engine.app.cli import cli

    write_beir(tmp_path / "data" / "scifact")
    write_beir(tmp_path / "data" / "nfcorpus")
    runner = CliRunner()
    base = [
        "bench", "beir", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_bert_path),
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    result = runner.invoke(cli, base + ["--datasets", "scifact,nfcorpus"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("dataset"))
    assert "nDCG@10" in header and "MAP@100" in header and "R@1000" in header and "MRR@10" in header
    assert any(line.startswith("scifact ") for line in lines)
    assert any(line.startswith("average ") for line in lines)
    written = list((tmp_path / "out").glob("beir-*.json"))
    assert len(written) == 1 and "scifact-nfcorpus" in written[0].name
    saved = json.loads(written[0].read_text())
    assert [d["dataset"] for d in saved["datasets"]] == ["scifact", "nfcorpus"]
    assert saved["fingerprint"] and saved["engine_version"] and saved["max_length"] == 128
    assert saved["command"].startswith("engine bench beir --data-dir")
    assert set(saved["average"]) == set(saved["datasets"][0]["metrics"])

    again = runner.invoke(cli, base + ["--datasets", "scifact", "--json", "--instruct"])
    assert again.exit_code == 0, again.output
    printed = json.loads(again.stdout)
    assert printed["datasets"][0]["timing"]["encoded_documents"] == 0
    assert printed["datasets"][0]["instruction"] == SCIFACT_INSTRUCTION


def test_cli_errors_are_one_line(tmp_path):
    from engine.app.cli import cli

    runner = CliRunner()
    missing = runner.invoke(
        cli,
        ["bench", "beir", "--data-dir", str(tmp_path), "--datasets", "scifact",
         "--cache-dir", str(tmp_path / "cache")],
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: BEIR dataset 'scifact' is not on disk")
    assert str(tmp_path / "scifact") in missing.output and "Traceback" not in missing.output
    clash = runner.invoke(
        cli, ["bench", "beir", "--datasets", "scifact", "--instruction", "x", "--no-instruct"]
    )
    assert clash.exit_code == 1 and "exclude each other" in clash.output
    help_text = runner.invoke(cli, ["bench", "beir", "--help"]).output
    assert "Examples:" in help_text and "--no-instruct" in help_text


def test_cqadupstack_subforums_are_averaged_into_one_group(tmp_path, tiny_bert_path):
    from engine.app.cli import cli

    for forum in ("android", "gaming"):
        write_beir(tmp_path / "data" / "cqadupstack" / forum)
    result = CliRunner().invoke(
        cli,
        ["bench", "beir", "--data-dir", str(tmp_path / "data"), "--datasets", "cqadupstack",
         "--model", str(tiny_bert_path), "--cache-dir", str(tmp_path / "cache"),
         "--out", str(tmp_path / "out"), "--instruct", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    names = [d["dataset"] for d in summary["datasets"]]
    assert names == ["cqadupstack/android", "cqadupstack/gaming"]
    assert summary["datasets"][0]["instruction"] == INSTRUCTIONS["CQADupStack"]
    group = summary["groups"]["cqadupstack"]
    assert summary["average"] == group
    first, second = (d["metrics"]["ndcg@10"] for d in summary["datasets"])
    assert group["ndcg@10"] == pytest.approx((first + second) / 2, abs=1e-5)
    assert (tmp_path / "out" / f"beir-tiny-bert-cqadupstack-128{precision_suffix()}.json").is_file()


def test_index_type_is_tried_in_memory_on_the_cached_vectors(tmp_path, tiny_bert_path):
    from engine.app.cli import cli
    from indexer.store import Store

    write_beir(tmp_path / "data" / "scifact")
    runner = CliRunner()
    base = [
        "bench", "beir", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_bert_path),
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    flat = json.loads(runner.invoke(cli, base).stdout)["datasets"][0]
    hnsw_run = runner.invoke(cli, base + ["--index-type", "hnsw", "--ef-search", "16"])
    assert hnsw_run.exit_code == 0, hnsw_run.output
    hnsw = json.loads(hnsw_run.stdout)["datasets"][0]
    assert hnsw["timing"]["encoded_documents"] == 0  # the cached vectors, not re-encoded
    assert hnsw["timing"]["index_type"].startswith("hnsw (HNSW32,SQfp16")
    assert hnsw["metrics"]["ndcg@10"] == pytest.approx(flat["metrics"]["ndcg@10"], abs=0.01)
    cached = Store.open(flat["index"]["folder"])
    assert cached.spec.type == "auto" and cached.spec.factory == "Flat"  # the cache is unchanged
    assert (
        tmp_path / "out" / f"beir-tiny-bert-scifact-128-hnsw{precision_suffix()}.json"
    ).is_file()


def test_reference_comparison_counts_same_top10_sets():
    from bench.beir import compare_with_reference

    ten = [f"d{i}" for i in range(10)]
    reference = {
        "datasets": [
            {
                "dataset": "scifact",
                "metrics": {"ndcg@10": 0.6},
                "top10": {"q1": ten, "q2": ten, "q3": ten},
            }
        ]
    }
    results = [
        {
            "dataset": "scifact",
            "metrics": {"ndcg@10": 0.61},
            # q1 reordered (same set), q2 one document swapped, q3 the same
            "top10": {"q1": ten[::-1], "q2": ten[:9] + ["d99"], "q3": ten},
        },
        {"dataset": "nfcorpus", "metrics": {"ndcg@10": 0.3}, "top10": {"q1": ten}},
    ]
    compare_with_reference(results, reference)
    assert results[0]["vs_reference"] == {
        "ndcg@10_difference": 0.01,
        "queries_compared": 3,
        "same_top10_share": 0.6667,
    }
    assert results[1]["vs_reference"] is None  # not in the reference run


def test_a_non_torch_runtime_gets_its_own_cache_and_result_names(tmp_path):
    from types import SimpleNamespace

    from bench.beir import index_dir_for, result_filename

    encoder = SimpleNamespace(
        precision="fp32", runtime="torch", fingerprint="ab" * 32, max_length=256
    )
    assert index_dir_for(tmp_path, "scifact", encoder).name == "scifact-abababababab-256"
    encoder.runtime = "openvino"
    assert index_dir_for(tmp_path, "scifact", encoder).name == "scifact-abababababab-256-openvino"
    name = result_filename("all-MiniLM-L6-v2", ["scifact"], 256, runtime="openvino")
    assert name == "beir-all-MiniLM-L6-v2-scifact-256-openvino.json"
