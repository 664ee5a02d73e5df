"""The HTTP routes of `engine serve`, on one APIRouter.

The routes reach the :class:`Batcher` and the :class:`Limits` of the app they are
mounted in through FastAPI dependencies (``app.state``), so the router is built
once at import and holds no state of its own.
"""

from __future__ import annotations

import asyncio
import base64
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from engine.app.batcher import ApiError, Batcher, Embedded, Job, Limits, Searched
from engine.app.models import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ModelList,
    SearchRequest,
    SearchResponse,
    Usage,
)
from engine.instructions import INSTRUCTIONS, check_instruction
from engine.text import repair_text, unencodable
from indexer.filters import parse as parse_filter
from indexer.search import check_queries, resolve_fusion
from indexer.vector_index import SearchKnobs

STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI and ReDoc as the fastapi-offline package ships them: /docs needs no CDN.
DOCS_ASSETS = Path(str(resources.files("fastapi_offline") / "static"))


def served_batcher(request: Request) -> Batcher:
    """The app's batcher (set by :func:`engine.app.server.create_app`)."""
    return request.app.state.batcher


def served_limits(request: Request) -> Limits:
    """What one request may ask of the app."""
    return request.app.state.limits


BatcherDep = Annotated[Batcher, Depends(served_batcher)]
LimitsDep = Annotated[Limits, Depends(served_limits)]

router = APIRouter()


# How often a waiting request looks whether its client is still there.
POLL_S = 0.2


async def run(batcher: Batcher, job: Job, client: Request | None = None) -> Any:
    """Queue ``job`` and wait for its answer; a client that hangs up, or a deadline passed
    while the batcher is busy, abandons it (its remaining work units are dropped)."""
    future = asyncio.wrap_future(batcher.submit(job))
    while True:
        done, _ = await asyncio.wait({future}, timeout=POLL_S)
        if done:
            return future.result()
        if client is not None and await client.is_disconnected():
            job.abandoned = True
            raise ApiError(503, "the client went away")
        if time.monotonic() >= batcher.deadline_of(job) + 1.0:  # the batcher is mid-unit
            job.abandoned = True
            raise batcher.expired(job)


async def answer_search(
    client: Request,
    batcher: Batcher,
    limits: Limits,
    queries: list[str],
    instruct: str | None,
    no_instruct: bool,
    k: int,
    knobs: SearchKnobs,
    mode: str | None = None,
    fusion: str | None = None,
    alpha: float | None = None,
    where: str | None = None,
) -> SearchResponse:
    # A lone surrogate ("\\ud800" in the JSON) cannot be encoded: search text is repaired
    # (U+FFFD), as `engine search` does; embedding inputs are refused instead (embeddings).
    queries = [repair_text(query) for query in queries]
    instruct = repair_text(instruct) if instruct is not None else None
    if not queries:
        raise ApiError(422, "give `query` or `queries`")
    if len(queries) > limits.max_inputs:
        raise ApiError(413, f"at most {limits.max_inputs} queries per request")
    if k > limits.max_k:
        raise ApiError(422, f"k must be at most {limits.max_k}")
    if knobs.nprobe is not None and knobs.nprobe > limits.max_nprobe:
        raise ApiError(422, f"nprobe must be at most {limits.max_nprobe}")
    if knobs.ef_search is not None and knobs.ef_search > limits.max_ef_search:
        raise ApiError(422, f"ef_search must be at most {limits.max_ef_search}")
    if any(len(q) > limits.max_query_chars for q in queries):
        raise ApiError(413, f"a query is over {limits.max_query_chars} characters")
    if instruct is not None and len(instruct) > limits.max_query_chars:
        raise ApiError(413, f"the instruction is over {limits.max_query_chars} characters")
    check_queries(queries, k)
    check_instruction(instruct, no_instruct)
    fused = resolve_fusion(fusion, alpha)
    if where is not None and len(where) > limits.max_query_chars:
        raise ApiError(413, f"the filter is over {limits.max_query_chars} characters")
    condition = parse_filter(where) if where is not None else None
    searched: Searched = await run(
        batcher,
        Job(
            texts=queries,
            instruction=instruct,
            no_instruct=no_instruct,
            k=k,
            knobs=knobs,
            mode=mode,
            fusion=fused,
            where=condition,
        ),
        client,
    )
    return SearchResponse(
        model=batcher.encoder.name,
        mode=searched.mode,
        fusion=fused.describe() if searched.mode == "hybrid" else None,
        generation=searched.generation,
        instruction=searched.instruction,
        results=[[hit.to_dict() for hit in hits] for hits in searched.hits],
    )


