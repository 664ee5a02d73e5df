"""`engine train data from-beir`: training pairs from a BEIR split, hard negatives mined by the engine.

The corpus is indexed with the engine's own indexer (cached and incremental,
so a second run costs nothing), queries are encoded with the same encoder and
searched in the store. Negatives are the top-ranked documents that are not
relevant, below the first ``skip_top`` ranks: the very top of a ranking is
where unlabelled positives hide (paper section 4.1 / common practice).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from train.data import TrainDocument, TrainExample, write_examples


@dataclass
class BeirSplit:
    """One BEIR dataset split: corpus, the split's queries and their graded judgements."""

    name: str
    corpus: dict[str, TrainDocument]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise EngineError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
    return rows


def load_beir_split(data_dir: Path, split: str) -> BeirSplit:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""
    data_dir = Path(data_dir)
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (data_dir / required).is_file():
            raise EngineError(f"{data_dir} is not a BEIR dataset folder: no {required}")
    qrels_path = data_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (data_dir / "qrels").glob("*.tsv"))
        raise EngineError(
            f"{data_dir} has no {split} split (available: {', '.join(available) or 'none'})"
        )
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if number == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise EngineError(f"{qrels_path}:{number}: expected query-id, corpus-id, score")
            try:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
            except ValueError:
                raise EngineError(f"{qrels_path}:{number}: score is not an integer") from None
    corpus = {
        str(row["_id"]): TrainDocument(
            (row.get("title") or "").strip(), (row.get("text") or "").strip()
        )
        for row in _read_jsonl(data_dir / "corpus.jsonl")
    }
    queries = {
        str(row["_id"]): row["text"]
        for row in _read_jsonl(data_dir / "queries.jsonl")
        if str(row["_id"]) in qrels
    }
    return BeirSplit(data_dir.resolve().name, corpus, queries, qrels)


def dataset_instruction(name: str) -> str | None:
    """The benchmark's instruction for a BEIR dataset (bench/datasets.py), if it knows one."""
    try:
        from bench.datasets import instruction_for
    except ImportError:
        return None
    try:
        return instruction_for(name)
    except (KeyError, LookupError, EngineError):
        return None


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "engine" / "mining"


def mine_hard_negatives(
    split: BeirSplit,
    *,
    model: str | None,
    instruction: str | None,
    mine_instruction: bool | None,
    negatives: int,
    skip_top: int,
    max_length: int,
    cache_dir: Path,
    device: str | None,
    progress: bool,
) -> tuple[dict[str, list[str]], dict]:
    """Hard negative document ids per query, and a description of how they were mined."""
    from engine.encoder import Encoder
    from indexer.documents import Document
    from indexer.indexing import update_index
    from indexer.store import Store

    encoder = Encoder.load(model, device=device, max_length=max_length)
    index_dir = cache_dir / f"{split.name}-{encoder.fingerprint[:12]}-{encoder.max_length}"
    documents = [
        Document(doc_id=doc_id, source="corpus.jsonl", title=doc.title, text=doc.text)
        for doc_id, doc in split.corpus.items()
    ]
    update_index(index_dir, encoder, documents, progress=progress)
    if mine_instruction is None:
        mine_instruction = encoder.profile.instruction_tuned
    query_ids = list(split.queries)
    vectors = encoder.encode_queries(
        [split.queries[q] for q in query_ids],
        instruction if mine_instruction else None,
        progress=progress,
    )
    store = Store.open(index_dir)
    try:
        doc_ids = store.doc_ids()
        widest = max(sum(1 for s in split.qrels[q].values() if s > 0) for q in query_ids)
        depth = min(len(doc_ids), skip_top + negatives + widest + 20)
        _, rows = store.search(vectors, depth)
    finally:
        store.close()
    mined: dict[str, list[str]] = {}
    for query_id, row in zip(query_ids, rows, strict=True):
        judged = split.qrels[query_id]
        ranking = [doc_ids[int(i)] for i in row if int(i) >= 0]
        mined[query_id] = [
            doc_id
            for doc_id in ranking[skip_top:]
            if judged.get(doc_id, 0) <= 0 and doc_id != query_id
        ][:negatives]
    how = {
        "model": encoder.name,
        "max_length": encoder.max_length,
        "index": str(index_dir),
        "query_instruction": bool(mine_instruction and instruction),
        "skip_top": skip_top,
        "negatives": negatives,
    }
    return mined, how


def from_beir(
    *,
    data_dir: Path,
    split: str = "train",
    out: Path,
    instruction: str | None = None,
    mine_negatives: bool = False,
    negatives: int = 3,
    skip_top: int = 3,
    model: str | None = None,
    max_length: int = 256,
    mine_instruction: bool | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> str:
    """Write one training line per relevant (query, document) pair; returns a summary line."""
    beir = load_beir_split(data_dir, split)
    if instruction is None:
        instruction = dataset_instruction(beir.name)
        if instruction is None:
            raise EngineError(
                f"no instruction known for dataset {beir.name!r}; pass --instruction TEXT "
                "(or --instruction '' for none)"
            )
    instruction = instruction.strip() or None
    pairs = [
        (query_id, doc_id)
        for query_id in beir.queries
        for doc_id, score in sorted(beir.qrels[query_id].items())
        if score > 0 and doc_id in beir.corpus
    ]
    missing_docs = sum(
        1
        for query_id in beir.queries
        for doc_id, score in beir.qrels[query_id].items()
        if score > 0 and doc_id not in beir.corpus
    )
    if not pairs:
        raise EngineError(f"{data_dir}: no relevant (query, document) pairs in the {split} split")
    mined: dict[str, list[str]] = {}
    how = None
    if mine_negatives:
        mined, how = mine_hard_negatives(
            beir,
            model=model,
            instruction=instruction,
            mine_instruction=mine_instruction,
            negatives=negatives,
            skip_top=skip_top,
            max_length=max_length,
            cache_dir=cache_dir or default_cache_dir(),
            device=device,
            progress=not quiet and not os.environ.get("ENGINE_NO_PROGRESS"),
        )
    examples = []
    for query_id, doc_id in pairs:
        negative_ids = mined.get(query_id, [])
        examples.append(
            TrainExample(
                query=beir.queries[query_id],
                positive=beir.corpus[doc_id],
                negatives=tuple(beir.corpus[n] for n in negative_ids),
                instruction=instruction,
                meta={
                    "dataset": beir.name,
                    "split": split,
                    "query_id": query_id,
                    "positive_id": doc_id,
                    "negative_ids": negative_ids,
                },
            )
        )
    write_examples(out, examples)
    summary = (
        f"Wrote {len(examples)} examples ({len(beir.queries)} queries) from {beir.name} "
        f"{split} to {out}"
    )
    if how:
        counts = [len(v) for v in mined.values()]
        summary += (
            f"; {sum(counts) / max(1, len(counts)):.2f} hard negatives per query mined with "
            f"{how['model']} (ranks > {skip_top}, index cached in {how['index']})"
        )
    if missing_docs:
        summary += f"; {missing_docs} judged documents missing from the corpus were skipped"
    return summary + "."
