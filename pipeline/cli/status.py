"""`textloop status`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from pipeline.cli.common import emit, state, titled
from pipeline.status import WorkspaceStatus, workspace_status


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)


def status_cmd(ctx: typer.Context) -> None:
    """Images by status and split, rejects by reason, models, and the last iteration."""
    st = state(ctx)
    ws = st.read_ws(read_only_ok=True)
    with ws.catalog() as cat:
        s = workspace_status(cat, ws.root)

    emit(st, s.as_dict(), lambda c: _render(c, s, ws.root))


def _render(c: Console, s: WorkspaceStatus, root: Path) -> None:
    """Totals, images by status and split, rejects, models and the last iteration."""
    c.print(f"workspace {root}: {s.images} images from {s.sources} sources, "
            f"{s.annotations} annotations, {s.predictions} predictions, {s.tasks} Label Studio tasks"
            # after a project was deleted and made again, its old tasks were counted as if live
            + (f" ({', '.join(f'project {p}: {n}' for p, n in s.tasks_by_project.items())})"
               if len(s.tasks_by_project) > 1 else ""))
    t = titled("images by status and split")
    splits = ["train", "val", "test"]
    t.add_column("status")
    for sp in splits:
        t.add_column(sp, justify="right")
    for status, counts in sorted(s.by_status.items()):
        t.add_row(status, *(str(counts.get(sp, 0)) for sp in splits))
    c.print(t)
    if s.rejects:
        r = titled("rejected sources by reason")
        r.add_column("reason")
        r.add_column("count", justify="right")
        for reason, n in s.rejects.items():
            r.add_row(reason, str(n))
        c.print(r)
    if s.models:
        m = titled("models")
        for col in ("version", "kind", "parent", "current", "bundle"):
            m.add_column(col)
        for model in s.models:
            m.add_row(model["version"], model["kind"], model["parent"] or "-", "*" if model["promoted"] else "",
                      Text("missing", style="red") if model["bundle_missing"] else "ok")   # (a str cell is data: shown as written)
        c.print(m)
        gone = [m for m in s.models if m["promoted"] and m["bundle_missing"]]
        if gone:
            c.print(f"[yellow]warning:[/] the current model's bundle ({gone[0]['version']}) is missing: predict, rank "
                    "and redact stop; `textloop models promote ppocr` makes stock current again", highlight=False)
    else:
        c.print("models: none yet (`textloop train`)")
    it = s.last_iteration
    c.print(f"last iteration: {it['step']} #{it['id']} ({it['status']})" if it else "last iteration: none")
