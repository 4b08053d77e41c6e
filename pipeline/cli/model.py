"""`textloop synth`, `textloop train` and `textloop models`: making and managing detectors."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from pipeline.cli.common import (AppState, emit, fail, option_given, option_message, parse_floats, progress, state, titled,
                                 usage_errors)
from pipeline.workspace import check_run_name


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_cmd)
    app.command("train")(train_cmd)
    models_app = typer.Typer(help="List, register and promote model bundles (one is `current`).",
                             invoke_without_command=True, no_args_is_help=False)
    models_app.callback()(models_default)
    models_app.command("list")(models_list_cmd)
    models_app.command("promote")(models_promote_cmd)
    models_app.command("register")(models_register_cmd)
    app.add_typer(models_app, name="models")


def _parse_range(text: str, what: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        fail(f"{what} must be N or MIN,MAX, got {text!r}", 2)
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] > parts[1]:
        fail(f"{what} must be N or MIN,MAX with MIN <= MAX, got {text!r}", 2)
    return parts[0], parts[1]


# --- synth -----------------------------------------------------------------------------------

def synth_cmd(
    ctx: typer.Context,
    name: str = typer.Option("default", help="Output folder name: <workspace>/synth/NAME."),
    images: int = typer.Option(200, "--images", "-n", min=1, max=1_000_000, help="How many images."),
    seed: int = typer.Option(0, help="Same seed and options, same images and boxes."),
    granularity: str = typer.Option("line", help="One box per `line` or per `word`."),
    width: str = typer.Option("512,1024", help="Image width N or range MIN,MAX (height from a random aspect)."),
    backgrounds: Optional[Path] = typer.Option(None, help="Folder of text-free images to paint on (else procedural)."),
    from_workspace: bool = typer.Option(False, "--from-workspace",
                                        help="Use workspace images the current detector finds text-free as backgrounds."),
    kinds: Optional[str] = typer.Option(None, help="Comma list of overlay kinds (default: all)."),
) -> None:
    """Synthetic training images with exact ink boxes: IDs, dates, scale bars, instrument lines, watermarks..."""
    from pipeline.synth import OVERLAY_KINDS, SynthConfig, generate, list_images, workspace_backgrounds

    st = state(ctx)
    with usage_errors():
        check_run_name(name, "--name")
    ws = st.ws()
    try:
        cfg = SynthConfig(n_images=images, seed=seed, granularity=granularity, width=_parse_range(width, "--width"),
                          kinds=tuple(k.strip() for k in kinds.split(",")) if kinds else OVERLAY_KINDS)
    except ValueError as exc:
        fail(str(exc), 2)
    bgs: list[Path] = []
    try:
        if backgrounds is not None:
            bgs = list_images(backgrounds)
            if not bgs:
                fail(f"{backgrounds}: no images found")
        if from_workspace:
            found = workspace_backgrounds(ws)
            if not found:   # it fell back to procedural backgrounds without a word
                st.console.print("[yellow]warning:[/] --from-workspace: no workspace image is verified text-free or "
                                 "text-free to the current model", highlight=False)
            bgs += found
    except FileNotFoundError as exc:
        fail(str(exc), 2)
    out = ws.synth_dir(name)
    try:
        with progress(st, "synth") as update:
            summary = generate(out, cfg, bgs, progress=update)
    except KeyboardInterrupt:   # the set is written whole or not at all: nothing half-made to use
        fail(f"interrupted; {out} is not complete: rerun the same command to make it", 130)

    emit(st, summary.as_dict(), lambda c: _render_synth(c, summary.as_dict(), out))


def _render_synth(c: Console, summary: dict[str, Any], out: Path) -> None:
    """Up to date, or what was generated and of which kinds."""
    if summary["skipped"]:
        c.print(f"{out}: up to date ({summary['images']} images, {summary['boxes']} boxes)")
        return
    bgs = (f"{summary['on_real_backgrounds']} on real backgrounds ({summary['backgrounds']} given"
           + (f", {summary['unusable_backgrounds']} unusable: see the log" if summary["unusable_backgrounds"] else "")
           + ")") if summary["backgrounds"] else "procedural backgrounds"
    c.print(f"{out}: {summary['images']} images, {summary['boxes']} boxes, {bgs}")
    c.print("kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(summary["kinds"].items())))


# --- train -----------------------------------------------------------------------------------

def train_cmd(
    ctx: typer.Context,
    arch: str = typer.Option("db", help="db: fine-tune PP-OCR's own detector (stock weights, or the current db model); "
                                        "fasterrcnn: torchvision Faster R-CNN from scratch."),
    synth: List[str] = typer.Option(["default"], help="Synthetic set(s) under <workspace>/synth/ (generated if missing)."),
    synth_images: int = typer.Option(400, min=1, max=100_000, help="Images to generate when a synthetic set is missing."),
    parent: str = typer.Option("auto", help="Fine-tune from: auto (the current model of this --arch, else the start: "
                                            "stock PP-OCR for db, random weights for fasterrcnn), none, current, "
                                            "a version, or a bundle.zip."),
    human_fraction: float = typer.Option(0.5, help="Share of human-labelled images (train split) per batch."),
    epochs: int = typer.Option(10, help="Epochs (the learning-rate schedule spans them)."),
    steps_per_epoch: int = typer.Option(100, help="Steps per epoch (validation after each)."),
    batch_size: int = typer.Option(4),
    lr: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Peak learning rate (AdamW), at most 1 (--lr 5 made a "
                                       "model that covers nothing). Default: 5e-5 for db, 2e-3 for fasterrcnn."),
    patience: int = typer.Option(3, help="Early stopping: epochs without improvement."),
    budget_minutes: Optional[float] = typer.Option(None, help="Stop (and keep the best model) after this many minutes."),
    backbone: str = typer.Option("mobilenet_v3_large", help="fasterrcnn: mobilenet_v3_large or resnet50 (new models only)."),
    crop: int = typer.Option(512, help="db: training crop side (pixels at the scale ppocr runs the image at)."),
    l2sp: float = typer.Option(0.01, help="db: strength of the L2-SP pull toward the stock weights (0 = off)."),
    distill: float = typer.Option(1.0, help="db: weight of stock ppocr's map as teacher on text-free images (0 = off)."),
    teacher_ignore: float = typer.Option(0.5, min=0.0, max=1.0, help="db: background pixels where stock ppocr's map is at least this are don't-care, so text the labels missed is not unlearnt; most of them are the ring next to labelled kernels, which scene words need free (README; 0 = off)."),
    missed_text: float = typer.Option(0.0, min=0.0, max=10.0, help="db: extra BCE weight of labelled text stock ppocr misses (positive pixels weigh 1 + k x (1 - stock map)); 2 favours microscopy overlays over scene text and receipts (README). Needs --teacher-ignore > 0."),
    interpolate: str = typer.Option("0.5,0.7,0.85,1", help="db: weight-space blends start + a*(tuned - start) scored on validation after training; the best one no source vetoes is kept (1 = the tuned weights only)."),
    budget: Optional[float] = typer.Option(None, "--over-redaction-budget",
                                           help="db: selection budget. Default: stock ppocr's over-redaction on the "
                                                "validation split (at least 0.002)."),
    seed: int = typer.Option(0, help="Seed of the run's crops, augmentation and order (same seed, data and options: the same steps)."),
    freeze_bn: Optional[bool] = typer.Option(None, "--freeze-bn/--no-freeze-bn",
                                             help="Keep BatchNorm statistics fixed. Default: yes when fine-tuning "
                                                  "(small batches would overwrite the parent's), no from scratch."),
    threads: int = typer.Option(0, min=0, max=256, help="CPU threads; 0 = the cores the load average leaves free (on a busy 2-core "
                                        "machine 1 thread trains 3-5x faster than 2)."),
    run: str = typer.Option("train", help="Run name: checkpoint under <workspace>/runs/train-RUN/."),
    resume: bool = typer.Option(False, help="Continue the run's checkpoint."),
    restart: bool = typer.Option(False, help="Discard an existing checkpoint of this run."),
    promote: bool = typer.Option(False, "--promote/--no-promote",
                                 help="Make the new model current (redact/predict/rank use it) if its validation coverage "
                                      "at the over-redaction budget is at least stock ppocr's. Default: no."),
    force: bool = typer.Option(False, "--force", help="With --promote: promote even if the model is worse than stock ppocr."),
) -> None:
    """Train a text detector (default: fine-tune PP-OCR's DB network) on synthetic + human-labelled images and register it."""
    from pipeline.detectors.fasterrcnn import FasterRCNNConfig
    from pipeline.train import CheckpointExists, DBRecipe, ResumeRefused, TrainConfig, TrainingError, train_run
    from pipeline.train.workspace import run_dir

    st = state(ctx)
    if arch not in ("db", "fasterrcnn"):
        fail(f"--arch must be db or fasterrcnn, got {arch!r}", 2)
    if resume and restart:
        fail("--resume continues the run's checkpoint and --restart discards it: give one", 2)
    if force and not promote:
        fail("--force overrides the promotion rule: it needs --promote", 2)
    given = _given_options(ctx)
    if arch == "db" and "backbone" in given:   # it was accepted and ignored
        fail("--backbone chooses a Faster R-CNN backbone: it needs --arch fasterrcnn", 2)
    recipe = sorted(o for o in given if o.startswith("db."))
    if arch == "fasterrcnn" and recipe:        # accepted and ignored too
        names = {v: k for k, v in _RECIPE_OPTIONS.items()}
        shown = ", ".join("--" + ("over-redaction-budget" if n == "budget" else n.replace("_", "-"))
                          for n in (names[o[3:]] for o in recipe))
        fail(f"{shown}: DB recipe option(s), not used by --arch fasterrcnn", 2)
    with usage_errors():
        check_run_name(run, "--run")
        for name in synth:
            check_run_name(name, "--synth")
    ws = st.ws()
    try:
        cfg = TrainConfig(arch=arch, model=FasterRCNNConfig(backbone=backbone),
                          db=DBRecipe(crop=crop, l2sp=l2sp, distill=distill, teacher_ignore=teacher_ignore,
                                      missed_text=missed_text, interpolate=parse_floats(interpolate, "--interpolate"),
                                      over_redaction_budget=budget),
                          epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr,
                          human_fraction=human_fraction, patience=patience, budget_minutes=budget_minutes, seed=seed,
                          threads=threads, resume=resume, freeze_bn=freeze_bn)
    except ValueError as exc:
        fail(option_message(ctx, exc, {"over_redaction_budget": "over-redaction-budget"}), 2)
    try:
        with _train_progress(st) as update:
            summary = train_run(ws, cfg, synth_sets=synth, synth_images=synth_images, parent=parent, run=run,
                                restart=restart, promote=promote, force=force, say=st.console.print, progress=update,
                                given=given)
    except (ValueError, CheckpointExists, ResumeRefused) as exc:
        fail(str(exc), 2)
    except TrainingError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        ckpt = run_dir(ws, run) / "checkpoint.pt"
        if not ckpt.exists():   # stopped before the first checkpoint: "--resume" then said "no checkpoint"
            fail("interrupted before the first checkpoint; rerun the same command to start again", 130)
        fail(f"interrupted; continue with `textloop train --run {run} --resume` (it takes the run's options from "
             f"its checkpoint: {ckpt})", 130)
    refused = promote and not summary.promoted
    emit(st, summary.as_dict(), lambda c: _render_train(c, summary, refused))
    if refused:
        fail(f"not promoted: {summary.promotion_message or 'no validation numbers'}; "
             f"`textloop models promote {summary.version} --force` overrides")


# train's options that live in the DB recipe (`TrainConfig.db`), by CLI parameter name
_RECIPE_OPTIONS = {"crop": "crop", "l2sp": "l2sp", "distill": "distill", "teacher_ignore": "teacher_ignore",
                   "missed_text": "missed_text", "interpolate": "interpolate", "budget": "over_redaction_budget"}


def _given_options(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields the user set on the command line (`db.<field>` for the recipe):
    with --resume the others are the checkpoint's."""
    return {f"db.{_RECIPE_OPTIONS[name]}" if name in _RECIPE_OPTIONS else name
            for name in ctx.params if option_given(ctx, name)}


def _render_train(c: Any, s: Any, refused: bool) -> None:
    """The new model, why training stopped, its validation numbers and whether it is current."""
    summary, version, do_promote = s.as_dict(), s.version, s.promoted
    c.print(f"model {version} ({summary['stopped']} after {summary['steps']} steps, {summary['minutes']} min, "
            f"peak RSS {summary['peak_rss_mb']} MB)" + (" - now current" if do_promote else
            "" if refused else f"; not current: compare with `textloop evaluate --detector {summary['bundle']}`, "
            f"then `textloop models promote {version}`"))
    m = summary["metrics"] or {}
    if m:
        c.print("validation: " + ", ".join(f"{k} {m[k]:.3f}" for k in
                                           ("coverage_at_budget", "stock_coverage_at_budget", "over_redaction_budget",
                                            "text_coverage", "fully_covered", "over_redaction", "f1", "ap50")
                                           if isinstance(m.get(k), float) and m[k] == m[k]))
        if m.get("settings"):
            c.print("selected settings: " + ", ".join(f"{k} {v}" for k, v in m["settings"].items())
                    + (f"; weights {m['interpolation']:g} of the way from the start to the tuned model"
                       if isinstance(m.get("interpolation"), float) else ""))
    if summary.get("promotion_message"):
        c.print(("[yellow]forced:[/] " if summary.get("forced") else "") + summary["promotion_message"], highlight=False)
    c.print(f"bundle: {summary['bundle']}")


class _train_progress:
    """A progress bar with loss, learning rate and ETA (silent with --json / -q / no tty)."""

    def __init__(self, st: AppState) -> None:
        self.st = st
        self.bar = None

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        quiet = self.st.json or self.st.verbosity < 0 or (not sys.stderr.isatty() and self.st.verbosity < 1)
        if quiet:
            return lambda step, total, info: None
        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), console=Console(stderr=True))
        self.bar.__enter__()
        task = self.bar.add_task("train", total=None, info="")

        def update(step: int, total: int, info: dict) -> None:
            eta = info.get("eta_s", 0.0)
            text = f"epoch {info['epoch']} loss {info['loss']:.3f} lr {info['lr']:.2g} ETA {int(eta // 60)}:{int(eta % 60):02d}"
            self.bar.update(task, completed=step, total=total, info=text)

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


