"""`engine serve` for its clients: OpenAI's SDK, langchain-openai, the access log, /docs, the page.

Real servers on free ports over a real index with the default model; the page and
Swagger UI in headless Debian chromium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from engine.app.server import create_app
from indexer.documents import Document
from indexer.indexing import update_index
from tests.test_server import (
    DOCUMENTS,
    INSTRUCTION,
    LiveServer,
    assert_one_line_error,
    chromium_driver,
    free_port,
)

KEY = "s3cret"
MIRNA = Document(
    "mirna",
    "notes.jsonl",
    "Small RNAs",
    "Gene expression is tuned by pre-miRNA hairpins, precursors of mature miRNA.",
)
PLAIN = "plants make sugar from light and water ."  # every word one token of MiniLM's vocabulary


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, default_encoder):
    folder = tmp_path_factory.mktemp("clients") / "index"
    update_index(folder, default_encoder, [*DOCUMENTS, MIRNA], progress=False)
    return folder


@pytest.fixture(scope="module")
def server(index_dir, default_encoder):
    live = LiveServer(create_app(index_dir, default_encoder))
    yield live
    live.stop()


def own_ids(encoder, text: str) -> list[int]:
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------ access log
def test_access_log_prints_one_line_per_request(index_dir):
    """`engine serve --access-log`: method, path (no query string), status, milliseconds."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--index", str(index_dir), "--port", str(port)]
        + ["--access-log", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENGINE_NO_PROGRESS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    key = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(f"{url}/search", params={"q": "secret lava"}, headers=key).is_success
        assert httpx.post(f"{url}/search", json={"query": "x"}).status_code == 401
        assert httpx.get(f"{url}/nowhere", headers=key).status_code == 404
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in out.splitlines() if line.startswith("127.0.0.1 ")]
    pattern = r"127\.0\.0\.1 (GET|POST) (/\S*) (\d{3}) \d+\.\d ms"
    logged = [re.fullmatch(pattern, line).groups() for line in lines]
    assert logged[-3:] == [
        ("GET", "/search", "200"),
        ("POST", "/search", "401"),
        ("GET", "/nowhere", "404"),
    ]
    assert "lava" not in out and "Traceback" not in err and process.returncode == 0


def test_access_log_is_off_by_default(server, capfd):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "/health" not in capfd.readouterr().out


# ------------------------------------------------------------ strict API
def test_request_bodies_are_strict(server):
    url = server.url
    cases = [
        ({"query": "lava", "queries": ["tcp"]}, "not both"),
        ({"query": "lava", "k": "3"}, "k"),
        ({"query": "lava", "k": True}, "k"),
        ({"query": "lava", "k": 2.0}, "k"),
        ({"query": "lava", "nprobe": "4"}, "nprobe"),
        ({"query": "lava", "no_instruct": "yes"}, "no_instruct"),
    ]
    for body, words in cases:
        response = httpx.post(f"{url}/search", json=body)
        assert words in assert_one_line_error(response, 422), body
    assert httpx.post(f"{url}/search", json={"query": "lava", "k": 2}).json()["results"][0]
    # A URL carries text: k=2 there is still a number.
    assert len(httpx.get(f"{url}/search", params={"q": "lava", "k": "2"}).json()["results"][0]) == 2
    dims = httpx.post(f"{url}/v1/embeddings", json={"input": "lava", "dimensions": "384"})
    assert "dimensions" in assert_one_line_error(dims, 422)


def test_bad_input_answers_400_in_openai_shape(server):
    url = server.url
    for path in ("/search", "/v1/embeddings"):
        broken = httpx.post(
            url + path, content=b'{"input": ', headers={"Content-Type": "application/json"}
        )
        assert "not valid JSON" in assert_one_line_error(broken, 400)
    for given in ("", "  ", ["lava", ""], [], [[1012], []]):
        response = httpx.post(f"{url}/v1/embeddings", json={"input": given})
        assert "empty" in assert_one_line_error(response, 400), given
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] == "input"
    outside = httpx.post(f"{url}/v1/embeddings", json={"input": [[5, 10**7]]})
    assert "vocabulary" in assert_one_line_error(outside, 400)
    as_query = httpx.post(f"{url}/v1/embeddings", json={"input": [5, 6], "input_type": "query"})
    assert "as text" in assert_one_line_error(as_query, 422)


