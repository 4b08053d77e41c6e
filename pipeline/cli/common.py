"""Shared CLI plumbing: global state, output (table or --json), errors, progress."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from typer.core import TyperGroup
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.catalog import CatalogDamaged, damaged_message, is_damage
from pipeline.workspace import Workspace

log = logging.getLogger("textloop")


@dataclass
class AppState:
    workspace: Path
    json: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    _ws: Workspace | None = None

    def ws(self) -> Workspace:
        """The workspace, created/migrated on first use (every command implies `init`)."""
        if self._ws is None:
            try:
                self._ws = Workspace.open(self.workspace)
            except OSError as exc:
                fail(f"{self.workspace}: cannot create workspace ({exc.strerror or exc})")
        return self._ws

    @property
    def console(self) -> Console:
        return Console(stderr=True, quiet=self.verbosity < 0)


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppState), "global options not parsed"
    return obj


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class TextloopGroup(TyperGroup):
    """The command group: renders errors any command can meet as one line and exit 1 instead
    of a traceback. Today: a damaged catalog.sqlite (found when opened, or in a later query)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CatalogDamaged as exc:
            fail(str(exc))
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            obj = ctx.obj
            path = Path(obj.workspace) / "catalog.sqlite" if isinstance(obj, AppState) else Path("catalog.sqlite")
            fail(damaged_message(path, exc))


def positive(value: float) -> float:
    """Option callback: a number that must be > 0 (typer's `min` is inclusive)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def emit(st: AppState, data: Any, render: Callable[[Console], None] | None = None) -> None:
    """--json: the data as JSON on stdout; otherwise a human rendering on stdout."""
    if st.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    out = Console(quiet=st.verbosity < 0)
    if render is not None:
        render(out)
    else:
        out.print_json(json.dumps(data, default=str))


@contextmanager
def progress(st: AppState, description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, silent with --json/-q; yields update(done, total)."""
    if st.json or st.verbosity < 0 or not sys.stderr.isatty() and st.verbosity < 1:
        yield lambda done, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
