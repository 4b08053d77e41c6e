"""textloop's detection metrics, as pure numpy functions over ground truth and predictions.

Box metrics (what a labeller sees): precision / recall / F1 at IoU >= 0.5 with greedy,
score-ordered matching, and AP50 (VOC all-point interpolation). A prediction may match an
*ignore* (don't-care) box; it is then neither a true nor a false positive, and ignore boxes
are never misses.

Pixel metrics (what redaction needs): text coverage, fully covered boxes and over-redaction,
computed on the union of the predicted boxes (grown by `pad_px`, as redaction would) against
the pixels of the ground-truth boxes. A line box over word-level ground truth covers it fully,
as it should for redaction, even though it matches none of the words at IoU 0.5.

Undefined ratios (no ground truth, no predictions) are NaN, never a made-up 0 or 1;
`json_safe` turns them into None for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.boxes import Detections, greedy_match, inside_fraction, iou_matrix, pad, union_mask
from pipeline.formats import LabelledImage

if TYPE_CHECKING:
    from pipeline.detectors.base import Detector
    from pipeline.workspace import Workspace

FULLY_COVERED_FRACTION = 0.95


@dataclass(frozen=True)
class Metrics:
    """The detection metrics of one set: the one place their names are spelled. Ratios that are
    undefined on the set (no ground truth, no predictions) are NaN; `as_dict()` keeps them (JSON
    goes through `json_safe`)."""

    precision: float
    recall: float
    f1: float
    ap50: float
    text_coverage: float
    fully_covered: float
    over_redaction: float
    n_images: int
    n_gt: int
    n_pred: int
    tp: int
    fp: int
    fn: int

    # what promotion compares (pipeline.loop): higher is better for these, lower for these
    HIGHER_BETTER: ClassVar[tuple[str, ...]] = ("text_coverage", "f1")
    LOWER_BETTER: ClassVar[tuple[str, ...]] = ("over_redaction",)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        """Back from `as_dict()` (or JSON, where NaN became None); missing ratios are NaN."""
        def num(key: str, count: bool) -> Any:
            v = d.get(key)
            return (int(v) if v is not None else 0) if count else (float(v) if v is not None else math.nan)
        return cls(**{f.name: num(f.name, f.name.startswith("n_") or f.name in ("tp", "fp", "fn")) for f in fields(cls)})


METRIC_KEYS = ("precision", "recall", "f1", "ap50", "text_coverage", "fully_covered", "over_redaction",
               "n_images", "n_gt", "n_pred")   # the Metrics fields shown in tables (tp/fp/fn are in as_dict too)


# --- per image -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatchResult:
    """Per prediction (in the input order): true positive / ignored (matched a don't-care box)."""

    tp: np.ndarray        # (N,) bool
    ignored: np.ndarray   # (N,) bool; false positives are ~tp & ~ignored
    scores: np.ndarray    # (N,)
    n_gt: int             # non-ignore ground-truth boxes


def match_image(gt: LabelledImage, det: Detections, iou_threshold: float = 0.5) -> MatchResult:
    """Greedy matching in descending score order. Each prediction takes the unmatched non-ignore
    GT box it overlaps most (IoU >= threshold); failing that, any ignore box it overlaps enough
    (ignore boxes can absorb several predictions); otherwise it is a false positive."""
    n = len(det)
    tp = np.zeros(n, dtype=bool)
    ignored = np.zeros(n, dtype=bool)
    care = ~gt.ignore
    if n == 0:
        return MatchResult(tp, ignored, det.scores.copy(), int(care.sum()))
    ious = iou_matrix(det.boxes, gt.boxes)  # (N, G)
    tp = greedy_match(ious, det.scores, iou_threshold, eligible=care) >= 0
    if np.any(gt.ignore):
        ignored = ~tp & (np.where(gt.ignore[None, :], ious, -1.0).max(axis=1) >= iou_threshold)
    return MatchResult(tp, ignored, det.scores.copy(), int(care.sum()))


@dataclass(frozen=True)
class CoverageCounts:
    """Pixel counts of one image, summed over a set to get the pixel metrics."""

    text_px: int          # pixels inside the union of non-ignore GT boxes
    covered_px: int       # ... of which inside the union of (padded) predicted boxes
    n_boxes: int          # non-ignore GT boxes
    n_fully: int          # ... with >= 95 % of their pixels covered
    outside_px: int       # redacted pixels outside every GT box (ignore boxes count as GT)
    image_px: int

    def __add__(self, other: "CoverageCounts") -> "CoverageCounts":
        return CoverageCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.text_px, self.covered_px, self.n_boxes, self.n_fully, self.outside_px, self.image_px)

    @property
    def text_coverage(self) -> float:
        return _ratio(self.covered_px, self.text_px)

    @property
    def over_redaction(self) -> float:
        return _ratio(self.outside_px, self.image_px)


