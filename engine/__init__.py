"""engine: a retrieval search engine on LLM text embeddings."""

__version__ = "0.1.0"