# --- models ----------------------------------------------------------------------------------

def models_default(ctx: typer.Context) -> None:
    """Without a subcommand: list the models."""
    if ctx.invoked_subcommand is None:
        models_list_cmd(ctx)


def models_list_cmd(ctx: typer.Context) -> None:
    """Registered models, newest last; `*` marks the current one."""
    from pipeline.bundle import list_models

    st = state(ctx)
    models = list_models(st.read_ws(read_only_ok=True))

    def render(c) -> None:
        if not models:
            c.print("no models yet: `textloop train` makes one (ppocr is used until then)")
            return
        t = titled("models")
        for col in ("", "version", "kind", "parent", "registered", "coverage", "stock cov.", "on", "over-red.", "F1", "MB"):
            t.add_column(col)
        for m in models:
            mt, view = m["metrics"], m["validation"]

            def f(v: Any) -> str:
                return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

            t.add_row("*" if m["promoted"] else "", m["version"], m["kind"], m["parent"] or "-",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(m["created_at"])),
                      f(view["validation_coverage"]), f(view["stock_validation_coverage"]),
                      _where(view), f(mt.get("over_redaction")), f(mt.get("f1")),
                      f"{m['bytes'] / 1e6:.1f}" if m["bytes"] else "missing")
        c.print(t)

    emit(st, models, render)