# -------------------------------------------------------- OpenAI clients
def test_openai_client_with_text_and_token_ids(server, default_encoder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = ["Plants make sugar from light.", "The TCP handshake."]
    expected = default_encoder.encode_documents([("", t) for t in texts], progress=False)

    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
    np.testing.assert_allclose([d.embedding for d in default.data], expected, atol=1e-5)
    floats = client.embeddings.create(
        model=default_encoder.name, input=texts[0], encoding_format="float", dimensions=384
    )
    np.testing.assert_allclose(floats.data[0].embedding, expected[0], atol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError, match="only 384"):
        client.embeddings.create(model=default_encoder.name, input="lava", dimensions=64)

    ids = [own_ids(default_encoder, text) for text in texts]
    batch = client.embeddings.create(model=default_encoder.name, input=ids)
    np.testing.assert_allclose([d.embedding for d in batch.data], expected, atol=1e-5)
    assert batch.usage.prompt_tokens == sum(len(row) + 2 for row in ids)  # [CLS] ... [SEP]
    single = client.embeddings.create(model=default_encoder.name, input=ids[1])
    np.testing.assert_allclose(single.data[0].embedding, expected[1], atol=1e-5)

    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model=default_encoder.name, input="")
    assert [m.id for m in client.models.list()] == [default_encoder.name]
    assert client.models.retrieve("all-MiniLM-L6-v2").owned_by == "engine"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_langchain_openai_in_its_default_mode(server, default_encoder, monkeypatch):
    """langchain-openai tokenizes with tiktoken and sends token ids (check_embedding_ctx_length).

    Its tokenizer here is a tiktoken encoding made from MiniLM's whole-word vocabulary
    (no download), standing in for the cl100k_base it falls back on for a model name it
    does not know: so the ids it sends are the served model's, as the server expects.
    """
    tiktoken = pytest.importorskip("tiktoken")
    langchain_openai = pytest.importorskip("langchain_openai")
    whole_words = {
        token.encode(): token_id
        for token, token_id in default_encoder.tokenizer.get_vocab().items()
        if re.fullmatch(r"[a-z]+|[.,]", token)
    }
    words = tiktoken.Encoding(
        "minilm-words", pat_str=r"[a-z]+|[.,]", mergeable_ranks=whole_words, special_tokens={}
    )
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", words)
    sent: list = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read()))]})
    embeddings = langchain_openai.OpenAIEmbeddings(
        model=default_encoder.name, base_url=f"{server.url}/v1", api_key="unused", http_client=http
    )
    texts = [PLAIN, "the sun is blue ."]
    got = embeddings.embed_documents(texts)
    expected = default_encoder.encode_documents([("", t) for t in texts], progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sent[0]["input"] == [own_ids(default_encoder, t) for t in texts]  # ids on the wire
    np.testing.assert_allclose(embeddings.embed_query(PLAIN), expected[0], atol=1e-5)


# ------------------------------------------------------------ /docs offline
def test_docs_use_only_local_assets_behind_the_api_key(index_dir, default_encoder):
    live = LiveServer(create_app(index_dir, default_encoder, api_key=KEY))
    key = {"Authorization": f"Bearer {KEY}"}
    try:
        for page in ("/docs", "/redoc"):
            html = httpx.get(live.url + page, headers=key).text
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", html)
            assert len(urls) >= 3 and all(u.startswith("/") for u in urls), urls
            assert "http://" not in html and "https://" not in html
            for asset in urls:
                assert httpx.get(live.url + asset, headers=key).status_code == 200, asset
                if asset != "/openapi.json":
                    assert httpx.get(live.url + asset).status_code == 401, asset
        assert "/v1/models" in httpx.get(f"{live.url}/openapi.json", headers=key).json()["paths"]
    finally:
        live.stop()


# ------------------------------------------------------------ the page
@pytest.fixture(scope="module")
def browser(index_dir, default_encoder):
    """Chromium on a server with --api-key, sending the key on every request (as a proxy would)."""
    driver = chromium_driver()
    live = LiveServer(create_app(index_dir, default_encoder, api_key=KEY))
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {KEY}"}}
        )
        yield driver, live.url
    finally:
        driver.quit()
        live.stop()


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_swagger_ui_renders_offline(browser):
    from selenium.webdriver.common.by import By

    driver, url = browser
    driver.get(url + "/docs")
    paths = wait_for(
        driver,
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")],
    )
    assert {"/search", "/v1/embeddings", "/v1/models"} <= set(paths)


