"""Batch inference: any detector over files or over workspace images.

`predict_paths` streams `(path, Detections | Exception)` so one unreadable image never stops a
batch. `predict_workspace` runs over catalog images and upserts one `predictions` row per
(image, model_version), so rerunning it gives the same catalog. Boxes are pixel xyxy in the
upright (EXIF-applied) image, like every box in textloop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import Detections, clip
from pipeline.catalog import Catalog, ImageStatus
from pipeline.config import DEFAULT_MAX_PIXELS, check_number, check_split
from pipeline.detectors.base import Detector, detect_visible
from pipeline.imaging import ImageRejected, load_views
from pipeline.io import describe_error, is_bug, sha256_file
from pipeline.listing import IMAGE_EXTENSIONS, NotRegularFile, Skipped, file_problem
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

# Default score threshold: low, because a missed word is a leak while an extra box is only a
# little over-redaction (and a reviewer deletes it in seconds). See README "evaluate".
DEFAULT_THRESHOLD = 0.3
DEFAULT_BATCH = 4
COMMIT_EVERY = 64   # prediction rows per catalog transaction: what an interrupted run keeps
# The catalog's statuses: what --status may name (anything else matched nothing and looked like an empty workspace).
STATUSES = tuple(s.value for s in ImageStatus)


def check_filters(split: str | None, status: str | None) -> None:
    """ValueError naming the allowed values for a `--split` / `--status` the catalog can never
    match, so a typo is refused before any work instead of predicting "0 images"."""
    check_split(split)
    if status is not None and status not in STATUSES:
        raise ValueError(f"--status must be one of {', '.join(STATUSES)}; got {status!r}")


class RemoteError(RuntimeError):
    """An image that failed in a Ray actor: the message is already `image_error`'s line."""


def image_error(exc: BaseException) -> str:
    """One line for a failed image: `reason: detail` for the stable reasons harvest and redact
    report (empty, not_an_image, corrupt, not_a_regular_file...), else `io.describe_error`."""
    if isinstance(exc, (ImageRejected, RemoteError)):
        return str(exc)
    if isinstance(exc, NotRegularFile):
        return f"{exc.reason}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        # the listing's reasons (`not_found`, `dangling_symlink`), not "FileNotFoundError: [Errno 2] ..."
        problem = file_problem(exc.filename)
        if problem:
            return f"{problem[0]}: {problem[1]}"
    return describe_error(exc)


@dataclass(frozen=True)
class Prediction:
    """One image's result: Detections (thresholded) or the error that stopped it."""

    path: Path
    width: int
    height: int
    result: Detections | Exception

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Detections)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _clean(det: Detections, width: int, height: int, threshold: float) -> Detections:
    """Threshold, clip to the image and drop empty boxes."""
    det = det.filter(threshold)
    if not len(det):
        return det
    b = clip(det.boxes, width, height)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    quads = None if det.quads is None else np.stack([np.clip(det.quads[..., 0], 0, width),
                                                     np.clip(det.quads[..., 1], 0, height)], axis=-1)[keep]
    return Detections(b[keep], det.scores[keep], det.labels[keep], quads)


def check_options(threshold: float, batch_size: int) -> None:
    """ValueError for options the CLI range-checks, so the library gets the same checks: a score
    threshold outside [0, 1] (or NaN) kept no box and reported every image done."""
    check_number("threshold", threshold, 0, 1)
    check_number("batch_size", batch_size, 1, 1 << 16, integer=True)


def predict_images(detector: Detector, paths: Iterable[str | Path], threshold: float = DEFAULT_THRESHOLD,
                   batch_size: int = DEFAULT_BATCH, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Prediction]:
    """Like `predict_paths`, with the image size (as displayed) in every result; an image with
    more than `max_pixels` pixels is refused (`too_many_pixels`) before it is decoded."""
    for preds in predict_images_each([detector], paths, threshold, batch_size, max_pixels):
        yield preds[0]