def coverage_counts(gt: LabelledImage | np.ndarray, det: Detections | np.ndarray, width: int, height: int,
                    pad_px: float = 0.0, ignore: np.ndarray | None = None) -> CoverageCounts:
    """Pixel counts for one image. `gt` is a LabelledImage or an (N, 4) box array (with optional
    `ignore` flags); `det` is Detections or an (M, 4) box array, already thresholded."""
    if isinstance(gt, LabelledImage):
        gt_boxes, gt_ignore = gt.boxes, gt.ignore
    else:
        gt_boxes = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        gt_ignore = np.zeros(len(gt_boxes), bool) if ignore is None else np.asarray(ignore, bool).reshape(-1)
    pred_boxes = det.boxes if isinstance(det, Detections) else np.asarray(det, dtype=np.float64).reshape(-1, 4)
    if pad_px:
        pred_boxes = pad(pred_boxes, pad_px)
    width, height = int(width), int(height)
    redacted = union_mask(pred_boxes, width, height)
    care_boxes = gt_boxes[~gt_ignore]
    text = union_mask(care_boxes, width, height)
    any_gt = union_mask(gt_boxes, width, height) if gt_ignore.any() else text
    # a degenerate or off-image box has nothing to cover: it counts as fully covered
    n_fully = int((inside_fraction(care_boxes, redacted, empty=1.0) >= FULLY_COVERED_FRACTION).sum())
    return CoverageCounts(
        text_px=int(text.sum()), covered_px=int((text & redacted).sum()), n_boxes=len(care_boxes),
        n_fully=n_fully, outside_px=int((redacted & ~any_gt).sum()), image_px=width * height,
    )


# --- over a set ----------------------------------------------------------------------------

def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """VOC all-point interpolated AP from the non-ignored predictions of a whole set."""
    if n_gt == 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(tp, dtype=bool)[order]
    ctp = np.cumsum(hits)
    cfp = np.cumsum(~hits)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate(gts: Sequence[LabelledImage], preds: Sequence[Detections],
             iou_threshold: float = 0.5, pad_px: float = 0.0) -> Metrics:
    """All the metrics (module docstring) over a set; `preds[i]` belongs to `gts[i]` (already thresholded)."""
    return evaluate_with_counts(gts, preds, iou_threshold, pad_px)[0]


