"""Synthetic training data the paper's way: brainstorm retrieval tasks, then write examples.

Step 1 asks the generator for a JSON list of retrieval tasks; step 2 asks, per
task, for one JSON example with ``user_query``, ``positive_document`` and
``hard_negative_document``, under seeded random choices of query type, query
length, clarity, document length and difficulty (paper section 3.1 and its
appendix; the prompts here are our own wording). With a corpus, tasks are
brainstormed from sample documents and each example is anchored on a real
document, which becomes the positive.

The generator is pluggable: a local Hugging Face causal LM, or any
OpenAI-compatible ``/chat/completions`` endpoint. Generations that are not
usable (not JSON, missing or empty fields) are counted by reason and dropped.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.errors import EngineError
from engine.progress import progress_bar
from indexer.documents import read_corpus
from train.data import TrainDocument, TrainExample, parse_example, write_examples

# The paper's knobs for the "short-long" (query, document) examples.
QUERY_TYPES = ("extremely long-tail", "long-tail", "common")
QUERY_LENGTHS = ("fewer than 5 words", "5 to 15 words", "at least 10 words")
CLARITY = ("clear", "understandable with some effort", "ambiguous")
NUM_WORDS = (50, 100, 200, 300, 400)
DIFFICULTY = ("high school", "college", "PhD")

EXAMPLE_FIELDS = ("user_query", "positive_document", "hard_negative_document")
GROUNDED_FIELDS = ("user_query", "hard_negative_document")
MAX_CONSECUTIVE_REQUEST_FAILURES = 5
GROUNDING_WORDS = 350

BRAINSTORM_PROMPT = """\
Think up a list of text retrieval tasks that people would find useful.

Two examples of the kind of task meant:
- Given a scientific claim, find documents that support or contradict it.
- Given a question about children's nutrition, find FAQ answers that address it.
{grounding}
Guidelines:
- Each task says what a query looks like and which documents should come back for it.
- A task must cover many different queries: not too narrow, not a single topic.
- Make the tasks differ from each other in domain, query style and document kind.

Answer with a JSON list of about {count} strings, one retrieval task per string, \
each a single sentence. Output the JSON list and nothing else."""

BRAINSTORM_GROUNDING = """
The tasks must suit a document collection like the one these excerpts come from:
{excerpts}
"""

EXAMPLE_PROMPT = """\
Your retrieval task is: {task}

Write one training example for this task as a JSON object with exactly these keys:
- "user_query": a string, a search query a user of this task might type.
- "positive_document": a string, a document that truly satisfies the query.
- "hard_negative_document": a string, a document that looks relevant to the query \
at first sight but is less useful or less complete than the positive one.

Guidelines:
- The query is {query_type}, {query_length} long, and {clarity}; pick its topic freely.
- Write the documents as they would exist on their own, not as answers to the query; \
do not repeat the query word for word in them.
- Each document is at least {num_words} words long.
- Understanding the query and the documents takes {difficulty}-level education.
- Query and documents are in {language}.
- Never explain inside a document why it is or is not relevant.

Output the JSON object and nothing else."""

GROUNDED_EXAMPLE_PROMPT = """\
Your retrieval task is: {task}

Here is a document from the collection:
<<<
{document}
>>>

Write one training example in which this document is the right answer, as a JSON \
object with exactly these keys:
- "user_query": a string, a search query for which this document is a relevant result.
- "hard_negative_document": a string, another document that looks relevant to the query \
at first sight but does not satisfy it as well as the one above.

Guidelines:
- The query is {query_type}, {query_length} long, and {clarity}; do not copy sentences \
from the document into it.
- The hard negative is at least {num_words} words long, written as a standalone document.
- Understanding them takes {difficulty}-level education.
- Query and documents are in {language}.
- Never explain inside a document why it is or is not relevant.

