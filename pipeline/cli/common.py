"""Shared CLI plumbing: global state, output (table or --json), errors, progress."""

from __future__ import annotations

import difflib
import errno
import json
import logging
import math
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.catalog import CatalogDamaged, CatalogUnwritable, damaged_message, is_damage
from pipeline.workspace import Workspace

log = logging.getLogger("textloop")


# workspaces this process created (the first folder it made for each), with their files then:
# a command that fails leaves none of them behind unused (a mistyped `-w` with `train --resume`,
# `serve --model foo`, a bad bundle to `models register` each left an empty workspace there)
_NEW_WORKSPACES: list[tuple[Path, Path, frozenset[str]]] = []   # (first folder made, workspace, files)
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _tree(root: Path) -> frozenset[str]:
    """The files under root, but the catalog's SQLite sidecars and job locks (`.harvest.lock`):
    folders a failed job made (labelstudio/server/) and its lock are not a record."""
    return frozenset(str(p.relative_to(root)) for p in root.rglob("*")
                     if not p.is_dir() and not p.name.endswith(_SQLITE_SIDECARS) and not p.name.endswith(".lock"))


def discard_unused_workspaces() -> None:
    """After a failed command: remove each workspace it created that still holds only what
    creating it made (the same files, an empty catalog). Anything else in it is kept."""
    import shutil

    while _NEW_WORKSPACES:
        top, root, made = _NEW_WORKSPACES.pop()
        try:
            if _tree(top) != made:
                continue
            with Workspace(root).catalog() as cat:
                if cat.holds_records():   # rejects of a harvest that failed are a record too
                    continue
            shutil.rmtree(top)
        except (OSError, sqlite3.Error):
            continue   # a workspace that cannot be checked is left as it is


@dataclass
class AppState:
    workspace: Path
    json: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    _ws: Workspace | None = None

    def ws(self, read_only_ok: bool = False) -> Workspace:
        """The workspace, created/migrated on first use (every command implies `init`). With
        `read_only_ok` (commands that only read it), an existing workspace that cannot be
        written (a read-only share) is opened read-only instead of refused."""
        if self._ws is None:
            root = Path(os.path.abspath(self.workspace))
            top = next((p for p in [root, *root.parents] if p.parent.exists()), root) \
                if not root.exists() else None    # the first folder creating it makes (-w new/ws: new)
            try:
                self._ws = Workspace.open(self.workspace)
                if top is not None:
                    _NEW_WORKSPACES.append((top, self._ws.root, _tree(top)))
            except (CatalogUnwritable, OSError) as exc:
                if not (read_only_ok and _unwritable(exc) and self._catalog_path().is_file()):
                    if isinstance(exc, CatalogUnwritable):
                        raise
                    self._cannot_create(exc)
                ws = Workspace(self._catalog_path().parent, read_only=True)
                with ws.catalog():
                    pass     # a catalog that cannot even be read is refused here, in one line
                self._ws = ws
        return self._ws

    def _catalog_path(self) -> Path:
        return Workspace(Path(self.workspace).resolve()).catalog_path

    def _cannot_create(self, exc: OSError) -> NoReturn:
        # name the path that is in the way: "-w afile" and a file at <ws>/reports both said
        # "cannot create workspace (File exists)" about the workspace
        where = exc.filename or self.workspace
        why = ("a file is in the way, not a folder" if isinstance(exc, (FileExistsError, NotADirectoryError))
               else exc.strerror or str(exc))
        root = Path(self.workspace).resolve()
        what = "workspace" if Path(where).resolve() == root else f"the workspace's {Path(where).name}/ folder"
        fail(f"{where}: cannot create {what} ({why})")

    def existing_ws(self, read_only_ok: bool = False) -> Workspace | None:
        """The workspace if there is one at the path (opened and migrated), else None: for
        commands that only read it (which model is promoted) and must not create one."""
        if self._ws is None and not self._catalog_path().exists():
            return None
        return self.ws(read_only_ok)

    def read_ws(self, read_only_ok: bool = False) -> Workspace:
        """The existing workspace, for commands that only look at one (status, report): a
        mistyped `-w` used to create an empty workspace there and report on it, exit 0."""
        ws = self.existing_ws(read_only_ok)
        if ws is None:
            fail(f"{self.workspace}: no workspace here (`textloop init` makes one; -w chooses another)", 2)
        return ws

    @property
    def console(self) -> Console:
        """Messages on stderr; redirected to a log they get the piped width, not rich's 80 columns."""
        piped = not sys.stderr.isatty() and not os.environ.get("COLUMNS")
        return DataConsole(stderr=True, quiet=self.verbosity < 0, width=PIPED_WIDTH if piped else None)


