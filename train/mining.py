"""`engine train data from-beir`: training pairs from a BEIR split, hard negatives mined by the engine.

The dataset is read by the benchmark's BEIR reader (``bench.datasets.load_beir``)
and its corpus indexed by the engine's own indexer into the benchmark's index
cache (``bench.beir.index_dir_for``: one index per dataset, model fingerprint and
length), so mining and ``engine bench beir`` share one index and a second run
encodes nothing. Queries are encoded with the same encoder and searched in the
store. Negatives are the top-ranked documents that are not
relevant, below the first ``skip_top`` ranks: the very top of a ranking is
where unlabelled positives hide (paper section 4.1 / common practice).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from bench.datasets import BeirDataset, UnknownDataset, instruction_for, load_beir
from engine.errors import EngineError
from engine.progress import progress_enabled
from train.data import TrainDocument, TrainExample, write_examples


def mine_hard_negatives(
    dataset: BeirDataset,
    *,
    model: str | None,
    instruction: str | None,
    mine_instruction: bool | None,
    negatives: int,
    skip_top: int,
    max_length: int,
    cache_dir: Path | None,
    device: str | None,
    progress: bool,
    query_ids: Sequence[str] | None = None,
) -> tuple[dict[str, list[str]], dict]:
    """Hard negative document ids per query (all, or ``query_ids``), and how they were mined."""
    from bench.beir import default_cache_dir, index_dir_for
    from engine.encoder import Encoder
    from indexer.indexing import update_index
    from indexer.store import Store

    encoder = Encoder.load(model, device=device, max_length=max_length)
    index_dir = index_dir_for(cache_dir or default_cache_dir(), dataset.name, encoder)
    update_index(index_dir, encoder, dataset.corpus, progress=progress)
    if mine_instruction is None:
        mine_instruction = encoder.profile.instruction_tuned
    query_ids = list(dataset.queries) if query_ids is None else list(query_ids)
    vectors = encoder.encode_queries(
        [dataset.queries[q] for q in query_ids],
        instruction if mine_instruction else None,
        progress=progress,
    )
    store = Store.open(index_dir)
    try:
        doc_ids = store.doc_ids()
        widest = max(sum(1 for s in dataset.qrels[q].values() if s > 0) for q in query_ids)
        depth = min(len(doc_ids), skip_top + negatives + widest + 20)
        _, rows = store.search(vectors, depth)
    finally:
        store.close()
    mined: dict[str, list[str]] = {}
    for query_id, row in zip(query_ids, rows, strict=True):
        judged = dataset.qrels[query_id]
        ranking = [doc_ids[int(i)] for i in row if int(i) >= 0]
        # A document judged 0 is a checked non-relevant one: a fine negative.
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
    max_pairs: int | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> str:
    """Write one training line per relevant (query, document) pair; returns a summary line."""
    dataset = load_beir(data_dir, split)
    if instruction is None:
        try:
            instruction = instruction_for(dataset.name)
        except UnknownDataset:
            raise EngineError(
                f"no instruction known for dataset {dataset.name!r}; pass --instruction TEXT "
                "(or --instruction '' for none)"
            ) from None
    instruction = instruction.strip() or None
    corpus = {d.doc_id: TrainDocument(d.title, d.text) for d in dataset.corpus}
    pairs = [
        (query_id, doc_id)
        for query_id in dataset.queries
        for doc_id, score in sorted(dataset.qrels[query_id].items())
        if score > 0 and doc_id in corpus
    ]
    missing_docs = sum(
        1
        for query_id in dataset.queries
        for doc_id, score in dataset.qrels[query_id].items()
        if score > 0 and doc_id not in corpus
    )
    if not pairs:
        raise EngineError(f"{data_dir}: no relevant (query, document) pairs in the {split} split")
    available = len(pairs)
    if max_pairs is not None and available > max_pairs:
        # A seeded sample, kept in file order, so the same seed writes the same file.
        pairs = sorted(random.Random(seed).sample(pairs, max_pairs))
    mined: dict[str, list[str]] = {}
    how = None
    if mine_negatives:
        mined, how = mine_hard_negatives(
            dataset,
            model=model,
            instruction=instruction,
            mine_instruction=mine_instruction,
            negatives=negatives,
            skip_top=skip_top,
            max_length=max_length,
            cache_dir=cache_dir,
            device=device,
            progress=progress_enabled(not quiet),
            query_ids=sorted({query_id for query_id, _ in pairs}),
        )
    examples = []
    for query_id, doc_id in pairs:
        negative_ids = mined.get(query_id, [])
        examples.append(
            TrainExample(
                query=dataset.queries[query_id],
                positive=corpus[doc_id],
                negatives=tuple(corpus[n] for n in negative_ids),
                instruction=instruction,
                meta={
                    "dataset": dataset.name,
                    "split": split,
                    "query_id": query_id,
                    "positive_id": doc_id,
                    "negative_ids": negative_ids,
                },
            )
        )
    write_examples(out, examples)
    queries_with_pairs = len({query_id for query_id, _ in pairs})
    summary = (
        f"Wrote {len(examples)} examples ({queries_with_pairs} queries) from {dataset.name} "
        f"{split} to {out}"
    )
    if len(pairs) < available:
        summary += f" (a seeded sample of {available} pairs)"
    if how:
        counts = [len(v) for v in mined.values()]
        summary += (
            f"; {sum(counts) / max(1, len(counts)):.2f} hard negatives per query mined with "
            f"{how['model']} (ranks > {skip_top}, index cached in {how['index']})"
        )
    if missing_docs:
        summary += f"; {missing_docs} judged documents missing from the corpus were skipped"
    return summary + "."
