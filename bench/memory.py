"""`engine bench memory`: peak RSS of indexing N synthetic documents as a stream.

``--corpus stream`` (default) hands ``update_index`` documents generated on the
fly (never a list), in this process. ``--corpus folder`` writes N small text
files and ``--corpus jsonl`` one N-line BEIR-style ``corpus.jsonl``, then runs
the real ``python -m engine index CORPUS`` in a child process, whose own peak
RSS (``wait4``) is compared with a child indexing a one-document corpus (the
model loaded). What grows with N is what the indexer itself keeps. Use a small
or tiny random model: the point is the indexer's memory, not the encoder's speed.
Also runnable as a script (``python bench/memory.py``) so an older engine on
``PYTHONPATH`` can be measured the same way; only the encoder, indexing and
document APIs (stream) or the ``engine index`` command (folder, jsonl) are used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click

from bench.common import command_line, machine
from bench.peak_memory import PeakMemory

WORDS = (
    "the a of and to in is it that was for on are with as be by at this from or an plants make "
    "sugar light water energy sun grass green sky blue pass key query document answer question"
).split()


def synthetic_texts(count: int, words: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        yield " ".join(rng.choice(WORDS) for _ in range(words))


def synthetic_documents(count: int, words: int, seed: int, sizes: list[int]) -> Iterator:
    """Documents made one at a time; ``sizes`` collects the bytes of text made."""
    from indexer.documents import Document

    for i, text in enumerate(synthetic_texts(count, words, seed)):
        sizes.append(len(text))
        yield Document(f"doc-{i}", "synthetic.jsonl", f"Title {i}", text)


def write_folder(folder: Path, count: int, words: int, seed: int) -> int:
    """``count`` Markdown files (a ``# title`` and the text), 1,000 per subfolder; returns bytes."""
    size = 0
    for i, text in enumerate(synthetic_texts(count, words, seed)):
        file = folder / f"{i // 1000:04}" / f"doc-{i:06}.md"
        if i % 1000 == 0:
            file.parent.mkdir(parents=True)
        content = f"# Title {i}\n{text}\n"
        file.write_text(content)
        size += len(content)
    return size


def write_jsonl(file: Path, count: int, words: int, seed: int) -> int:
    """One BEIR-style ``corpus.jsonl`` of ``count`` records; returns bytes."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w") as out:
        for i, text in enumerate(synthetic_texts(count, words, seed)):
            out.write(json.dumps({"_id": f"doc-{i}", "title": f"Title {i}", "text": text}) + "\n")
    return file.stat().st_size


def engine_index(
    corpus: Path, index_dir: Path, model: str, max_length: int, ranks: int = 1
) -> tuple[dict, float]:
    """``python -m engine index CORPUS --json`` in a child (under ``torchrun`` with ``ranks``
    > 1): its summary and the peak RSS (MB) of its largest process (``wait4`` reports the
    child's own or, for the launcher, the largest of the ranks it waited for)."""
    command = [sys.executable, "-m"]
    if ranks > 1:
        command += ["torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m"]
    command += ["engine", "index", str(corpus), "--index", str(index_dir)]
    command += ["--model", model, "--max-length", str(max_length), "--json"]
    env = {**os.environ, "ENGINE_NO_PROGRESS": "1"}
    if ranks > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise click.ClickException(f"engine index failed: {err.read().decode()[-2000:]}")
        summary = json.loads(out.read().decode().strip().splitlines()[-1])
    return summary, usage.ru_maxrss / 1024


@click.command()
@click.option("--model", required=True, help="Model folder (e.g. a tiny random model).")
@click.option("--documents", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--corpus",
    "kind",
    type=click.Choice(["stream", "folder", "jsonl"]),
    default="stream",
    show_default=True,
    help="stream: documents generated in this process into update_index; folder: N text "
    "files, jsonl: one N-line corpus.jsonl, each indexed by a real `engine index` child.",
)
@click.option(
    "--ranks",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="folder/jsonl: run `engine index` under torchrun with this many CPU ranks "
    "(the peak is the largest process's: the writer, rank 0).",
)
@click.option("--words", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the figures to this JSON file.")
def memory(
    model: str,
    documents: int,
    kind: str,
    ranks: int,
    words: int,
    max_length: int,
    seed: int,
    out: Path | None,
) -> None:
    """Peak RSS of indexing N synthetic documents (vs the model alone).

    \b
    Examples:
      engine bench memory --model /tmp/tiny-bert --documents 100000 --out results/memory.json
      engine bench memory --model /tmp/tiny-bert --corpus folder --documents 100000
      engine bench memory --model /tmp/tiny-bert --corpus jsonl --documents 20000
    """

    if ranks > 1 and kind == "stream":
        raise click.UsageError("--ranks needs --corpus folder or jsonl (a real engine index)")

    context = click.get_current_context()
    command = command_line(context)
    if context.parent is None:  # run as a script: say the equivalent engine command
        command = command.replace("engine", "engine bench memory", 1)
    folder = Path(tempfile.mkdtemp(prefix="engine-memory-"))
    try:
        if kind == "stream":
            result = _in_process(folder, model, documents, words, max_length, seed)
        else:
            result = _engine_index(folder, kind, model, documents, words, max_length, seed, ranks)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "command": command,
        "corpus": kind,
        "documents": documents,
        "words_per_document": words,
        **result,
        "machine": machine(),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result))


def _in_process(
    folder: Path, model: str, documents: int, words: int, max_length: int, seed: int
) -> dict:
    from engine.encoder import Encoder
    from indexer.indexing import update_index

    encoder = Encoder.load(model)
    encoder.set_max_length(max_length)
    encoder.encode_texts(["warm up the model once"])
    started = time.perf_counter()
    sizes: list[int] = []
    stream = synthetic_documents(documents, words, seed, sizes)
    # The high-water mark is reset here (Linux), so the growth is the indexer's own even in a
    # long-lived process that peaked earlier (a test session); elsewhere the lifetime peak.
    with PeakMemory("cpu") as memory:
        report = update_index(folder / "index", encoder, stream, progress=False)
    size = sum(f.stat().st_size for f in (folder / "index").iterdir() if f.is_file())
    return {
        "text_mb": round(sum(sizes) / 2**20, 1),
        "vectors_mb": round(documents * encoder.dim * 4 / 2**20, 1),
        "model": model,
        "dim": encoder.dim,
        "max_length": max_length,
        "encoded": report.encoded,
        "seconds": round(time.perf_counter() - started, 1),
        "index_mb": round(size / 2**20, 1),
        "peak_rss_mb_model_loaded": round(memory.start_mb, 1),
        "peak_rss_mb": round(memory.peak_mb, 1),
        "peak_rss_growth_mb": round(memory.peak_mb - memory.start_mb, 1),
        "memory_kind": memory.kind,
    }


def _engine_index(
    folder: Path,
    kind: str,
    model: str,
    documents: int,
    words: int,
    max_length: int,
    seed: int,
    ranks: int,
) -> dict:
    one = folder / "one"
    one.mkdir()
    (one / "one.txt").write_text("warm up the model once")
    _, baseline = engine_index(one, folder / "one-index", model, max_length, ranks)
    if kind == "folder":
        corpus = folder / "corpus"
        text = write_folder(corpus, documents, words, seed)
    else:
        corpus = folder / "corpus" / "corpus.jsonl"
        text = write_jsonl(corpus, documents, words, seed)
    started = time.perf_counter()
    summary, peak = engine_index(corpus, folder / "index", model, max_length, ranks)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in (folder / "index").rglob("*") if f.is_file())
    info = subprocess.run(
        [sys.executable, "-m", "engine", "info", "--index", str(folder / "index"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    dim = json.loads(info.stdout)["dim"]
    return {
        "corpus_mb": round(text / 2**20, 1),
        "vectors_mb": round(documents * dim * 4 / 2**20, 1),
        "model": model,
        "dim": dim,
        "max_length": max_length,
        "encoded": summary["encoded"],
        "skipped": summary["skipped"],
        "ranks": summary.get("ranks", 1),
        "seconds": round(seconds, 1),
        "index_mb": round(size / 2**20, 1),
        "peak_rss_mb_one_document": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_growth_mb": round(peak - baseline, 1),
    }


if __name__ == "__main__":
    memory()
