"""Retrieval metrics exactly as BEIR computes them: pytrec_eval, plus BEIR's MRR@k.

nDCG, MAP and recall come from pytrec_eval (trec_eval's ``ndcg_cut``,
``map_cut`` and ``recall`` measures: graded gains for nDCG, relevance >= 1 for
the others). MRR@k is BEIR's own: the reciprocal rank of the first document
with a judgement above 0 among the top k. Every metric is averaged over the
judged queries; a query with no run counts as 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytrec_eval

NDCG_CUTOFFS = (1, 3, 5, 10, 100)
MAP_CUTOFFS = (10, 100)
RECALL_CUTOFFS = (10, 100, 1000)
MRR_CUTOFFS = (10,)

# Hits retrieved per query: enough for the deepest cutoff.
DEFAULT_TOP_K = max(RECALL_CUTOFFS)

# name -> (family, cutoff), in the order tables and JSON list them.
METRICS: dict[str, tuple[str, int]] = {
    **{f"ndcg@{k}": ("ndcg", k) for k in NDCG_CUTOFFS},
    **{f"map@{k}": ("map", k) for k in MAP_CUTOFFS},
    **{f"recall@{k}": ("recall", k) for k in RECALL_CUTOFFS},
    **{f"mrr@{k}": ("mrr", k) for k in MRR_CUTOFFS},
}

_TREC_MEASURES = {
    "ndcg": ("ndcg_cut", NDCG_CUTOFFS),
    "map": ("map_cut", MAP_CUTOFFS),
    "recall": ("recall", RECALL_CUTOFFS),
}

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def ranked(hits: Mapping[str, float]) -> list[str]:
    """Document ids best first, ties broken as trec_eval does (higher doc id first)."""
    return [
        doc for doc, _ in sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)
    ]


def mrr_at(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per-query reciprocal rank of the first relevant (score > 0) document in the top ``k``."""
    scores = {}
    for query_id, judged in qrels.items():
        relevant = {doc for doc, score in judged.items() if score > 0}
        scores[query_id] = 0.0
        for rank, doc in enumerate(ranked(run.get(query_id, {}))[:k], start=1):
            if doc in relevant:
                scores[query_id] = 1.0 / rank
                break
    return scores


def per_query_metrics(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """Every metric for every judged query (0 for a query without hits)."""
    measures = {f"{name}.{','.join(map(str, cuts))}" for name, cuts in _TREC_MEASURES.values()}
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(judged) for q, judged in qrels.items()}, measures
    )
    trec = evaluator.evaluate(
        {q: {d: float(s) for d, s in run[q].items()} for q in qrels if run.get(q)}
    )
    mrr = {k: mrr_at(qrels, run, k) for k in MRR_CUTOFFS}
    out: dict[str, dict[str, float]] = {}
    for query_id in qrels:
        row = trec.get(query_id, {})
        values = {}
        for metric, (family, k) in METRICS.items():
            if family == "mrr":
                values[metric] = mrr[k][query_id]
            else:
                values[metric] = float(row.get(f"{_TREC_MEASURES[family][0]}_{k}", 0.0))
        out[query_id] = values
    return out


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Metrics averaged over the judged queries, rounded to 5 decimals as BEIR reports them."""
    if not qrels:
        raise ValueError("no judged queries to evaluate")
    rows = per_query_metrics(qrels, run)
    return {
        metric: round(sum(row[metric] for row in rows.values()) / len(rows), 5)
        for metric in METRICS
    }


def average(results: list[Mapping[str, float]]) -> dict[str, float]:
    """The plain mean of each metric over datasets (BEIR's average row)."""
    if not results:
        return {}
    return {
        metric: round(sum(r[metric] for r in results) / len(results), 5)
        for metric in METRICS
        if all(metric in r for r in results)
    }