MAX_QUIET_PROBLEMS = 50   # -q: problem lines printed before "... and N more"


class DataTable(Table):
    """A table of data: cells and title are shown as they are, never read as rich markup (a file
    named `[x0, y0].png` was shown as `.png`: rich took the brackets for a style)."""

    def add_row(self, *cells: Any, **kw: Any) -> None:
        super().add_row(*(plain(c) if isinstance(c, str) else c for c in cells), **kw)


_OUR_TAGS = re.compile(r"(?<!\\)\[(?!(?:/|red|yellow|green|bold|dim|bold red|bold yellow|/red|/yellow|/bold)\])")


class DataConsole(Console):
    """A console whose messages may carry data (paths, file names, model versions): only the few
    styles textloop writes (`[red]`, `[yellow]`, `[bold]`, `[/]`, ...) are markup; any other
    bracket is shown as it is (`[x0, y0].png` was printed as `.png`)."""

    def print(self, *objects: Any, **kw: Any) -> None:  # noqa: A003 - rich's name
        super().print(*(_OUR_TAGS.sub(r"\\[", o) if isinstance(o, str) else o for o in objects), **kw)


def plain(text: object) -> str:
    """`text` as it is in rich output: file names and messages with brackets are not markup."""
    from rich.markup import escape

    from pipeline.io import visible

    return escape(visible(text))


def titled(title: str, **kw: Any) -> Table:
    """A table at least as wide as its title, so a long title (paths) is not broken over lines
    above a narrow table."""
    return DataTable(title=plain(title), min_width=len(title), **kw)


def option_message(ctx: typer.Context, exc: BaseException, renames: dict[str, str] | None = None) -> str:
    """A config's "batch_size must be >= 1" as the user typed it: "--batch-size must be >= 1"
    (when the first word names an option of this command; else the message as it is)."""
    text = str(exc)
    field, _, rest = text.partition(" ")
    opt = "--" + (renames or {}).get(field, field.replace("_", "-"))
    known = {o for p in ctx.command.params for o in getattr(p, "opts", ())}
    return f"{opt} {rest}" if rest and opt in known else text


