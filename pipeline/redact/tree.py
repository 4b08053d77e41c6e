"""Redacting a file, folder tree or glob end to end: the whole `textloop redact` job as one call.

`redact_tree` is what the CLI runs, so a notebook gets the same job: the detector choice
(`current` falls back to stock ppocr with redact's scales), `--from-review`, the local or Ray
engine, archiving originals, queueing uncertain images for review, and the audit trail
(redact.log, manifest.csv/.parquet, summary.json).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.io import prepare_folders, utf8_text
from pipeline.listing import is_hidden_name
from pipeline.redact import run as rr

Progress = Callable[[int, int], None]


class AuditTrailError(RuntimeError):
    """The images were processed but manifest or summary.json could not be written; `summary`
    is what they would have said (the CLI still shows it: a full disk left the user nothing)."""

    def __init__(self, message: str, summary: "RedactSummary | None" = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class RedactSummary:
    """What one redact run did; `as_dict()` is summary.json and the `--json` payload."""

    images: int
    redacted: int
    skipped: int
    held_for_review: int
    waiting_review: int
    dry_run: int
    failed: int
    boxes: int
    remaining_text: int
    legible: list[dict[str, str]]
    audit_covered: int              # --verify: strings OCR read in an output, then covered
    audited: int                    # outputs the audit read (every one with --verify; else the noisy ones)
    ignored_non_images: int
    ignored_files: list[str]
    no_text_found: int              # redacted images in which nothing was found to cover
    seconds: float
    images_per_s: float
    errors: list[str]
    model: dict[str, Any]
    input: str
    output: str
    audit: str
    detector: str
    settings: dict[str, Any]
    engine: str
    archived: int
    # present only when they apply (as keys of as_dict())
    review: dict[str, Any] | None = None
    stopped_early: bool = False
    would_redact: list[dict[str, Any]] | None = None
    manifest: dict[str, str] | None = None
    # every per-image result (not serialised: the manifest holds them)
    results: tuple[rr.Result, ...] = field(default=(), repr=False, compare=False)

    _OPTIONAL = ("review", "stopped_early", "would_redact", "manifest")

    @property
    def ok(self) -> bool:
        """No image failed and the run was not stopped early (the CLI's exit code 0)."""
        return not self.failed and not self.stopped_early

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*self._OPTIONAL, "results")}
        if self.review is not None:
            out["review"] = self.review
        if self.stopped_early:
            out["stopped_early"] = True
        if self.would_redact is not None:
            out["would_redact"] = self.would_redact
        if self.manifest is not None:
            out["manifest"] = self.manifest
        return out


def needs_workspace(detector: Any, cfg: rr.RedactConfig, from_review: bool) -> bool:
    """Only `current`, `--review` and `--from-review` read the catalog; otherwise no workspace is
    opened. (The CLI opens one for `current` only if it exists: no promoted model means ppocr.)"""
    return detector == "current" or cfg.review or from_review


def _resolve_detector(detector: str, ws: Any, scales: Sequence[float] | None) -> tuple[str, dict[str, Any]]:
    """The spec resolved in the model registry (`current` without a promoted model is stock
    ppocr, made explicit so redact's scales apply) and the detector options: DB detectors,
    stock or tuned, get redact's passes (`run.pass_options`)."""
    from pipeline.bundle import resolve_detector

    detector = resolve_detector(detector, ws)
    if detector == "ppocr":
        return detector, rr.pass_options(tuple(scales) if scales else rr.DEFAULT_PPOCR_SCALES)
    return detector, rr.bundle_pass_options(detector, scales)


