"""The synthesizer: parsing good and bad generations, a tiny local LM, an OpenAI-style endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from train.data import load_examples
from train.synthesize import (
    BRAINSTORM_PROMPT,
    EXAMPLE_PROMPT,
    GROUNDED_FIELDS,
    OpenAIGenerator,
    example_knobs,
    extract_json,
    parse_generation,
    parse_tasks,
    synthesize,
)

GOOD = json.dumps(
    {
        "user_query": "effects of caffeine on sleep in teenagers",
        "positive_document": "Caffeine taken late in the day delays sleep onset in adolescents.",
        "hard_negative_document": "Coffee is grown in more than 70 countries.",
    }
)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Sure! Here is the example:\n{GOOD}\nHope this helps.",
        GOOD.replace('"effects', '  "effects'),
    ],
)
def test_good_generations_parse(text):
    parsed, reason = parse_generation(text)
    assert reason is None
    assert parsed["user_query"] == "effects of caffeine on sleep in teenagers"
    assert parsed["hard_negative_document"].startswith("Coffee")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("the the plants sugar key", "not JSON"),
        ("", "not JSON"),
        ('{"user_query": "q", "positive_document": "p"', "not JSON"),
        ('["a", "b"]', "not a JSON object"),
        ('{"user_query": "q", "positive_document": "p"}', "missing hard_negative_document"),
        (
            '{"user_query": "  ", "positive_document": "p", "hard_negative_document": "n"}',
            "empty user_query",
        ),
        (
            '{"user_query": "q", "positive_document": 3, "hard_negative_document": "n"}',
            "positive_document is not a string",
        ),
        (
            '{"user_query": "q", "positive_document": "q", "hard_negative_document": "n"}',
            "positive_document repeats the query",
        ),
    ],
)
def test_bad_generations_are_rejected_with_a_reason(text, reason):
    assert parse_generation(text) == (None, reason)


def test_grounded_generations_need_no_positive():
    text = '{"user_query": "q", "hard_negative_document": "n"}'
    assert parse_generation(text, GROUNDED_FIELDS) == (
        {"user_query": "q", "hard_negative_document": "n"},
        None,
    )


def test_task_lists():
    assert parse_tasks('["Retrieve A given B.", " ", "Find C for D."]') == (
        ["Retrieve A given B.", "Find C for D."],
        None,
    )
    assert parse_tasks('{"tasks": ["Find X."]}') == (["Find X."], None)
    assert parse_tasks("no list here") == ([], "not JSON")
    assert parse_tasks('{"a": 1}') == ([], "not a JSON list")
    assert parse_tasks("[1, 2]") == ([], "no task strings")
    assert extract_json('x [1, {"a": 2}] y') == [1, {"a": 2}]


def test_knobs_are_seeded_and_prompts_fill():
    import random

    first = example_knobs(random.Random(3))
    assert first == example_knobs(random.Random(3))
    prompt = EXAMPLE_PROMPT.format(task="Find recipes", language="English", **first)
    assert "Find recipes" in prompt and str(first["num_words"]) in prompt
    assert "{" not in BRAINSTORM_PROMPT.format(count=5, grounding="").replace("{}", "")


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A random 2-layer Mistral causal LM with a chat template: it can only produce garbage."""
    from transformers import AutoTokenizer

    from tests.models import build_tiny_mistral

    folder = build_tiny_mistral(tmp_path_factory.mktemp("gen") / "tiny-causal-lm", causal_lm=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %} answer"
    tokenizer.save_pretrained(folder)
    return folder


def test_tiny_local_generator_garbage_is_counted_and_dropped(tiny_causal_lm, tmp_path):
    out = tmp_path / "synth.jsonl"
    summary = synthesize(
        generator=str(tiny_causal_lm),
        out=out,
        tasks=["Given a question, retrieve passages that answer it"],
        per_task=3,
        max_new_tokens=16,
        quiet=True,
    )
    assert summary.generated == 3
    assert summary.kept == 0
    assert sum(summary.dropped.values()) == 3
    assert set(summary.dropped) <= {"not JSON", "not a JSON object"}
    assert out.read_text() == ""
    assert "dropped 3" in summary.describe()


def test_tiny_local_generator_brainstorm_failure_is_counted(tiny_causal_lm, tmp_path):
    summary = synthesize(
        generator=str(tiny_causal_lm),
        out=tmp_path / "s.jsonl",
        num_tasks=2,
        max_new_tokens=8,
        quiet=True,
    )
    assert summary.tasks == []
    assert summary.brainstorm_generations == 3
    assert sum(summary.brainstorm_dropped.values()) == 3
    assert summary.generated == 0


class CannedChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions answering from a script."""

    answers: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        answer = type(self).answers.pop(0)
        if answer is None:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), CannedChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    CannedChat.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_endpoint_end_to_end(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    CannedChat.answers = [
        '["Given a health question, retrieve articles that answer it", "Find recipes for a dish"]',
        f"```json\n{GOOD}\n```",
        "I cannot help with that.",
        None,  # a server error: counted, not fatal
        GOOD.replace("effects of caffeine", "recipes with lentils"),
    ]
    out = tmp_path / "synth.jsonl"
    summary = synthesize(
        generator=endpoint,
        generator_model="canned-1",
        out=out,
        num_tasks=2,
        per_task=2,
        quiet=True,
    )
    assert summary.tasks == [
        "Given a health question, retrieve articles that answer it",
        "Find recipes for a dish",
    ]
    assert (summary.generated, summary.kept) == (4, 2)
    assert summary.dropped == {"not JSON": 1, "request failed": 1}
    examples = load_examples(out)  # the output is valid training data
    assert [e.instruction for e in examples] == [summary.tasks[0], summary.tasks[1]]
    assert examples[0].negatives[0].text.startswith("Coffee")
    assert examples[1].query.startswith("recipes with lentils")
    first = CannedChat.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "canned-1"
    assert "JSON list" in first["body"]["messages"][0]["content"]


def test_unreachable_endpoint_fails_clearly_after_a_few_tries(tmp_path):
    from engine.errors import EngineError

    generator = OpenAIGenerator("http://127.0.0.1:9/v1", timeout=2)
    assert generator.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(EngineError, match="failed 5 times in a row: cannot reach"):
        synthesize(
            generator="http://127.0.0.1:9/v1", out=tmp_path / "x.jsonl", num_tasks=30, quiet=True
        )
