"""Talking to a running `engine serve` (used by `engine search --server`)."""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError

TIMEOUT_SECONDS = 60.0


def search_server(
    url: str,
    query: str,
    instruction: str | None,
    no_instruct: bool,
    k: int,
    api_key: str | None = None,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    mode: str | None = None,
    fusion: str | None = None,
    alpha: float | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """``POST /search`` for one query; the server's answer, or its error as an EngineError.

    ``nprobe``/``ef_search``, ``mode``/``fusion``/``alpha`` (None: the server's defaults)
    and ``where`` (a filter) go to the server's search.
    """
    import httpx

    body: dict[str, Any] = {"query": query, "k": k, "no_instruct": no_instruct}
    if instruction is not None:
        body["instruct"] = instruction
    if nprobe is not None:
        body["nprobe"] = nprobe
    if ef_search is not None:
        body["ef_search"] = ef_search
    for name, value in (("mode", mode), ("fusion", fusion), ("alpha", alpha), ("where", where)):
        if value is not None:
            body[name] = value
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = url.rstrip("/") + "/search"
    try:
        response = httpx.post(endpoint, json=body, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise EngineError(f"cannot reach the server at {url}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:200]
        raise EngineError(f"server {url} answered {response.status_code}: {message}")
    if not isinstance(answer, dict) or "results" not in answer:
        raise EngineError(f"{url} did not answer like `engine serve`")
    return answer
