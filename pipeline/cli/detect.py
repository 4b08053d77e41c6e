"""`textloop predict`, `textloop evaluate` and `textloop import`: the detector at work and under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.cli.common import (AppState, emit, fail, parse_floats, plain, progress, refuse_missing, state, titled,
                                 usage_errors)
from pipeline.config import DEFAULT_MAX_PIXELS
from pipeline.predict import DEFAULT_THRESHOLD


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
    app.command("import")(import_cmd)
    app.command("evaluate")(evaluate_cmd)


# --- shared helpers ----------------------------------------------------------------------

def parse_options(items: List[str] | None) -> dict[str, Any]:
    """`-o key=value` detector options: JSON values, comma lists (`scales=1,2`) or strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:   # `-o =1` was "unknown ppocr option(s): " with no name
            fail(f"detector option {item!r}: expected key=value", 2)
        if key in out:   # the last one silently won: `-o box_thresh=0.5 -o box_thresh=0.99` found nothing
            fail(f"detector option {key} given twice (-o {key}=...): give it once", 2)
        out[key] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if "," in raw:
        return [_parse_value(p) for p in raw.split(",") if p]
    return raw


def open_detector(st: AppState, spec: str, options: dict[str, Any]):
    """The spec resolved in the model registry, loaded, with one clear error line (exit 2: a
    bad spec or option is a usage error; 1 for a missing extra); the workspace is read only
    for `current`, and only if it exists (none: stock ppocr)."""
    from pipeline.bundle import resolve_detector
    from pipeline.detectors import load_detector

    try:
        return load_detector(resolve_detector(spec, st.existing_ws(read_only_ok=True) if spec == "current" else None), **options)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        fail(f"detector {spec}: {exc}", 2)
    except ImportError as exc:
        fail(f"detector {spec}: {exc}")


# --- predict ---------------------------------------------------------------------------------

def predict_cmd(
    ctx: typer.Context,
    images: List[str] = typer.Argument(None, help="Image files or folders (recursive). None: the workspace images."),
    detector: str = typer.Option("current", "--detector", "-d", "--model",
                                 help="ppocr, current (the promoted model; ppocr if none), or a bundle.zip."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write one JSON object per image to this JSONL file."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Keep boxes scoring at least this (low = more recall)."),
    workspace_images: bool = typer.Option(False, "--workspace-images",
                                          help="Predict the workspace's images (the default without IMAGES)."),
    split: Optional[str] = typer.Option(None, help="With workspace images: only this split (train/val/test)."),
    status: Optional[str] = typer.Option(None, help="With workspace images: only images with this status."),
    skip_existing: bool = typer.Option(False, help="With workspace images: reuse stored predictions of this model."),
    store: bool = typer.Option(True, help="Store predictions in the catalog for inputs that are workspace images."),
    batch_size: int = typer.Option(4, min=1, help="Images per detector call."),
    option: List[str] = typer.Option(None, "--option", "-o", help="Detector option key=value (repeatable), "
                                     "e.g. -o max_side=1500 -o scales=1,2 for ppocr."),
    engine: str = typer.Option("local", help="local | ray (Ray Data actors; RAY_ADDRESS or a local instance). "
                               "The catalog is written by this process."),
    workers: int = typer.Option(2, min=1, max=256, help="Ray actors (with --engine ray); the cores shared between them."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Refuse images with more pixels (decompression bombs); "
                                   "harvest and redact have the same option."),
) -> None:
    """Run a detector over images: JSONL out, and catalog rows for workspace images.

    With IMAGES (files/folders), every file is predicted; those whose bytes are already in the workspace also get a catalog row (--no-store to skip). Without IMAGES (or with --workspace-images), the workspace's images are predicted and stored under the model version.
    """
    from pipeline import predict as P
    from pipeline.engines import SpecFactory, check_engine

    st = state(ctx)
    with usage_errors():
        check_engine(engine)
    if images and workspace_images:
        fail("give IMAGES or --workspace-images, not both", 2)
    if images and (split or status or skip_existing):
        fail("--split, --status and --skip-existing choose among workspace images; with IMAGES every file is predicted", 2)
    with usage_errors():
        P.check_filters(split, status)
    det_opts = parse_options(option)
    det = open_detector(st, detector, det_opts)
    ws = st.existing_ws() if images else st.read_ws()   # predicting files never creates a workspace
    factory = SpecFactory.of(detector, det, det_opts, ws, workers) if engine == "ray" else None
    common = dict(out=out, threshold=threshold, batch_size=batch_size, engine=engine, factory=factory, workers=workers,
                  max_pixels=max_pixels)
    try:
        with progress(st, f"predict ({det.version})") as update:
            if images:
                summary = P.predict_files(det, images, workspace=ws if store else None, progress=update, **common)
            else:
                summary = P.predict_workspace_images(ws, det, split=split, status=status, progress=update,
                                                     skip_existing=skip_existing, **common)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    except P.OutputError as exc:
        fail(str(exc))
    except KeyboardInterrupt:   # the catalog keeps every finished image (predict_and_store flushes)
        kept = "predictions of finished workspace images are kept in the catalog"
        fail(f"interrupted: {kept}" + ("" if images else "; rerun with --skip-existing to continue")
             + (f"; {out} was not written" if out else ""), 130)
    emit(st, summary.as_dict(), lambda c: _render_predict(c, summary, out), problems=summary.errors, label="skipped")
    if summary.images == 0 and summary.errors:
        raise typer.Exit(1)


