"""`textloop iterate`: one full round of the loop."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import typer
from rich.console import Console

from pipeline.cli.common import emit, fail, plain, positive, state, usage_errors
from pipeline.loop import ROUND_TRAINING, IterateConfig, RoundResult, iterate, require_images
from pipeline.rank import STRATEGY_HELP, RankOptions

RANK = RankOptions()   # the option defaults are the library's


def register(app: typer.Typer) -> None:
    app.command("iterate")(iterate_cmd)


def iterate_cmd(
    ctx: typer.Context,
    strategy: str = typer.Option(RANK.strategy, help=STRATEGY_HELP),
    top: int = typer.Option(RANK.top, min=1, help="Images to send to Label Studio for the next round."),
    committee: str = typer.Option(str(RANK.committee), help="Second detector for ranking ('none' to skip)."),
    engine: str = typer.Option("permissive", help="Curation engine: permissive or fastdup (non-commercial licence)."),
    apply: bool = typer.Option(True, "--apply/--no-apply", help="Act on duplicates and the worst label issues."),
    label_action: str = typer.Option("review", help="Suspected label errors: review (re-push) or exclude."),
    arch: str = typer.Option("db", help="Model to retrain: db (fine-tune PP-OCR's detector) or fasterrcnn."),
    epochs: int = typer.Option(ROUND_TRAINING.epochs, min=1, help="Retraining epochs."),
    steps_per_epoch: int = typer.Option(ROUND_TRAINING.steps_per_epoch, min=1, help="Retraining steps per epoch."),
    budget_minutes: Optional[float] = typer.Option(ROUND_TRAINING.budget_minutes, callback=positive, help="Stop retraining after this many minutes (best model kept)."),
    tolerance: float = typer.Option(0.005, min=0.0, help="Promote when no metric is worse than the current model's by more."),
    push: bool = typer.Option(True, "--push/--no-push", help="Talk to Label Studio (pull first, push the next batch)."),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="Promote even below stock ppocr on validation (with a warning)."),
) -> None:
    """One round: pull -> curate -> retrain -> evaluate -> promote if not worse (and >= stock ppocr) -> rank -> push."""
    st = state(ctx)
    try:
        cfg = IterateConfig(rank=RankOptions(strategy=strategy, top=top,
                                             committee=None if committee.lower() == "none" else committee),
                            train=replace(ROUND_TRAINING, arch=arch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                          budget_minutes=budget_minutes, seed=seed),
                            engine=engine, curate_apply=apply, label_action=label_action, tolerance=tolerance,
                            push=push, force=force)
    except ValueError as exc:
        fail(str(exc), 2)
    ws = st.read_ws()
    with usage_errors():
        require_images(ws)
    try:
        res = iterate(ws, cfg, say=lambda s: st.console.print(f"[bold]·[/] {plain(s)}", highlight=False))
    except KeyboardInterrupt:
        fail("interrupted; run `textloop iterate` again to finish the round (every step resumes)", 130)
    except Exception as exc:  # noqa: BLE001 - one clear line; the round is logged as failed
        fail(f"iterate failed: {type(exc).__name__}: {exc}")

    emit(st, res.as_dict(), lambda c: _render(c, res))


def _render(c: Console, res: RoundResult) -> None:
    """The candidate against the current model, the promotion decision, and the pushed batch."""
    ev = res.steps.get("evaluate", {})
    cand, cur = ev.get("candidate", {}), ev.get("current", {})

    def num(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    if res.candidate == cur.get("version"):   # nothing new was trained: no comparison to show
        c.print(f"round {res.iteration}: {res.candidate} stays current (coverage {num(cand.get('text_coverage'))}, "
                f"F1 {num(cand.get('f1'))} on {ev.get('images')} images, {ev.get('test_set')})")
        return _render_push(c, res)
    c.print(f"round {res.iteration}: candidate {res.candidate} "
            f"(coverage {num(cand.get('text_coverage'))}, F1 {num(cand.get('f1'))}) vs {cur.get('version')} "
            f"(coverage {num(cur.get('text_coverage'))}, F1 {num(cur.get('f1'))}) on {ev.get('images')} images "
            f"({ev.get('test_set')})")
    c.print("promoted" if res.promoted else f"not promoted: {'; '.join(ev.get('regressions', []))}")
    _render_push(c, res)


def _render_push(c: Console, res: Any) -> None:
    """The pushed batch, if the round pushed."""
    if "push" in res.steps:
        p = res.steps["push"]
        c.print(f"pushed {p.get('tasks_created')} new tasks; label them at {p.get('url')}, then run `textloop iterate`")
