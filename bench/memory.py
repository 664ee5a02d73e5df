"""`engine bench memory`: peak RSS of indexing N synthetic documents as a stream.

The documents are generated on the fly (never a list), so what grows with N is
what the indexer itself keeps. Use a small or tiny random model: the point is the
indexer's memory, not the encoder's speed. Also runnable as a script
(``python bench/memory.py``) so an older engine on ``PYTHONPATH`` can be
measured the same way; only the encoder, indexing and document APIs are used.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click

WORDS = (
    "the a of and to in is it that was for on are with as be by at this from or an plants make "
    "sugar light water energy sun grass green sky blue pass key query document answer question"
).split()


def synthetic_documents(count: int, words: int, seed: int, sizes: list[int]) -> Iterator:
    """Documents made one at a time; ``sizes`` collects the bytes of text made."""
    from indexer.documents import Document

    rng = random.Random(seed)
    for i in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        sizes.append(len(text))
        yield Document(f"doc-{i}", "synthetic.jsonl", f"Title {i}", text)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.option("--model", required=True, help="Model folder (e.g. a tiny random model).")
@click.option("--documents", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--words", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the figures to this JSON file.")
def memory(
    model: str, documents: int, words: int, max_length: int, seed: int, out: Path | None
) -> None:
    """Peak RSS of `engine index` on N streamed synthetic documents (vs the model alone).

    \b
    Example:
      engine bench memory --model /tmp/tiny-bert --documents 100000 --out results/memory.json
    """
    from engine.encoder import Encoder
    from indexer.indexing import update_index

    encoder = Encoder.load(model)
    encoder.set_max_length(max_length)
    encoder.encode_texts(["warm up the model once"])
    before = peak_rss_mb()
    folder = Path(tempfile.mkdtemp(prefix="engine-memory-"))
    started = time.perf_counter()
    sizes: list[int] = []
    try:
        stream = synthetic_documents(documents, words, seed, sizes)
        report = update_index(folder / "index", encoder, stream, progress=False)
        size = sum(f.stat().st_size for f in (folder / "index").iterdir() if f.is_file())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "documents": documents,
        "words_per_document": words,
        "text_mb": round(sum(sizes) / 2**20, 1),
        "vectors_mb": round(documents * encoder.dim * 4 / 2**20, 1),
        "model": model,
        "dim": encoder.dim,
        "max_length": max_length,
        "encoded": report.encoded,
        "seconds": round(time.perf_counter() - started, 1),
        "index_mb": round(size / 2**20, 1),
        "peak_rss_mb_model_loaded": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_growth_mb": round(peak_rss_mb() - before, 1),
        "python": sys.version.split()[0],
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result))


if __name__ == "__main__":
    memory()
