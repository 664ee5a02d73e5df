"""A click group that imports a subcommand's module only when that subcommand is used.

Click's lazy-subcommand pattern: the group knows each subcommand by name, import
path and one-line summary, so ``engine --help`` lists them all without importing
any (no torch: about 0.2 s), and a command's module, with its imports at the top,
is imported only when that command runs or prints its own ``--help``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click
from click.utils import make_default_short_help

from engine.errors import ErrorReportingGroup


@dataclass(frozen=True)
class Lazy:
    """Where a subcommand lives (``package.module:attribute``) and what ``--help`` says of it.

    ``summary`` is the first sentence of the command's docstring (a test keeps them equal).
    """

    target: str
    summary: str

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(ErrorReportingGroup):
    """An :class:`ErrorReportingGroup` whose ``lazy`` subcommands load on first use."""

    def __init__(self, *args, lazy: dict[str, Lazy] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            self.add_command(self.lazy[name].load(), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their summaries, importing none that is not loaded yet."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None:
                rows.append((name, make_default_short_help(self.lazy[name].summary, limit)))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
