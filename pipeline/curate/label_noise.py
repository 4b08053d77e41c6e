"""Label noise in human boxes, with `cleanlab.object_detection` and out-of-sample predictions.

cleanlab needs predictions from a model that never saw the label. textloop has exactly that:
the predictions stored when an image was pre-annotated (catalog `predictions`, created before
the human's annotation) came from a model trained before the label existed. For each labelled
image we take the newest prediction row created before the image's first annotation.

Per image: cleanlab's label quality score (`label_quality_score`; single class: aggregation
weights overlooked 0.5, bad location 0.5, swap 0) with its sub-scores, a `coverage_score`
of our own, and (the default ranking) a `reading_score` that also looks at the pixels. cleanlab compares boxes by IoU, so a text detector that draws one box per line
makes every word-level label look badly located, and its bad-location score is 1.0 ("fine")
for a given box no prediction touches, so a box drawn on empty background goes unnoticed.
The coverage score counts text pixels instead: the share of a given box outside every
prediction, and of a confident prediction outside every given box, weighted by box height
(see `_coverage`). Boxes alone cannot tell a word the detector missed from a box drawn on
background, nor a word the labeller left out from a detected smudge, and a detector that boxes
lines or misses small text disagrees with clean labels all the time. The reading score asks the
PP-OCR recogniser instead (`_reading`): a label box no prediction covers is suspect only if
nothing readable is inside it, an unlabelled detection only if it reads as text.
`label_score` (the ranking score, lower = worse) is the reading score by default
(`method="reading"`, needs the images); `method="coverage"` ranks by boxes alone,
`method="cleanlab"` by cleanlab's sub-scores computed at detector-calibrated
probability thresholds and aggregated with the weights above (`label_quality_score` is always
cleanlab's score at its own defaults). The label-noise benchmark in the README compares them.

Per box: given boxes with cleanlab's bad-location score and their uncovered share, predicted
boxes with cleanlab's overlooked score and their uncovered share, and the suspected issue:
`overlooked_text`, `bad_location` or `spurious_box`.

Everything is keyed by `image_id`: an image whose prediction or label is missing is reported
as skipped, never silently shifted onto a neighbour (a seed project's bug).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.boxes import Detections, inside_matrix, iou_matrix
from pipeline.catalog import ImageStatus
from pipeline.imaging import ImageRejected

log = logging.getLogger("textloop.curate")


METHODS = ("reading", "coverage", "cleanlab")


@dataclass(frozen=True)
class LabelNoiseConfig:
    """Weights and thresholds. cleanlab's defaults assume calibrated class probabilities; text
    detector box scores are lower, so the probability thresholds are configurable."""

    method: str = "reading"                  # ranking score: "reading" (default: boxes and the recogniser),
                                             # "coverage" (boxes only) or "cleanlab" (its sub-scores at the
                                             # thresholds below, aggregated with the weights below)
    overlooked_weight: float = 0.5           # cleanlab aggregation weights (one class: swap 0)
    badloc_weight: float = 0.5
    swap_weight: float = 0.0
    high_probability_threshold: float = 0.8  # predictions at least this sure can reveal overlooked text
    low_probability_threshold: float = 0.3   # predictions below this are ignored for bad locations
    min_pred_score: float = 0.3              # predictions below this are dropped altogether
    box_issue_threshold: float = 0.4         # a cleanlab box score below this is reported as an issue
    image_issue_threshold: float = 0.6       # label_score below this: the image is a label issue
    read_pred_score: float = 0.5             # reading: unlabelled predictions from this score are read
    read_min_chars: int = 2                  # reading: an unlabelled prediction is text if it reads this many
                                             # letters/digits
    read_short_aspect: float = 1.5           # reading: a given box narrower than this x its height is "short"
                                             # (a character or two), its unreadability counts less
    read_threads: int = 2                    # reading: recogniser threads
    model_version: str | None = None         # catalog: use this model's predictions only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown label-noise method {self.method!r}: use {', '.join(METHODS)}")
        for name in ("high_probability_threshold", "low_probability_threshold", "min_pred_score",
                     "box_issue_threshold", "image_issue_threshold", "read_pred_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.read_short_aspect <= 0:
            raise ValueError(f"read_short_aspect must be > 0, got {self.read_short_aspect}")
        if self.read_min_chars < 1 or self.read_threads < 1:
            raise ValueError(f"read_min_chars and read_threads must be >= 1, got {self.read_min_chars}, {self.read_threads}")


@dataclass(frozen=True)
class NoiseItem:
    """One human-labelled image: given boxes (pixel xyxy, with don't-care flags) and predictions."""

    image_id: str
    given: np.ndarray
    prediction: Detections
    ignore: np.ndarray | None = None
    path: str = ""
    model_version: str = ""
    name: str = ""        # the file name it was harvested from (reports: ids alone are opaque)
    status: str = ""      # catalog status when scored


BoxReader = Callable[[NoiseItem, np.ndarray], Sequence[tuple[str, float]]]
"""(text, confidence) the recogniser reads in each xyxy box of the item's image (the reading
score's view of the pixels); raises OSError / ValueError when the image cannot be read."""


@dataclass
class LabelNoiseReport:
    images: pd.DataFrame
    boxes: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def without_status(self, status: str) -> "LabelNoiseReport":
        """The report without the images that had `status` when scored (e.g. ones an earlier
        run excluded, ranked only to count them)."""
        keep = self.images[self.images["status"] != status]
        return LabelNoiseReport(keep.reset_index(drop=True), self.boxes[self.boxes["image_id"].isin(keep["image_id"])]
                                .reset_index(drop=True), list(self.skipped))

    def summary(self) -> dict[str, Any]:
        im = self.images
        counts = self.boxes["issue"].value_counts().to_dict() if len(self.boxes) else {}
        return {
            "labelled_images": int(len(im)),
            "label_issues": int(im["is_label_issue"].sum()) if len(im) else 0,
            "overlooked_text": int(counts.get("overlooked_text", 0)),
            "bad_location": int(counts.get("bad_location", 0)),
            "spurious_box": int(counts.get("spurious_box", 0)),
            "skipped": len(self.skipped),
        }


IMAGE_COLUMNS = ["image_id", "name", "status", "path", "model_version", "n_given", "n_predicted", "label_score", "is_label_issue",
                 "label_quality_score", "coverage_score", "reading_score", "overlooked_score", "badloc_score",
                 "swap_score", "issues"]
BOX_COLUMNS = ["image_id", "box", "source", "x0", "y0", "x1", "y1", "pred_score", "overlooked_score",
               "badloc_score", "uncovered", "read_text", "read_score", "issue"]


def _drop_ignored(item: NoiseItem) -> tuple[np.ndarray, Detections]:
    """Don't-care boxes are neither labels nor evidence: drop them and predictions on them (a
    prediction overlapping one by IoU 0.3, or lying at least half inside one: a word inside an
    ICDAR `###` line region overlaps it by a small IoU)."""
    given = np.asarray(item.given, dtype=np.float64).reshape(-1, 4)
    pred = item.prediction
    ign = np.zeros(len(given), bool) if item.ignore is None else np.asarray(item.ignore, bool).reshape(-1)
    if ign.any():
        ignored = given[ign]
        given = given[~ign]
        if len(pred):
            on = (iou_matrix(pred.boxes, ignored).max(axis=1) >= 0.3) | (inside_matrix(pred.boxes, ignored).max(axis=1) >= 0.5)
            pred = pred[~on]
    return given, pred


def _softmin(x: np.ndarray, temperature: float = 0.1) -> float:
    x = x[~np.isnan(x)]
    if not len(x):
        return 1.0
    w = np.exp(-(x - x.min()) / temperature)
    return float(np.sum(w * x) / np.sum(w))


def score_label_noise(items: Sequence[NoiseItem], cfg: LabelNoiseConfig | None = None,
                      reader: BoxReader | None = None,
                      progress: Callable[[int, int], None] | None = None) -> LabelNoiseReport:
    """Per-image and per-box label issue scores for `items` (lower score = more likely wrong).

    The reading score (and the default `reading` method, which needs it) comes from `reader`;
    an image it cannot read is reported in `skipped`, the others are scored."""
    from cleanlab.object_detection import rank

    cfg = cfg or LabelNoiseConfig()
    if cfg.method == "reading" and reader is None and len(items):
        raise ValueError("the reading method needs a reader (the images); use method coverage to score boxes alone")
    seen: set[str] = set()
    labels: list[dict[str, np.ndarray]] = []
    preds: list[list[np.ndarray]] = []
    kept: list[tuple[NoiseItem, np.ndarray, Detections, _Coverage, _Reading | None]] = []
    skipped: list[tuple[str, str]] = []
    for n, it in enumerate(items, 1):
        if it.image_id in seen:
            raise ValueError(f"{it.image_id}: listed twice")
        seen.add(it.image_id)
        given, pred = _drop_ignored(it)
        pred = pred.filter(cfg.min_pred_score) if len(pred) else pred
        cov = _coverage(it, given, pred, cfg)
        reading = None
        if reader is not None:
            try:
                reading = _reading(it, given, pred, cov, cfg, reader)
            except (OSError, ValueError, ImageRejected) as exc:
                where = f"{it.name} ({it.path})" if it.name else (it.path or it.image_id)
                skipped.append((it.image_id, f"{where}: cannot read the image ({exc})"))
                log.warning("label noise: %s skipped: %s", it.image_id, skipped[-1][1])
                continue
            finally:
                if progress is not None:
                    progress(n, len(items))
        labels.append({"bboxes": given.astype(np.float32).reshape(-1, 4), "labels": np.zeros(len(given), dtype=np.int64)})
        arr = np.concatenate([pred.boxes, pred.scores[:, None]], axis=1).astype(np.float32) if len(pred) else np.zeros((0, 5), np.float32)
        preds.append([arr])  # one class: a list with one (M, 5) array, indexed by class
        kept.append((it, given, pred, cov, reading))
    if not kept:
        return LabelNoiseReport(pd.DataFrame(columns=IMAGE_COLUMNS), pd.DataFrame(columns=BOX_COLUMNS), skipped)

    aux = _auxiliary_inputs(labels, preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # cleanlab's own label quality score (its default thresholds), from the same inputs
        # that get_label_quality_scores builds internally (checked equal in the tests)
        d_ov = rank.compute_overlooked_box_scores(auxiliary_inputs=aux)
        d_bl = rank.compute_badloc_box_scores(auxiliary_inputs=aux)
        overlooked = rank.compute_overlooked_box_scores(auxiliary_inputs=aux,
                                                        high_probability_threshold=cfg.high_probability_threshold)
        badloc = rank.compute_badloc_box_scores(auxiliary_inputs=aux,
                                                low_probability_threshold=cfg.low_probability_threshold)
        if cfg.swap_weight > 0:
            swap = rank.compute_swap_box_scores(auxiliary_inputs=aux,
                                                high_probability_threshold=cfg.high_probability_threshold)
        else:  # one class: nothing can be swapped; skip cleanlab's O(L^2) overlap loop
            swap = [np.ones(len(lab["labels"])) for lab in labels]
        p_ov = rank.pool_box_scores_per_image(d_ov)
        p_bl = rank.pool_box_scores_per_image(d_bl)
        p_sw = rank.pool_box_scores_per_image(swap)
    tiny = 1e-100
    cl_scores = np.exp(cfg.overlooked_weight * np.log(tiny + p_ov) + cfg.badloc_weight * np.log(tiny + p_bl)
                       + cfg.swap_weight * np.log(tiny + p_sw))

    img_rows, box_rows = [], []
    flag = 1.0 - cfg.image_issue_threshold  # reading: a box this suspect makes its image an issue, and is named
    for i, (it, given, pred, cov, reading) in enumerate(kept):
        ov, bl, sw = overlooked[i], badloc[i], swap[i]
        susp = np.concatenate([cov.unc_g * cov.weight_g, cov.unc_p[cov.strong] * cov.weight_p[cov.strong]])
        coverage_score = float(1.0 - susp.max()) if len(susp) else 1.0
        reading_score = reading.score if reading is not None else np.nan
        s_ov, s_bl, s_sw = _softmin(ov), _softmin(bl), _softmin(sw)
        # cleanlab's aggregation of its sub-scores computed at our (detector-calibrated) thresholds
        cl_cal = float(np.exp(cfg.overlooked_weight * np.log(1e-100 + s_ov) + cfg.badloc_weight * np.log(1e-100 + s_bl)
                              + cfg.swap_weight * np.log(1e-100 + s_sw)))
        label_score = {"reading": reading_score, "coverage": coverage_score, "cleanlab": cl_cal}[cfg.method]
        issues = []
        for j, b in enumerate(given):
            if reading is not None and cfg.method == "reading":
                issue = ("spurious_box" if cov.unc_g[j] >= 0.8 else "bad_location") if reading.given[j] > flag else ""
            elif cov.unc_g[j] >= 0.8:
                issue = "spurious_box"
            elif cov.unc_g[j] >= 0.3 or bl[j] < cfg.box_issue_threshold:
                issue = "bad_location"
            else:
                issue = ""
            if issue:
                issues.append(issue)
            text, conf = reading.given_text[j] if reading is not None else ("", np.nan)
            box_rows.append((it.image_id, j, "given", *map(float, b), np.nan, np.nan, float(bl[j]), float(cov.unc_g[j]),
                             text, conf, issue))
        for j, b in enumerate(pred.boxes):
            o = float(ov[j]) if j < len(ov) else np.nan
            u = float(cov.unc_p[j]) if cov.strong[j] else np.nan
            text, conf = reading.pred_text.get(j, ("", np.nan)) if reading is not None else ("", np.nan)
            if reading is not None and cfg.method == "reading":
                u = float(cov.unc_p[j]) if j in reading.pred_text else u
                issue = "overlooked_text" if reading.pred.get(j, 0.0) > flag else ""
            else:
                issue = "overlooked_text" if (np.isfinite(u) and u >= 0.8) or (np.isfinite(o) and o < cfg.box_issue_threshold) else ""
            if issue:
                issues.append(issue)
            box_rows.append((it.image_id, j, "predicted", *map(float, b), float(pred.scores[j]), o, np.nan, u,
                             text, conf, issue))
        img_rows.append((it.image_id, it.name, it.status, it.path, it.model_version, len(given), len(pred), label_score,
                         label_score < cfg.image_issue_threshold, float(cl_scores[i]), coverage_score, reading_score,
                         s_ov, s_bl, s_sw, ",".join(sorted(set(issues)))))
    images = pd.DataFrame(img_rows, columns=IMAGE_COLUMNS).sort_values("label_score", ignore_index=True)
    boxes = pd.DataFrame(box_rows, columns=BOX_COLUMNS)
    return LabelNoiseReport(images, boxes, skipped)


@dataclass(frozen=True)
class _Coverage:
    """Per given box and per prediction: share outside the other side, and height weight."""

    unc_g: np.ndarray
    weight_g: np.ndarray
    unc_p: np.ndarray
    weight_p: np.ndarray
    strong: np.ndarray


def _coverage(it: NoiseItem, given: np.ndarray, pred: Detections, cfg: LabelNoiseConfig) -> _Coverage:
    """Text-pixel disagreement per box, robust to word-vs-line granularity.

    Given box: `uncovered` = share of its pixels outside every prediction (a word inside a
    predicted line is covered). Prediction: share of its pixels outside every given box
    (don't-care boxes count as given); the coverage score uses only confident ones (`strong`,
    >= high_probability_threshold). Both are weighted by the box height relative to the
    image's median label height, capped at 1, because detectors miss tiny text far more often
    than labellers draw wrong big boxes.
    """
    from pipeline.boxes import inside_fraction, union_mask

    all_given = np.asarray(it.given, dtype=np.float64).reshape(-1, 4)
    boxes_all = np.concatenate([all_given, pred.boxes]) if len(pred) else all_given
    if len(boxes_all):
        w = int(np.ceil(max(boxes_all[:, 2].max(), 1)))
        h = int(np.ceil(max(boxes_all[:, 3].max(), 1)))
    else:
        w = h = 1
    strong = pred.scores >= cfg.high_probability_threshold if len(pred) else np.zeros(0, bool)
    pmask = union_mask(pred.boxes, w, h) if len(pred) else np.zeros((h, w), bool)
    gmask = union_mask(all_given, w, h) if len(all_given) else np.zeros((h, w), bool)
    unc_g = 1.0 - inside_fraction(given, pmask) if len(given) else np.zeros(0)
    unc_p = 1.0 - inside_fraction(pred.boxes, gmask) if len(pred) else np.zeros(0)
    heights = given[:, 3] - given[:, 1] if len(given) else pred.boxes[strong, 3] - pred.boxes[strong, 1]
    med = max(float(np.median(heights)) if len(heights) else 1.0, 1.0)
    wg = np.minimum(1.0, (given[:, 3] - given[:, 1]) / med) if len(given) else np.zeros(0)
    wp = np.minimum(1.0, (pred.boxes[:, 3] - pred.boxes[:, 1]) / med) if len(pred) else np.zeros(0)
    return _Coverage(unc_g, wg, unc_p, wp, strong)


@dataclass(frozen=True)
class _Reading:
    """The reading score's evidence: suspicion per given box and per read prediction (by index)."""

    score: float
    given: np.ndarray
    given_text: list[tuple[str, float]]
    pred: dict[int, float]
    pred_text: dict[int, tuple[str, float]]


def _reading(it: NoiseItem, given: np.ndarray, pred: Detections, cov: _Coverage, cfg: LabelNoiseConfig,
             reader: BoxReader) -> _Reading:
    """Disagreement between labels and predictions that the pixels confirm.

    A given box is suspect by (1 - recogniser confidence) x sqrt(share outside every
    prediction) x min(1, width / height / read_short_aspect): a box on background or shifted
    off its word reads nothing, a word the detector missed reads fine, and a box of a
    character or two (a bracket, a check mark, a handwritten digit) says little either way
    (vertical labels count as short too). An unlabelled stretch of a prediction (score >=
    read_pred_score; `boxes.longest_uncovered_run` against the labels in line with it, at
    least 0.6x its height long) is suspect by the confidence of a reading of read_min_chars+
    letters/digits there, times the prediction's height weight: a word left out of a
    labelled line, or a whole unlabelled line, reads as text; the margin of a line box, a
    ruling line or a logo does not."""
    from pipeline.boxes import longest_uncovered_run
    from pipeline.legibility import normalise

    all_given = np.asarray(it.given, dtype=np.float64).reshape(-1, 4)
    cand, runs = [], []
    for j in np.flatnonzero(pred.scores >= cfg.read_pred_score) if len(pred) else []:
        b = pred.boxes[j]
        run = longest_uncovered_run(b, all_given)
        w, h = b[2] - b[0], b[3] - b[1]
        along = run[2] - run[0] if w >= h else run[3] - run[1]
        if along >= 0.6 * min(w, h):
            cand.append(int(j))
            runs.append(run)
    boxes = np.concatenate([given, np.asarray(runs).reshape(-1, 4)]) if runs else given
    read = list(reader(it, boxes)) if len(boxes) else []
    if len(read) != len(boxes):
        raise RuntimeError(f"the reader returned {len(read)} readings for {len(boxes)} boxes")
    given_text = [(t, float(c)) for t, c in read[:len(given)]]
    conf_g = np.array([c if normalise(t) else 0.0 for t, c in given_text])
    sus_g = (1.0 - conf_g) * np.sqrt(np.clip(cov.unc_g, 0.0, 1.0)) if len(given) else np.zeros(0)
    if len(given):  # a character or two, a check mark, a handwritten digit: the recogniser reads them poorly
        aspect = (given[:, 2] - given[:, 0]) / np.maximum(given[:, 3] - given[:, 1], 1e-9)
        sus_g = sus_g * np.minimum(1.0, aspect / cfg.read_short_aspect)
    pred_text = {j: (t, float(c)) for j, (t, c) in zip(cand, read[len(given):])}
    sus_p = {j: float(cov.weight_p[j] * (c if len(normalise(t)) >= cfg.read_min_chars else 0.0))
             for j, (t, c) in pred_text.items()}
    worst = max([0.0, *sus_g.tolist(), *sus_p.values()])
    return _Reading(float(1.0 - worst), sus_g, given_text, sus_p, pred_text)


def _auxiliary_inputs(labels: list[dict[str, np.ndarray]], preds: list[list[np.ndarray]],
                      alpha: float | None = None) -> list[dict[str, Any]]:
    """cleanlab's per-image auxiliary inputs, vectorised (its own builder loops in Python over
    every label x prediction pair, minutes on a hundred dense documents). Same formulas:
    similarity = alpha * IoU + (1 - alpha) * exp(-0.1 * centre distance)."""
    from cleanlab.internal.constants import ALPHA, EUC_FACTOR

    alpha = ALPHA if alpha is None else alpha
    out = []
    for lab, pred in zip(labels, preds):
        lb = np.asarray(lab["bboxes"], dtype=np.float64).reshape(-1, 4)
        arr = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 5) for c in pred]) if pred else np.zeros((0, 5))
        plab = np.concatenate([np.full(len(c), k) for k, c in enumerate(pred)]).astype(np.int64) if pred else np.zeros(0, np.int64)
        pb = arr[:, :4]
        iou = iou_matrix(lb, pb) if len(lb) and len(pb) else np.zeros((len(lb), len(pb)))
        if len(lb) and len(pb):
            cl = (lb[:, None, :2] + lb[:, None, 2:]) / 2
            cp = (pb[None, :, :2] + pb[None, :, 2:]) / 2
            dist = np.exp(-np.linalg.norm(cl - cp, axis=-1) * EUC_FACTOR)
        else:
            dist = np.zeros((len(lb), len(pb)))
        sim = iou * alpha + (1 - alpha) * dist
        out.append({"pred_labels": plab, "pred_label_probs": arr[:, 4], "pred_bboxes": pb,
                    "lab_labels": np.asarray(lab["labels"]), "lab_bboxes": lb,
                    "similarity_matrix": sim, "iou_matrix": iou})
    nonzero = [a["similarity_matrix"][a["similarity_matrix"] > 0] for a in out]
    mins = [float(v.min()) for v in nonzero if v.size]
    min_sim = min([1.0] + mins)
    for a in out:
        a["min_possible_similarity"] = min_sim
    return out