def _render_predict(c: Console, s: Any, out: Optional[Path]) -> None:
    for line in s.errors[:50]:
        c.print(f"[yellow]skipped[/] {plain(line)}", highlight=False, soft_wrap=True)
    c.print(f"{s.images} images, {s.boxes} boxes (threshold {s.threshold}) with {s.model_version} in {s.seconds:.1f}s"
            f" ({s.images_per_s or '-'} images/s); {len(s.errors)} errors; {s.stored_in_catalog} stored in the catalog"
            + (f" ({s.reused} reused from an earlier run)" if s.reused else "")
            + (f"; wrote {out}" if out else ""), highlight=False)


# --- import ----------------------------------------------------------------------------------

def import_cmd(
    ctx: typer.Context,
    labels: List[Path] = typer.Argument(..., help="Label files: devset-style boxes.jsonl, COCO .json, or a devset "
                                        "root folder (<source>/boxes.jsonl)."),
    fmt: str = typer.Option("auto", "--format", help="auto (.jsonl = devset, .json = COCO), jsonl or coco "
                            "(YOLO is not read: import a jsonl or coco export)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the image paths in the label files are "
                                          "relative to (default: the label file's folder; for COCO also images/)."),
    frame: str = typer.Option("auto", help="Frame of the boxes: auto (from the labelled width/height), upright "
                              "(EXIF orientation applied) or raw (stored pixels)."),
    category: List[str] = typer.Option(None, "--category", help="COCO: import only these category names (repeatable)."),
) -> None:
    """Bring existing labels in as human annotations: images harvested, boxes stored per image; a
    record's split (an export's) places the images it adds."""
    from pipeline.importer import import_labels

    st = state(ctx)
    refuse_missing(labels, "label file")   # before the workspace: a typo left an empty catalog behind
    ws = st.ws()
    try:
        with progress(st, "import (harvest images)") as update:
            summary = import_labels(ws, labels, fmt=fmt, images_dir=images, frame=frame,
                                    categories=category or None, progress=update)
    except ValueError as exc:
        fail(str(exc), 2)
    except RuntimeError as exc:
        fail(str(exc))

    def render(c: Console) -> None:
        _render_import(c, summary, ws.root)
        kept = [f"{summary.splits_from_labels} images added in the split their label file gives"] \
            if summary.splits_from_labels else []
        kept += [f"{summary.texts} box transcriptions kept"] if summary.texts else []
        if kept:
            c.print("; ".join(kept), highlight=False)

    empty = summary.images == 0 and not summary.records   # an empty file: exit 0 said "imported"
    why = f"no label records in {', '.join(str(p) for p in labels)}"
    if empty and st.json:   # named in --json's problems too (there it was [] with exit 1)
        summary.problems.append(why)
    emit(st, summary.as_dict(), render, problems=summary.problems, label="problem")
    if empty:
        fail(why)
    if summary.images == 0 and summary.records:
        raise typer.Exit(1)


