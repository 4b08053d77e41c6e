"""The `textloop` command: global options and the registration of every command group."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline import __version__
from pipeline.cli import curate as curate_cli
from pipeline.cli import detect as detect_cli
from pipeline.cli import harvest as harvest_cli
from pipeline.cli import loop as loop_cli
from pipeline.cli import model as model_cli
from pipeline.cli import rank as rank_cli
from pipeline.cli import redact as redact_cli
from pipeline.cli import status as status_cli
from pipeline.cli import studio as studio_cli
from pipeline.cli.common import AppState, TextloopGroup
from pipeline.config import privacy_env

app = typer.Typer(
    name="textloop",
    help="Find and remove text from images at scale; learn from every round of human review in Label Studio.\n\n"
    "The loop: harvest -> synth -> train -> predict -> rank -> push -> (label in Label Studio) -> pull -> curate -> train ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=TextloopGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"textloop {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    workspace: Path = typer.Option(Path("data"), "--workspace", "-w", envvar="TEXTLOOP_WORKSPACE",
                                   help="Workspace folder (catalog, images, models, runs, reports)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, metavar="", show_default=False,
                                help="More log output (repeatable: -vv)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    for key, value in privacy_env().items():  # nothing we start phones home
        os.environ.setdefault(key, value)
    level = logging.ERROR if quiet else logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    from pipeline.io import LineFormatter

    console = logging.StreamHandler()
    console.setFormatter(LineFormatter())   # a file name with a newline split a log line
    logging.basicConfig(level=level, handlers=[console])
    ctx.obj = AppState(workspace=workspace, json=json_out, verbosity=-1 if quiet else verbose)


harvest_cli.register(app)
status_cli.register(app)
studio_cli.register(app)
detect_cli.register(app)
redact_cli.register(app)
rank_cli.register(app)
loop_cli.register(app)
curate_cli.register(app)
model_cli.register(app)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, `timeout`, `docker stop`) ends a command the way Ctrl-C does: a running
    stage is logged `failed` in the catalog, training keeps its checkpoint for `--resume`, temp
    files are cleaned; before, the process died on the spot and left rows `running` for ever."""
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def main() -> None:
    import gc
    import signal

    try:   # typer 0.2x carries its own copy of click; older ones use click itself
        from typer._click import exceptions as click_exc
    except ImportError:
        from click import exceptions as click_exc
    try:   # typer 0.2x raises its own Abort (its click copy has none: `except` on it crashed)
        from typer.exceptions import Abort
    except ImportError:
        Abort = click_exc.Abort  # type: ignore[attr-defined,misc]

    from pipeline.cli.common import REPORTED

    REPORTED.clear()   # this run's own (main runs more than once in one process: tests, notebooks)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    code: object = 0
    try:
        rv = app(standalone_mode=False)
        code = rv if isinstance(rv, int) else 0   # typer.Exit(n) comes back as n here
    except click_exc.UsageError as exc:
        # a bad option or argument is one line, as every other error (click drew a usage box)
        where = exc.ctx.command_path if exc.ctx is not None else "textloop"
        sys.stderr.write(f"error: {exc.format_message()} (see `{where} --help`)\n")
        code = exc.exit_code
    except click_exc.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        code = exc.exit_code
    except Abort:   # a Ctrl-C no command turned into its own summary
        sys.stderr.write("interrupted\n")
        code = 130
    except BrokenPipeError:   # `textloop ... | head`: the reader left; no traceback, no more output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1              # what rich does when it meets the closed pipe itself
    except SystemExit as exc:
        code = exc.code
    if code == 130 and 130 not in REPORTED:
        # typer turns a Ctrl-C (or SIGTERM) no command caught into exit 130 without a word
        sys.stderr.write("interrupted; rerun the same command to continue\n")
    if code not in (0, None):
        from pipeline.cli.common import discard_unused_workspaces

        discard_unused_workspaces()
    # Outside the handler the exception is gone, and with it the tracebacks it chains (a Ctrl-C
    # inside a command): their frames held the detector, and an onnxruntime session torn down at
    # interpreter exit could abort the process ("terminate called without an active exception",
    # exit 134) instead of exiting with the command's code.
    gc.collect()
    sys.exit(code)


if __name__ == "__main__":
    main()