def state(ctx: typer.Context) -> AppState:
    """The global options, after checking the command's own: every command starts here."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppState), "global options not parsed"
    _refuse_non_finite(ctx)
    return obj


def _refuse_non_finite(ctx: click.Context) -> None:
    """NaN passes click's min/max checks (every comparison with it is false): `push --min-score
    nan` sent tasks without boxes. No float option of textloop means anything by nan or inf."""
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(value, float) and not math.isfinite(value):
            name = max(param.opts, key=len) if param.opts else param.name
            fail(f"{name} must be a finite number, got {value}", 2)


def _unwritable(exc: BaseException) -> bool:
    """No write access (a read-only mount or folder), as opposed to a file in the way."""
    if isinstance(exc, CatalogUnwritable):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


# exit codes a command has already explained on stderr (`fail`): cli.app.main says nothing more
REPORTED: list[int] = []


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    # escaped: a message naming `textloop[train]` or a path with [brackets] is not markup
    Console(stderr=True).print(f"[bold red]error:[/] {plain(message)}", highlight=False, soft_wrap=True)
    REPORTED.append(code)
    raise typer.Exit(code)


def option_given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option `name` (its parameter name) on the command line or in the
    environment, rather than leaving its default. By name: typer vendors its own click, whose
    ParameterSource enum is not click's."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def refuse_missing(paths: Sequence[str | Path], what: str = "file or folder") -> None:
    """Exit 2 with one line when a path typed on the command line does not exist (URLs pass): a
    typo, not a bad entry of a batch, so nothing is recorded and no workspace is made."""
    missing = [p for p in paths if "://" not in str(p) and not os.path.lexists(os.path.expanduser(str(p)))]
    if missing:
        fail(f"{missing[0]}: no such {what}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), 2)


def _option_table(params: Sequence[Any]) -> dict[str, bool]:
    """Every option string of `params` -> whether it takes a value (flags and counts do not).
    Duck-typed: typer >= 0.20 vendors its own copy of Click, so isinstance(click.Option) fails."""
    table: dict[str, bool] = {}
    for p in params:
        if getattr(p, "param_type_name", "") == "option":
            takes = not (getattr(p, "is_flag", False) or getattr(p, "count", False))
            for opt in (*p.opts, *p.secondary_opts):
                table[opt] = takes
    return table


def _match(token: str, table: dict[str, bool]) -> tuple[bool, bool] | None:
    """(found, value follows in the next token) when `token` is an option of `table`, incl.
    `--name=value`, `-xVALUE` and bundled short flags (`-vv`); None when it is not one."""
    if token in table:
        return True, table[token]
    if token.startswith("--") and "=" in token:
        return (True, False) if token.split("=", 1)[0] in table else None
    if token.startswith("-") and not token.startswith("--") and len(token) > 2:
        head = token[:2]
        if head in table and table[head]:
            return True, False          # -wPATH: value attached
        if all(f"-{ch}" in table and not table[f"-{ch}"] for ch in token[1:]):
            return True, False          # -vv, -vq
    return None


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "get_command") and hasattr(cmd, "list_commands")


def hoist_global_options(group: Any, ctx: Any, args: list[str]) -> list[str]:
    """Move the group's own options found after the (sub)command name to the front, so
    `textloop status --json` means `textloop --json status`. An option the command itself
    defines under the same name stays where it is (the command's wins), the value of a
    command option is never mistaken for a global option, and nothing after `--` moves."""
    # the group's own options, without the eager ones (--help, --version): `status --help` is status's
    mine = _option_table([p for p in group.params if not getattr(p, "is_eager", False)])
    front: list[str] = []
    rest: list[str] = []
    i = 0
    # 1. the group's options before the command name stay in front
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        m = _match(args[i], mine)
        if m is None:
            break
        front.append(args[i])
        if m[1] and i + 1 < len(args):
            front.append(args[i + 1])
            i += 1
        i += 1
    # 2. the command path (nested groups such as `studio up`), each with its own options
    cmd: Any = group
    own: dict[str, bool] = {}
    while i < len(args) and _is_group(cmd):
        if args[i].startswith("-"):
            break
        sub = cmd.get_command(ctx, args[i])
        if sub is None:
            break
        rest.append(args[i])
        i += 1
        cmd = sub
        own = _option_table(sub.get_params(ctx))
        if _is_group(sub):  # a sub-group's own options before its command
            while i < len(args) and args[i].startswith("-") and args[i] != "--" and _match(args[i], own):
                rest.append(args[i])
                i += 1
    if cmd is group:
        return [*front, *args[i:]]
    # 3. the command's arguments: hoist global options, keep the command's own (and their values)
    while i < len(args):
        tok = args[i]
        if tok == "--":
            rest.extend(args[i:])
            break
        if tok.startswith("-") and len(tok) > 1:
            m = _match(tok, own)
            target = rest
            if m is None:
                m = _match(tok, mine)
                target = front if m is not None else rest
            if m is not None and m[1]:
                if i + 1 >= len(args):  # missing value: leave it for Click to report
                    rest.append(tok)
                    break
                target.extend(args[i:i + 2])
                i += 2
                continue
            target.append(tok)
        else:
            rest.append(tok)
        i += 1
    return [*front, *rest]


# What `pip install 'textloop[train]'` adds: training (train, iterate, retraining in serve) and
# Faster R-CNN bundles. Everything else runs on onnxruntime.
TRAIN_MODULES = ("torch", "torchvision", "onnx", "onnx2torch")
TRAIN_HINT = "pip install 'textloop[train]'"
NEEDS_TRAIN = ("train", "iterate")


def missing_train_module() -> str | None:
    """The first module of the `train` extra that cannot be imported, or None."""
    import importlib.util

    for name in TRAIN_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # blocked, or sys.modules[name] = None
            return name
    return None


def train_extra_message(module: str, what: str = "training") -> str:
    return f"{what} needs {module}, which is not installed (a light install runs detection only): {TRAIN_HINT}"


def reflow(text: str) -> str:
    """Docstring help as paragraphs: typer keeps every line break of a docstring, so at the
    terminal's width a wrapped line ended mid-sentence ("(EXIF orientation" / "applied)")."""
    return "\n\n".join(" ".join(line.strip() for line in para.splitlines())
                       for para in re.split(r"\n\s*\n", text.strip()))


def reflow_help(cmd: Any) -> None:
    """`reflow` a command's help, and its sub-commands' (a group such as `studio`)."""
    if cmd.help:
        cmd.help = reflow(cmd.help)
    for sub in getattr(cmd, "commands", {}).values():
        reflow_help(sub)


# the click that typer runs (its own copy since typer 0.22, not the `click` package)
_NoSuchOption = getattr(sys.modules[typer.BadParameter.__module__], "NoSuchOption")


class TextloopGroup(TyperGroup):
    """The command group: renders errors any command can meet as one line and exit 1 instead
    of a traceback (today: a damaged catalog.sqlite, found when opened or in a later query),
    and accepts the global options after the command name too (`textloop status --json`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, ctx, list(args)))

    def get_command(self, ctx: Any, name: str) -> Any:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            reflow_help(cmd)
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """A command that always trains says so before doing any work when torch is missing."""
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in NEEDS_TRAIN and not ({"--help", "-h"} & set(rest)):
            missing = missing_train_module()
            if missing:
                fail(train_extra_message(missing, f"`textloop {name}`"))
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _NoSuchOption as exc:
            # after a command, click suggests only that command's options: `status --jsn` got no
            # "--json" (a global option, accepted there too)
            if exc.possibilities:
                raise
            known = [o for p in [*self.params, *(exc.ctx.command.params if exc.ctx else [])]
                     if not getattr(p, "hidden", False) for o in getattr(p, "opts", []) if o.startswith("--")]
            close = difflib.get_close_matches(exc.option_name, known)
            if not close:
                raise
            raise _NoSuchOption(exc.option_name, exc.message, close, exc.ctx) from None
        except ModuleNotFoundError as exc:  # e.g. a Faster R-CNN bundle on a light install
            root = (exc.name or "").split(".")[0]
            if root not in TRAIN_MODULES:
                raise
            fail(train_extra_message(root, "this model or step"))
        except (CatalogDamaged, CatalogUnwritable) as exc:
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


def parse_floats(text: str | None, option: str, lo: float | None = None, hi: float | None = None) -> tuple[float, ...]:
    """A comma-separated list of numbers (`--scales 1,2`), each in [lo, hi] when given; () when
    the option is absent; a one-line error naming the option otherwise."""
    if text is None:
        return ()
    if not text.strip():   # given, but empty (`--sweep ''`): a mistake, not "no values"
        fail(f"bad {option} {text!r}: expected numbers like 0.5,1", 2)
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        fail(f"bad {option} {text!r}: expected numbers like 0.5,1", 2)
    if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in values):
        fail(f"bad {option} {text!r}: every value must be in [{lo if lo is not None else '-inf'}, "
             f"{hi if hi is not None else 'inf'}]", 2)
    return values


@contextmanager
def usage_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """A ValueError (or `kinds`) raised by the checks inside the block is a usage error: one
    line and exit 2, before any work."""
    try:
        yield
    except (kinds or (ValueError,)) as exc:
        fail(str(exc), 2)


PIPED_WIDTH = 200


def emit(st: AppState, data: Any, render: Callable[[Console], None] | None = None,
         problems: Sequence[str] = (), label: str = "failed") -> None:
    """--json: the data as JSON on stdout; otherwise a human rendering on stdout. With -q
    ("errors only") the rendering is silent but each of `problems` (the entries a batch
    failed or skipped) is still one `label` line on stderr: they are the errors."""
    if st.json:   # strict JSON: a NaN (a bundle without metrics) is null, not `NaN`
        from pipeline.evaluate import json_safe

        sys.stdout.write(json.dumps(json_safe(data), indent=2, default=str) + "\n")
        return
    if st.verbosity < 0:
        err = Console(stderr=True)
        for line in problems[:MAX_QUIET_PROBLEMS]:
            err.print(f"[red]{label}[/] {plain(line)}", highlight=False, soft_wrap=True)
        if len(problems) > MAX_QUIET_PROBLEMS:   # thousands of rejects are not "errors only"
            err.print(f"[red]{label}[/] ... and {len(problems) - MAX_QUIET_PROBLEMS} more (--json lists them all)",
                      highlight=False, soft_wrap=True)
        return
    # piped or redirected, rich assumes 80 columns and cuts table cells ("db-20…"): the reader
    # of a file or a pager scrolls, so give tables room (COLUMNS still decides if set)
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    out = DataConsole(width=PIPED_WIDTH if piped else None)
    if render is not None:
        render(out)
    else:
        out.print_json(json.dumps(data, default=str))


@contextmanager
def progress(st: AppState, description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, silent with --json/-q; yields update(done, total), whose
    `phase(text)` names a new stage of the job (the count starts again under that name)."""
    if st.json or st.verbosity < 0 or not sys.stderr.isatty() and st.verbosity < 1:
        def silent(done: int, total: int) -> None:
            return None

        silent.phase = lambda text: None  # type: ignore[attr-defined]
        yield silent
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)
        counted = False

        def update(done: int, total: int) -> None:
            nonlocal counted
            counted = True
            bar.update(task, completed=done, total=total)

        def phase(text: str) -> None:
            nonlocal task, counted
            if not counted:     # nothing shown under the old name yet: rename it
                bar.update(task, description=f"{description}: {text}")
                return
            bar.stop_task(task)   # the finished stage's line stays, with its time
            task, counted = bar.add_task(f"{description}: {text}", total=None), False

        update.phase = phase  # type: ignore[attr-defined]
        yield update
