"""`engine bench serve`: queries/s and latency of `engine serve` under concurrent clients.

The same BEIR queries go three ways: through `engine search` as a new process
each (cold: interpreter, model and index load every time), through in-process
``indexer.search.search`` (model and index loaded once, one query at a time),
and over HTTP to a server started as a subprocess (``python -m engine serve``),
with N concurrent clients (httpx, asyncio) for a fixed time each.
The server runs as its own process, so this module never imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from bench.common import command_line, file_slug, latency_ms, machine
from engine import __version__
from engine.errors import EngineError
from engine.options import (
    cache_dir_option,
    device_option,
    json_option,
    model_option,
    quiet_option,
    results_dir_option,
)
from engine.progress import progress_enabled

SERVER_START_SECONDS = 120


def latency_summary(seconds: list[float], wall: float, errors: int) -> dict[str, Any]:
    """Queries/s and latency percentiles (milliseconds) of one run."""
    return {
        "requests": len(seconds) + errors,
        "ok": len(seconds),
        "errors": errors,
        "seconds": round(wall, 2),
        "queries_per_second": round(len(seconds) / wall, 2) if wall else None,
        **latency_ms(seconds),
    }


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def search_options(instruction: str | None) -> list[str]:
    return ["--instruct", instruction] if instruction else ["--no-instruct"]


def search_body(query: str, instruction: str | None, k: int) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "k": k}
    return body | ({"instruct": instruction} if instruction else {"no_instruct": True})


def start_server(index_dir: Path, port: int, model: str | None, device: str | None):
    """``python -m engine serve`` on a free port; returns once /health answers."""
    import httpx

    command = [sys.executable, "-m", "engine", "serve", "--index", str(index_dir)]
    command += ["--port", str(port)]
    command += ["--model", model] if model else []
    command += ["--device", device] if device else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        if process.poll() is not None:
            raise EngineError(f"the server did not start: {process.stderr.read().strip()[-300:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise EngineError(f"the server did not answer /health in {SERVER_START_SECONDS} s")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def load_run(
    url: str,
    queries: list[str],
    instruction: str | None,
    k: int,
    clients: int,
    duration: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending its next query as soon as one is answered.

    With ``server_pid``, also the CPU time per request of the server and of this
    client process: both share the machine's cores, so that is where the time goes.
    """
    import httpx

    next_query = itertools.cycle(queries)
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for query in queries[: 2 * clients]:  # warm up connections and caches
            await client.post("/search", json=search_body(query, instruction, k))
        stop_at = time.perf_counter() + duration

        async def one_client() -> None:
            while time.perf_counter() < stop_at:
                body = search_body(next(next_query), instruction, k)
                started = time.perf_counter()
                try:
                    response = await client.post("/search", json=body)
                    ok = response.status_code == 200 and len(response.json()["results"][0]) > 0
                    if not ok:
                        errors.append(f"{response.status_code}: {response.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    continue
                if ok:
                    latencies.append(time.perf_counter() - started)

        before = (await client.get("/health")).json()
        server_cpu = process_cpu_seconds(server_pid) if server_pid else None
        client_cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - began
        client_cpu = time.process_time() - client_cpu
        if server_cpu is not None:
            server_cpu = process_cpu_seconds(server_pid) - server_cpu
        after = (await client.get("/health")).json()
    summary = latency_summary(latencies, wall, len(errors))
    passes = after.get("forward_passes", 0) - before.get("forward_passes", 0)
    summary["queries_per_forward_pass"] = round(summary["requests"] / passes, 2) if passes else None
    requests = max(summary["requests"], 1)
    summary["client_cpu_ms_per_request"] = round(1000 * client_cpu / requests, 2)
    summary["server_cpu_ms_per_request"] = (
        round(1000 * server_cpu / requests, 2) if server_cpu is not None else None
    )
    return {"clients": clients, **summary, "error_examples": sorted(set(errors))[:5]}


def in_process_run(encoder, index_dir: Path, queries: list[str], instruction, k, duration):
    """``indexer.search.search`` one query at a time, model and index loaded once."""
    from indexer.search import search_queries
    from indexer.store import Store

    store = Store.open(index_dir)
    try:
        for query in queries[:5]:
            search_queries(store, [query], k=k, instruction=instruction, encoder=encoder)
        latencies = []
        began = time.perf_counter()
        for query in itertools.cycle(queries):
            if time.perf_counter() - began > duration:
                break
            started = time.perf_counter()
            search_queries(store, [query], k=k, instruction=instruction, encoder=encoder)
            latencies.append(time.perf_counter() - started)
        wall = time.perf_counter() - began
    finally:
        store.close()
    return latency_summary(latencies, wall, 0)


def cold_cli_runs(
    index_dir: Path, queries: list[str], instruction, k: int, model, server: str | None = None
):
    """``engine search`` as a new process per query (optionally through ``--server``)."""
    latencies, errors = [], 0
    began = time.perf_counter()
    for query in queries:
        command = [sys.executable, "-m", "engine", "search", query, "-k", str(k), "--json"]
        command += search_options(instruction)
        command += ["--server", server] if server else ["--index", str(index_dir)]
        command += ["--model", model] if model and not server else []
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
    return latency_summary(latencies, time.perf_counter() - began, errors)


@click.command("serve")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A BEIR dataset folder, or the folder holding them (with --dataset).",
)
@click.option("--dataset", default=None, help="Dataset name under --data-dir, e.g. scifact.")
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Serve this index (default: the BEIR cache index of the dataset, model and length, "
    "built if missing).",
)
@model_option()
@device_option()
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=512,
    show_default=True,
    help="Document tokens of the cached index.",
)
@click.option(
    "--clients",
    default="1,16",
    show_default=True,
    help="Concurrent client counts to run, comma-separated.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=20.0,
    show_default=True,
    help="Seconds per client count (and for the in-process run).",
)
@click.option(
    "--cold-queries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Queries run through `engine search` as new processes.",
)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits.")
@cache_dir_option()
@results_dir_option("JSON record")
@quiet_option()
@json_option()
def serve_benchmark(
    data_dir: Path,
    dataset: str | None,
    index_dir: Path | None,
    model: str | None,
    device: str | None,
    max_length: int,
    clients: str,
    duration: float,
    cold_queries: int,
    k: int,
    cache_dir: Path | None,
    out: Path,
    quiet: bool,
    as_json: bool,
) -> None:
    """Load-test `engine serve` with concurrent clients on a BEIR corpus.

    Starts `python -m engine serve` on the index, runs each --clients count for
    --duration seconds (every client sends its next query when answered), and
    compares with the same queries through `engine search` as new processes and
    through in-process search(). Queries get the dataset's instruction when the
    model is instruction-tuned, as in `engine bench beir`.

    \b
    Examples:
      engine bench serve --data-dir ../shared/data/beir --dataset scifact --max-length 256
      engine bench serve --data-dir data/scifact --clients 1,4,16 --duration 30 --out bench/results
    """
    from bench.beir import (
        PROFILE_DEFAULT,
        default_cache_dir,
        index_dir_for,
        resolve_folders,
        resolve_instruction,
    )
    from bench.datasets import load_beir
    from engine.encoder import Encoder
    from indexer.folder import POINTER, utc_now
    from indexer.indexing import update_index

    counts = sorted({int(c) for c in clients.split(",") if c.strip()})
    if not counts or min(counts) < 1:
        raise EngineError("--clients: positive counts, e.g. 1,16")
    cache_dir = cache_dir or default_cache_dir()
    folders = resolve_folders(
        data_dir, [dataset] if dataset else [], cache_dir / "beir" / "datasets"
    )
    if len(folders) != 1:
        raise EngineError("name one dataset: --dataset scifact")
    data = load_beir(folders[0])
    queries = list(data.queries.values())
    progress = progress_enabled(not quiet and not as_json)

    def say(text: str) -> None:
        if progress:
            click.echo(text, err=True)

    encoder = Encoder.load(model, device=device)
    encoder.set_max_length(min(max_length, encoder.model_max_positions))
    instruction = resolve_instruction(encoder, data.name, PROFILE_DEFAULT)
    if index_dir is None:
        index_dir = index_dir_for(cache_dir, data.name, encoder)
        if not (index_dir / POINTER).is_file():
            say(f"indexing {data.name} into {index_dir}")
            update_index(index_dir, encoder, data.corpus, progress=progress)

    say(f"in-process search() for {duration:.0f} s")
    in_process = in_process_run(encoder, index_dir, queries, instruction, k, duration)
    say(f"engine search as a new process, {cold_queries} queries")
    cold = cold_cli_runs(index_dir, queries[:cold_queries], instruction, k, model)

    port = free_port()
    say(f"starting python -m engine serve on port {port}")
    server = start_server(index_dir, port, model, device)
    url = f"http://127.0.0.1:{port}"
    try:
        served = []
        for count in counts:
            say(f"{count} concurrent clients for {duration:.0f} s")
            served.append(
                asyncio.run(load_run(url, queries, instruction, k, count, duration, server.pid))
            )
        say(f"engine search --server as a new process, {cold_queries} queries")
        cold_server = cold_cli_runs(index_dir, queries[:cold_queries], instruction, k, model, url)
    finally:
        exit_code = stop_server(server)

    record = {
        "benchmark": "serve",
        "engine_version": __version__,
        "created": utc_now(),
        "command": command_line(click.get_current_context()),
        "model": encoder.name,
        "dataset": data.name,
        "documents": len(data.corpus),
        "queries": len(queries),
        "max_length": encoder.max_length,
        "instruction": instruction,
        "k": k,
        "index": str(index_dir),
        "duration_seconds": duration,
        "machine": machine(),
        "cli_cold": cold,
        "cli_cold_with_server": cold_server,
        "in_process": in_process,
        "server": served,
        "server_exit_code": exit_code,
    }
    out.mkdir(parents=True, exist_ok=True)
    name = (
        f"serve-{file_slug(encoder.name)}-{file_slug(data.name).lower()}-{encoder.max_length}.json"
    )
    (out / name).write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(record))
        return
    click.echo(
        f"{data.name}: {len(data.corpus)} documents, {encoder.name} at {encoder.max_length} tokens"
    )
    click.echo(f"{'way':<34}{'q/s':>9}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'errors':>8}")
    rows = [
        ("engine search (new process)", cold),
        ("engine search --server (new proc.)", cold_server),
        ("in-process search()", in_process),
        *((f"server, {run['clients']} client(s)", run) for run in served),
    ]
    for label, run in rows:
        cells = [run["queries_per_second"], run["p50_ms"], run["p95_ms"], run["p99_ms"]]
        shown = "".join(f"{c:>10.1f}" if c is not None else f"{'-':>10}" for c in cells)
        click.echo(f"{label:<34}{shown[1:]}{run['errors']:>8}")
    click.echo(f"Wrote {out / name}")
