"""Redacting a file, folder tree or glob end to end: the whole `textloop redact` job as one call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from pipeline.cli.common import fail, progress
from pipeline.legibility import Reader
from pipeline.redact import run as rr


def redact_tree(st, input, output, cfg, detector, scales, engine, workers, archive, audit, fail_fast, dry_run,
                verify, review, from_review):
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
    return summary, results, det, audit_dir, review_info, failed_early
