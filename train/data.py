"""The training data format, its validation, and the weighted mix of several files.

One example per JSON line::

    {"instruction": "Given a scientific claim, retrieve documents that support or refute it",
     "query": "0-dimensional biomaterials lack inductive properties.",
     "positive": {"title": "...", "text": "..."},
     "negatives": ["a hard negative as a plain string", {"title": "", "text": "..."}],
     "meta": {"query_id": "0"}}

``query`` and ``positive`` are required; ``instruction`` (string or null),
``negatives`` (list) and ``meta`` (free-form object) are optional. Documents are
strings or ``{"title", "text"}`` objects. Unknown fields are refused, so a typo
such as ``"negative"`` fails instead of silently training without negatives.
Every error names the file and the line.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.utils.data

from engine.errors import EngineError
from train.arguments import DataSource

REQUIRED_FIELDS = ("query", "positive")
OPTIONAL_FIELDS = ("instruction", "negatives", "meta")
DOCUMENT_FIELDS = ("title", "text")


@dataclass(frozen=True)
class TrainDocument:
    """A document as the encoder sees it: ``format_document(title, text)``."""

    title: str
    text: str

    @property
    def key(self) -> int:
        """A 63-bit content hash: the same document gets the same key in every file and rank."""
        digest = hashlib.blake2b(f"{self.title}\0{self.text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def to_json(self) -> dict[str, str]:
        return {"title": self.title, "text": self.text}


@dataclass(frozen=True)
class TrainExample:
    """One line of a training file."""

    query: str
    positive: TrainDocument
    negatives: tuple[TrainDocument, ...] = ()
    instruction: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def query_key(self) -> tuple[str, str]:
        return (self.instruction or "", self.query)

    def to_json(self) -> dict:
        data = {
            "instruction": self.instruction,
            "query": self.query,
            "positive": self.positive.to_json(),
            "negatives": [n.to_json() for n in self.negatives],
        }
        if self.meta:
            data["meta"] = self.meta
        return data


@dataclass(frozen=True)
class TrainGroup:
    """What one query contributes to a batch: its positive and the negatives drawn for it."""

    query: str
    instruction: str | None
    positive: TrainDocument
    negatives: tuple[TrainDocument, ...]
    # Keys of every document known to be relevant to this query (masked as in-batch negatives).
    positive_keys: frozenset[int]


def _document(value, where: str, name: str) -> TrainDocument:
    if isinstance(value, str):
        if not value.strip():
            raise EngineError(f"{where}: {name} is an empty string")
        return TrainDocument("", value)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(DOCUMENT_FIELDS))
        if unknown:
            raise EngineError(
                f"{where}: {name} has unknown field(s) {', '.join(unknown)} (expected title, text)"
            )
        title = value.get("title", "")
        text = value.get("text")
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise EngineError(f"{where}: {name}.title must be a string")
        if not isinstance(text, str):
            raise EngineError(f"{where}: {name}.text is missing or not a string")
        if not (title.strip() or text.strip()):
            raise EngineError(f"{where}: {name} is empty (no title, no text)")
        return TrainDocument(title.strip(), text.strip())
    raise EngineError(
        f"{where}: {name} must be a string or an object with title and text, "
        f"not {type(value).__name__}"
    )


def parse_example(obj, where: str) -> TrainExample:
    """Validate one decoded JSON line; ``where`` is ``file:line`` for the error message."""
    if not isinstance(obj, dict):
        raise EngineError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        raise EngineError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise EngineError(
            f"{where}: unknown field(s) {', '.join(unknown)} "
            f"(expected instruction, query, positive, negatives, meta)"
        )
    query = obj["query"]
    if not isinstance(query, str) or not query.strip():
        raise EngineError(f"{where}: query must be a non-empty string")
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise EngineError(f"{where}: instruction must be a string or null")
    negatives = obj.get("negatives", [])
    if negatives is None:
        negatives = []
    if not isinstance(negatives, list):
        raise EngineError(f"{where}: negatives must be a list")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise EngineError(f"{where}: meta must be an object")
    return TrainExample(
        query=query.strip(),
        positive=_document(obj["positive"], where, "positive"),
        negatives=tuple(_document(n, where, f"negatives[{i}]") for i, n in enumerate(negatives)),
        instruction=(instruction.strip() or None) if instruction else None,
        meta=meta,
    )


def load_examples(path: str | Path) -> list[TrainExample]:
    """Read and validate a JSON-lines file; the first bad line stops with ``file:line: why``."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"training data not found: {path}")
    examples = []
    with path.open(encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EngineError(
                        f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                examples.append(parse_example(obj, where))
        except UnicodeDecodeError as exc:
            raise EngineError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not examples:
        raise EngineError(f"{path}: no training examples (empty file)")
    return examples


def write_examples(path: str | Path, examples: Sequence[TrainExample]) -> None:
    """Write examples in the training format (used by the data tools)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")


@dataclass
class LoadedSource:
    source: DataSource
    examples: list[TrainExample]


def load_sources(sources: Sequence[DataSource]) -> list[LoadedSource]:
    return [LoadedSource(source, load_examples(source.path)) for source in sources]


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` draws by ``weights`` exactly (largest remainder), so a mix is reproducible."""
    norm = sum(weights)
    shares = [w / norm * total for w in weights]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: counts[i] - shares[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class MixedDataset(torch.utils.data.Dataset):
    """An epoch of examples drawn from several files by weight, with negatives sampled per query.

    A file without a weight weighs its share of all examples, so plain
    ``--data a --data b`` is a concatenation; ``a:0.3 --data b:0.7`` draws 30/70.
    Within a file examples are drawn without replacement, and cycled when a
    weight asks for more than the file has. Queries with fewer hard negatives
    than ``negatives_per_query`` get random positives of other queries instead,
    so every batch has the same shape (needed to gather across GPUs).
    """

    def __init__(
        self,
        sources: Sequence[LoadedSource],
        *,
        negatives_per_query: int = 1,
        examples_per_epoch: int | None = None,
        seed: int = 42,
    ) -> None:
        if not sources:
            raise EngineError("no training data")
        self.sources = list(sources)
        self.negatives_per_query = negatives_per_query
        self.seed = seed
        sizes = [len(s.examples) for s in self.sources]
        total_size = sum(sizes)
        self.weights = [
            s.source.weight if s.source.weight is not None else n / total_size
            for s, n in zip(self.sources, sizes, strict=True)
        ]
        self.epoch_size = examples_per_epoch or total_size
        self.counts = allocate(self.weights, self.epoch_size)
        self.positives: dict[tuple[str, str], set[int]] = {}
        pool: dict[int, TrainDocument] = {}
        for source in self.sources:
            for example in source.examples:
                self.positives.setdefault(example.query_key, set()).add(example.positive.key)
                pool.setdefault(example.positive.key, example.positive)
        self.random_pool = list(pool.values())
        self.order: list[tuple[int, int]] = []
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's examples; the same seed and epoch give the same order on every rank."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        rng = random.Random(f"{self.seed}:{epoch}")
        order: list[tuple[int, int]] = []
        for index, (source, count) in enumerate(zip(self.sources, self.counts, strict=True)):
            n = len(source.examples)
            picks: list[int] = []
            while len(picks) < count:
                cycle = list(range(n))
                rng.shuffle(cycle)
                picks.extend(cycle[: count - len(picks)])
            order.extend((index, i) for i in picks)
        rng.shuffle(order)
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> TrainGroup:
        source_index, example_index = self.order[position]
        example = self.sources[source_index].examples[example_index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{position}")
        positive_keys = frozenset(self.positives[example.query_key])
        wanted = self.negatives_per_query
        candidates = [n for n in example.negatives if n.key not in positive_keys]
        negatives = rng.sample(candidates, wanted) if len(candidates) > wanted else candidates
        attempts = 0
        while len(negatives) < wanted and attempts < 100 * wanted:
            attempts += 1
            document = rng.choice(self.random_pool)
            if document.key not in positive_keys:
                negatives.append(document)
        while len(negatives) < wanted:  # a pool of nothing but this query's positives
            negatives.append(example.positive)
        return TrainGroup(
            query=example.query,
            instruction=example.instruction,
            positive=example.positive,
            negatives=tuple(negatives),
            positive_keys=positive_keys,
        )

    def describe(self) -> list[dict]:
        """Per file: path, examples in the file, weight, draws per epoch."""
        return [
            {
                "path": str(s.source.path),
                "examples": len(s.examples),
                "weight": round(w, 6),
                "weight_given": s.source.weight is not None,
                "draws_per_epoch": c,
            }
            for s, w, c in zip(self.sources, self.weights, self.counts, strict=True)
        ]