def evaluate_with_counts(gts: Sequence[LabelledImage], preds: Sequence[Detections], iou_threshold: float = 0.5,
                         pad_px: float = 0.0) -> tuple[Metrics, list[CoverageCounts]]:
    """`evaluate`, and each image's pixel counts: summed over any subset (a source) they give its
    coverage without drawing the masks again (a validation grid scored every image twice)."""
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} predictions")
    all_scores, all_tp = [], []
    n_gt = n_pred = tp = fp = 0
    per_image: list[CoverageCounts] = []
    for gt, det in zip(gts, preds):
        m = match_image(gt, det, iou_threshold)
        keep = ~m.ignored
        all_scores.append(m.scores[keep])
        all_tp.append(m.tp[keep])
        n_gt += m.n_gt
        n_pred += len(det)
        tp += int(m.tp.sum())
        fp += int((~m.tp & ~m.ignored).sum())
        per_image.append(coverage_counts(gt, det, gt.width, gt.height, pad_px=pad_px))
    cov = sum(per_image, CoverageCounts(0, 0, 0, 0, 0, 0))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, n_gt)
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    hits = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    return Metrics(
        precision=precision,
        recall=recall,
        f1=f1,
        ap50=average_precision(scores, hits, n_gt),
        text_coverage=cov.text_coverage,
        fully_covered=_ratio(cov.n_fully, cov.n_boxes),
        over_redaction=cov.over_redaction,
        n_images=len(gts),
        n_gt=n_gt,
        n_pred=n_pred,
        tp=tp,
        fp=fp,
        fn=n_gt - tp,
    ), per_image


def evaluate_by_source(gts: Sequence[LabelledImage], preds: Sequence[Detections],
                       iou_threshold: float = 0.5, pad_px: float = 0.0) -> dict[str, Metrics]:
    """`evaluate` per `LabelledImage.source` (sorted by name; '' for records without a source)."""
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} predictions")
    groups: dict[str, list[int]] = {}
    for i, gt in enumerate(gts):
        groups.setdefault(gt.source, []).append(i)
    return {
        src: evaluate([gts[i] for i in idx], [preds[i] for i in idx], iou_threshold, pad_px)
        for src, idx in sorted(groups.items())
    }


