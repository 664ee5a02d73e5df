"""`engine bench ...`: BEIR retrieval, personalized passkey retrieval, encoding speed."""

from __future__ import annotations

import click

from bench.beir import beir
from bench.passkey import passkey
from bench.serve import serve
from bench.speed import speed


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench() -> None:
    """Run benchmarks: BEIR retrieval, passkey retrieval, encoding speed, the server.

    \b
    Examples:
      engine bench beir --data-dir ../shared/data/beir --datasets scifact,nfcorpus
      engine bench passkey --lengths 256,512,1024,2048
      engine bench speed --data-dir ../shared/data/beir/scifact
      engine bench serve --data-dir ../shared/data/beir --dataset scifact --max-length 256
    """


bench.add_command(beir)
bench.add_command(passkey)
bench.add_command(speed)
bench.add_command(serve)