def _where(view: dict[str, Any]) -> str:
    """The validation numbers' split, short: `here` (this workspace's val split) or `training`."""
    return "-" if not view["validation_source"] else "here" if view["validated_here"] else "training"


def models_promote_cmd(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Model version to make current ('ppocr': stock again, no model current)."),
    force: bool = typer.Option(False, "--force", help="Promote even if it is worse than stock ppocr on validation."),
    threads: int = typer.Option(0, min=0, max=256, help="CPU threads for the validation run (0 = auto)."),
) -> None:
    """Make VERSION the current model (used by predict/rank/redact/serve with `current`), only if its
    validation coverage at the over-redaction budget is at least stock ppocr's (the val split is re-run)."""
    from pipeline.bundle import use_stock
    from pipeline.train import PromotionRefused, promote_checked

    st = state(ctx)
    if version == "ppocr":   # back to stock: the rule's own yardstick needs no check
        was = use_stock(st.read_ws())
        emit(st, {"current": "ppocr", "previous": was, "forced": False, "promotion": None},
             lambda c: c.print("current model: ppocr (stock)" + (f"; {was} is no longer current" if was else "")))
        return
    try:
        check = promote_checked(st.read_ws(), version, force=force, threads=threads)
    except KeyError as exc:
        fail(str(exc.args[0]), 2)   # a version that is not registered: usage
    except FileNotFoundError as exc:   # deleted since it was registered (a traceback)
        fail(f"{exc.filename or exc}: model bundle not found (deleted since it was registered?); "
             "`textloop models promote ppocr` makes stock current again")
    except ValueError as exc:          # its bundle no longer loads (damaged since it was registered)
        fail(str(exc))
    except PromotionRefused as exc:
        if st.json:   # scripts get the numbers on stdout, as `train --json --promote` gives them
            emit(st, {"current": None, "forced": False, "promotion": exc.check.to_json(),
                      "refused": exc.check.message(exc.version)})
        fail(f"not promoted: {exc.check.message(exc.version)}; --force promotes it anyway")
    forced = not check.ok

    def render(c) -> None:
        if forced:
            c.print(f"[yellow]warning:[/] promoted despite the rule (--force): {check.message(version)}", highlight=False)
        else:
            c.print(check.message(version), highlight=False)
        c.print(f"current model: {version}")

    emit(st, {"current": version, "forced": forced, "promotion": check.to_json()}, render)