def json_safe(value: object) -> object:
    """NaN and infinities -> None (JSON has neither), recursively through dicts, lists and result
    objects (anything with `as_dict()`, e.g. Metrics)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "as_dict"):
        return json_safe(value.as_dict())
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# --- ground truth from a workspace ----------------------------------------------------------

def workspace_ground_truth(ws: Workspace, split: str | None = "test") -> list[tuple[Path, LabelledImage]]:
    """Human labels of a split as (absolute image path, LabelledImage): per image the most
    recently updated annotation in state submitted/empty; `source` is the annotation's source
    ('labelstudio', 'import:<file>'). Excluded images are left out. An annotation with quads
    (rotated rectangles from Label Studio) gives `polys` (x1,y1,...,x4,y4 per box, as the devset
    has), so DB training learns the rotated shape rather than its enclosing box."""
    import json

    from pipeline.catalog import quads_as_polys

    with ws.catalog() as cat:
        latest = cat.latest_annotations(include_excluded=False, split=split)
    out = []
    for r in latest.values():
        boxes = json.loads(r["boxes"])
        ignore = json.loads(r["ignore"] or "[]")
        if len(ignore) != len(boxes):
            ignore = [False] * len(boxes)
        polys = quads_as_polys(r["quads"], len(boxes))
        out.append((ws.abspath(r["path"]), LabelledImage(image=r["path"], width=int(r["width"]), height=int(r["height"]),
                                                        boxes=np.array(boxes, float).reshape(-1, 4), ignore=ignore,
                                                        polys=polys, source=r["source"])))
    return out


class NoGroundTruth(LookupError):
    """The chosen ground truth holds no labelled image."""


@dataclass(frozen=True)
class EvalReport:
    """A detector measured against ground truth; `as_dict()` is the `--json` payload and the
    `--out` file (NaN ratios as None)."""

    detector: str
    model_version: str
    ground_truth: str
    threshold: float
    iou_threshold: float
    pad_px: float
    overall: Metrics
    by_source: dict[str, Metrics]
    sweep: dict[str, Metrics]
    errors: list[str]        # label-file problems (skipped records), then unreadable images
    seconds: float
    images_per_s: float | None
    unreadable: int = 0      # how many of `errors` are images that could not be read
    label_changes: list[str] = field(default_factory=list)   # ground-truth boxes dropped or clipped, named

    @property
    def n_images(self) -> int:
        """Images evaluated (the unreadable ones are in `errors`)."""
        return self.overall.n_images

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["overall"] = self.overall.as_dict()
        d["by_source"] = {k: m.as_dict() for k, m in self.by_source.items()}
        d["sweep"] = {k: m.as_dict() for k, m in self.sweep.items()}
        return json_safe(d)  # type: ignore[return-value]


@dataclass(frozen=True)
class GroundTruth:
    """What `evaluate` measures against: (image path, labels) pairs in each image's upright
    frame, a name for them, and one line per labelled image left out (its size fits neither
    of the image's frames)."""

    items: list[tuple[Path, LabelledImage]]
    where: str
    skipped: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()   # boxes dropped or clipped (empty, inverted, outside, over the edge)


def _fit_frames(items: list[tuple[Path, LabelledImage]], where: str = ""
                ) -> tuple[list[tuple[Path, LabelledImage]], list[str], list[str]]:
    """(items, skipped, changed): label files' records checked against their image files, as
    `import` checks them. Labels drawn on an EXIF-rotated image's stored pixels are turned
    upright; a size that fits neither frame leaves the image out with the reason (it used to be
    scored in the wrong frame); empty, inverted and outside boxes are dropped and boxes over the
    edge clipped, each named in `changed` (they were scored as text no detector could find)."""
    from pipeline.imaging import ImageRejected
    from pipeline.formats.frames import fit_to_image
    from pipeline.importer import LabelRecord, clean_boxes

    kept, skipped, changed = [], [], []
    for path, rec in items:
        try:
            fitted = fit_to_image(path, rec)
        except (OSError, ImageRejected):
            kept.append((path, rec))  # unreadable: the detection pass reports it
            continue
        except ValueError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        keep, boxes, problems = clean_boxes(LabelRecord(path, rec, "", where), fitted.boxes, fitted.width, fitted.height)
        changed += problems
        if len(rec.boxes) and not keep.any():
            skipped.append(f"{where}: {rec.image}: none of its {len(rec.boxes)} box(es) is usable")
            continue
        kept.append((path, fitted.kept(keep, boxes) if problems else fitted))
    return kept, skipped, changed


def spread(items: Sequence[tuple[Path, LabelledImage]], limit: int) -> list[tuple[Path, LabelledImage]]:
    """`limit` items taken in turn from each source (in their order): `--limit 10` on a devset
    took the first 10 files, all of one source, and the per-source breakdown was one row."""
    by_source: dict[str, list[tuple[Path, LabelledImage]]] = {}
    for item in items:
        by_source.setdefault(item[1].source, []).append(item)
    queues = list(by_source.values())
    out: list[tuple[Path, LabelledImage]] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out += [q[k] for q in queues if k < len(q)]
    return out[:limit]


def load_ground_truth(gt: Path | None = None, images: Path | None = None, devset: Path | None = None,
                      ws: Workspace | None = None, split: str = "test", limit: int | None = None) -> GroundTruth:
    """The labelled images to measure on: a boxes.jsonl (`images`: the folder its paths are
    relative to, default its own), a devset root, or a workspace split's human labels (`split`
    "all": every split). Raises ValueError on a bad combination or an unreadable label file,
    NoGroundTruth when there is no labelled image."""
    from pipeline.formats.devset import labelled_paths, read_devset_lines, read_jsonl_lines

    if gt is not None and devset is not None:
        raise ValueError("give --gt or --set, not both")
    if images is not None and gt is None:
        raise ValueError("--images needs --gt (the boxes.jsonl its image paths are relative to)")
    if gt is not None and gt.is_dir():
        raise ValueError(f"--gt {gt}: is a folder; give its boxes.jsonl, or --set for a devset root")
    if gt is not None and not gt.is_file():
        from pipeline.listing import file_problem

        problem = file_problem(gt)
        raise ValueError(f"--gt {gt}: " + (problem[1] if problem and problem[0] != "not_found" else "no such file"))
    bad_lines: list[str] = []   # a malformed line is skipped and named, as import does
    if devset is not None:
        items, bad_lines = read_devset_lines(devset)
        where = str(devset)
    elif gt is not None:
        base = images or gt.parent
        good, bad_lines = read_jsonl_lines(gt, source=gt.parent.name or gt.stem)
        items, again = labelled_paths(gt, good, base)
        bad_lines += again
        where = str(gt)
    else:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"--split must be train, val, test or all, got {split!r}")
        if ws is None:
            raise ValueError("without --gt or --set the ground truth is a workspace's labels: give a workspace")
        items = workspace_ground_truth(ws, None if split == "all" else split)
        where = f"{ws.root} ({'every split' if split == 'all' else f'{split} split'})"
    if limit is not None:
        items = spread(items, limit)
    skipped, changed = list(bad_lines), []
    if gt is not None or devset is not None:    # a workspace's labels are upright and clean already
        items, unfit, changed = _fit_frames(items, where)
        skipped += unfit
    if not items:
        raise NoGroundTruth(f"{where}: no labelled images to evaluate on" + ("" if gt or devset else
                         f" (label some {'' if split == 'all' else split + ' '}images, or `textloop import` labels)")
                         + (f"; {skipped[0]}" if skipped else ""))
    return GroundTruth(items, where, tuple(skipped), tuple(changed))


