"""`engine bench ...`: BEIR retrieval, personalized passkey retrieval, encoding speed."""

from __future__ import annotations

import click

from bench.ann import ann
from bench.beir import beir
from bench.lexical import lexical
from bench.memory import memory
from bench.milvus import milvus
from bench.passkey import passkey
from bench.reliability import reliability
from bench.scaling import scaling
from bench.serve import serve
from bench.speed import speed


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench() -> None:
    """Run benchmarks: BEIR retrieval, passkey retrieval, encoding speed, the server, distributed
    indexing, the Milvus backend, reliability under kill -9 and damaged files, FAISS index
    types (ann), indexing memory, BM25 libraries (lexical).

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
    """


bench.add_command(ann)
bench.add_command(beir)
bench.add_command(lexical)
bench.add_command(memory)
bench.add_command(passkey)
bench.add_command(reliability)
bench.add_command(speed)
bench.add_command(serve)
bench.add_command(scaling)
bench.add_command(milvus)
