"""The ``engine`` command line: the root group and where each subcommand lives.

Each subcommand's module is imported only when it is used (:class:`LazyGroup`), so
``engine --help`` imports none of them.
"""

from __future__ import annotations

import os
import sys

import click

from engine import __version__
from engine.lazy_group import Lazy, LazyGroup


def quiet_environment() -> None:
    """Library noise off before anything imports transformers (cheap: no imports here)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# name -> (module:command, the first sentence of its docstring, which `engine --help` shows)
SUBCOMMANDS = {
    "bench": Lazy(
        "bench.cli:bench",
        "Run benchmarks: BEIR retrieval, passkey retrieval, encoding speed, the server, "
        "distributed indexing, the Milvus backend, reliability under kill -9 and damaged files, "
        "FAISS index types (ann), indexing memory, BM25 libraries (lexical), long documents "
        "(long).",
    ),
    "check": Lazy(
        "engine.app.commands.check:check_command",
        "Verify an index: pointer, SQLite integrity, documents and vectors, snapshot, model.",
    ),
    "export": Lazy(
        "engine.app.commands.export:export_group",
        "Copy an index's vectors and documents into another system.",
    ),
    "index": Lazy(
        "engine.app.commands.index:index_command",
        "Index the documents under CORPUS (a folder or a file).",
    ),
    "info": Lazy(
        "engine.app.commands.info:info_command",
        "What is in an index: model, dimension, documents, size, dates.",
    ),
    "search": Lazy("engine.app.commands.search:search_command", "Search the index for QUERY."),
    "serve": Lazy(
        "engine.app.commands.serve:serve_command",
        "Serve search and embeddings over HTTP, with a search page at /.",
    ),
    "train": Lazy(
        "train.cli:train",
        "Fine-tune an embedding model with contrastive LoRA training (the E5-mistral recipe).",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="engine")
def cli() -> None:
    """Search your documents with LLM text embeddings.

    \b
    Examples:
      engine index ./corpus
      engine search "how do plants make sugar" --instruct "Given a question, retrieve passages that answer it"
      engine info
      engine serve --port 8000
      engine bench beir --data-dir ../shared/data/beir --datasets scifact
      engine train --base all-MiniLM-L6-v2 --data train.jsonl --out ./my-model
    """
    quiet_environment()


def main() -> None:  # pragma: no cover - console entry
    cli(prog_name="engine")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