def evaluate_detector(det: Detector, items: Sequence[tuple[Path, LabelledImage]], *, threshold: float = 0.3,
                      iou: float = 0.5, pad_px: float = 0.0, sweep: Sequence[float] = (), where: str = "",
                      batch_size: int = 4, out: Path | None = None, skipped: Sequence[str] = (),
                      changed: Sequence[str] = (), progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """One detection pass over `items` keeping every candidate box; the metrics at `threshold`
    overall and per source, AP50 over every candidate, and the overall metrics at each `sweep`
    threshold. `out`: also written there as JSON; `skipped` (images the ground truth left out)
    heads the report's errors; `changed` (its boxes dropped or clipped) is reported apart."""
    import json

    from pipeline.io import check_writable
    from pipeline.predict import detect_set

    if not 0.0 < iou <= 1.0:   # at 0 every pair of boxes "matches", and precision is 1
        raise ValueError(f"iou must be above 0 and at most 1, got {iou}")
    if out is not None:
        check_writable(out)    # before the detection pass, not after it
    found = detect_set(det, items, threshold=0.0, batch_size=batch_size, progress=progress)
    raw = found.detections
    gts = [items[i][1] for i in found.ok]

    def at(thr: float) -> list[Detections]:
        return [d.filter(thr) for d in raw]

    # AP ranks every candidate box; the rest is at the threshold
    overall = replace(evaluate(gts, at(threshold), iou, pad_px), ap50=evaluate(gts, raw, iou, pad_px).ap50)
    ap_by_source = evaluate_by_source(gts, raw, iou, pad_px)
    by_source = {src: replace(m, ap50=ap_by_source[src].ap50)
                 for src, m in evaluate_by_source(gts, at(threshold), iou, pad_px).items()}
    seconds = found.seconds
    report = EvalReport(
        detector=det.name, model_version=det.version, ground_truth=where, threshold=threshold, iou_threshold=iou,
        pad_px=pad_px, overall=overall, by_source=by_source,
        sweep={str(t): evaluate(gts, at(t), iou, pad_px) for t in sweep}, errors=[*skipped, *found.errors],
        seconds=round(seconds, 3), images_per_s=round(len(found.ok) / seconds, 3) if seconds > 0 else None,
        unreadable=len(found.errors), label_changes=list(changed))
    if out is not None:
        from pipeline.io import atomic_write_text

        atomic_write_text(out, json.dumps(report.as_dict(), indent=2) + "\n")
    return report


__all__ = ["METRIC_KEYS", "Metrics", "MatchResult", "CoverageCounts", "EvalReport", "match_image", "coverage_counts",
           "average_precision", "evaluate", "evaluate_by_source", "evaluate_detector", "NoGroundTruth", "GroundTruth", "json_safe", "load_ground_truth",
           "workspace_ground_truth"]
