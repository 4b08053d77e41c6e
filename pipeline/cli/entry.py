"""The console script's entry point, kept light so Ctrl-C right after start is one line.

Importing the CLI takes ~0.3 s (typer, numpy, the stage modules); a Ctrl-C in that window used
to print a traceback of whatever import was running instead of the one line every command ends
an interrupt with."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from pipeline.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting; nothing was done\n")
        raise SystemExit(130) from None
    run()