# --- catalog glue ------------------------------------------------------------------------------

def catalog_items(ws: Any, cfg: LabelNoiseConfig | None = None, include_excluded: bool = False
                  ) -> tuple[list[NoiseItem], list[tuple[str, str]]]:
    """Human-labelled images with an out-of-sample prediction; and (image_id, reason) skipped.

    The label is the latest human annotation of the image (`Catalog.latest_annotations`); the
    prediction is the newest row whose model cannot have trained on it (`_out_of_sample`), or
    with `cfg.model_version` that model's row if it qualifies.
    Excluded images are left out, as training and evaluation leave them out: their labels train
    nothing, and flagging one for review would send an image curation took out of the dataset
    (e.g. a duplicate, or a label already judged bad) back to Label Studio. `include_excluded`
    keeps them, for ranking only (`--worst N --label-action exclude` counts the ones an earlier
    run excluded, so a rerun excludes nothing more).
    """
    cfg = cfg or LabelNoiseConfig()
    with ws.catalog() as cat:
        anns = cat.latest_annotations(include_excluded=include_excluded)
        names = cat.image_names()
        first_at = cat.first_annotated_at()
        by_image = cat.prediction_history()
        trained_at = {m["version"]: float(m["created_at"]) for m in cat.models()}
    items: list[NoiseItem] = []
    skipped: list[tuple[str, str]] = []
    for iid, a in anns.items():
        cands = [p for p in by_image.get(iid, [])
                 if _out_of_sample(p, first_at[iid], a["split"], trained_at)
                 and (cfg.model_version is None or p["model_version"] == cfg.model_version)]
        if not cands:
            why = "no stored prediction" if not by_image.get(iid) else "no out-of-sample prediction (models that may have trained on this label)"
            skipped.append((iid, f"{why}; `textloop predict --detector ppocr` makes one"))
            continue
        p = cands[0]
        try:
            det = Detections(json.loads(p["boxes"]), json.loads(p["scores"]), json.loads(p["labels"]))
            given = np.asarray(json.loads(a["boxes"]), dtype=np.float64).reshape(-1, 4)
            ignore = np.asarray(json.loads(a["ignore"] or "[]"), dtype=bool).reshape(-1)
        except (ValueError, TypeError) as exc:
            skipped.append((iid, f"unreadable boxes in the catalog ({exc})"))
            continue
        if len(ignore) != len(given):
            ignore = np.zeros(len(given), bool)
        items.append(NoiseItem(iid, given, det, ignore, ws.abspath(a["path"]).as_posix(), p["model_version"],
                               names.get(iid) or "", a["status"]))
    return items, skipped


