"""Dense, lexical and hybrid search on real indexes: the lexical index kept in step with the
store (incremental runs, rebuilds, older indexes, damage, a running writer), `engine check`,
and the modes through the CLI, the server, its page and `engine bench beir`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from engine.app.cli import cli
from engine.app.server import create_app
from engine.errors import EngineError
from indexer.documents import Document
from indexer.folder import WriterLock
from indexer.fusion import Fusion
from indexer.indexing import update_index
from indexer.integrity import check_index
from indexer.lexical import LEXICAL_KEY, LexicalIndex
from indexer.search import resolve_mode, search_queries
from indexer.store import Store
from tests.test_bench_beir import write_beir
from tests.test_server import LiveServer, assert_one_line_error

DOCUMENTS = [
    Document("plants", "plants.txt", "Photosynthesis", "Plants make sugar from light and water."),
    Document("tcp", "tcp.md", "TCP", "The TCP handshake sends SYN, then SYN-ACK, then ACK."),
    Document("volcano", "volcano.txt", "", "Shield volcanoes erupt runny basalt lava."),
    Document("recall", "recall.txt", "Notice", "Firmware XK-4471 is recalled for overheating."),
    Document("bread", "bread.txt", "Bread", "Yeast makes bread dough rise as it ferments sugar."),
]


def doc_ids(hits) -> list[str]:
    return [hit.doc_id for hit in hits]


def lexical_state(index_dir: Path) -> tuple[list[int], list[int], bool]:
    """(ids in the lexical index as on disk, ids in SQLite, recorded generation current)."""
    store = Store.open(index_dir)
    try:
        lexical = LexicalIndex.open(store.lexical.path)
        held = lexical.ids().tolist()
        lexical.close()
        record = store.settings.get(LEXICAL_KEY) or {}
        return held, sorted(store.doc_ids()), record.get("generation") == store.generation
    finally:
        store.close()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, default_encoder):
    index_dir = tmp_path_factory.mktemp("modes") / "index"
    update_index(index_dir, default_encoder, DOCUMENTS, progress=False)
    return index_dir, default_encoder


@pytest.fixture
def fresh(tmp_path, default_encoder):
    """An index of its own, for tests that change it."""
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, DOCUMENTS, progress=False)
    return index_dir, default_encoder


# ------------------------------------------------------------ in step
def test_indexing_keeps_the_lexical_index_in_step(fresh):
    index_dir, encoder = fresh
    held, live, recorded = lexical_state(index_dir)
    assert held == live and len(live) == 5 and recorded
    changed = [d for d in DOCUMENTS if d.doc_id not in ("volcano", "recall")]  # two deleted
    changed[0] = Document("plants", "plants.txt", "Photosynthesis", "Chlorophyll absorbs photons.")
    changed.append(Document("walrus", "walrus.txt", "", "Walrus tusks grow all their lives."))
    update_index(index_dir, encoder, changed, progress=False)
    held, live, recorded = lexical_state(index_dir)
    assert held == live and len(live) == 4 and recorded
    lexical = search_queries(index_dir, ["walrus tusks"], k=5, mode="lexical")[0]
    assert doc_ids(lexical) == ["walrus"]
    assert search_queries(index_dir, ["XK-4471 lava"], k=5, mode="lexical") == [[]]  # both deleted
    assert doc_ids(search_queries(index_dir, ["chlorophyll"], k=5, mode="lexical")[0]) == ["plants"]
    assert (
        search_queries(index_dir, ["sugar from light"], k=5, mode="lexical")[0][0].doc_id == "bread"
    )


def test_rebuild_builds_its_own_lexical_index_and_drops_the_old(fresh):
    index_dir, encoder = fresh
    old = Store.open(index_dir)
    old_path = old.lexical.path
    old.close()
    update_index(index_dir, encoder, DOCUMENTS[:2], rebuild=True, progress=False)
    new = Store.open(index_dir)
    try:
        assert new.lexical.path != old_path and not old_path.exists()
        assert new.lexical.path.is_dir()
        assert sorted(new.lexical.load().ids().tolist()) == sorted(new.doc_ids())
    finally:
        new.close()
    lexical_folders = [p.name for p in index_dir.iterdir() if p.name.endswith(".lexical")]
    assert lexical_folders == [new.lexical.path.name]


def test_an_index_without_a_lexical_side_gets_one_on_first_use(fresh, capsys):
    """What an index made before the lexical side existed looks like: no folder, no record."""
    index_dir, _ = fresh
    store = Store.open(index_dir)
    shutil.rmtree(store.lexical.path)
    store.db.execute("DELETE FROM settings WHERE key = ?", [LEXICAL_KEY])
    store.db.conn.commit()
    store.close()
    capsys.readouterr()
    hits = search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]
    assert doc_ids(hits) == ["recall"]
    assert capsys.readouterr().err == ""  # nothing was damaged: no warning
    held, live, recorded = lexical_state(index_dir)
    assert held == live and recorded


def test_a_damaged_lexical_index_is_rebuilt_with_one_warning(fresh, capsys):
    index_dir, _ = fresh
    store = Store.open(index_dir)
    (store.lexical.path / "meta.json").write_bytes(b"\x00garbage")
    store.close()
    capsys.readouterr()
    assert doc_ids(search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]) == ["recall"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Warning:") and "rebuilt" in err[0]


def test_a_lexical_index_behind_sqlite_is_caught_up_by_id_difference(fresh):
    """A writer killed between its SQLite commit and its lexical one: ids tell what changed."""
    index_dir, _ = fresh
    store = Store.open(index_dir)
    ids = store.doc_ids()
    recall_id = next(i for i, d in ids.items() if d == "recall")
    lexical = LexicalIndex.open(store.lexical.path)
    lexical.remove([recall_id])
    lexical.add([10_000], ["a document SQLite never had: zeppelin"])
    lexical.commit()
    lexical.close()
    record = store.settings[LEXICAL_KEY]
    store.write_settings({LEXICAL_KEY: {**record, "generation": record["generation"] - 1}})
    store.close()
    assert doc_ids(search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]) == ["recall"]
    assert search_queries(index_dir, ["zeppelin"], k=3, mode="lexical") == [[]]
    held, live, recorded = lexical_state(index_dir)
    assert held == live and recorded


def test_readers_leave_the_lexical_index_to_a_running_writer(fresh):
    index_dir, _ = fresh
    store = Store.open(index_dir)
    path = store.lexical.path
    store.close()
    with WriterLock(index_dir):
        # Present: searched as it is. Missing: the writer builds it; readers say so.
        assert doc_ids(search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]) == ["recall"]
        shutil.rmtree(path)
        with pytest.raises(EngineError, match="being built by a running `engine index`"):
            search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")
        assert not path.exists()  # nothing was written without the lock
    assert doc_ids(search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]) == ["recall"]


def test_check_verifies_and_repairs_the_lexical_index(fresh):
    index_dir, _ = fresh
    report = check_index(index_dir)
    lexical = next(f for f in report.findings if f.check == "lexical")
    assert report.ok and lexical.ok and "one to one" in lexical.detail
    store = Store.open(index_dir)
    path = store.lexical.path
    index = LexicalIndex.open(path)
    index.remove([min(store.doc_ids())])
    index.commit()
    index.close()
    store.close()
    report = check_index(index_dir)
    lexical = next(f for f in report.findings if f.check == "lexical")
    assert not report.ok and not lexical.ok
    assert "4 documents, the database has 5 (1 missing, 0 no longer" in lexical.detail
    repaired = check_index(index_dir, repair=True)
    assert repaired.ok and any("rebuilt the lexical index" in r for r in repaired.repairs)
    (path / "meta.json").write_text("{")
    damaged = check_index(index_dir)
    assert not damaged.ok
    assert "unreadable" in next(f for f in damaged.findings if f.check == "lexical").detail
    assert check_index(index_dir, repair=True).ok
    held, live, recorded = lexical_state(index_dir)
    assert held == live and recorded


@pytest.mark.parametrize("suffix", [".term", ".idx", ".store", ".fast"])
def test_check_finds_a_damaged_segment_file_by_its_checksum(fresh, suffix):
    """Bytes changed inside a segment file, its size kept (tantivy opens and searches a
    .term, .idx or .store so damaged without noticing): the recorded SHA-256 finds it;
    --repair rebuilds the index from SQLite."""
    index_dir, _ = fresh
    store = Store.open(index_dir)
    path = store.lexical.path
    store.close()
    assert check_index(index_dir).ok
    (file,) = [f for f in path.iterdir() if f.name.endswith(suffix)]
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    file.write_bytes(bytes(data))
    report = check_index(index_dir)
    lexical = next(f for f in report.findings if f.check == "lexical")
    assert not report.ok and not lexical.ok
    assert f"{file.name} does not match its recorded checksum" in lexical.detail
    repaired = check_index(index_dir, repair=True)
    assert repaired.ok and any("rebuilt the lexical index" in r for r in repaired.repairs)
    assert check_index(index_dir).ok
    assert doc_ids(search_queries(index_dir, ["XK-4471"], k=3, mode="lexical")[0]) == ["recall"]


def test_check_finds_a_missing_segment_file(fresh):
    index_dir, _ = fresh
    store = Store.open(index_dir)
    path = store.lexical.path
    store.close()
    (file,) = [f for f in path.iterdir() if f.name.endswith(".term")]
    file.unlink()
    lexical = next(f for f in check_index(index_dir).findings if f.check == "lexical")
    assert not lexical.ok and f"{file.name} is missing" in lexical.detail
    assert check_index(index_dir, repair=True).ok and check_index(index_dir).ok


# --------------------------------------------------------------- modes
def test_modes_rank_differently_and_hybrid_fuses_both(indexed):
    index_dir, encoder = indexed
    query = ["firmware XK-4471"]
    dense = search_queries(index_dir, query, k=5, encoder=encoder, mode="dense")[0]
    lexical = search_queries(index_dir, query, k=5, mode="lexical")[0]
    assert doc_ids(lexical) == ["recall"]  # BM25 finds only what shares a term
    assert len(dense) == 5  # dense ranks everything
    rrf = search_queries(
        index_dir, query, k=5, encoder=encoder, mode="hybrid", fusion=Fusion("rrf")
    )[0]
    assert rrf[0].doc_id == "recall" and len(rrf) == 5
    assert sorted(doc_ids(rrf)) == sorted(doc_ids(dense))
    only_dense = search_queries(
        index_dir, query, k=5, encoder=encoder, mode="hybrid", fusion=Fusion("weighted", 1.0)
    )[0]
    assert doc_ids(only_dense) == doc_ids(dense)
    only_lexical = search_queries(
        index_dir, query, k=5, encoder=encoder, mode="hybrid", fusion=Fusion("weighted", 0.0)
    )[0]
    assert only_lexical[0].doc_id == "recall" and only_lexical[0].score == pytest.approx(1.0)


class VectorsOnly:
    """A search index with vectors and no lexical side (as a Milvus collection is)."""

    settings: dict = {}

    def search_queries(self, vectors, k, knobs=None):
        return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)

    def get(self, ids):
        return []


def test_mode_defaults_and_refusals():
    assert resolve_mode(VectorsOnly(), None) == "dense"
    with pytest.raises(EngineError, match="--mode lexical needs a lexical index"):
        resolve_mode(VectorsOnly(), "lexical")
    with pytest.raises(EngineError, match="unknown mode"):
        resolve_mode(VectorsOnly(), "sparse")


def test_search_modes_through_the_cli(indexed):
    index_dir, _ = indexed
    runner = CliRunner()
    base = ["search", "firmware XK-4471", "--index", str(index_dir), "--json", "-k", "3"]
    lexical = runner.invoke(cli, [*base, "--mode", "lexical"])
    assert lexical.exit_code == 0, lexical.output
    assert [json.loads(line)["doc_id"] for line in lexical.stdout.splitlines()] == ["recall"]
    weighted = runner.invoke(cli, [*base, "--mode", "hybrid", "--alpha", "0.2"])
    first = json.loads(weighted.stdout.splitlines()[0])
    assert weighted.exit_code == 0 and first["doc_id"] == "recall"
    assert first["score"] == pytest.approx(1.0)  # 0.2 x 1 (dense best) + 0.8 x 1 (BM25 best)
    human = runner.invoke(
        cli, ["search", "XK-4471", "--index", str(index_dir), "--mode", "lexical"]
    )
    assert human.exit_code == 0 and human.stdout.startswith("  1. ")  # no instruction line
    for bad, message in (
        (["--fusion", "rrf", "--alpha", "0.5"], "alpha applies to the weighted fusion"),
        (["--mode", "sparse"], "Invalid value for '--mode'"),
        (["--alpha", "1.5"], "Invalid value for '--alpha'"),
    ):
        refused = runner.invoke(cli, [*base, *bad])
        assert refused.exit_code != 0 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


def test_lexical_search_loads_no_model(indexed):
    index_dir, _ = indexed
    probe = (
        "import sys; from engine.app.cli import cli\n"
        "try: cli(sys.argv[1:])\n"
        "except SystemExit as exit: code = exit.code\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    args = ["search", "XK-4471", "--index", str(index_dir), "--mode", "lexical", "--json"]
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60
    )
    assert result.stderr.split()[-3:] == ["0", "False", "False"], result.stderr
    assert json.loads(result.stdout.splitlines()[0])["doc_id"] == "recall"


# -------------------------------------------------------------- server
@pytest.fixture(scope="module")
def served(indexed):
    index_dir, encoder = indexed
    server = LiveServer(create_app(index_dir, encoder))
    yield server, index_dir, encoder
    server.stop()


def test_server_modes_answer_like_the_library(served):
    server, index_dir, encoder = served
    for mode, extra, fusion in (
        ("lexical", {}, Fusion()),
        ("hybrid", {}, Fusion()),
        ("hybrid", {"alpha": 0.3}, Fusion("weighted", 0.3)),
        ("dense", {}, Fusion()),
    ):
        expected = [
            hit.to_dict()
            for hit in search_queries(
                index_dir, ["sugar and light"], k=3, encoder=encoder, mode=mode, fusion=fusion
            )[0]
        ]
        got = httpx.get(
            f"{server.url}/search", params={"q": "sugar and light", "k": 3, "mode": mode, **extra}
        ).json()
        assert got["mode"] == mode and got["results"] == [expected], (mode, extra)
        posted = httpx.post(
            f"{server.url}/search", json={"query": "sugar and light", "k": 3, "mode": mode, **extra}
        ).json()
        assert posted["results"] == [expected]
    weighted = httpx.post(
        f"{server.url}/search", json={"query": "lava", "mode": "hybrid", "alpha": 0.3}
    ).json()
    assert weighted["fusion"] == "weighted (alpha=0.3)"
    lexical = httpx.post(
        f"{server.url}/search", json={"queries": ["XK-4471", "yeast"], "mode": "lexical"}
    )
    assert [r[0]["doc_id"] for r in lexical.json()["results"]] == ["recall", "bread"]
    assert lexical.json()["instruction"] is None and lexical.json()["fusion"] is None


def test_server_refuses_bad_modes_in_one_line(served):
    server, _, _ = served
    assert "mode" in assert_one_line_error(
        httpx.get(f"{server.url}/search", params={"q": "x", "mode": "sparse"}), 422
    )
    assert "alpha" in assert_one_line_error(
        httpx.post(f"{server.url}/search", json={"query": "x", "alpha": 2}), 422
    )
    message = assert_one_line_error(
        httpx.post(f"{server.url}/search", json={"query": "x", "fusion": "rrf", "alpha": 0.5}), 400
    )
    assert "alpha applies to the weighted fusion" in message


def test_search_cli_through_the_server_with_a_mode(served):
    server, index_dir, _ = served
    runner = CliRunner()
    for extra in (["--mode", "lexical"], ["--mode", "hybrid", "--alpha", "0.4"]):
        local = runner.invoke(
            cli, ["search", "yeast bread", "--index", str(index_dir), "--json", *extra]
        )
        remote = runner.invoke(
            cli, ["search", "yeast bread", "--server", server.url, "--json", *extra]
        )
        assert local.exit_code == remote.exit_code == 0, remote.output
        assert remote.stdout == local.stdout


def test_search_page_mode_menu_in_a_real_browser(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.test_server import chromium_driver

    server, _, _ = served
    driver = chromium_driver()
    try:
        driver.get(server.url + "/?mode=lexical")
        wait = WebDriverWait(driver, 30)
        assert Select(driver.find_element(By.ID, "mode")).first_selected_option.text == (
            "lexical (BM25)"
        )
        driver.find_element(By.ID, "query").send_keys("XK-4471")
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: "hits in" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        hits = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert "· lexical" in status and "instruction" not in status
        assert len(hits) == 1 and hits[0].find_element(By.CLASS_NAME, "title").text == "Notice"
        Select(driver.find_element(By.ID, "mode")).select_by_value("hybrid")
        driver.find_element(By.ID, "submit").click()
        default = "hybrid, " + Fusion().describe()  # the page sends no fusion: the default
        wait.until(lambda d: default in d.find_element(By.ID, "status").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results .hit")) == 5
        assert "mode=hybrid" in driver.current_url
    finally:
        driver.quit()


# --------------------------------------------------------------- bench
def test_bench_beir_sweep_scores_every_ranking(tmp_path, tiny_bert_path):
    corpus = {d.doc_id: (d.title, d.text) for d in DOCUMENTS}
    queries = {"q1": "which firmware XK-4471 is recalled", "q2": "how does yeast raise bread"}
    qrels = {"q1": {"recall": 1}, "q2": {"bread": 1}}
    folder = write_beir(tmp_path / "data" / "tiny", corpus, queries, qrels)
    out = tmp_path / "results"
    args = [
        "bench", "beir", "--data-dir", str(folder), "--model", str(tiny_bert_path),
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json", "-k", "5",
    ]  # fmt: skip
    swept = CliRunner().invoke(cli, [*args, "--sweep"])
    assert swept.exit_code == 0, swept.output
    record = json.loads(swept.stdout)
    result = record["datasets"][0]
    labels = list(result["rankings"])
    assert labels[:3] == ["dense", "lexical", "rrf"]
    assert labels[3:] == [f"weighted-{a / 10:g}" for a in range(1, 10)]
    # BM25 finds both documents first; the tiny random model's dense ranking does not matter.
    assert result["rankings"]["lexical"]["ndcg@10"] == 1.0
    assert result["metrics"] == result["rankings"]["dense"] and result["mode"] == "dense"
    assert "--sweep" in record["command"].split()
    assert list(out.glob("*-sweep.json"))
    lexical = CliRunner().invoke(cli, [*args, "--mode", "lexical"])
    assert lexical.exit_code == 0, lexical.output
    assert json.loads(lexical.stdout)["datasets"][0]["metrics"] == result["rankings"]["lexical"]
    assert list(out.glob("*-lexical.json"))


def test_server_on_an_index_without_a_lexical_side_never_blocks_the_writer(fresh):
    """The server brings the lexical index in step before it pins its read snapshot, and
    never writes while it holds one: `engine index` runs beside it."""
    index_dir, encoder = fresh
    store = Store.open(index_dir)
    path = store.lexical.path
    shutil.rmtree(path)
    store.db.execute("DELETE FROM settings WHERE key = ?", [LEXICAL_KEY])
    store.db.conn.commit()
    store.close()
    server = LiveServer(create_app(index_dir, encoder))
    try:
        got = httpx.get(f"{server.url}/search", params={"q": "XK-4471", "mode": "lexical"})
        assert [hit["doc_id"] for hit in got.json()["results"][0]] == ["recall"]
        assert path.is_dir()  # built on disk, before the snapshot was pinned
        more = [*DOCUMENTS, Document("walrus", "walrus.txt", "", "Walrus tusks grow.")]
        report = update_index(index_dir, encoder, more, progress=False)
        assert report.added == 1
    finally:
        server.stop()
    held, live, recorded = lexical_state(index_dir)
    assert held == live and len(live) == 6 and recorded


def test_server_searches_in_memory_while_a_writer_builds_the_lexical_index(fresh):
    index_dir, encoder = fresh
    store = Store.open(index_dir)
    path = store.lexical.path
    store.close()
    shutil.rmtree(path)
    with WriterLock(index_dir):  # what a running `engine index` holds
        server = LiveServer(create_app(index_dir, encoder))
        try:
            got = httpx.get(f"{server.url}/search", params={"q": "XK-4471", "mode": "lexical"})
            assert got.status_code == 200, got.text
            assert [hit["doc_id"] for hit in got.json()["results"][0]] == ["recall"]
            assert not path.exists()  # nothing written without the lock
        finally:
            server.stop()


def test_a_reader_that_caught_up_leaves_the_writer_free(fresh):
    """A reader that brought the lexical index in step gives back tantivy's writer lock at
    once: an `engine index` run beside it (here, in the same process) can write."""
    index_dir, encoder = fresh
    store = Store.open(index_dir)
    recall_id = next(i for i, d in store.doc_ids().items() if d == "recall")
    lexical = LexicalIndex.open(store.lexical.path)
    lexical.remove([recall_id])  # what a writer killed before its lexical commit leaves
    lexical.commit()
    lexical.close()
    record = store.settings[LEXICAL_KEY]
    store.write_settings({LEXICAL_KEY: {**record, "generation": record["generation"] - 1}})
    store.close()
    reader = Store.open(index_dir)
    try:
        assert reader.lexical_search(["XK-4471"], 3)[1][0][0] == recall_id  # caught up
        more = [*DOCUMENTS, Document("walrus", "walrus.txt", "", "Walrus tusks grow.")]
        assert update_index(index_dir, encoder, more, progress=False).added == 1
    finally:
        reader.close()
    held, live, recorded = lexical_state(index_dir)
    assert held == live and len(live) == 6 and recorded
