"""One exception type for every user-facing failure, and the click group that reports it.

The CLI prints an ``EngineError`` as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

import click


class EngineError(Exception):
    """A failure caused by input, configuration or environment, not by a bug."""


class ErrorReportingGroup(click.Group):
    """A click group that prints an :class:`EngineError` as one line (no traceback) and exits 1.

    Used by `engine` and by `python -m train` (which runs without the `engine` group).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EngineError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