def _out_of_sample(pred: Any, first_label_at: float, split: str, trained_at: dict[str, float]) -> bool:
    """Whether the model behind a stored prediction cannot have seen the image's label: the
    prediction was made before any label of the image existed (a pre-annotation); or it comes
    from stock `ppocr` (never trained on anything here: `import` then `predict --detector ppocr`
    works); or from a workspace model registered before the label existed; or the image is in
    the test split, which training never reads. A workspace model's prediction of a train/val
    image labelled before the model existed may have been fitted to that label, and an
    unregistered bundle's training data is unknown: neither is used."""
    from pipeline.detectors.ppocr import BASE_VERSION

    version = pred["model_version"]
    if pred["created_at"] <= first_label_at or split == "test":
        return True
    if version in trained_at:
        return trained_at[version] < first_label_at
    return str(version).startswith(BASE_VERSION)


def image_reader(threads: int = 2) -> BoxReader:
    """The reading score's reader: the PP-OCRv4 recogniser (`legibility.Reader.read_boxes`) on
    the item's upright pixels, the frame its boxes are in."""
    from pipeline.imaging import load_rgb
    from pipeline.legibility import Reader

    rec = Reader(threads=threads)

    def read(it: NoiseItem, boxes: np.ndarray) -> list[tuple[str, float]]:
        return rec.read_boxes(load_rgb(it.path), boxes)

    return read


