"""`engine bench scaling`: indexing docs/s in one process vs N ranks under torchrun.

Each run is the real command a user types (``engine index`` and ``torchrun
--standalone --nproc_per_node N -m engine index``), into a fresh index, over the
first ``--documents`` records of a BEIR corpus, and the figure is the one the
command reports (documents encoded / seconds of the whole update: tokenizing,
encoding, gathering, committing). The single process is run twice: with the
threads torch picks (all cores) and with one thread, which is what each rank
gets under torchrun on a CPU (``OMP_NUM_THREADS=1``), so the per-rank
efficiency can be read off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from bench.common import command_line, file_slug, machine
from engine import __version__
from engine.errors import EngineError
from engine.options import json_option, model_option, results_dir_option
from indexer.documents import Document
from indexer.schema import new_index_settings
from indexer.store import Writer


def writer_commit_rate(folder: Path, dim: int, rounds: int, round_documents: int) -> dict:
    """How fast the one writer commits rounds of ``dim``-dim vectors (SQLite + FAISS add).

    Under torchrun the ranks wait while rank 0 commits a round, so this bounds
    how many GPUs one writer keeps busy.
    """

    settings = new_index_settings(
        {"model": "synthetic", "fingerprint": "synthetic", "dim": dim, "max_length": 512},
        None,
    )
    rng = np.random.default_rng(0)
    seconds = 0.0
    with Writer(folder, settings, rebuild=False) as store:
        for round_number in range(rounds):
            vectors = rng.standard_normal((round_documents, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            text = "x" * 1300  # about a BEIR document
            content_hash = Document(
                "", "synthetic", "", text
            ).content_hash  # as engine index stores
            rows = [
                {
                    "id": None,
                    "doc_id": f"{round_number}-{n}",
                    "source": "synthetic",
                    "title": "",
                    "text": text,
                    "content_hash": content_hash,
                    "token_count": 211,
                }
                for n in range(round_documents)
            ]
            started = time.perf_counter()
            store.commit(upsert=rows, vectors=vectors)
            seconds += time.perf_counter() - started
    documents = rounds * round_documents
    return {
        "dim": dim,
        "rounds": rounds,
        "round_documents": round_documents,
        "docs_per_second": round(documents / seconds, 1),
        "vector_megabytes_per_second": round(documents * dim * 4 / seconds / 2**20, 1),
    }


def _index(command: list[str], env: dict[str, str]) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise EngineError(f"{' '.join(command[:6])} ... failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


@click.command("scaling")
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="A BEIR dataset folder (with corpus.jsonl).",
)
@click.option(
    "--documents", type=click.IntRange(min=1), default=600, show_default=True, help="Corpus slice."
)
@click.option(
    "--ranks", type=click.IntRange(min=2), default=2, show_default=True, help="torchrun ranks."
)
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True)
@model_option()
@click.option(
    "--writer-dim",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Also time the writer's commits of vectors this wide (4096: e5-mistral).",
)
@results_dir_option("results JSON")
@json_option()
def scaling(
    data_dir: Path,
    documents: int,
    ranks: int,
    max_length: int,
    model: str | None,
    writer_dim: int,
    out: Path,
    as_json: bool,
) -> None:
    """Indexing throughput of one process against N torchrun ranks on this machine.

    \b
    Examples:
      engine bench scaling --data-dir ../shared/data/beir/scifact --documents 600 --ranks 2
    """
    corpus_file = data_dir / "corpus.jsonl"
    if not corpus_file.is_file():
        raise EngineError(f"no corpus.jsonl in {data_dir}")
    with tempfile.TemporaryDirectory(prefix="engine-scaling-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus" / "corpus.jsonl"
        corpus.parent.mkdir()
        with corpus_file.open() as source, corpus.open("w") as target:
            for _, line in zip(range(documents), source, strict=False):
                target.write(line)
        options = [
            "--max-length",
            str(max_length),
            "--json",
            *(["--model", model] if model else []),
        ]
        engine = [sys.executable, "-m", "engine", "index", str(corpus.parent)]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        env = {**os.environ, "ENGINE_NO_PROGRESS": "1"}
        env.pop("OMP_NUM_THREADS", None)
        runs = {}
        plan = [
            ("one process, all cores", [*engine, "--index", str(root / "a"), *options], {}),
            (
                "one process, 1 thread",
                [*engine, "--index", str(root / "b"), *options],
                {"OMP_NUM_THREADS": "1"},
            ),
            (
                f"{ranks} ranks x 1 thread (torchrun, gloo)",
                [
                    *torchrun,
                    "--nproc_per_node",
                    str(ranks),
                    *engine[1:],
                    "--index",
                    str(root / "c"),
                    *options,
                ],
                {},
            ),
        ]
        for name, command, extra in plan:
            report, wall = _index(command, {**env, **extra})
            runs[name] = {
                "command": " ".join(command).replace(str(root), "$TMP"),
                "docs_per_second": report["docs_per_second"],
                "encoded": report["encoded"],
                "encoded_tokens": report["encoded_tokens"],
                "index_seconds": report["seconds"],
                "wall_seconds_with_startup": round(wall, 2),
                "ranks": report["ranks"],
                "model": report["model"],
            }
        writer = writer_commit_rate(root / "writer", writer_dim, rounds=8, round_documents=2048)
    one_thread = runs["one process, 1 thread"]["docs_per_second"]
    distributed = runs[f"{ranks} ranks x 1 thread (torchrun, gloo)"]["docs_per_second"]
    summary = {
        "benchmark": "scaling",
        "engine_version": __version__,
        "command": command_line(click.get_current_context()),
        "data": str(data_dir),
        "documents": documents,
        "max_length": max_length,
        "machine": machine(),
        "runs": runs,
        "speedup_vs_one_thread": round(distributed / one_thread, 3),
        "per_rank_efficiency": round(distributed / one_thread / ranks, 3),
        "writer_commit": writer,
    }
    out.mkdir(parents=True, exist_ok=True)
    model_name = next(iter(runs.values()))["model"]
    path = (
        out
        / f"scaling-{file_slug(model_name)}-{data_dir.name}{documents}-{max_length}-{ranks}ranks.json"
    )
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(summary))
        return
    for name, run in runs.items():
        click.echo(
            f"{name:<40} {run['docs_per_second']:>8.2f} docs/s  ({run['encoded']} documents)"
        )
    click.echo(
        f"writer commits {writer['dim']}-dim vectors at {writer['docs_per_second']} docs/s "
        f"({writer['vector_megabytes_per_second']} MiB/s)"
    )
    click.echo(
        f"{ranks} ranks vs one 1-thread process: x{summary['speedup_vs_one_thread']} "
        f"(per-rank efficiency {summary['per_rank_efficiency']}). Wrote {path}"
    )