def _render_import(c: Console, summary: Any, root: Path) -> None:
    """The first problems and the counts of what was imported."""
    for line in summary.problems[:50]:
        c.print(f"[yellow]problem[/] {plain(line)}", highlight=False, soft_wrap=True)
    if len(summary.problems) > 50:
        c.print(f"... and {len(summary.problems) - 50} more")
    t = titled(f"import into {root}")
    t.add_column("")
    t.add_column("count", justify="right")
    for key in ("records", "images", "with_boxes", "empty", "boxes", "ignored_boxes", "inserted", "updated",
                "unchanged", "rotated"):
        t.add_row(key.replace("_", " "), str(getattr(summary, key)))
    t.add_row("problems", str(len(summary.problems)))
    c.print(t)


# --- evaluate --------------------------------------------------------------------------------

_COLS = (("n_images", "img", "{:d}"), ("n_gt", "gt", "{:d}"), ("n_pred", "pred", "{:d}"),
         ("precision", "P", "{:.3f}"), ("recall", "R", "{:.3f}"), ("f1", "F1", "{:.3f}"),
         ("ap50", "AP50", "{:.3f}"), ("text_coverage", "cover", "{:.3f}"),
         ("fully_covered", "full", "{:.3f}"), ("over_redaction", "over", "{:.4f}"))


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return pattern.format(int(value) if pattern == "{:d}" else value)


