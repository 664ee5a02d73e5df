"""The JSON bodies of `engine serve`: what /search and /v1/embeddings take and answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A count in a JSON body: an integer, not "3", 3.0 or true (pydantic would coerce those).
Count = Annotated[int, Field(strict=True, ge=1)]
# Token ids of the served model's vocabulary (what OpenAI's API calls tokenized input).
TokenIds = list[Annotated[int, Field(strict=True, ge=0)]]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, description="One query (or use `queries`).")
    queries: list[str] | None = Field(None, description="Several queries, answered in order.")
    instruct: str | None = Field(
        None, description="Task instruction (default: the one stored with the index)."
    )
    no_instruct: bool = Field(
        False, strict=True, description="No instruction, not even the index's default."
    )
    k: Count = Field(10, description="Hits per query.")
    nprobe: Count | None = Field(
        None, description="IVF index: lists scanned per query (default: the index's)."
    )
    ef_search: Count | None = Field(
        None, description="HNSW index: candidates kept per query (default: the index's)."
    )
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None,
        description="dense (embeddings), lexical (BM25) or hybrid (both fused); "
        "default: the engine's default mode (dense on a Milvus backend).",
    )
    fusion: Literal["rrf", "weighted"] | None = Field(
        None, description="Hybrid: rrf (k=60) or weighted min-max normalised scores."
    )
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Weighted fusion: the dense side's weight (implies fusion weighted).",
    )
    where: str | None = Field(
        None,
        description="Metadata filter applied inside the search (`engine search --where`), e.g. "
        '`extension in (".md", ".txt") and size < 100000`.',
    )

    @model_validator(mode="after")
    def one_of_query_or_queries(self) -> SearchRequest:
        if self.query is not None and self.queries is not None:
            raise ValueError("give `query` or `queries`, not both")
        return self


class SearchResponse(BaseModel):
    model: str
    mode: str = Field(description="The mode that answered: dense, lexical or hybrid.")
    fusion: str | None = Field(None, description="How a hybrid search fused, e.g. `rrf (k=60)`.")
    generation: int | None = Field(description="The index generation that answered.")
    instruction: str | None
    results: list[list[dict[str, Any]]] = Field(
        description="One list per query; each hit has the fields of `engine search --json`."
    )


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``input_type``, ``instruct`` and ``titles``."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="Text, texts, or token ids of the served model's vocabulary (one list of "
        "ids, or one list per input), as OpenAI's API takes them."
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Count | None = Field(None, description="Only the model's own dimension.")
    user: str | None = None
    input_type: Literal["query", "document"] = Field(
        "document",
        description="engine extension: `query` formats each input with the model's query "
        "template (and `instruct`); `document` as a document (with `titles`).",
    )
    instruct: str | None = Field(None, description="engine extension: a query's instruction.")
    titles: list[str] | None = Field(
        None, description="engine extension: one title per document input."
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the server loaded it (Unix seconds).")
    owned_by: str = "engine"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
