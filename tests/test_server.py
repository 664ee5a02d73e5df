"""`engine serve` against a real server on a real index (the default model, FAISS, SQLite)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner

from engine.app.batcher import Job, Limits
from engine.app.cli import cli
from engine.app.server import create_app
from engine.encoder import Encoder
from indexer.documents import Document
from indexer.indexing import update_index
from indexer.search import search_queries
from indexer.store import Store
from tests.models import WORDS
from tests.tolerances import assert_same_hits, assert_same_results, vector_tolerance

SCRIPT_DOC = '<script>document.title="pwned"</script> Bread rises because yeast makes gas.'
DOCUMENTS = [
    Document("plants", "notes.jsonl", "Photosynthesis", "Plants make sugar from light and water."),
    Document("tcp", "notes.jsonl", "TCP", "The TCP handshake sends SYN, SYN-ACK, then ACK."),
    Document("volcano", "notes.jsonl", "Volcanoes", "Shield volcanoes erupt runny basalt lava."),
    Document("chess", "notes.jsonl", "Castling", "Castling moves the king two squares."),
    Document("bread", "notes.jsonl", "<b>Bread</b>", SCRIPT_DOC),
]
INSTRUCTION = "Given a question, retrieve passages that answer it"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a thread, on a free local port."""

    def __init__(self, app) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_encoder):
    """A five-document index and a server on it (the session's one default model)."""
    index_dir = tmp_path_factory.mktemp("served") / "index"
    update_index(index_dir, default_encoder, DOCUMENTS, progress=False)
    server = LiveServer(create_app(index_dir, default_encoder))
    yield server, index_dir, default_encoder
    server.stop()


def assert_one_line_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "\n" not in response.text.strip()
    return response.json()["error"]["message"]


# ---------------------------------------------------------------- search
@pytest.mark.precision
def test_search_answers_like_search_json(served):
    server, index_dir, encoder = served
    expected = [
        hit.to_dict()
        for hit in search_queries(index_dir, ["how do plants make sugar"], k=3, encoder=encoder)[0]
    ]
    got = httpx.get(f"{server.url}/search", params={"q": "how do plants make sugar", "k": 3}).json()
    assert got["results"] == [expected] and expected[0]["doc_id"] == "plants"
    both = httpx.post(
        f"{server.url}/search",
        json={"queries": ["TCP handshake", "lava"], "instruct": INSTRUCTION, "k": 2},
    ).json()
    assert both["instruction"] == INSTRUCTION and both["generation"] >= 1
    assert [hits[0]["doc_id"] for hits in both["results"]] == ["tcp", "volcano"]
    with_instruction = search_queries(
        index_dir, ["lava"], k=2, instruction=INSTRUCTION, encoder=encoder
    )
    # A batch of two against one query alone: other matrix shapes, so scores within a tolerance.
    expected = [hit.to_dict() for hit in with_instruction[0]]
    assert_same_hits(both["results"][1], expected, encoder.precision)