Output the JSON object and nothing else."""


# ------------------------------------------------------------------ parsing
def extract_json(text: str) -> Any:
    """The first JSON value in a generation, tolerating code fences and surrounding prose.

    Raises ValueError when there is none.
    """
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    candidates = [fenced.group(1).strip()] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
        for match in re.finditer(r"[\[{]", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
                return value
            except json.JSONDecodeError:
                continue
    raise ValueError("not JSON")


def parse_tasks(text: str) -> tuple[list[str], str | None]:
    """Tasks from a brainstorm generation, or ``([], reason)``."""
    try:
        value = extract_json(text)
    except ValueError:
        return [], "not JSON"
    if isinstance(value, dict):  # {"tasks": [...]} is a common answer shape
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    if not isinstance(value, list):
        return [], "not a JSON list"
    tasks = [" ".join(t.split()) for t in value if isinstance(t, str) and t.strip()]
    if not tasks:
        return [], "no task strings"
    return tasks, None


def parse_generation(
    text: str, fields: Sequence[str] = EXAMPLE_FIELDS
) -> tuple[dict | None, str | None]:
    """The example fields of one generation, or ``(None, reason)``: never raises."""
    try:
        value = extract_json(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    parsed = {}
    for name in fields:
        if name not in value:
            return None, f"missing {name}"
        item = value[name]
        if not isinstance(item, str):
            return None, f"{name} is not a string"
        if not item.strip():
            return None, f"empty {name}"
        parsed[name] = item.strip()
    query = parsed["user_query"]
    for name in fields[1:]:
        if parsed[name] == query:
            return None, f"{name} repeats the query"
    return parsed, None


# ---------------------------------------------------------------- generators
class GenerationError(Exception):
    """One request to the generator failed (network, server); counted, not fatal."""


class Generator(Protocol):
    name: str

    def generate(self, prompt: str, *, seed: int) -> str: ...


class HFGenerator:
    """A local causal LM through transformers, with its chat template when it has one."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 1.0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        except OSError as exc:
            raise EngineError(
                f"cannot load generator {model!r}: not a local folder and not in the Hugging "
                "Face cache; pass a folder or an http(s):// endpoint"
            ) from exc
        self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def generate(self, prompt: str, *, seed: int) -> str:
        import torch

        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            inputs = tokenizer(prompt, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k != "token_type_ids"}
        torch.manual_seed(seed)
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        sampling = self.temperature > 0
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=sampling,
                temperature=self.temperature if sampling else None,
                top_p=1.0 if sampling else None,
                top_k=0 if sampling else None,
                pad_token_id=pad_id,
            )
        prompt_length = inputs["input_ids"].shape[1]
        return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


class OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server, OpenAI); stdlib only."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 1.0,
        timeout: float = 120.0,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.name = f"{model or 'default'}@{base}"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.timeout = timeout

    def generate(self, prompt: str, *, seed: int) -> str:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
            "seed": seed,
        }
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise GenerationError(f"HTTP {exc.code} from {self.url}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GenerationError(f"cannot reach {self.url}: {reason}") from None
        except json.JSONDecodeError:
            raise GenerationError(f"{self.url} answered with something that is not JSON") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GenerationError(
                f"{self.url} answered without choices[0].message.content"
            ) from None
        return content if isinstance(content, str) else ""


def make_generator(
    spec: str,
    *,
    generator_model: str | None = None,
    device: str | None = None,
    max_new_tokens: int = 1024,
    temperature: float = 1.0,
    timeout: float = 120.0,
) -> Generator:
    """``http(s)://...`` -> OpenAI-compatible endpoint; anything else -> a local causal LM."""
    if spec.startswith(("http://", "https://")):
        return OpenAIGenerator(
            spec,
            model=generator_model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            timeout=timeout,
        )
    return HFGenerator(spec, device=device, max_new_tokens=max_new_tokens, temperature=temperature)


# ----------------------------------------------------------------- pipeline
@dataclass
class SynthesisSummary:
    """What a run generated, kept and dropped (and why)."""

    out: Path
    generator: str
    tasks: list[str] = field(default_factory=list)
    brainstorm_generations: int = 0
    brainstorm_dropped: Counter = field(default_factory=Counter)
    generated: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "generator": self.generator,
            "tasks": len(self.tasks),
            "brainstorm_generations": self.brainstorm_generations,
            "brainstorm_dropped": dict(self.brainstorm_dropped),
            "generated": self.generated,
            "kept": self.kept,
            "dropped": sum(self.dropped.values()),
            "dropped_reasons": dict(self.dropped),
            "seconds": round(self.seconds, 1),
        }

    def describe(self) -> str:
        def reasons(counter: Counter) -> str:
            return ", ".join(f"{reason}: {n}" for reason, n in counter.most_common())

        lines = [
            f"Tasks: {len(self.tasks)} from {self.brainstorm_generations} brainstorm generations"
            + (f" (dropped: {reasons(self.brainstorm_dropped)})" if self.brainstorm_dropped else "")
            + ".",
            f"Examples: generated {self.generated}, kept {self.kept}, dropped "
            f"{sum(self.dropped.values())}"
            + (f" ({reasons(self.dropped)})" if self.dropped else "")
            + ".",
        ]
        if self.kept:
            lines.append(f"Wrote {self.kept} examples to {self.out}.")
        else:
            lines.append(f"No usable examples; {self.out} is empty.")
        return "\n".join(lines)


def example_knobs(rng: random.Random) -> dict[str, Any]:
    """The paper's per-example random choices."""
    return {
        "query_type": rng.choice(QUERY_TYPES),
        "query_length": rng.choice(QUERY_LENGTHS),
        "clarity": rng.choice(CLARITY),
        "num_words": rng.choice(NUM_WORDS),
        "difficulty": rng.choice(DIFFICULTY),
    }


def _excerpt(text: str, words: int = GROUNDING_WORDS) -> str:
    tokens = text.split()
    return " ".join(tokens[:words]) + (" ..." if len(tokens) > words else "")


