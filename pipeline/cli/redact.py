"""`textloop redact INPUT OUTPUT`: folders of images in, the same tree out with text covered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from pipeline.cli.common import emit, fail, progress, state
from pipeline.legibility import Reader
from pipeline.redact import run as rr
from pipeline.redact.core import SHAPES, STYLES, Pad, parse_color


def register(app: typer.Typer) -> None:
    app.command("redact")(redact_cmd)


def redact_cmd(
    ctx: typer.Context,
    input: str = typer.Argument(..., help="An image file, a folder (recursive), or a glob (quote it)."),
    output: Path = typer.Argument(..., help="Output file or folder; the input tree is mirrored under it."),
    detector: str = typer.Option("current", help="ppocr | current (the workspace's promoted model, else ppocr) | path/to/bundle.zip."),
    threshold: float = typer.Option(rr.DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Minimum box score (0-1); low favours recall."),
    pad: str = typer.Option(str(rr.DEFAULT_PAD), help="Growth of each box per side: pixels and/or % of box height, e.g. 4, 15%, 2px+15%."),
    style: str = typer.Option("fill", help="fill (opaque, default) | blur | pixelate (both reversible!)."),
    shape: str = typer.Option("polygon", help="polygon (default): DB's rotated quads grown along their own axes | box: their axis-aligned enclosing boxes."),
    color: str = typer.Option("black", help="Fill colour: name, #rrggbb or r,g,b."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG/WebP quality of lossy outputs."),
    workers: int = typer.Option(2, min=1, help="Images in flight (local threads or Ray actors)."),
    engine: str = typer.Option("local", help="local | ray (Ray Data; RAY_ADDRESS or a local instance)."),
    force: bool = typer.Option(False, "--force", help="Redo images already done with the same settings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Detect and report; write nothing."),
    archive: Optional[Path] = typer.Option(None, help="Move each original here (tree mirrored) after its output is checked."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed image."),
    verify: bool = typer.Option(False, "--verify", help="Legibility audit: OCR (PP-OCRv4 recogniser) reads every output as viewers show it; report strings of 3+ characters left outside the covered areas."),
    strict: bool = typer.Option(False, "--strict", help="With --verify: fail (and do not write) images in which OCR still reads text."),
    review: bool = typer.Option(False, "--review", help="Hold images with uncertain boxes back and send them to Label Studio."),
    review_band: str = typer.Option("%g,%g" % rr.DEFAULT_REVIEW_BAND, help="Uncertain score band lo,hi for --review."),
    from_review: bool = typer.Option(False, "--from-review", help="Finish held images with their reviewed boxes (after `textloop pull`)."),
    audit: Optional[Path] = typer.Option(None, help="Sidecars, manifest and log (default: OUTPUT.audit beside OUTPUT)."),
    max_pixels: int = typer.Option(178_956_970, min=1, help="Refuse images with more pixels on any page (decompression bombs)."),
    scales: Optional[str] = typer.Option(None, help="ppocr only: detection scales (default 1,2: the 2x pass only on windows around possible small text, on images up to 1600 px long side; 1 is the plain 1x pass, ~2x faster on real images)."),
) -> None:
    """Cover every text region in a file, folder tree or glob: opaque fill, clean metadata, resumable.

    Outputs keep format, size, bit depth, pages and ICC profile, are upright (EXIF orientation
    applied) and carry no EXIF/GPS/XMP/IPTC/comments/text chunks. Each image gets a sidecar JSON
    (hashes, boxes, scores, detector, settings) in the audit folder, with manifest.csv/.parquet,
    redact.log and summary.json. Exit code 1 if any image failed."""
    st = state(ctx)
    if style not in STYLES:
        fail(f"--style must be one of {', '.join(STYLES)}", 2)
    if shape not in SHAPES:
        fail(f"--shape must be one of {', '.join(SHAPES)}", 2)
    if engine not in ("local", "ray"):
        fail("--engine must be local or ray", 2)
    if strict and not verify:
        fail("--strict needs --verify", 2)
    try:
        pad_v = Pad.parse(pad)
        color_v = parse_color(color)
        lo, hi = (float(x) for x in review_band.split(","))
    except ValueError as exc:
        fail(str(exc) if "--" in str(exc) else f"bad --review-band {review_band!r}: use lo,hi", 2)
    if not 0.0 <= lo < hi <= 1.0:
        fail(f"bad --review-band {review_band!r}: needs 0 <= lo < hi <= 1", 2)
    if style != "fill":
        st.console.print(f"[bold yellow]warning:[/] --style {style} is reversible: blurred or pixelated text and faces "
                         "can be reconstructed. Use the default opaque fill for anything sensitive.", highlight=False)
    cfg = rr.RedactConfig(threshold=threshold, pad=pad_v, style=style, shape=shape, color=color_v, jpeg_quality=quality,
                          max_pixels=max_pixels, review=review, review_band=(lo, hi), verify=verify,
                          strict=strict, dry_run=dry_run, force=force or from_review)
    try:
        planned = rr.plan_input(input, output, audit, exclude=[archive] if archive else [])
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    items, audit_dir, ignored = planned.items, planned.audit, planned.ignored
    if not items and not planned.problems:
        fail(f"{input}: no images found (extensions: {', '.join(sorted(set(rr.codec.EXTENSIONS)))})", 2)
    if not dry_run:
        out_folder = Path(items[0].out).parent if planned.single else output
        try:  # a folder that cannot be written is one error up front, not a failure per image
            rr.prepare_folders([out_folder, audit_dir])
        except OSError as exc:
            fail(str(exc), 2)
        started = time.time()  # temp files of an interrupted earlier run: older than this
        rr.remove_stale_temps([audit_dir] if planned.single else [output, audit_dir], started,
                              files=[Path(items[0].out)] if planned.single else ())

    ws = st.ws() if (detector == "current" or review or from_review) else None
    from pipeline.detectors import load_detector

    if detector == "current" and ws is not None:
        with ws.catalog() as cat:
            if cat.current_model() is None:
                detector = "ppocr"  # the documented fallback, made explicit so --scales applies
    det_options: dict[str, Any] = {}
    if detector == "ppocr":
        try:
            det_options["scales"] = tuple(float(x) for x in scales.split(",")) if scales else rr.DEFAULT_PPOCR_SCALES
        except ValueError:
            fail(f"bad --scales {scales!r}: use e.g. 1,2", 2)
    elif scales:
        fail("--scales applies to the ppocr detector only", 2)
    try:
        det = rr.build_ppocr(**det_options) if detector == "ppocr" else load_detector(detector, ws)
        verifier = Reader() if verify else None
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)

    reviewed: dict[str, Any] = {}
    pre_results: list[rr.Result] = []
    if from_review:
        from pipeline.redact import review as rv

        held = rv.held_items(items)
        reviewed = rv.reviewed_for_items(ws, held)
        pre_results = [rv.waiting(it, sc) for it, sc in held if it.rel not in reviewed]
        items = [it for it, _ in held if it.rel in reviewed]

    remove_log = rr.add_log_file(audit_dir) if not dry_run else (lambda: None)
    rr.log.info("redact %s -> %s: detector %s, settings %s", input, output, det.version, cfg.settings(det.version))
    t0 = time.perf_counter()
    results: list[rr.Result] = list(pre_results) + planned.problems   # FIFOs, links out of the tree...
    failed_early = False
    try:
        with progress(st, "redact") as update:
            if engine == "ray":
                from pipeline.redact.ray_engine import SpecFactory, ray_available, run_ray

                if not ray_available():
                    fail("--engine ray needs Ray: pip install 'textloop[ray]' (or pip install 'ray[data]')", 2)
                vf = Reader if verify else None   # each actor builds its own reader
                stream = run_ray(SpecFactory(detector, str(ws.root) if ws else None, det_options), cfg, items, workers,
                                 verifier_factory=vf, reviewed=reviewed)
            else:
                redactor = rr.Redactor(det, cfg, verifier)
                stream = rr.run_local(redactor, items, workers, reviewed=reviewed, fail_fast=fail_fast)
            for res in stream:
                results.append(res)
                update(len(results), len(items) + len(pre_results))
                if fail_fast and res.status == "failed" and engine == "ray":
                    failed_early = True
                    break
    except KeyboardInterrupt:
        rr.log.warning("interrupted after %d images; rerun the same command to resume", len(results))
        remove_log()
        raise
    seconds = time.perf_counter() - t0

    archived = 0
    if archive and not dry_run:
        by_rel = {it.rel: it for it in items}
        for res in results:
            if res.status == "redacted":
                try:
                    rr.archive_original(by_rel[res.rel], archive, cfg.max_pixels)
                    archived += 1
                except OSError as exc:
                    res.status, res.reason, res.detail = "failed", "archive_failed", str(exc)

    review_info: dict[str, Any] | None = None
    held = [r for r in results if r.status == "held"]
    if review and held and not dry_run:
        from pipeline.redact import review as rv

        review_info = rv.queue_for_review(ws, held, det.version, min_score=cfg.detection_floor,
                                         sidecars={it.rel: it.sidecar for it in items})

    summary = rr.summarize(results, seconds, len(ignored))
    info = getattr(det, "info", None) or {}  # a trained model: its validation coverage (at the over-redaction budget)
    summary["model"] = {"name": getattr(det, "name", ""), "version": det.version,
                        "validation_coverage": info.get("validation_coverage"),
                        "stock_validation_coverage": info.get("stock_validation_coverage")}
    summary.update({"input": input, "output": str(output), "audit": str(audit_dir), "detector": det.version,
                    "settings": cfg.settings(det.version), "engine": engine, "archived": archived})
    if review_info is not None:
        summary["review"] = review_info
    if failed_early:
        summary["stopped_early"] = True
    if dry_run:
        summary["would_redact"] = [{"input": r.rel, "pages": r.pages, "boxes": r.boxes, "scores": r.scores}
                                   for r in sorted(results, key=lambda r: r.rel) if r.status == "dry_run"]
    if not dry_run:
        try:
            summary["manifest"] = rr.write_manifest(audit_dir, results)
            rr.atomic_write_text(audit_dir / "summary.json", __import__("json").dumps(summary, indent=1, default=str) + "\n")
        except OSError as exc:
            remove_log()
            fail(f"audit trail not written: {exc}")
        rr.log.info("summary: %s", {k: v for k, v in summary.items() if k != "errors"})
    remove_log()

    def render(c) -> None:
        if dry_run:
            t = Table(title="dry run: what would be redacted", show_header=True)
            t.add_column("image")
            t.add_column("pages", justify="right")
            t.add_column("boxes", justify="right")
            t.add_column("scores")
            for r in sorted(results, key=lambda r: r.rel):
                sc = [s for page in r.scores for s in page]
                t.add_row(r.rel, str(r.pages), str(r.n_boxes) if r.status != "failed" else f"failed: {r.reason}",
                          f"{min(sc):.2f}-{max(sc):.2f}" if sc else "")
            c.print(t)
        t = Table(title=f"redact {input} -> {output}", show_header=True)
        t.add_column("result")
        t.add_column("images", justify="right")
        for key in ("redacted", "skipped", "held_for_review", "waiting_review", "dry_run", "failed"):
            if summary[key] or key in ("redacted", "failed"):
                t.add_row(key.replace("_", " "), str(summary[key]))
        c.print(t)
        for line in summary["errors"][:50]:
            c.print(f"[red]failed[/] {line}", highlight=False, soft_wrap=True)
        if len(summary["errors"]) > 50:
            c.print(f"... and {len(summary['errors']) - 50} more (see {audit_dir / 'manifest.csv'})")
        if verify:
            c.print(f"verify: OCR read {summary['remaining_text']} legible string(s) outside the covered areas"
                    + (": " + ", ".join(repr(x["text"]) for x in summary["legible"][:10]) if summary["legible"] else ""),
                    highlight=False)
        if review_info:
            c.print(f"review: {review_info.get('held', 0)} held, {review_info.get('pushed', 0)} pushed to Label Studio"
                    + (f" (push failed: {review_info['push_error']})" if review_info.get("push_error") else ""))
        c.print(f"{summary['boxes']} boxes, {summary['images_per_s']} images/s, {summary['seconds']}s, "
                f"detector {det.version}" + ("" if dry_run else f"; audit trail in {audit_dir}"), highlight=False)

    emit(st, summary, render)
    if summary["failed"] or failed_early:
        raise typer.Exit(1)
