"""`engine check [--repair]`: verify an index and repair what is damaged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from engine.api import Index
from engine.app.commands import index_option
from engine.options import json_option


@click.command("check")
@index_option
@click.option(
    "--repair", is_flag=True, help="Rebuild what is damaged from what is sound, and say what."
)
@json_option()
def check_command(index_dir: Path, repair: bool, as_json: bool) -> None:
    """Verify an index: pointer, SQLite integrity, documents and vectors, snapshot, model.

    Checks that CURRENT names an existing database, SQLite's quick_check, the
    recorded model fingerprint, dimension and max length, that documents and
    vectors match one to one, and the FAISS snapshot against the checksum
    recorded when it was written. Exits 1 when a problem remains.

    --repair points a lost CURRENT back at the last published database, salvages
    a damaged database into a fresh one (documents whose vector is lost are left
    for the next `engine index` to re-encode) and rebuilds the snapshot from SQLite.

    \b
    Examples:
      engine check
      engine check --index ./my-index --repair
      engine check --json
    """

    report = Index(index_dir).check(repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"Index {index_dir} ({report.database or 'no database'}):")
        for finding in report.findings:
            click.echo(
                f"  {'ok' if finding.ok else 'FAILED':<7} {finding.check:<10} {finding.detail}"
            )
        for action in report.repairs:
            click.echo(f"  repaired: {action}")
        for finding in report.after or []:
            if not finding.ok:
                click.echo(f"  still failing: {finding.check}: {finding.detail}")
        if report.ok:
            click.echo("Index is sound." if not report.repairs else "Index repaired and sound.")
        else:
            hint = "" if repair else f" (`engine check --repair --index {index_dir}`)"
            click.echo(f"Index has problems{hint}.")
    if not report.ok:
        sys.exit(1)