class Synthesizer:
    """Runs the two prompts against a generator and keeps what parses."""

    def __init__(
        self,
        generator: Generator,
        *,
        corpus: Sequence[TrainDocument] = (),
        corpus_ids: Sequence[str] = (),
        seed: int = 42,
        language: str = "English",
    ) -> None:
        self.generator = generator
        self.corpus = list(corpus)
        self.corpus_ids = list(corpus_ids) or [str(i) for i in range(len(self.corpus))]
        self.rng = random.Random(seed)
        self.seed = seed
        self.language = language
        self.calls = 0
        self.failures_in_a_row = 0

    def _call(self, prompt: str) -> str:
        """One generation; request failures count as a drop unless they keep happening."""
        self.calls += 1
        try:
            text = self.generator.generate(prompt, seed=self.seed * 100003 + self.calls)
        except GenerationError as exc:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= MAX_CONSECUTIVE_REQUEST_FAILURES:
                raise EngineError(
                    f"the generator failed {self.failures_in_a_row} times in a row: {exc}"
                ) from None
            raise
        self.failures_in_a_row = 0
        return text

    def brainstorm(self, count: int, summary: SynthesisSummary) -> list[str]:
        """Up to ``count`` distinct tasks; a few more calls if one answer falls short."""
        tasks: list[str] = []
        attempts = 0
        while len(tasks) < count and attempts < 3 + count // 10:
            attempts += 1
            grounding = ""
            if self.corpus:
                sample = self.rng.sample(self.corpus, min(3, len(self.corpus)))
                excerpts = "\n".join(f"- {_excerpt(d.title + ' ' + d.text, 80)}" for d in sample)
                grounding = BRAINSTORM_GROUNDING.format(excerpts=excerpts)
            prompt = BRAINSTORM_PROMPT.format(count=count, grounding=grounding)
            summary.brainstorm_generations += 1
            try:
                found, reason = parse_tasks(self._call(prompt))
            except GenerationError:
                found, reason = [], "request failed"
            if reason:
                summary.brainstorm_dropped[reason] += 1
            for task in found:
                if task.lower() not in {t.lower() for t in tasks} and len(tasks) < count:
                    tasks.append(task)
        return tasks

    def example(self, task: str, summary: SynthesisSummary) -> TrainExample | None:
        """One example for ``task``; None (and a counted reason) when the generation is unusable."""
        knobs = example_knobs(self.rng)
        meta: dict[str, Any] = {"synthetic": True, "generator": self.generator.name, **knobs}
        document = None
        if self.corpus:
            index = self.rng.randrange(len(self.corpus))
            document = self.corpus[index]
            meta["source_doc"] = self.corpus_ids[index]
            prompt = GROUNDED_EXAMPLE_PROMPT.format(
                task=task,
                document=_excerpt(f"{document.title}\n{document.text}".strip()),
                language=self.language,
                **knobs,
            )
            fields = GROUNDED_FIELDS
        else:
            prompt = EXAMPLE_PROMPT.format(task=task, language=self.language, **knobs)
            fields = EXAMPLE_FIELDS
        summary.generated += 1
        try:
            parsed, reason = parse_generation(self._call(prompt), fields)
        except GenerationError:
            parsed, reason = None, "request failed"
        if parsed is None:
            summary.dropped[reason] += 1
            return None
        positive = document.to_json() if document else parsed["positive_document"]
        record = {
            "instruction": task,
            "query": parsed["user_query"],
            "positive": positive,
            "negatives": [parsed["hard_negative_document"]],
            "meta": meta,
        }
        try:
            example = parse_example(record, "generation")
        except EngineError as exc:  # e.g. an empty grounding document
            summary.dropped[f"invalid example ({exc})"] += 1
            return None
        summary.kept += 1
        return example


def read_grounding_corpus(path: Path) -> tuple[list[TrainDocument], list[str]]:
    """Documents of ``--corpus`` through the indexer's reader (same formats as `engine index`)."""
    documents = [d for d in read_corpus(path) if d.text.strip()]
    if not documents:
        raise EngineError(f"--corpus {path}: no readable documents")
    return [TrainDocument(d.title, d.text) for d in documents], [d.doc_id for d in documents]


def synthesize(
    *,
    generator: str,
    out: Path,
    generator_model: str | None = None,
    corpus: Path | None = None,
    num_tasks: int = 20,
    per_task: int = 4,
    tasks: Sequence[str] = (),
    seed: int = 42,
    temperature: float = 1.0,
    max_new_tokens: int = 1024,
    language: str = "English",
    device: str | None = None,
    timeout: float = 120.0,
    quiet: bool = False,
) -> SynthesisSummary:
    """Brainstorm (or take) tasks, generate ``per_task`` examples each, write the kept ones."""
    started = time.perf_counter()
    backend = make_generator(
        generator,
        generator_model=generator_model,
        device=device,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        timeout=timeout,
    )
    documents, ids = read_grounding_corpus(corpus) if corpus is not None else ([], [])
    synthesizer = Synthesizer(
        backend, corpus=documents, corpus_ids=ids, seed=seed, language=language
    )
    summary = SynthesisSummary(out=out, generator=backend.name)
    summary.tasks = list(tasks) if tasks else synthesizer.brainstorm(num_tasks, summary)
    jobs = [task for task in summary.tasks for _ in range(per_task)]
    bar = progress_bar(len(jobs), "synthesizing", enabled=not quiet and bool(jobs), unit="example")
    examples = []
    try:
        for task in jobs:
            example = synthesizer.example(task, summary)
            if example is not None:
                examples.append(example)
            if bar is not None:
                bar.set_postfix(kept=summary.kept, refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    write_examples(out, examples)
    summary.seconds = time.perf_counter() - started
    return summary