@router.post("/search", response_model=SearchResponse, tags=["search"])
async def search_post(
    request: SearchRequest, batcher: BatcherDep, limits: LimitsDep, client: Request
) -> SearchResponse:
    """Top-k hits per query: the hits `engine search --json` prints."""
    queries = ([request.query] if request.query is not None else []) + (request.queries or [])
    knobs = SearchKnobs(nprobe=request.nprobe, ef_search=request.ef_search)
    return await answer_search(
        client,
        batcher,
        limits,
        queries,
        request.instruct,
        request.no_instruct,
        request.k,
        knobs,
        request.mode,
        request.fusion,
        request.alpha,
        request.where,
    )


@router.get("/search", response_model=SearchResponse, tags=["search"])
async def search_get(
    batcher: BatcherDep,
    limits: LimitsDep,
    client: Request,
    q: str = Query(description="The query."),
    instruct: str | None = Query(None, description="Task instruction."),
    no_instruct: bool = Query(False, description="No instruction at all."),
    k: int = Query(10, ge=1, description="Hits."),
    nprobe: int | None = Query(None, ge=1, description="IVF: lists scanned per query."),
    ef_search: int | None = Query(None, ge=1, description="HNSW: candidates per query."),
    mode: Literal["dense", "lexical", "hybrid"] | None = Query(
        None, description="dense, lexical (BM25) or hybrid (default: the engine's)."
    ),
    fusion: Literal["rrf", "weighted"] | None = Query(None, description="Hybrid: how to fuse."),
    alpha: float | None = Query(
        None, ge=0.0, le=1.0, description="Weighted fusion: the dense side's weight."
    ),
    where: str | None = Query(
        None, description='Metadata filter, e.g. `extension = ".md" and size > 1000`.'
    ),
) -> SearchResponse:
    """The same search for browsers and curl: `/search?q=...&k=5&mode=hybrid`."""
    knobs = SearchKnobs(nprobe=nprobe, ef_search=ef_search)
    return await answer_search(
        client, batcher, limits, [q], instruct, no_instruct, k, knobs, mode, fusion, alpha, where
    )


@router.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["embeddings"])
async def embeddings(
    request: EmbeddingRequest, batcher: BatcherDep, limits: LimitsDep, client: Request
) -> EmbeddingResponse:
    """OpenAI-compatible embeddings from the served model (float or base64 float32)."""
    encoder = batcher.encoder
    texts, token_ids = _split_input(request.input)
    inputs = token_ids if token_ids is not None else texts
    if not inputs:
        raise ApiError(400, "input is empty", param="input")
    if len(inputs) > limits.max_inputs:
        raise ApiError(413, f"at most {limits.max_inputs} inputs per request")
    empty = next((i for i, one in enumerate(inputs) if not _has_content(one)), None)
    if empty is not None:
        raise ApiError(400, f"input {empty} is empty", param="input")
    if any(len(one) > limits.max_input_chars for one in inputs):
        raise ApiError(413, f"an input is over {limits.max_input_chars} characters or tokens")
    if token_ids is not None and (request.input_type != "document" or request.titles):
        raise ApiError(422, "token-id input embeds documents without titles: send queries as text")
    refuse_unencodable("input", texts)
    refuse_unencodable("titles", request.titles or [])
    if request.instruct is not None:
        refuse_unencodable("instruct", [request.instruct])
    if request.model and not _names_model(request.model, encoder.name):
        raise ApiError(404, f"model {request.model!r} is not served here; this is {encoder.name!r}")
    if request.dimensions is not None and request.dimensions != encoder.dim:
        raise ApiError(422, f"dimensions: only {encoder.dim} is available")
    if request.input_type == "document" and request.instruct is not None:
        raise ApiError(422, "instruct applies to input_type query; documents get none")
    if request.titles is not None and (
        request.input_type != "document" or len(request.titles) != len(inputs)
    ):
        raise ApiError(422, "titles: one per input, and only for input_type document")
    embedded: Embedded = await run(
        batcher,
        Job(
            side=request.input_type,
            texts=texts,
            instruction=request.instruct,
            titles=request.titles,
            token_ids=token_ids,
        ),
        client,
    )
    data = [
        EmbeddingData(index=i, embedding=_encode_vector(vector, request.encoding_format))
        for i, vector in enumerate(embedded.vectors)
    ]
    usage = Usage(prompt_tokens=embedded.tokens, total_tokens=embedded.tokens)
    return EmbeddingResponse(data=data, model=encoder.name, usage=usage)