def models_register_cmd(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="A bundle.zip (e.g. trained on another machine)."),
    parent: Optional[str] = typer.Option(None, help="Parent version (default: as recorded in the bundle)."),
    promote: bool = typer.Option(False, help="Also make it current (if the promotion rule passes)."),
    force: bool = typer.Option(False, "--force", help="With --promote: even if it is worse than stock ppocr."),
) -> None:
    """Copy a bundle into the workspace's models/ and record it."""
    from pipeline.bundle import register_model
    from pipeline.train import PromotionRefused, promote_checked

    st = state(ctx)
    if force and not promote:   # as train: it would do nothing
        fail("--force applies with --promote only (registering checks nothing to override)", 2)
    if not bundle.exists():
        fail(f"{bundle}: file not found", 2)
    # here, not in register_model: training records a parent given as a bundle file, unregistered
    if parent is not None:   # a typo was recorded as the model's lineage
        with st.ws().catalog() as cat:
            if cat.model(parent) is None:
                fail(f"--parent {parent}: not a registered model version (`textloop models` lists them)", 2)
    try:
        version = register_model(st.ws(), bundle, parent=parent, promote=False)
        check = promote_checked(st.ws(), version, force=force) if promote else None
    except ValueError as exc:
        fail(str(exc))
    except PromotionRefused as exc:
        if st.json:   # the version and both numbers, as `models promote --json` gives them
            emit(st, {"version": exc.version, "promoted": False, "promotion": exc.check.to_json(),
                      "refused": exc.check.message(exc.version)})
        fail(f"registered but not promoted: {exc.check.message(exc.version)}; --force promotes it anyway")

    def render(c) -> None:
        if check is not None:   # the verdict that made it current, as `models promote` prints it
            c.print(("[yellow]warning:[/] promoted despite the rule (--force): " if not check.ok else "")
                    + check.message(version), highlight=False)
        c.print(f"registered {version}{' (current)' if promote else ''}")

    emit(st, {"version": version, "promoted": promote, "promotion": check.to_json() if check else None}, render)


