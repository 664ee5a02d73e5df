"""`engine bench ...`: every benchmark, each module imported only when its benchmark runs."""

from __future__ import annotations

import click

from engine.lazy_group import Lazy, LazyGroup

# name -> (module:command, the first sentence of its docstring, which `engine bench --help` shows)
BENCHMARKS = {
    "ann": Lazy(
        "bench.ann:ann",
        "Compare FAISS index types: recall@10 vs exact, queries/s, build time, memory.",
    ),
    "beir": Lazy(
        "bench.beir:beir", "Evaluate retrieval on BEIR datasets with the paper's protocol."
    ),
    "filter": Lazy(
        "bench.filter:filter_benchmark",
        "Latency of filtered dense search: a metadata filter matching 1% of N random vectors.",
    ),
    "lexical": Lazy(
        "bench.lexical:lexical",
        "Compare BM25 libraries for the lexical index: nDCG@10 on SciFact and NFCorpus, build "
        "time, disk and query latency at 5k (SciFact) and N synthetic documents.",
    ),
    "long": Lazy(
        "bench.long:long",
        "Long-document retrieval from a BEIR corpus: first tokens against passages.",
    ),
    "memory": Lazy(
        "bench.memory:memory", "Peak RSS of indexing N synthetic documents (vs the model alone)."
    ),
    "milvus": Lazy(
        "bench.milvus:milvus",
        "Export cost, search latency and recall of Milvus Lite against the local FAISS index.",
    ),
    "passkey": Lazy(
        "bench.passkey:passkey",
        "Personalized passkey retrieval: find a person's passkey in long filler documents.",
    ),
    "reliability": Lazy(
        "bench.reliability:reliability",
        "Kill -9 indexing runs at random moments, damage every file of an index, hostile cases.",
    ),
    "scaling": Lazy(
        "bench.scaling:scaling",
        "Indexing throughput of one process against N torchrun ranks on this machine.",
    ),
    "serve": Lazy(
        "bench.serve:serve_benchmark",
        "Load-test `engine serve` with concurrent clients on a BEIR corpus.",
    ),
    "speed": Lazy(
        "bench.speed:speed",
        "Encoding throughput of the engine next to sentence-transformers with the same model.",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=BENCHMARKS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def bench() -> None:
    """Run benchmarks: BEIR retrieval, passkey retrieval, encoding speed, the server, distributed
    indexing, the Milvus backend, reliability under kill -9 and damaged files, FAISS index
    types (ann), indexing memory, BM25 libraries (lexical), long documents (long).

    \b
    Examples:
      engine bench beir --data-dir ../shared/data/beir --datasets scifact,nfcorpus
      engine bench passkey --lengths 256,512,1024,2048
      engine bench speed --data-dir ../shared/data/beir/scifact
      engine bench serve --data-dir ../shared/data/beir --dataset scifact --max-length 256
      engine bench scaling --data-dir ../shared/data/beir/scifact --documents 600 --ranks 2
      engine bench milvus --index ~/.cache/engine/beir/scifact-99277ff56c1d-256
      engine bench reliability --kill-rounds 30 --out bench/results
      engine bench ann --synthetic 1000000 --types hnsw --store
      engine bench lexical --data-dir ../shared/data/beir --out bench/results
      engine bench long --data-dir ../shared/data/beir/scifact --out bench/results
    """