def redact_tree(input: str, output: str | Path, cfg: rr.RedactConfig = rr.RedactConfig(), *, workspace: Any = None,
                detector: Any = "current", scales: Sequence[float] | None = None, engine: str = "local",
                workers: int = 2, archive: Path | None = None, audit: Path | None = None, fail_fast: bool = False,
                from_review: bool = False, rename: bool = False, progress: Progress | None = None) -> RedactSummary:
    """Redact INPUT (file, folder tree or glob) into OUTPUT; the audit trail goes to AUDIT
    (default OUTPUT.audit). `detector`: a spec (ppocr, current, a bundle.zip) or a loaded
    detector (local engine only). `workspace` is needed for detector `current` (else stock
    ppocr), `cfg.review` and `from_review`; give a Workspace or a callable that opens one.
    `rename`: outputs named by a keyed hash of their input path, flat in OUTPUT (`rr.renamed`).
    Raises ValueError / FileNotFoundError for a job that cannot
    start (bad input, unwritable output, unknown detector) and AuditTrailError when the manifest
    or summary.json cannot be written; per-image failures are results, not exceptions."""
    from pipeline.bundle import with_workspace_info
    from pipeline.detectors import load_detector
    from pipeline.legibility import Reader

    if engine not in ("local", "ray"):
        raise ValueError("--engine must be local or ray")
    if engine == "ray" and fail_fast:   # actors keep writing after the driver stops reading
        raise ValueError("--fail-fast works with the local engine only (Ray actors finish their batches after the "
                         "first failure, and those outputs would be missing from the manifest)")
    if cfg.strict and not cfg.verify:
        raise ValueError("--strict needs --verify")
    if from_review and not cfg.force:
        cfg = replace(cfg, force=True)  # the held images' outputs are redone with the reviewed boxes
    update = progress or (lambda done, total: None)
    dry_run = cfg.dry_run
    planned = rr.plan_input(input, output, audit, archive=archive)
    output = Path(output)
    items, audit_dir, ignored = planned.items, planned.audit, planned.ignored
    if rename and items:   # an output file name or a damaged key is refused before anything is made
        items = rr.renamed(planned, output, create=False).items
    if not items and not planned.problems:
        if archive and Path(archive).is_dir() and any(p.is_file() for p in Path(archive).rglob("*")):
            # a finished --archive run moved every original away: running it again is a no-op
            return RedactSummary(**rr.summarize([], 0.0, ignored), model={}, input=input, output=str(output),
                                 audit=str(audit_dir), detector="", settings={}, engine=engine, archived=0)
        raise ValueError(f"{input}: no images found (extensions: {', '.join(sorted(set(rr.codec.EXTENSIONS)))})")
    # the detector before any folder is made: a bad --scales or model leaves nothing behind;
    # the workspace is opened only when needed, so a plain `redact` creates none
    ws = (workspace() if callable(workspace) else workspace) if needs_workspace(detector, cfg, from_review) else None
    in_flight = min(workers, max(1, len(items)))   # threads and actors alike: no more than the images
    if isinstance(detector, str):
        detector, det_options = _resolve_detector(detector, ws, scales)
        local = rr.local_options(det_options, in_flight) if engine == "local" else det_options
        det = rr.build_ppocr(**local) if detector == "ppocr" else \
            with_workspace_info(load_detector(detector, **local), ws)
    elif engine == "ray":
        raise ValueError("--engine ray builds the detector in each actor: give a detector spec, not a detector")
    else:
        det, det_options = detector, {}
    if from_review and not any(Path(it.sidecar).is_file() for it in items):
        # nothing was ever redacted here: there is nothing to finish, and no folder to create
        raise ValueError(f"{output}: no image under it was redacted with --review (no sidecars in {audit_dir}): "
                         "run `textloop redact --review` first")
    if engine == "ray":   # a cluster that cannot be reached is one line before any folder is made
        from pipeline.engines import check_engine, init_ray

        check_engine("ray")
        init_ray()
    if not dry_run:
        out_folder = Path(items[0].out).parent if planned.single else output
        try:  # a folder that cannot be written is one error up front, not a failure per image
            prepare_folders([out_folder, audit_dir])
        except OSError as exc:
            raise ValueError(str(exc)) from exc
        if rename:   # the key is made only now: a job refused above leaves nothing behind
            items = rr.renamed(planned, output).items
        started = time.time()  # temp files of an interrupted earlier run: older than this
        rr.remove_stale_temps([audit_dir] if planned.single else [output, audit_dir], started,
                              files=[Path(items[0].out)] if planned.single else ())

    # without --verify the reader audits only images too noisy for the detector (`rr.noisy`);
    # it builds its OCR engine the first time it reads
    verifier = Reader() if cfg.verify or cfg.audit_noisy else None

    reviewed: dict[str, Any] = {}
    pre_results: list[rr.Result] = []
    if from_review:
        from pipeline.redact import review as rv

        held = rv.held_items(items)
        reviewed = rv.reviewed_for_items(ws, held)
        held_rels = {it.rel for it, _ in held}
        skipped = rv.skipped_by_reviewer(ws, held)
        pre_results = ([rv.waiting(it, sc, sc.get("input_sha256") in skipped) for it, sc in held if it.rel not in reviewed]
                       + [rv.not_held(it) for it in items if it.rel not in held_rels])
        items = [it for it, _ in held if it.rel in reviewed]

    remove_log = rr.add_log_file(audit_dir) if not dry_run else (lambda: None)
    try:
        rr.log.info("redact %s -> %s: detector %s, settings %s", input, output, det.version, cfg.settings(det.version))
        if ignored:
            rr.log.info("%d file(s) ignored: not named as images (%s) or hidden; not redacted, not in the output",
                        len(ignored), " ".join(sorted(rr.codec.EXTENSIONS)))
        for path in ignored:
            rr.log.info("%s: ignored: %s", path, "hidden name" if is_hidden_name(Path(path).name) else "not named as an image")
        t0 = time.perf_counter()
        results: list[rr.Result] = list(pre_results) + planned.problems   # FIFOs, links out of the tree...
        stream = None
        run_start = time.time()
        try:
            if engine == "ray":
                from pipeline.redact.ray_engine import SpecFactory, ray_available, run_ray

                if not ray_available():
                    raise ValueError("--engine ray needs Ray: pip install 'textloop[ray]' (or pip install 'ray[data]')")
                vf = Reader if cfg.verify or cfg.audit_noisy else None   # each actor builds its own reader
                stream = run_ray(SpecFactory.of(detector, det, det_options, workers=in_flight), cfg, items, workers,
                                 verifier_factory=vf, reviewed=reviewed)
            elif fail_fast and planned.problems:
                # a listing failure (a FIFO, a dangling link) is the first failure: nothing is redacted
                stream = iter(())
            else:
                redactor = rr.Redactor(det, cfg, verifier)
                stream = rr.run_local(redactor, items, workers, reviewed=reviewed, fail_fast=fail_fast)
            for res in stream:
                results.append(res)
                update(len(results), len(items) + len(pre_results) + len(planned.problems))
        except KeyboardInterrupt:
            if stream is not None and hasattr(stream, "close"):
                stream.close()          # stop the engine's threads now, not at interpreter exit
            if engine == "ray":
                from pipeline.engines import stop_ray

                stop_ray()
            # images the workers finished after the signal are done too: count what has a sidecar
            # written by this run (the results seen here lagged, "after 5" with 7 written)
            done = sum(1 for it in items if _written_since(Path(it.sidecar), run_start))
            message = (f"interrupted after {max(done, len(results) - len(pre_results) - len(planned.problems))} "
                       "images; rerun the same command to resume (finished images are skipped)")
            rr.log.warning(message)
            raise KeyboardInterrupt(message) from None
        seconds = time.perf_counter() - t0

        archived = _archive(results, items, archive, cfg) if archive and not dry_run else 0

        review_info: dict[str, Any] | None = None
        # held images, and (with --verify) written ones whose audit covered what the detector missed
        to_review = [r for r in results if r.status == "held" or (r.status == "redacted" and r.audit_covered)]
        if cfg.review and to_review and not dry_run:
            from pipeline.redact import review as rv

            review_info = rv.queue_for_review(ws, to_review, det.version, min_score=cfg.detection_floor,
                                             sidecars={it.rel: it.sidecar for it in items})

        info = getattr(det, "info", None) or {}  # a trained model: its validation coverage (at the over-redaction budget)
        summary = RedactSummary(
            **rr.summarize(results, seconds, ignored),
            model={"name": getattr(det, "name", ""), "version": det.version,
                   "validation_coverage": info.get("validation_coverage"),
                   "stock_validation_coverage": info.get("stock_validation_coverage"),
                   "validation_source": info.get("validation_source"),
                   "passes": det.passes() if hasattr(det, "passes") else None},
            input=input, output=str(output), audit=str(audit_dir), detector=det.version,
            settings=cfg.settings(det.version), engine=engine, archived=archived, review=review_info,
            stopped_early=fail_fast and len(results) < len(items) + len(pre_results) + len(planned.problems),
            would_redact=[{"input": utf8_text(r.rel), "pages": r.pages, "boxes": r.boxes, "scores": r.scores}
                          for r in sorted(results, key=lambda r: r.rel) if r.status == "dry_run"] if dry_run else None,
            results=tuple(results))
        if not dry_run:
            try:
                summary = replace(summary, manifest=rr.write_manifest(audit_dir, results))
                rr.atomic_write_text(audit_dir / "summary.json", json.dumps(summary.as_dict(), indent=1, default=str) + "\n")
            except OSError as exc:
                raise AuditTrailError(f"audit trail not written: {exc}", summary) from exc
            rr.log.info("summary: %s", {k: v for k, v in summary.as_dict().items() if k != "errors"})
        return summary
    finally:
        remove_log()