@pytest.mark.precision
def test_search_cli_through_the_server(served):
    """`engine search --server` prints what the local `engine search` prints."""
    server, index_dir, encoder = served
    runner = CliRunner()
    local = runner.invoke(
        cli, ["search", "yeast bread", "--index", str(index_dir), "--json", "-k", "3"]
    )
    remote = runner.invoke(
        cli, ["search", "yeast bread", "--server", server.url, "--json", "-k", "3"]
    )
    assert local.exit_code == remote.exit_code == 0, remote.output
    remote_hits = [json.loads(line) for line in remote.stdout.splitlines()]
    local_hits = [json.loads(line) for line in local.stdout.splitlines()]
    assert_same_hits(remote_hits, local_hits, encoder.precision)
    assert remote_hits[0]["doc_id"] == "bread"
    human = runner.invoke(
        cli,
        ["search", "lava", "--instruct", INSTRUCTION, "-k", "1"],
        env={"ENGINE_SERVER": server.url},
    )
    assert human.exit_code == 0 and human.stdout.startswith(f"Instruction: {INSTRUCTION}\n  1. ")
    down = runner.invoke(cli, ["search", "x", "--server", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "cannot reach the server" in down.stderr


def test_where_filters_inside_the_served_search(served):
    """GET and POST /search take `where` (and `engine search --server` passes --where/--source):
    k hits of the matching documents only; a bad filter is one 400 line naming the position."""
    server, _, _ = served
    wanted = "title in ('TCP', 'Volcanoes', 'Castling')"
    got = httpx.get(f"{server.url}/search", params={"q": "sugar", "k": 5, "where": wanted})
    assert sorted(hit["doc_id"] for hit in got.json()["results"][0]) == ["chess", "tcp", "volcano"]
    posted = httpx.post(
        f"{server.url}/search",
        json={"queries": ["sugar", "lava"], "k": 2, "where": "title glob 'V*'", "mode": "hybrid"},
    ).json()
    assert [[hit["doc_id"] for hit in hits] for hits in posted["results"]] == [
        ["volcano"],
        ["volcano"],
    ]
    bad = httpx.get(f"{server.url}/search", params={"q": "sugar", "where": "title = "})
    assert "at position 9" in assert_one_line_error(bad, 400)
    runner = CliRunner()
    remote = runner.invoke(
        cli,
        ["search", "sugar", "--server", server.url, "--json", "--where", "title = 'TCP'"],
    )
    assert remote.exit_code == 0, remote.output
    assert [json.loads(line)["doc_id"] for line in remote.stdout.splitlines()] == ["tcp"]
    nothing = runner.invoke(
        cli, ["search", "sugar", "--server", server.url, "--json", "--source", "other/*"]
    )
    assert nothing.exit_code == 0 and nothing.stdout == ""


@pytest.mark.precision
def test_search_knobs_reach_the_served_index(tmp_path, tiny_bert_path):
    """nprobe (IVF) and ef_search (HNSW) over HTTP and `engine search --server` equal in-process."""
    encoder = Encoder.load(str(tiny_bert_path), device="cpu")
    rng = random.Random(0)
    documents = [
        Document(f"d{i}", "c.jsonl", "", " ".join(rng.choices(WORDS, k=8))) for i in range(320)
    ]
    queries = [" ".join(rng.choices(WORDS, k=4)) for _ in range(20)]
    runner = CliRunner()
    for index_type, knob, values in [
        ("IVF8,Flat", "nprobe", (1, 8)),
        ("HNSW4,Flat", "ef_search", (10, 512)),
    ]:
        folder = tmp_path / knob
        update_index(folder, encoder, documents, index_type=index_type, progress=False)
        server = LiveServer(create_app(folder, encoder))
        try:
            answers = []
            for value in values:
                expected = [
                    [hit.to_dict() for hit in hits]
                    for hits in search_queries(
                        folder, queries, k=10, encoder=encoder, **{knob: value}
                    )
                ]
                got = httpx.post(
                    f"{server.url}/search", json={"queries": queries, "k": 10, knob: value}
                )
                assert got.status_code == 200, got.text
                assert_same_results(got.json()["results"], expected, encoder.precision)
                one = httpx.get(
                    f"{server.url}/search", params={"q": queries[0], "k": 10, knob: value}
                )
                # One query alone against the same query in a batch of 20: scores within a
                # tolerance (other matrix shapes), ids and order exactly.
                assert_same_results(one.json()["results"], expected[:1], encoder.precision)
                answers.append(expected)
            ids = [[[hit["doc_id"] for hit in hits] for hits in answer] for answer in answers]
            assert ids[0] != ids[1]  # the knob changed what the index answered
            option, low = "--" + knob.replace("_", "-"), str(values[0])
            common = [queries[0], "-k", "10", option, low, "--json"]
            remote = runner.invoke(cli, ["search", *common, "--server", server.url])
            local = runner.invoke(
                cli, ["search", *common, "--index", str(folder), "--model", str(tiny_bert_path)]
            )
            assert remote.exit_code == local.exit_code == 0, remote.output
            remote_hits = [json.loads(line) for line in remote.stdout.splitlines()]
            local_hits = [json.loads(line) for line in local.stdout.splitlines()]
            assert_same_hits(remote_hits, local_hits, encoder.precision)
            assert_same_hits(remote_hits, answers[0][0], encoder.precision)
            for bad, words in [(0, "greater than or equal to 1"), (10**6, "at most"), ("x", knob)]:
                posted = httpx.post(f"{server.url}/search", json={"query": "sun", knob: bad})
                assert words in assert_one_line_error(posted, 422)
                asked = httpx.get(f"{server.url}/search", params={"q": "sun", knob: bad})
                assert words in assert_one_line_error(asked, 422)
        finally:
            server.stop()


def test_search_cli_through_the_server_imports_no_torch(served):
    server, _, _ = served
    probe = (
        "import sys; from engine.app.cli import cli\n"
        "try: cli(sys.argv[1:])\n"
        "except SystemExit as exit: code = exit.code\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "search", "lava", "--server", server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr.split()[-3:] == ["0", "False", "False"], result.stderr
    assert json.loads(result.stdout.splitlines()[0])["doc_id"] == "volcano"


# ------------------------------------------------------------ embeddings
@pytest.mark.precision
def test_embeddings_equal_the_encoder(served):
    server, _, encoder = served
    texts = ["how do plants make sugar", "TCP"]
    body = httpx.post(
        f"{server.url}/v1/embeddings",
        json={
            "model": "all-MiniLM-L6-v2",
            "input": texts,
            "input_type": "query",
            "instruct": INSTRUCTION,
        },
    ).json()
    assert body["object"] == "list" and body["model"] == encoder.name
    assert [d["index"] for d in body["data"]] == [0, 1]
    vectors = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(vectors, encoder.encode_queries(texts, INSTRUCTION), atol=1e-5)
    ids, _ = encoder.tokenize_queries(texts, INSTRUCTION)
    assert body["usage"] == {
        "prompt_tokens": sum(map(len, ids)),
        "total_tokens": sum(map(len, ids)),
    }

    document = httpx.post(
        f"{server.url}/v1/embeddings",
        json={
            "input": "Plants make sugar.",
            "titles": ["Photosynthesis"],
            "encoding_format": "base64",
        },
    ).json()
    vector = np.frombuffer(base64.b64decode(document["data"][0]["embedding"]), dtype="<f4")
    expected = encoder.encode_documents([("Photosynthesis", "Plants make sugar.")], progress=False)[
        0
    ]
    np.testing.assert_allclose(vector, expected, atol=1e-5)


@pytest.mark.precision
def test_concurrent_requests_share_forward_passes(served):
    """32 requests at once: fewer than 32 forward passes, and each gets its own vector."""
    server, _, encoder = served
    batcher = server.app.state.batcher
    texts = [f"question number {i} about {'plants ' * (i % 5)}lava" for i in range(32)]

    async def ask_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/embeddings", json={"input": t, "input_type": "query"})
                    for t in texts
                )
            )

    passes = batcher.forward_passes
    responses = asyncio.run(ask_all())
    used = batcher.forward_passes - passes
    assert all(r.status_code == 200 for r in responses)
    assert 1 <= used < 32, used
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    # The batcher groups requests its own way: other shapes than one batch of 32.
    expected = encoder.encode_queries(texts)
    np.testing.assert_allclose(got, expected, atol=vector_tolerance(encoder.precision))


def test_full_queue_answers_503(served):
    """With the encoder busy and the queue full, requests get 503 + Retry-After, then work again."""
    _, index_dir, encoder = served
    server = LiveServer(create_app(index_dir, encoder, limits=Limits(queue_size=2)))
    try:
        release = threading.Event()
        blocker = server.app.state.batcher.submit(Job(call=lambda index: release.wait(30)))
        time.sleep(0.2)  # the batcher is now inside the blocking job

        async def ask(n):
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                tasks = [
                    asyncio.create_task(client.get("/search", params={"q": "lava"}))
                    for _ in range(n)
                ]
                await asyncio.sleep(0.5)
                release.set()
                return await asyncio.gather(*tasks)

        statuses = [r.status_code for r in asyncio.run(ask(5))]
        assert statuses.count(503) == 3 and statuses.count(200) == 2, statuses
        assert blocker.result(timeout=10) is True
        busy = httpx.post(f"{server.url}/search", json={"query": "lava"})
        assert busy.status_code == 200
    finally:
        release.set()
        server.stop()


# --------------------------------------------------------------- freshness
def test_new_generation_is_served_without_restart(served, tmp_path):
    server, _, encoder = served
    index_dir = tmp_path / "index"
    update_index(index_dir, encoder, DOCUMENTS[:4], progress=False)
    live = LiveServer(create_app(index_dir, encoder))
    try:
        first = httpx.get(f"{live.url}/search", params={"q": "castling the king", "k": 10}).json()
        assert "chess" in [h["doc_id"] for h in first["results"][0]]
        changed = [d for d in DOCUMENTS if d.doc_id != "chess"]  # bread added, chess deleted
        update_index(index_dir, encoder, changed, progress=False)
        after = httpx.get(f"{live.url}/search", params={"q": "yeast bread", "k": 10}).json()
        found = [h["doc_id"] for h in after["results"][0]]
        assert found[0] == "bread" and "chess" not in found
        assert after["generation"] > first["generation"]
        assert httpx.get(f"{live.url}/health").json()["generation"] == after["generation"]
        assert httpx.get(f"{live.url}/info").json()["documents"] == 4
    finally:
        live.stop()


def test_unpublished_changes_stay_invisible(served, tmp_path):
    """A change committed but not yet published (a run in progress) is not served."""
    _, _, encoder = served
    index_dir = tmp_path / "index"
    update_index(index_dir, encoder, DOCUMENTS[:4], progress=False)
    live = LiveServer(create_app(index_dir, encoder))
    try:

        def chess_found() -> tuple[bool, int]:
            body = httpx.get(f"{live.url}/search", params={"q": "castling the king"}).json()
            return "chess" in [h["doc_id"] for h in body["results"][0]], body["generation"]

        found, generation = chess_found()
        assert found
        writer = Store.open(index_dir)
        (chess,) = [i for i, doc_id in writer.doc_ids().items() if doc_id == "chess"]
        writer.commit(remove=[chess])
        assert writer.generation == generation + 1
        assert chess_found() == (True, generation)  # committed, not published
        writer.publish()
        writer.close()
        assert chess_found() == (False, generation + 1)
    finally:
        live.stop()


# ------------------------------------------------------------------ safety
def test_api_key_guards_every_route_but_health(served):
    _, index_dir, encoder = served
    server = LiveServer(create_app(index_dir, encoder, api_key="s3cret"))
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        key = {"Authorization": "Bearer s3cret"}
        assert "swagger" in httpx.get(f"{server.url}/docs", headers=key).text.lower()
        paths = httpx.get(f"{server.url}/openapi.json", headers=key).json()["paths"]
        assert {"/search", "/v1/embeddings", "/health", "/info"} <= set(paths)
        for method, path, body in [
            ("GET", "/search?q=lava", None),
            ("POST", "/search", {"query": "lava"}),
            ("POST", "/v1/embeddings", {"input": "lava"}),
            ("GET", "/info", None),
            ("GET", "/instructions", None),
            ("GET", "/", None),
            ("GET", "/docs", None),
            ("GET", "/openapi.json", None),
            ("GET", "/static/app.js", None),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = httpx.request(method, server.url + path, json=body, headers=headers)
                assert "API key" in assert_one_line_error(response, 401)
            ok = httpx.request(
                method, server.url + path, json=body, headers={"Authorization": "Bearer s3cret"}
            )
            assert ok.status_code == 200, (path, ok.text)
        runner = CliRunner()
        refused = runner.invoke(cli, ["search", "lava", "--server", server.url])
        assert refused.exit_code == 1 and "401" in refused.stderr
        allowed = runner.invoke(
            cli, ["search", "lava", "--server", server.url, "--api-key", "s3cret"]
        )
        assert allowed.exit_code == 0 and "volcano" in allowed.stdout
    finally:
        server.stop()


def test_limits_give_one_line_4xx(served):
    server, _, _ = served
    url = server.url
    cases = [
        (httpx.post(f"{url}/search", json={"query": "x" * 5000}), 413, "characters"),
        (httpx.post(f"{url}/search", json={"query": "lava", "k": 100_000}), 422, "at most"),
        (httpx.post(f"{url}/search", json={"query": "lava", "k": 0}), 422, "k"),
        (httpx.post(f"{url}/search", json={"queries": ["a"] * 300}), 413, "at most"),
        (httpx.post(f"{url}/search", json={"query": "  "}), 400, "empty query"),
        (httpx.post(f"{url}/search", json={}), 422, "query"),
        (
            httpx.post(f"{url}/search", json={"query": "a", "instruct": "b", "no_instruct": True}),
            422,
            "exclude",
        ),
        (
            httpx.post(
                f"{url}/search", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            400,
            "JSON",
        ),
        (httpx.post(f"{url}/search", content=b"x" * (5 * 2**20)), 413, "bytes"),
        (httpx.post(f"{url}/search", content=iter([b"x" * 2**20] * 5)), 413, "bytes"),  # chunked
        (httpx.post(f"{url}/v1/embeddings", json={"input": ["a"] * 300}), 413, "inputs"),
        (httpx.post(f"{url}/v1/embeddings", json={"input": []}), 400, "empty"),
        (
            httpx.post(f"{url}/v1/embeddings", json={"input": "a", "model": "gpt-4"}),
            404,
            "not served",
        ),
        (
            httpx.post(f"{url}/v1/embeddings", json={"input": "a", "encoding_format": "int8"}),
            422,
            "encoding_format",
        ),
        (httpx.get(f"{url}/search", params={"q": "lava", "k": "many"}), 422, "k"),
        (httpx.get(f"{url}/nowhere"), 404, "Not Found"),
    ]
    for response, status, words in cases:
        assert words in assert_one_line_error(response, status), response.text


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(served):
    _, index_dir, _ = served
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--index", str(index_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENGINE_NO_PROGRESS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        slow: dict = {}
        documents = [f"document {i} " + "words about lava and plants " * 20 for i in range(64)]
        request = threading.Thread(
            target=lambda: slow.update(
                response=httpx.post(f"{url}/v1/embeddings", json={"input": documents}, timeout=120)
            )
        )
        request.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        request.join(timeout=120)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert slow["response"].status_code == 200 and len(slow["response"].json()["data"]) == 64
    assert process.returncode == 0, err
    assert "Traceback" not in err and "Serving" in out and "Stopped." in out


# ------------------------------------------------------------ search page
def chromium_driver():
    """Headless Debian chromium through its own chromedriver (nothing downloaded)."""
    binary, driver_path = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (binary.exists() and driver_path.exists()):
        pytest.skip(
            "no chromium + chromium-driver installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    import tempfile

    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='engine-chromium-')}")
    return webdriver.Chrome(service=Service(str(driver_path)), options=options)


def test_search_page_in_a_real_browser(served):
    """The page on a server with --api-key, in a browser that sends the key on every request."""
    _, index_dir, encoder = served
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    server = LiveServer(create_app(index_dir, encoder, api_key="s3cret"))
    try:
        driver.get(server.url + "/")  # no key yet: the page itself is refused
        assert "API key" in driver.find_element(By.TAG_NAME, "body").text
        # What a reverse proxy adding the header does: every request the page makes carries it.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Bearer s3cret"}}
        )
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preset option")) > 10)
        wait.until(lambda d: "5 documents" in d.find_element(By.ID, "index-info").text)
        box = driver.find_element(By.ID, "query")
        box.send_keys("why does bread rise with yeast")
        driver.find_element(By.ID, "submit").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#results .hit")))
        hits = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert len(hits) == 5
        first = hits[0]
        assert first.find_element(By.CLASS_NAME, "rank").text == "1."
        assert first.find_element(By.CLASS_NAME, "title").text == "<b>Bread</b>"
        snippet = first.find_element(By.CLASS_NAME, "snippet")
        assert snippet.text.startswith('<script>document.title="pwned"</script>')
        assert {m.text.lower() for m in snippet.find_elements(By.TAG_NAME, "mark")} >= {
            "bread",
            "yeast",
        }
        assert driver.title == "engine search"  # the document's script never ran
        assert not driver.find_elements(By.CSS_SELECTOR, "#results script, #results b")
        if os.environ.get("ENGINE_SCREENSHOT"):
            driver.save_screenshot(os.environ["ENGINE_SCREENSHOT"])
    finally:
        driver.quit()
        server.stop()
