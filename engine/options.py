"""Command-line options that several commands share, declared once.

``engine index/search``, ``engine bench ...`` and ``engine train ...`` take the
same model, device, batching, output and cache options; declaring them here
keeps their names, environment variables and help identical everywhere. Each
is a function so a command can word its help for its own case. No torch
import here: ``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from engine.precision import PRECISION_ENV, PRECISIONS
from engine.runtime import RUNTIME_ENV, RUNTIMES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DEFAULT_MODEL_NOTE = "the embedded all-MiniLM-L6-v2"


def model_option(default: str = DEFAULT_MODEL_NOTE) -> Decorator:
    return click.option(
        "--model",
        envvar="ENGINE_MODEL",
        show_envvar=True,
        help="Model: a local folder (Hugging Face or sentence-transformers), a PEFT LoRA "
        f"adapter folder, or a hub id you have cached (default: {default}).",
    )


def device_option(help: str = "torch device (default: cuda if available, else cpu).") -> Decorator:
    return click.option("--device", envvar="ENGINE_DEVICE", show_envvar=True, help=help)


def batch_tokens_option() -> Decorator:
    return click.option(
        "--batch-tokens",
        type=click.IntRange(min=1),
        help="Padded tokens per forward pass (default: 4096 on CPU, 131072 on CUDA).",
    )


def passage_options(help: str, default: int | None = None) -> Decorator:
    """``--passages TOKENS`` and ``--passage-overlap TOKENS`` (engine index, bench beir, long,
    passkey); indexer.passages.PassageSpec checks the values."""
    passages = click.option(
        "--passages",
        "passage_tokens",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        metavar="TOKENS",
        help=help,
    )
    overlap = click.option(
        "--passage-overlap",
        type=click.IntRange(min=0),
        metavar="TOKENS",
        help="Tokens each passage shares with the one before (default: an eighth of --passages).",
    )
    return lambda command: passages(overlap(command))


def api_key_option(help: str) -> Decorator:
    """``--api-key`` of `engine serve` and of its clients (`engine search --server`)."""
    return click.option("--api-key", envvar="ENGINE_API_KEY", show_envvar=True, help=help)


def precision_option() -> Decorator:
    """``--precision``: how encoding uses bf16 hardware (engine/precision.py)."""
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS, case_sensitive=False),
        envvar=PRECISION_ENV,
        show_envvar=True,
        help="Encoding precision. auto (default): bf16 on CUDA; on a CPU with native bf16 "
        "(AVX512-BF16/AMX) mixed: fp32 tensors, bf16 matrix products in oneDNN, fp32-level "
        "vectors, ~1.5x as fast; fp32 on other CPUs. bf16: autocast, 2-3x as fast on such "
        "a CPU, nDCG@10 may move by ~0.003. int8 (CPU, opt-in): int8 weights and "
        "activations; on OpenVINO where the CPU has AVX512-VNNI/AMX (~1.6x "
        "sentence-transformers, cosine to fp32 >= 0.998), else torch's (vectors move by "
        "up to ~5e-2); top-10 lists change for a quarter or more of queries.",
    )


def runtime_option() -> Decorator:
    """``--runtime``: what runs the forward pass when encoding (engine/runtime.py)."""
    return click.option(
        "--runtime",
        type=click.Choice(RUNTIMES, case_sensitive=False),
        envvar=RUNTIME_ENV,
        show_envvar=True,
        help="What runs the model when encoding. auto (default): openvino where precision "
        "auto is fp32 (a CPU without bf16), or int8 on a CPU with AVX512-VNNI/AMX, and the "
        "openvino extra is installed; else torch. openvino (CPU, fp32 or int8): an "
        "OpenVINO copy of the model; in fp32 vectors within 2e-7 of torch fp32, "
        "1.1-1.6x sentence-transformers' speed on CPUs without bf16; converted once and "
        "cached.",
    )


def quiet_option(help: str = "No progress bars.") -> Decorator:
    return click.option("-q", "--quiet", is_flag=True, help=help)


def json_option(help: str = "Print the results as JSON (machine-readable).") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def results_dir_option(what: str) -> Decorator:
    """``--out``: where a benchmark writes its records."""
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default="results",
        show_default=True,
        help=f"Folder for the {what}.",
    )


def cache_dir_option() -> Decorator:
    """The BEIR index cache that ``engine bench beir`` and ``engine train data from-beir`` share."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="ENGINE_CACHE_DIR",
        show_envvar=True,
        help="Cache root: BEIR indexes in <cache>/beir/<dataset>-<fingerprint>-<length>, "
        "downloads in <cache>/beir/datasets (default: ~/.cache/engine).",
    )


INDEX_TYPES_HELP = (
    "auto (exact below ~2e7 documents x dimensions, ivf-pq above), flat, flat-fp16, sq8, hnsw, "
    "ivf-flat, ivf-pq, or a faiss index_factory string such as 'IVF1024,SQ8'"
)


def index_type_option(help: str) -> Decorator:
    """``--index-type``: which FAISS index searches the vectors (validated by indexer.vector_index)."""
    return click.option(
        "--index-type",
        envvar="ENGINE_INDEX_TYPE",
        show_envvar=True,
        help=f"{help} Types: {INDEX_TYPES_HELP}.",
    )


def search_knob_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--nprobe`` and ``--ef-search``: recall against speed for IVF and HNSW indexes."""
    function = click.option(
        "--ef-search",
        type=click.IntRange(min=1),
        envvar="ENGINE_EF_SEARCH",
        show_envvar=True,
        help="HNSW: candidates kept while walking the graph; more is slower and more exact "
        "(default: the index's, 128).",
    )(function)
    return click.option(
        "--nprobe",
        type=click.IntRange(min=1),
        envvar="ENGINE_NPROBE",
        show_envvar=True,
        help="IVF: lists scanned per query; more is slower and more exact "
        "(default: the index's, nlist/32 and at least 64, or nlist if smaller).",
    )(function)


def search_mode_options(
    modes: Sequence[str], methods: Sequence[str], default_note: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--mode``, ``--fusion``, ``--alpha``: dense, lexical (BM25) or hybrid ranking.

    The choices and the default come from ``indexer.fusion`` (passed in: this layer is
    below the indexer).
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option(
            "--alpha",
            type=click.FloatRange(0.0, 1.0),
            help="Hybrid, weighted fusion: the dense side's weight, 0..1 (the lexical side "
            "gets 1 - alpha); implies --fusion weighted.",
        )(function)
        function = click.option(
            "--fusion",
            type=click.Choice(list(methods)),
            help="Hybrid: rrf (reciprocal rank fusion, k=60) or weighted (min-max normalised "
            "scores, see --alpha); over at least 100 candidates a side.",
        )(function)
        return click.option(
            "--mode",
            type=click.Choice(list(modes)),
            help="dense (embeddings), lexical (BM25 over title and text, loads no model) or "
            f"hybrid (both, fused) (default: {default_note}).",
        )(function)

    return decorate