def predict_images_each(detectors: Sequence[Detector], paths: Iterable[str | Path],
                        threshold: float = DEFAULT_THRESHOLD, batch_size: int = DEFAULT_BATCH,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[Prediction]]:
    """`predict_images` of every detector, each image decoded once: per image, one Prediction
    per detector (a threshold grid decoded each validation image 18 times, 8 s of 40)."""
    check_options(threshold, batch_size)
    for batch in _chunks((Path(p) for p in paths), batch_size):
        loaded: list[tuple[Path, list[np.ndarray]]] = []   # every view a viewer may show
        failed: dict[Path, Exception] = {}
        for p in batch:
            try:
                loaded.append((p, load_views(p, max_pixels)))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the batch goes on
                if is_bug(exc):
                    raise
                failed[p] = exc
        shapes = {p: a[0].shape for p, a in loaded}
        per_detector = [_detect_loaded(detector, loaded, failed) for detector in detectors]
        for p in batch:
            h, w = shapes[p][:2] if p in shapes else (0, 0)
            if p in failed:   # unreadable: one line, not one per detector
                log.info("%s: %s", p, failed[p])
            out = []
            for results in per_detector:
                r = results[p]
                if isinstance(r, Detections):
                    r = _clean(r, w, h, threshold)
                elif p not in failed:
                    log.info("%s: %s", p, r)
                out.append(Prediction(p, int(w), int(h), r))
            yield out


def _detect_loaded(detector: Detector, loaded: Sequence[tuple[Path, list[np.ndarray]]],
                   failed: dict[Path, Exception]) -> dict[Path, Detections | Exception]:
    """One detector call over a batch's decoded views; when it fails, one call per image so the
    failure is pinned to its image and the others still get their detections."""
    results: dict[Path, Detections | Exception] = dict(failed)
    arrays = [a for _, a in loaded]
    try:
        dets = detect_visible(detector, arrays) if arrays else []
        for (p, _), d in zip(loaded, dets):
            results[p] = d
    except Exception as exc:  # noqa: BLE001 - retry one by one so the failure is pinned to its image
        if is_bug(exc):
            raise
        for p, a in loaded:
            try:
                results[p] = detect_visible(detector, [a])[0]
            except Exception as exc:  # noqa: BLE001
                results[p] = exc
    return results