def _archive(results: list[rr.Result], items: Sequence[rr.Item], archive: Path, cfg: rr.RedactConfig) -> int:
    """Move each redacted original under ARCHIVE once its output checks out; a failed move fails that image.

    Skipped originals whose finished output is on record go too: after an interrupted run, or a
    move that failed for a reason since fixed, a rerun skips them, and they stayed in INPUT for
    good (the rerun said "0 archived", exit 0). Symlinks go first: each is archived as the bytes
    it points at, which must still be in place."""
    archived = 0
    by_rel = {it.rel: it for it in items}
    for res in sorted(results, key=lambda r: not (r.rel in by_rel and Path(by_rel[r.rel].src).is_symlink())):
        done_before = (res.status == "skipped" and res.rel in by_rel
                       and (rr.read_sidecar(by_rel[res.rel].sidecar) or {}).get("status") == "redacted")
        if res.status == "redacted" or done_before:
            try:
                rr.archive_original(by_rel[res.rel], archive, cfg.max_pixels)
                archived += 1
            except OSError as exc:
                res.status, res.reason, res.detail = "failed", "archive_failed", str(exc)
    return archived


def _written_since(path: Path, t: float) -> bool:
    """Whether `path` exists and was last written at or after `t` (time.time())."""
    try:
        return path.stat().st_mtime >= t - 1e-3
    except OSError:
        return False
