"""`engine serve`: the options; the server itself is :mod:`engine.app.server`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from engine.app.commands import (
    INDEX_MODEL,
    backend_option,
    collection_option,
    index_option,
    token_option,
)
from engine.options import api_key_option, device_option, model_option
from indexer.milvus import MilvusIndex


@click.command("serve")
@index_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="ENGINE_HOST",
    show_envvar=True,
    help="Address to listen on (0.0.0.0 exposes it to the network: set --api-key).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="ENGINE_PORT",
    show_envvar=True,
    help="TCP port.",
)
@model_option(INDEX_MODEL)
@device_option()
@api_key_option("Require `Authorization: Bearer KEY` on every route but /health.")
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long a forward pass waits for more requests to join it.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Requests that may wait for the encoder; more get 503 with Retry-After.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a request may take; past it the answer is 504 and its remaining work is dropped.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    help="Seconds SIGTERM waits for requests in flight (each gets its answer or a JSON 503) "
    "before exiting [default: --request-timeout + 5].",
)
@click.option(
    "--access-log",
    is_flag=True,
    help="Print one line per request on stdout: client, method, path, status, milliseconds.",
)
@backend_option
@collection_option
@token_option
def serve_command(
    index_dir: Path,
    host: str,
    port: int,
    model: str | None,
    device: str | None,
    api_key: str | None,
    batch_wait_ms: float,
    queue_size: int,
    request_timeout: float,
    shutdown_timeout: float | None,
    access_log: bool,
    backend: str | None,
    collection: str,
    token: str | None,
) -> None:
    """Serve search and embeddings over HTTP, with a search page at /.

    The model and the index are loaded once; concurrent requests are embedded
    together. When `engine index` publishes a new generation of the index, the
    next request answers from it. Stops cleanly on Ctrl-C or SIGTERM.

    \b
    API (OpenAPI at /docs):
      GET  /search?q=...&k=10      POST /search {"query": "...", "instruct": "...", "k": 10}
      (both take mode dense|lexical|hybrid, fusion rrf|weighted, alpha, and nprobe /
      ef_search for an IVF / HNSW index)
      POST /v1/embeddings          OpenAI-compatible (+ input_type query|document, instruct)
      GET  /health                 GET /info

    \b
    Examples:
      engine serve
      engine serve --index ./my-index --port 9000
      ENGINE_API_KEY=secret engine serve --host 0.0.0.0
      curl 'http://127.0.0.1:8000/search?q=how+do+plants+make+sugar&k=3'
      engine serve --backend http://milvus.internal:19530 --token root:Milvus
    """
    # Here, not at the top: `engine serve --help` loads no torch.
    from engine.app.batcher import Limits
    from engine.app.server import run_server

    if api_key is None and "ENGINE_API_KEY" in os.environ:
        api_key = os.environ["ENGINE_API_KEY"]  # set but empty: click would drop it silently
    milvus = None
    if backend:
        milvus = MilvusIndex.open(backend, collection, token)
    limits = Limits(
        queue_size=queue_size, batch_wait=batch_wait_ms / 1000, request_timeout=request_timeout
    )
    run_server(
        index_dir,
        host=host,
        port=port,
        model=model,
        device=device,
        api_key=api_key,
        limits=limits,
        access_log=access_log,
        backend=milvus,
        shutdown_timeout=shutdown_timeout,
    )
