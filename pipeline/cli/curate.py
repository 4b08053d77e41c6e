"""`textloop curate` and `textloop report`."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.console import Console

from pipeline.cli.common import emit, fail, plain, progress, state, titled, usage_errors


def register(app: typer.Typer) -> None:
    app.command("curate")(curate_cmd)
    app.command("report")(report_cmd)


def curate_cmd(
    ctx: typer.Context,
    engine: str = typer.Option("permissive", help="Duplicate/outlier engine: permissive (imagehash + small embedding, "
                               "Apache/BSD) or fastdup (CC BY-NC-ND 4.0: non-commercial use only)."),
    apply: bool = typer.Option(False, "--apply", help="Act on the findings (default: only write reports)."),
    label_action: Optional[str] = typer.Option(None, help="With --apply (default review), what happens to suspected label issues: review "
                                      "(status needs_review; the next push or iterate sends them to Label Studio "
                                      "with the label and a note) or exclude."),
    worst: Optional[int] = typer.Option(None, min=1, help="With --apply, act on at most this many of the suspected label issues (worst first)."),
    method: str = typer.Option("reading", help="Label-noise ranking: reading (default: boxes, and the PP-OCR "
                               "recogniser on what is inside them), coverage (boxes only, no image reads) or cleanlab."),
    model_version: Optional[str] = typer.Option(None, help="Use only this model's stored predictions for label noise."),
    fastdup_python: Optional[str] = typer.Option(None, envvar="TEXTLOOP_FASTDUP_PYTHON",
                                                 help="fastdup interpreter (default <repo>/.venv-fastdup/bin/python)."),
    skip_duplicates: bool = typer.Option(False, help="Only label noise."),
    skip_label_noise: bool = typer.Option(False, help="Only duplicates/outliers/broken images."),
    iteration: Optional[str] = typer.Option(None, help="Folder name under runs/ for the copies (default: this step's iteration id)."),
) -> None:
    """Find duplicates, near duplicates across splits, outliers, broken images and label noise; write reports/.

    Reports only, unless --apply: then duplicate groups move into one split and are labelled
    once (other members -> excluded), and suspected label issues are marked for review (the next
    push or iterate sends them to Label Studio with the label and a note)."""
    from pipeline.curate.duplicates import DuplicateConfig, FastdupUnavailable
    from pipeline.curate.label_noise import LabelNoiseConfig
    from pipeline.curate.stage import check_model_version, run_curate
    from pipeline.workspace import check_run_name

    st = state(ctx)
    with usage_errors():
        dup_cfg = DuplicateConfig(engine=engine, fastdup_python=fastdup_python)
        noise_cfg = LabelNoiseConfig(method=method, model_version=model_version)
        check_run_name(iteration)
    if label_action not in (None, "review", "exclude"):
        fail(f"--label-action must be review or exclude, got {label_action!r}", 2)
    ignored = [o for o, given in (("--label-action", label_action is not None), ("--worst", worst is not None)) if given]
    if ignored and not apply:   # they were silently ignored: the user expected exclusions
        st.console.print(f"[yellow]warning:[/] {' and '.join(ignored)} act only with --apply: this run writes "
                         "reports and changes nothing", highlight=False)
    label_action = label_action or "review"
    if skip_duplicates and skip_label_noise:   # it ran, did nothing and replaced reports/' summary
        fail("--skip-duplicates and --skip-label-noise together leave nothing to do: give one at most", 2)
    ws = st.read_ws()
    with usage_errors():
        check_model_version(ws, model_version)
    try:
        with progress(st, "curate") as update:
            summary = run_curate(ws, dup_cfg, noise_cfg, apply=apply, label_action=label_action, worst=worst,
                                 iteration=iteration, progress=update, duplicates=not skip_duplicates,
                                 label_noise=not skip_label_noise, phase=update.phase)
    except FastdupUnavailable as exc:
        fail(str(exc))
    except RuntimeError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; reports/ keep the last complete curation (changes already applied to the catalog stay); "
             "rerun the same command", 130)

    emit(st, summary.as_dict(), lambda c: _render(c, summary.as_dict(), engine, apply))


def _render(c: Console, summary: dict[str, Any], engine: str, apply: bool) -> None:
    """Findings by kind, the licence note for fastdup, what was applied and where the reports are."""
    t = titled(f"curate ({engine}){' --apply' if apply else ''}")
    t.add_column("finding")
    t.add_column("count", justify="right")
    d = summary.get("duplicates", {})
    for key in ("images", "broken", "exact_duplicates", "near_duplicates", "content_differs_pairs", "outliers",
                "duplicate_groups", "cross_split_groups", "planned_split_moves", "planned_exclusions"):
        if key in d:
            label = "near pairs with other content (not duplicates)" if key == "content_differs_pairs" else key
            t.add_row(label.replace("_", " "), str(d[key]))
    n = summary.get("label_noise", {})
    for key in ("labelled_images", "label_issues", "overlooked_text", "bad_location", "spurious_box", "skipped"):
        if key in n:
            t.add_row(f"labels: {key.replace('_', ' ')}", str(n[key]))
    c.print(t)
    skipped = n.get("skipped_images") or []
    by_reason: dict[str, list[str]] = {}
    for row in skipped:
        by_reason.setdefault(row["reason"], []).append(row.get("name") or row["image_id"][:16])
    for reason, names in list(by_reason.items())[:5]:
        c.print(f"[yellow]not scored[/] {len(names)} labelled image(s), e.g. {plain(names[0])}: {plain(reason)}", highlight=False,
                soft_wrap=True)
    if engine == "fastdup":
        c.print("[yellow]note:[/] fastdup is licensed CC BY-NC-ND 4.0 (non-commercial use only).")
    if apply:
        dup, lab = d.get("applied") or {}, n.get("applied") or {}
        done = ([f"{dup.get('moved_split', 0)} images moved to their group's split",
                 f"{dup.get('excluded', 0)} duplicates excluded"] if dup else [])
        verb = ("marked for review (push or iterate sends them to Label Studio with a note)"
                if lab.get("action") == "review" else "excluded")
        done += [f"{lab.get('changed', 0)} images with suspected labels {verb}"] if lab else []
        c.print(f"applied: {'; '.join(done) or 'nothing to do'} (changes: {summary['run_dir']}/curate_actions.csv)")
    else:
        c.print("nothing changed (reports only); rerun with --apply to act on them")
    written = [page for page, key in (("duplicates.html", "duplicates"), ("label_issues.html", "label_noise"))
               if key in summary]   # (--skip-label-noise named a label_issues.html it did not write)
    c.print(f"reports: {summary['reports']} ({', '.join(written)}); copy: {summary['run_dir']}")


def report_cmd(
    ctx: typer.Context,
    iteration: Optional[str] = typer.Option(None, help="runs/<iteration>/report/ gets a copy (default: the last iteration)."),
) -> None:
    """Write reports/report.html and PNGs: learning curve, ranking scores, duplicate clusters, label issues."""
    from pipeline.curate.report import build_report
    from pipeline.io import UnwritableError
    from pipeline.workspace import check_run_name

    st = state(ctx)
    with usage_errors():
        check_run_name(iteration)
    ws = st.read_ws()
    try:
        res = build_report(ws, iteration=iteration)
    except UnwritableError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc), 2)
    copy = f"copy in {res.run_copy}" if res.run_copy else "no run copy: no step has finished yet"
    emit(st, res.as_dict(), lambda c: c.print(f"report: {res.html} ({copy}); "
                                              f"{res.learning_curve_points} learning-curve points"))