def metrics_table(rows: dict[str, dict[str, Any]], first: str = "source") -> Table:
    """One row per source/threshold; the long title is printed apart (it would squeeze the columns)."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True)
    t.add_column(first, overflow="fold")
    for _, name, _ in _COLS:
        t.add_column(name, justify="right")
    for label, m in rows.items():
        t.add_row(label, *(_fmt(m.get(key), pat) for key, _, pat in _COLS))
    return t


def evaluate_cmd(
    ctx: typer.Context,
    detector: str = typer.Option("current", "--detector", "-d", "--model",
                                 help="ppocr, current (the promoted model; ppocr if none), or a bundle.zip."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth boxes.jsonl (devset format)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the --gt image paths are relative to "
                                          "(default: the folder of --gt)."),
    devset: Optional[Path] = typer.Option(None, "--set", help="A devset root (<source>/boxes.jsonl + images): "
                                          "per-source breakdown."),
    split: Optional[str] = typer.Option(None, help="Without --gt/--set: the workspace split whose human labels are the GT "
                                        "(train, val, test or all; default test)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Score threshold for P/R/F1 and the pixel metrics "
                                    "(AP50 uses every candidate box)."),
    iou: float = typer.Option(0.5, min=0.0, max=1.0, help="IoU for a box match."),
    pad_px: float = typer.Option(0.0, min=0.0, help="Grow predicted boxes by this many pixels for the pixel metrics "
                                 "(as redaction would)."),
    sweep: Optional[str] = typer.Option(None, help="Also report the overall metrics at these thresholds, "
                                        "e.g. 0.3,0.5,0.7 (one detection pass)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only N images, taken in turn from each source (quick checks)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    batch_size: int = typer.Option(4, min=1, help="Images per detector call."),
    option: List[str] = typer.Option(None, "--option", "-o", help="Detector option key=value (repeatable)."),
) -> None:
    """Measure a detector against ground truth: box P/R/F1@IoU, AP50, text coverage, fully covered
    boxes, over-redaction (defined in `pipeline.evaluate`), overall and per source.

    GT from --gt boxes.jsonl (+ --images DIR), from a devset root (--set), or, with neither, the human labels of the workspace's test split (per annotation source).
    """
    from pipeline.detectors import check_spec
    from pipeline.evaluate import NoGroundTruth, evaluate_detector, load_ground_truth

    from pipeline.io import UnwritableError, check_writable

    st = state(ctx)
    with usage_errors(ValueError, FileNotFoundError, UnwritableError):   # the options first, then the data
        check_spec(detector)
        thresholds = list(parse_floats(sweep, "--sweep", 0.0, 1.0))
        if split is not None and (gt is not None or devset is not None):
            raise ValueError("--split chooses a workspace's labels; --gt and --set use every image they list")
        if iou <= 0.0:
            raise ValueError(f"--iou must be above 0 (at 0 boxes that do not overlap match), got {iou}")
        if out is not None:
            check_writable(out)
    try:
        truth = load_ground_truth(gt, images, devset, st.read_ws() if gt is None and devset is None else None,
                                  split or "test", limit)
    except (OSError, ValueError) as exc:
        fail(str(exc), 2)
    except NoGroundTruth as exc:
        fail(str(exc))
    det = open_detector(st, detector, parse_options(option))
    with progress(st, f"evaluate ({det.version})") as update:  # every candidate box; thresholds applied inside
        report = evaluate_detector(det, truth.items, threshold=threshold, iou=iou, pad_px=pad_px, sweep=thresholds,
                                   where=truth.where, batch_size=batch_size, out=out, skipped=truth.skipped,
                                   changed=truth.changed, progress=update)
    emit(st, report.as_dict(), lambda c: _render_eval(c, report, out))
    if not report.n_images:
        raise typer.Exit(1)


SHOWN_PROBLEMS = 20   # evaluate's skipped lines on the console (all of them in --json / --out)


def _render_eval(c: Console, r: Any, out: Optional[Path]) -> None:
    """Skipped images, the metrics per source and overall, the sweep, and a legend."""
    report, errors, where = r.as_dict(), r.errors, r.ground_truth
    threshold, iou, pad_px = r.threshold, r.iou_threshold, r.pad_px
    for kind, lines in (("skipped", errors), ("label", r.label_changes)):
        for line in lines[:SHOWN_PROBLEMS]:
            c.print(f"[yellow]{kind}[/] {plain(line)}", highlight=False, soft_wrap=True)
        if len(lines) > SHOWN_PROBLEMS:   # the list was cut without a word
            c.print(f"[yellow]... and {len(lines) - SHOWN_PROBLEMS} more[/] (every one in --json"
                    + (f" and {plain(out)}" if out else "") + ")", highlight=False, soft_wrap=True)
    rows = dict(report["by_source"]) if len(report["by_source"]) > 1 else {}
    rows["all"] = report["overall"]
    c.print(f"[bold]{plain(r.model_version)}[/] on {plain(where)} (threshold {threshold}, IoU {iou}, pad {pad_px:g} px)",
            highlight=False, soft_wrap=True)
    c.print(metrics_table(rows))
    if report["sweep"]:
        c.print("[bold]threshold sweep[/] (all images)")
        c.print(metrics_table(report["sweep"], first="threshold"))
    c.print("P/R/F1 at the IoU; cover = share of GT text pixels redacted; full = share of GT boxes >= 95 % "
            "covered; over = share of image area redacted outside every GT box", highlight=False)
    labels = len(errors) - r.unreadable   # label-file problems are not unreadable images
    c.print(f"{r.n_images} images in {r.seconds:.1f}s ({report['images_per_s']} images/s); {r.unreadable} unreadable"
            + (f"; {labels} label record(s) skipped" if labels else "")
            + (f"; report written to {out}" if out else ""), highlight=False)
