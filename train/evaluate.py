"""The ``--eval-data`` hook: ``engine bench beir``'s evaluation, before and after training.

Scoring is the benchmark's own (``bench.beir.evaluate_dataset``): same reader,
same instruction rule (the dataset's paper instruction when the model profile
is instruction-tuned, none otherwise), same index cache, so the base model's
corpus index is encoded once and shared with ``engine bench beir`` and with
``engine train data from-beir``'s mining.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from engine.encoder import Encoder
from engine.errors import EngineError

HEADLINE_METRIC = "ndcg@10"
# What the training record keeps of a benchmark result (the rest is index bookkeeping).
KEPT_FIELDS = ("dataset", "split", "instruction", "max_length", "documents", "queries", "metrics")

Evaluator = Callable[[Encoder], dict[str, dict]]


def beir_evaluator(
    folders: Sequence[Path],
    max_length: int,
    *,
    trains_instruction: bool,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Evaluator:
    """A function scoring an encoder on each BEIR folder's default split (``test``).

    The folders are read here, before any training, so a wrong path fails in
    seconds rather than after an hour of training.
    """
    from bench.datasets import known_name, load_beir

    datasets = []
    for folder in folders:
        dataset = load_beir(Path(folder))
        if trains_instruction and known_name(dataset.folder) is None:
            raise EngineError(
                f"--eval-data {folder}: no task instruction is known for dataset "
                f"{dataset.name!r}, and a model trained with instructions is benchmarked with "
                "them; use a BEIR dataset folder named like the dataset (e.g. scifact)"
            )
        datasets.append(dataset)
    if len({d.name for d in datasets}) != len(datasets):
        raise EngineError("--eval-data: the same dataset is named twice")

    def evaluate(encoder: Encoder) -> dict[str, dict]:
        from bench.beir import evaluate_dataset

        previous = encoder.max_length
        encoder.set_max_length(min(max_length, encoder.model_max_positions))
        try:
            results = {}
            for dataset in datasets:
                result = evaluate_dataset(
                    encoder,
                    dataset.folder,
                    dataset=dataset,
                    cache_dir=cache_dir,
                    progress=progress,
                )
                results[dataset.name] = {key: result[key] for key in KEPT_FIELDS} | {
                    "seconds": result["timing"]["total_seconds"]
                }
            return results
        finally:
            encoder.set_max_length(previous)

    return evaluate


def headline(results: dict[str, dict] | None) -> dict[str, float]:
    """``{dataset: nDCG@10}`` of an evaluation."""
    return {name: r["metrics"][HEADLINE_METRIC] for name, r in (results or {}).items()}


def format_comparison(before: dict[str, dict] | None, after: dict[str, dict] | None) -> str:
    """A before/after nDCG@10 table, one line per dataset."""
    first, second = headline(before), headline(after)
    names = list(first) + [n for n in second if n not in first]
    any_result = next(iter((after or before or {}).values()), {})
    title = f"BEIR {HEADLINE_METRIC} ({any_result.get('split', 'test')}, "
    title += f"{any_result.get('max_length', '?')} tokens)"
    width = max(len(title), *(len(n) for n in names))
    lines = [f"{title:<{width}}  {'before':>7}  {'after':>7}  {'change':>7}"]
    for name in names:
        b, a = first.get(name), second.get(name)
        cells = [f"{v:>7.4f}" if v is not None else f"{'-':>7}" for v in (b, a)]
        change = f"{a - b:>+7.4f}" if a is not None and b is not None else f"{'-':>7}"
        lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}  {change}")
    return "\n".join(lines)
