"""`textloop init` and `textloop harvest`."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, List

import typer
from rich.console import Console

from pipeline.cli.common import emit, fail, option_given, option_message, plain, positive, progress, refuse_missing, state, titled
from pipeline.config import DEFAULT_MAX_PIXELS, HarvestConfig, SplitRatios
from pipeline.harvest import HarvestInterrupted, harvest


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.command("harvest")(harvest_cmd)


def init_cmd(ctx: typer.Context) -> None:
    """Create the workspace layout and catalog (commands that add data make one too; the rest refuse a folder without one)."""
    st = state(ctx)
    ws = st.ws()
    with ws.catalog() as cat:
        version = cat.schema_version()
    emit(st, {"workspace": str(ws.root), "schema_version": version},
         lambda c: c.print(f"workspace ready: {ws.root} (catalog schema v{version})"))


def harvest_cmd(
    ctx: typer.Context,
    sources: List[str] = typer.Argument(..., help="Folders (recursive), image files, URL lists (.txt), CSVs with a url/path column, or http(s) URLs."),
    workers: int = typer.Option(0, min=0, max=256, help="Worker processes (copy/download + decode); 0 = one per CPU core. Raise it for slow networks."),
    timeout: float = typer.Option(20.0, callback=positive, help="Seconds per HTTP request: the deadline of the whole download (per try)."),
    retries: int = typer.Option(3, min=0, help="HTTP retries with exponential backoff."),
    max_bytes: int = typer.Option(200 * 1024 * 1024, min=1, help="Reject files larger than this."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Reject images with more pixels on any page (decompression bombs)."),
    splits: str = typer.Option("0.7,0.15,0.15", help="train,val,test ratios; the split follows from the sha256."),
    strict: bool = typer.Option(False, help="Exit non-zero if any item was rejected."),
) -> None:
    """Gather images into the workspace: content-addressed, fully validated, deduplicated, resumable."""
    st = state(ctx)
    try:
        cfg = HarvestConfig(workers=workers or (os.cpu_count() or 2), timeout_s=timeout, retries=retries, max_bytes=max_bytes,
                            max_pixels=max_pixels, splits=SplitRatios.parse(splits))
    except ValueError as exc:
        fail(option_message(ctx, exc), 2)
    # a path typed on the command line that does not exist is a typo, not a bad entry of a batch:
    # one line, nothing recorded (it was a `not_found` reject that no later harvest cleared)
    refuse_missing(sources)
    ws = st.ws()
    try:
        with progress(st, "harvest") as update:
            summary = harvest(ws, sources, cfg, progress=update)
    except RuntimeError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(str(exc) if exc.errno == errno.ENOSPC else f"{ws.root}: {exc}")
    except HarvestInterrupted as exc:
        fail(str(exc), 130)
    except KeyboardInterrupt:   # while the sources were still being listed
        fail("harvest interrupted; rerun the same command to resume", 130)

    emit(st, summary.as_dict(), lambda c: _render(c, summary, ws.root), problems=summary.reject_lines, label="rejected")
    placed = summary.skipped + summary.duplicates
    if placed and option_given(ctx, "splits"):
        # images already in the workspace keep their split: the new ratios were ignored silently for them
        st.console.print(f"[yellow]note:[/] --splits places new images only; {placed} were already in the workspace "
                         "and keep their split", highlight=False)
    n_rejected = sum(summary.rejected.values())
    if summary.ok == 0 and not n_rejected:   # a mistyped or empty folder: said, not "0 ok" and exit 0
        ignored = len(summary.ignored_files)
        fail("nothing harvested: no image files in " + ", ".join(sources)
             + (f" ({ignored} entr(ies) not named as images, or hidden)" if ignored else ""))
    if (summary.ok == 0 and n_rejected) or (strict and n_rejected):
        raise typer.Exit(1)


def _render(c: Console, summary: Any, root: Path) -> None:
    """Counts by result, the first rejects, and the time taken."""
    t = titled(f"harvest into {root}", show_header=True)
    t.add_column("result")
    t.add_column("images", justify="right")
    t.add_row("new", str(summary.new))
    t.add_row("duplicate (new source recorded)", str(summary.duplicates))
    t.add_row("already harvested (skipped)", str(summary.skipped))
    for reason, n in sorted(summary.rejected.items()):
        t.add_row(f"rejected: {reason}", str(n))
    c.print(t)
    for line in summary.reject_lines[:50]:
        c.print(f"[yellow]rejected[/] {plain(line)}", highlight=False, soft_wrap=True)
    if len(summary.reject_lines) > 50:
        c.print(f"... and {len(summary.reject_lines) - 50} more (see `textloop status`)")
    for line in summary.replaced[:20]:
        c.print(f"[yellow]replaced[/] {plain(line)}", highlight=False, soft_wrap=True)
    if len(summary.replaced) > 20:
        c.print(f"... and {len(summary.replaced) - 20} more files with new content (--json lists them)")
    if summary.ignored_files:
        n = len(summary.ignored_files)
        c.print(f"[yellow]ignored[/] {n} entr(ies) not named as images, or hidden: {plain(', '.join(summary.ignored_files[:5]))}"
                f"{' ...' if n > 5 else ''} (--json lists them)", highlight=False, soft_wrap=True)
    c.print(f"{summary.ok} ok, {sum(summary.rejected.values())} rejected in {summary.seconds:.1f}s")