@router.get("/v1/models", response_model=ModelList, tags=["embeddings"])
async def list_models(request: Request, batcher: BatcherDep) -> ModelList:
    """OpenAI's model list: the one model this server embeds with."""
    return ModelList(data=[_served_model(request, batcher)])


@router.get("/v1/models/{model:path}", response_model=Model, tags=["embeddings"])
async def retrieve_model(model: str, request: Request, batcher: BatcherDep) -> Model:
    """The served model, under its name (or its last path part)."""
    if not _names_model(model, batcher.encoder.name):
        raise ApiError(404, f"model {model!r} is not served here; this is {batcher.encoder.name!r}")
    return _served_model(request, batcher)


@router.get("/health", tags=["server"])
async def health(batcher: BatcherDep) -> dict[str, Any]:
    """Liveness, the index generation the server last answered from, and what is degraded."""
    problems = getattr(batcher.index, "problems", [])
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "generation": batcher.index.generation,
        "model": batcher.encoder.name,
        "waiting": batcher.waiting,
        "batches": batcher.batches,
        "forward_passes": batcher.forward_passes,
    }


@router.get("/info", tags=["server"])
async def info(batcher: BatcherDep) -> dict[str, Any]:
    """What `engine info --json` prints for the served index."""
    return await run(batcher, Job(call=lambda index: index.info()))


@router.get("/instructions", tags=["search"])
async def instructions() -> dict[str, Any]:
    """Task instruction presets: the paper's BEIR instructions, by dataset."""
    return {"presets": [{"name": name, "instruction": text} for name, text in INSTRUCTIONS.items()]}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on the app's own copy of its assets (works offline)."""
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title="engine API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/favicon.ico",
        oauth2_redirect_url=root + "/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc on the app's own copy of its script (no CDN, no web fonts)."""
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title="engine API",
        redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/favicon.ico",
        with_google_fonts=False,
    )


def _split_input(given: str | list) -> tuple[list[str], list[list[int]] | None]:
    """OpenAI's four input shapes as texts, or as token-id lists (then texts is empty)."""
    if isinstance(given, str):
        return [given], None
    if given and isinstance(given[0], int):
        return [], [given]
    if given and isinstance(given[0], list):
        return [], given
    return given, None


def _has_content(one: str | list[int]) -> bool:
    return bool(one.strip()) if isinstance(one, str) else bool(one)


def _served_model(request: Request, batcher: Batcher) -> Model:
    return Model(id=batcher.encoder.name, created=request.app.state.created)


def refuse_unencodable(field: str, texts: list[str]) -> None:
    """Embeddings of silently repaired text would be vectors of another text: a 400 instead."""
    for number, text in enumerate(texts):
        position = unencodable(text)
        if position is not None:
            where = f"{field}[{number}]" if len(texts) > 1 else field
            raise ApiError(
                400,
                f"{where} is not valid Unicode (a lone surrogate at character {position}); "
                "send UTF-8 text",
            )


def _names_model(asked: str, served: str) -> bool:
    asked, served = asked.strip().rstrip("/").lower(), served.rstrip("/").lower()
    return asked in (served, served.rsplit("/", 1)[-1]) or asked.rsplit("/", 1)[-1] == served


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(float).tolist()