class _PredictActor:
    """`--engine ray`: one detector per actor (built from a `engines.SpecFactory`), predicting
    the batch's paths; returns one JSON row per image (detections or the error)."""

    def __init__(self, factory: Callable[[], Detector], threshold: float, batch_size: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.det, self.threshold, self.batch_size, self.max_pixels = factory(), threshold, batch_size, max_pixels

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for pred in predict_images(self.det, [str(p) for p in batch["path"]], self.threshold, self.batch_size,
                                   self.max_pixels):
            row: dict[str, Any] = {"path": str(pred.path), "width": pred.width, "height": pred.height}
            if pred.ok:
                row["det"] = pred.result.to_json()  # type: ignore[union-attr]
            else:
                row["error"] = image_error(pred.result)  # type: ignore[arg-type]
            rows.append(json.dumps(row))
        return {"result": rows}


def predict_images_on(engine: str, detector: Detector | None, paths: Iterable[str | Path],
                      threshold: float = DEFAULT_THRESHOLD, batch_size: int = DEFAULT_BATCH,
                      factory: Callable[[], Detector] | None = None, workers: int = 2,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Prediction]:
    """`predict_images` on an engine (`pipeline.engines`): `local` runs `detector` here, in input
    order; `ray` runs `factory` on `workers` actors, results in completion order (errors come
    back as RemoteError with the message)."""
    from pipeline.engines import map_actors, run_items

    def local() -> Iterator[Prediction]:
        return predict_images(detector, paths, threshold, batch_size, max_pixels)  # type: ignore[arg-type]

    def ray() -> Iterator[Prediction]:
        if factory is None:
            raise ValueError("--engine ray needs a detector factory (a spec), not a built detector")
        rows = map_actors(_PredictActor, {"factory": factory, "threshold": threshold, "batch_size": batch_size,
                                          "max_pixels": max_pixels},
                          [{"path": str(p)} for p in paths], workers, batch_size)
        for row in rows:
            r = json.loads(row["result"])
            res: Detections | Exception = Detections.from_json(r["det"]) if "det" in r else RemoteError(r["error"])
            yield Prediction(Path(r["path"]), int(r["width"]), int(r["height"]), res)

    return run_items(local, ray, engine)


def predict_paths(detector: Detector, paths: Iterable[str | Path], threshold: float = DEFAULT_THRESHOLD,
                  batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[Path, Detections | Exception]]:
    """Detections (score >= threshold, clipped to the image) per path, streamed in input order;
    an image that cannot be read or detected yields its exception and the rest go on."""
    for pred in predict_images(detector, paths, threshold, batch_size):
        yield pred.path, pred.result


def store_predictions(cat: Catalog, model_version: str, items: Iterable[tuple[str, Detections]],
                      min_score: float | None = None) -> int:
    """Upsert one predictions row per (image, model_version) in one transaction. `min_score` is
    the threshold the boxes were filtered with (None: unknown), so a later run knows whether
    the row holds every box it needs. DB quads go to `quads`, so `push` shows the real shape."""
    return cat.record_predictions(model_version, ((image_id, det.to_json()) for image_id, det in items), min_score)


def load_predictions(cat: Catalog, model_version: str, image_ids: Sequence[str] | None = None,
                     usable_at: float | None = None) -> dict[str, Detections]:
    """Stored predictions of one model version (all images, or the given ones). With `usable_at`,
    only rows stored with a threshold <= it (rows that hold every box scoring >= usable_at)."""
    return {image_id: Detections(p["boxes"], p["scores"], p["labels"], p["quads"])
            for image_id, p in cat.predictions(model_version, image_ids, usable_at).items()}


def predict_and_store(cat: Catalog | None, detector: Detector, paths: Sequence[Path], image_ids: Mapping[Path, str],
                      threshold: float = DEFAULT_THRESHOLD, batch_size: int = DEFAULT_BATCH, commit_every: int = COMMIT_EVERY,
                      engine: str = "local", factory: Callable[[], Detector] | None = None,
                      workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Prediction]:
    """The one predict-and-store loop (`predict_workspace`, `predict_files`): every prediction of
    `paths` is yielded (engine order); the successful ones whose path is in `image_ids` are
    upserted under `detector.version` with `min_score=threshold`, `commit_every` rows per
    transaction and the rest when the stream ends, so an interrupted run keeps what it finished
    (`skip_existing` resumes from there). A failed image is logged by `predict_images` and yielded
    with its error for the caller to report; it stops nothing."""
    pending: list[tuple[str, Detections]] = []
    try:
        for pred in predict_images_on(engine, detector, paths, threshold, batch_size, factory, workers, max_pixels):
            image_id = image_ids.get(pred.path)
            if cat is not None and image_id is not None and isinstance(pred.result, Detections):
                pending.append((image_id, pred.result))
                if len(pending) >= commit_every:
                    store_predictions(cat, detector.version, pending, min_score=threshold)
                    pending = []
            yield pred
    finally:   # also on Ctrl-C / SIGTERM: the finished images are kept for `--skip-existing`
        if cat is not None and pending:
            store_predictions(cat, detector.version, pending, min_score=threshold)


def predict_workspace(
    ws: Workspace,
    detector: Detector,
    image_ids: Sequence[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = DEFAULT_BATCH,
    skip_existing: bool = False,
    progress: Callable[[int, int], None] | None = None,
    errors: list[tuple[str, str]] | None = None,
    commit_every: int = COMMIT_EVERY,
    engine: str = "local",
    factory: Callable[[], Detector] | None = None,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reused: list[str] | None = None,
) -> dict[str, Detections]:
    """Predict workspace images (default: all except status 'excluded') and store them under
    `detector.version` with `min_score=threshold`. `skip_existing` reuses stored rows of this
    version that were stored with a threshold <= `threshold` (resume after an interruption, or
    reuse the boxes `rank` already computed); other rows are recomputed. Unreadable images are logged, appended to
    `errors` as (image_id, message) and left out of the result. `engine="ray"`: `factory` builds
    the detector in each of `workers` actors; the catalog is written here, by the driver."""
    with ws.catalog() as cat:
        if image_ids is None:
            rows = cat.images(include_excluded=False)
        else:
            rows = cat.images_by_ids(image_ids)
            known = {r["id"] for r in rows}
            for missing in (i for i in dict.fromkeys(image_ids) if i not in known):
                if errors is not None:
                    errors.append((missing, "not in the catalog"))
                log.warning("%s: not in the catalog", missing)
        out: dict[str, Detections] = {}
        if skip_existing:
            out = load_predictions(cat, detector.version, [r["id"] for r in rows], usable_at=threshold)
            out = {k: v.filter(threshold) for k, v in out.items()}
            if reused is not None:
                reused.extend(out)
        todo = [r for r in rows if r["id"] not in out]
        by_path = {ws.abspath(r["path"]): r["id"] for r in todo}
        total, done = len(rows), len(rows) - len(todo)
        if progress:
            progress(done, total)
        for pred in predict_and_store(cat, detector, list(by_path), by_path, threshold, batch_size, commit_every,
                                      engine, factory, workers, max_pixels):
            image_id = by_path[pred.path]
            if isinstance(pred.result, Detections):
                out[image_id] = pred.result
            elif errors is not None:
                errors.append((image_id, image_error(pred.result)))
            done += 1
            if progress:
                progress(done, total)
    return out


def list_image_files(inputs: Sequence[str | Path], skipped: list[Skipped] | None = None) -> list[tuple[Path, str]]:
    """Files to predict: (absolute path, path relative to its input folder). Folders are walked
    recursively for image extensions by the shared listing rule (`pipeline.listing`), as redact
    lists them: every listed path is its own entry, so a link to a file in the tree gives a row
    under each name (same bytes are one image only in the catalog, by sha256). Entries the rule
    skips (FIFOs, links out of the tree, dangling links) are appended to `skipped`, for the
    caller to report. A file argument is relative to its own folder and must be a regular file;
    a path named twice (e.g. a folder and a file in it) is listed once. With several inputs the
    names are relative to the folder that holds them all (`dupA/x.jpg`, `dupB/x.jpg`): relative
    to each input, two cameras' `IMG_0001.jpg` gave two records named alike."""
    from pipeline.listing import iter_image_files

    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    roots = [Path(os.path.abspath(Path(raw).expanduser())) for raw in inputs]
    common = Path(os.path.commonpath([r.parent for r in roots])) if len(roots) > 1 else None
    for raw, root in zip(inputs, roots):
        p = Path(raw).expanduser()
        prefix = root.relative_to(common).as_posix() + "/" if common is not None else ""
        if p.is_dir():
            pairs = []
            for e in iter_image_files(p, IMAGE_EXTENSIONS, text_names=True):
                if isinstance(e, Skipped):
                    log.info("%s: skipped (%s: %s)", e.path, e.reason, e.detail)
                    if skipped is not None:
                        skipped.append(e)
                else:
                    pairs.append((Path(os.path.abspath(e.path)), prefix + e.rel))
        elif (problem := file_problem(p)) is None:
            pairs = [(Path(os.path.abspath(p)), prefix.rstrip("/") or p.name)]
        elif problem[0] == "not_found":
            raise FileNotFoundError(f"{p}: no such file or folder")
        else:
            raise ValueError(f"{p}: {problem[0]}: {problem[1]}")
        for absolute, rel in pairs:
            if absolute not in seen:
                seen.add(absolute)
                out.append((absolute, rel))
    return out


def workspace_ids(cat: Catalog, paths: Iterable[Path]) -> dict[Path, str]:
    """Which of `paths` are workspace images (same bytes as a catalog image): path -> image id."""
    out: dict[Path, str] = {}
    for p in paths:
        try:
            digest = sha256_file(p)
        except OSError:
            continue
        if cat.has_image(digest):
            out[p] = digest
    return out


@dataclass(frozen=True)
class DetectedSet:
    """What `detect_set` found: the indices of the items that worked, their Detections (in the
    same order), one error line per failed image, and the seconds spent (for images/s)."""

    ok: list[int]
    detections: list[Detections]
    errors: list[str]
    seconds: float


def detect_set(detector: Detector, items: Sequence[tuple[Path, Any]], threshold: float = 0.0,
               batch_size: int = DEFAULT_BATCH, progress: Callable[[int, int], None] | None = None,
               ) -> DetectedSet:
    """Run `detector` over (path, anything) pairs, e.g. devset (path, LabelledImage) items,
    keeping boxes with score >= threshold; one unreadable image never stops the set."""
    return detect_sets([detector], items, threshold, batch_size, progress)[0]


def detect_sets(detectors: Sequence[Detector], items: Sequence[tuple[Path, Any]], threshold: float = 0.0,
                batch_size: int = DEFAULT_BATCH, progress: Callable[[int, int], None] | None = None,
                ) -> list[DetectedSet]:
    """`detect_set` of each detector (variants of one model: a threshold grid), every image
    decoded once; `seconds` is the whole run's, shared."""
    t0 = time.perf_counter()
    ok: list[list[int]] = [[] for _ in detectors]
    dets: list[list[Detections]] = [[] for _ in detectors]
    errors: list[list[str]] = [[] for _ in detectors]
    if progress:
        progress(0, len(items))
    for k, preds in enumerate(predict_images_each(detectors, [p for p, _ in items], threshold, batch_size)):
        for j, pred in enumerate(preds):
            if isinstance(pred.result, Detections):
                ok[j].append(k)
                dets[j].append(pred.result)
            else:
                errors[j].append(f"{pred.path}: {image_error(pred.result)}")  # type: ignore[arg-type]
        if progress:
            progress(k + 1, len(items))
    seconds = time.perf_counter() - t0
    return [DetectedSet(o, d, e, seconds) for o, d, e in zip(ok, dets, errors)]


class OutputError(RuntimeError):
    """The JSONL output could not be written (the predictions themselves are fine)."""


@dataclass(frozen=True)
class PredictSummary:
    """What one `predict` run did; `as_dict()` is the `--json` payload."""

    model_version: str
    images: int
    boxes: int
    errors: list[str]
    stored_in_catalog: int
    threshold: float
    out: str | None
    seconds: float
    images_per_s: float | None     # images predicted in this run (reused rows not counted) per second
    reused: int = 0                # --skip-existing: images whose stored predictions were reused

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _summary(det: Detector, n_ok: int, n_boxes: int, errors: list[str], n_stored: int, threshold: float,
             out: Path | None, seconds: float, reused: int = 0) -> PredictSummary:
    """The run's summary; a resumed run's speed counts only what it predicted (a no-op rerun
    said 20,995 images/s)."""
    done = n_ok - reused
    return PredictSummary(model_version=det.version, images=n_ok, boxes=n_boxes, errors=errors,
                          stored_in_catalog=n_stored, threshold=threshold, out=str(out) if out else None,
                          seconds=round(seconds, 3),
                          images_per_s=round(done / seconds, 3) if seconds > 0 and done > 0 else None, reused=reused)


def predict_workspace_images(ws: Workspace, det: Detector, *, split: str | None = None, status: str | None = None,
                             out: Path | None = None, threshold: float = DEFAULT_THRESHOLD,
                             batch_size: int = DEFAULT_BATCH, skip_existing: bool = False, engine: str = "local",
                             factory: Callable[[], Detector] | None = None, workers: int = 2,
                             max_pixels: int = DEFAULT_MAX_PIXELS,
                             progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """`textloop predict` without IMAGES: the workspace's images (excluded ones only when asked
    for by `status`) predicted and stored under the model version; optionally also as JSONL.
    ValueError for a split or status no image can have (`check_filters`)."""
    check_filters(split, status)
    _check_run(threshold, batch_size, out)
    t0 = time.perf_counter()
    with ws.catalog() as cat:
        rows = cat.images(split=split, status=status)
        rows = [r for r in rows if r["status"] != ImageStatus.EXCLUDED or status == ImageStatus.EXCLUDED]
    ids = [r["id"] for r in rows]
    paths = {r["id"]: r["path"] for r in rows}
    sizes = {r["id"]: (r["width"], r["height"]) for r in rows}
    errs: list[tuple[str, str]] = []
    reused: list[str] = []
    results = predict_workspace(ws, det, ids, threshold=threshold, batch_size=batch_size,
                                skip_existing=skip_existing, progress=progress, errors=errs,
                                engine=engine, factory=factory, workers=workers, max_pixels=max_pixels,
                                reused=reused)
    errors = [f"{paths.get(i, i)}: {m}" for i, m in errs]
    if out is not None:
        _write_out(out, ({"image": paths[i], "image_id": i, "width": sizes[i][0], "height": sizes[i][1],
                          **results[i].to_json(), "model_version": det.version} for i in ids if i in results))
    n_boxes = sum(len(d) for d in results.values())
    return _summary(det, len(results), n_boxes, errors, len(results) - len(reused), threshold, out,
                    time.perf_counter() - t0, len(reused))


def predict_files(det: Detector, images: Sequence[str | Path], *, workspace: Workspace | None = None,
                  out: Path | None = None, threshold: float = DEFAULT_THRESHOLD, batch_size: int = DEFAULT_BATCH,
                  engine: str = "local", factory: Callable[[], Detector] | None = None, workers: int = 2,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """`textloop predict IMAGES`: every image file under `images`, optionally written as JSONL
    to `out`; with a `workspace`, files whose bytes are workspace images also get a catalog row
    (stored in batches of `COMMIT_EVERY`). Entries the listing skips and images that cannot be
    read are all in `errors` (`path: reason: detail`), so the count matches what was left out.
    Raises FileNotFoundError / ValueError when there is nothing to read and OutputError when
    `out` cannot be written."""
    _check_run(threshold, batch_size, out)
    t0 = time.perf_counter()
    skipped: list[Skipped] = []
    files = list_image_files(images, skipped)
    if not files and not skipped:
        raise ValueError(f"no image files in {', '.join(str(i) for i in images)}")
    rel = dict(files)
    update = progress or (lambda done, total: None)
    errors: list[str] = [f"{os.path.abspath(e.path)}: {e.reason}: {e.detail}" for e in skipped]
    counts = {"ok": 0, "boxes": 0}
    stored: set[str] = set()   # catalog rows: two names of the same bytes are one image there
    cat = workspace.catalog() if workspace is not None else None
    ws_ids: dict[Path, str] = workspace_ids(cat, rel) if cat is not None else {}

    def records() -> Iterator[dict[str, Any]]:
        update(0, len(files))
        preds = predict_and_store(cat, det, list(rel), ws_ids, threshold, batch_size, COMMIT_EVERY, engine, factory,
                                  workers, max_pixels)
        for k, pred in enumerate(preds, 1):
            update(k, len(files))
            if not pred.ok:
                errors.append(f"{pred.path}: {image_error(pred.result)}")  # type: ignore[arg-type]
                continue
            d: Detections = pred.result  # type: ignore[assignment]
            counts["ok"] += 1
            counts["boxes"] += len(d)
            if pred.path in ws_ids:
                stored.add(ws_ids[pred.path])
            yield {"image": rel[pred.path], "width": pred.width, "height": pred.height,
                   **d.to_json(), "model_version": det.version}

    try:
        if out is not None:
            _write_out(out, records())
        else:
            for _ in records():
                pass
    finally:
        if cat is not None:
            cat.close()
    return _summary(det, counts["ok"], counts["boxes"], errors, len(stored), threshold, out,
                    time.perf_counter() - t0)


def _check_run(threshold: float, batch_size: int, out: Path | None) -> None:
    """What can be checked before any image is read: the options, and that `out` can be written."""
    from pipeline.io import UnwritableError, check_writable

    check_options(threshold, batch_size)
    if out is not None:
        try:
            check_writable(out)
        except UnwritableError as exc:
            raise OutputError(str(exc)) from None


def _write_out(out: Path, records: Iterable[dict[str, Any]]) -> None:
    from pipeline.formats import write_jsonl

    try:
        write_jsonl(out, records)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from exc