def test_page_highlights_words_and_deep_links_round_trip(browser):
    from selenium.webdriver.common.by import By

    driver, url = browser
    query = "pre-miRNA gene"
    driver.get(f"{url}/?q={query}&instruct={INSTRUCTION}&k=2")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 2)
    assert driver.find_element(By.ID, "instruct").get_attribute("value") == INSTRUCTION
    assert driver.find_element(By.ID, "k").get_attribute("value") == "2"
    assert INSTRUCTION in driver.find_element(By.ID, "status").text
    first = driver.find_element(By.CSS_SELECTOR, "#results .hit .snippet")
    html = first.get_attribute("innerHTML")
    # Whole words and prefixes at a word start; never inside a word ("ex<mark>pre</mark>ssion").
    assert "<mark>Gene</mark> expression" in html and "<mark>pre</mark>-<mark>miRNA</mark>" in html
    assert "<mark>pre</mark>cursors" in html and "mature <mark>miRNA</mark>" in html
    driver.find_element(By.ID, "k").clear()
    driver.find_element(By.ID, "k").send_keys("3")
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 3)
    params = driver.execute_script(
        "return Object.fromEntries(new URLSearchParams(location.search))"
    )
    assert params == {"q": query, "instruct": INSTRUCTION, "k": "3"}


def test_page_clears_results_on_an_error_and_has_a_favicon(browser):
    from selenium.webdriver.common.by import By

    driver, url = browser
    driver.get(f"{url}/?q=lava")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    driver.execute_script("document.getElementById('query').value = 'lava '.repeat(1000)")
    driver.find_element(By.ID, "submit").click()
    status = wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, "#status.error").text or None,
    )
    assert "characters" in status
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .hit")
    icon = driver.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert icon == f"{url}/favicon.ico"
    fetched = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/favicon.ico').then(r => r.blob().then(b => done([r.status, r.headers.get('content-type'), b.size])))"
    )
    assert fetched[0] == 200 and fetched[1] == "image/x-icon" and 0 < fetched[2] < 10_000


def test_page_filter_is_deep_linked_and_a_bad_one_is_one_line(browser):
    from selenium.webdriver.common.by import By

    driver, url = browser
    where = 'doc_id in ("tcp", "chess")'
    driver.get(f"{url}/?q=lava&k=5&where={where}")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    titles = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .hit .title")]
    assert sorted(titles) == ["Castling", "TCP"]  # k=5, and only the 2 documents matching
    assert driver.find_element(By.ID, "where").get_attribute("value") == where
    params = driver.execute_script(
        "return Object.fromEntries(new URLSearchParams(location.search))"
    )
    assert params == {"q": "lava", "k": "5", "where": where}
    driver.find_element(By.ID, "where").clear()
    driver.find_element(By.ID, "where").send_keys("doc_id in tcp")
    driver.find_element(By.ID, "submit").click()
    status = wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, "#status.error").text or None,
    )
    assert "expected '(' after 'in'" in status and "position 11" in status
    assert "\n" not in status
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .hit")