def find_label_noise(ws: Any, cfg: LabelNoiseConfig | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     include_excluded: bool = False) -> LabelNoiseReport:
    """`score_label_noise` over the workspace's human labels (reading their images unless the
    method is coverage or cleanlab)."""
    cfg = cfg or LabelNoiseConfig()
    items, skipped = catalog_items(ws, cfg, include_excluded)
    for iid, why in skipped:
        log.info("label noise: %s skipped: %s", iid, why)
    reader = image_reader(cfg.read_threads) if cfg.method == "reading" and items else None
    report = score_label_noise(items, cfg, reader=reader, progress=progress)
    report.skipped = skipped + report.skipped
    return report


def apply_label_actions(ws: Any, report: LabelNoiseReport, action: str, worst: int | None = None) -> pd.DataFrame:
    """Set the status of the suspected label issues in one transaction: the images flagged
    `is_label_issue`, at most `worst` of them (the lowest label scores) when given. It took the
    N lowest scores whatever the threshold: `--worst 20` on a small workspace sent labels scored
    0.99 to review beside its 2 suspects.

    action `review`: status `needs_review` -- `push` re-sends them to Label Studio with a note.
    action `exclude`: status `excluded` -- training skips them.
    Returns the change table (image_id, old_status, new_status, label_score, issues).
    """
    new_status = {"review": ImageStatus.NEEDS_REVIEW, "exclude": ImageStatus.EXCLUDED}.get(action)
    if new_status is None:
        raise ValueError(f"unknown action {action!r}: use review or exclude")
    bad = report.images.sort_values("label_score")
    bad = bad[bad["is_label_issue"]]
    rows = []
    with ws.catalog() as cat, cat.transaction():
        if action == "review":   # a label a person submitted since it was sent back is their answer
            answered = cat.answered_reviews()
            if answered & set(bad["image_id"]):
                log.info("%d suspected label(s) were reviewed since they were sent back: not sent again",
                         len(answered & set(bad["image_id"])))
            bad = bad[~bad["image_id"].isin(answered)]
        if worst is not None:
            bad = bad.head(worst)
        for r in bad.itertuples(index=False):
            old = cat.set_status(r.image_id, new_status)
            if old is None:  # unknown image, or already new_status
                continue
            rows.append((r.image_id, old.value, new_status.value, float(r.label_score), r.issues))
        if action == "review":
            cat.record_review_requests({i: str(issues) for i, _, _, _, issues in rows})
    return pd.DataFrame(rows, columns=["image_id", "old_status", "new_status", "label_score", "issues"])
