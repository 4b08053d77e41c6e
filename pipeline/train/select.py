"""Model selection and promotion at an over-redaction budget.

Fine-tuning shifts a detector's score calibration, so two models are compared at matched
over-redaction, not at one fixed threshold: each is swept over a small grid of its post-
processing settings on the validation split, and its *coverage at the budget* is the best
text coverage among the settings whose over-redaction stays within the budget (0 if none
does). The budget defaults to what stock `ppocr` over-redacts on that split with its default
settings (never below `min_budget`). Stock `ppocr` gets the same sweep, so the promotion rule
("at least as good as stock") compares like with like.

Coverage is scored per *source* (devset sub-folder, or whatever `LabelledImage.source` says)
and averaged, not pooled over pixels: pooled, a page of forms holds a hundred times the text
pixels of a street photo, and a model that lost half the scene text (icdar2015 0.82 -> 0.46 in
one benchmark run) still looked better than stock because it gained a little on documents. The
promotion rule also refuses a model that loses more than `SOURCE_TOLERANCE` on any source with
at least `MIN_SOURCE_IMAGES` validation images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline.train")

PPOCR_GRID_DEFAULT = {"thresh": 0.3, "box_thresh": 0.3, "unclip_ratio": 1.6}
SOURCE_TOLERANCE = 0.02        # coverage a candidate may lose on one source and still be promoted
MIN_SOURCE_IMAGES = 3          # sources with fewer validation images are too noisy to veto
SCORE_GRID = (0.3, 0.5, 0.7)   # Faster R-CNN: score thresholds


@dataclass(frozen=True)
class Operating:
    """One point on a detector's coverage / over-redaction trade-off curve."""

    params: dict[str, float]
    text_coverage: float                 # pooled over every text pixel
    over_redaction: float
    metrics: dict[str, Any] = field(default_factory=dict)
    by_source: dict[str, float] = field(default_factory=dict)   # text coverage per source (2+ sources)

    @property
    def score(self) -> float:
        """What selection maximises: mean of the per-source coverages, pooled with one source."""
        return sum(self.by_source.values()) / len(self.by_source) if self.by_source else self.text_coverage


@dataclass(frozen=True)
class Selection:
    """A detector's sweep on one validation set and its best point within `budget`."""

    budget: float
    best: Operating | None
    points: tuple[Operating, ...]

    @property
    def coverage(self) -> float:
        """Coverage at the budget (`Operating.score`: the mean over sources)."""
        return self.best.score if self.best is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        from pipeline.evaluate import json_safe

        return json_safe({"budget": self.budget, "coverage_at_budget": self.coverage,
                          "best": asdict(self.best) if self.best else None,
                          "points": [{"params": p.params, "text_coverage": p.text_coverage,
                                      "over_redaction": p.over_redaction, "by_source": p.by_source}
                                     for p in self.points]})  # type: ignore[return-value]


# Blends whose validation scores differ by less than this are treated as equal (the smaller step
# wins). Two benchmark runs of one recipe chose a = 0.7 and a = 1 on differences of 0.002 and
# differed by 0.035 on held-out scene text (docs/benchmarks.md, runs 7 and 9).
BLEND_MARGIN = 0.005


def vetoed(worst_delta: float) -> bool:
    """The per-source veto: a candidate that loses more than `SOURCE_TOLERANCE` coverage on one
    source (vs stock) is refused there, whatever its mean (promotion and the blend choice)."""
    return float(worst_delta) < -SOURCE_TOLERANCE


def has_text(gts: Iterable[Any]) -> bool:
    """Whether any ground truth holds a box to cover (not don't-care). Coverage on text-free
    images is 0 for every detector, so a split without text cannot rank models: 0 >= 0 made
    a never-tested model current."""
    import numpy as np

    return any(len(g.boxes) and not bool(np.all(np.asarray(g.ignore, dtype=bool))) for g in gts)


def passes(candidate: float, stock: float, worst_delta: float, tolerance: float = 0.0) -> bool:
    """The promotion rule: at least stock's coverage at the budget (minus `tolerance`), no veto."""
    return candidate + tolerance >= stock and not vetoed(worst_delta)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def coverage_by_source(gts: Sequence[Any], dets: Sequence[Any], counts: Sequence[Any] | None = None) -> dict[str, float]:
    """Text coverage per source, for sources that have text; {} when there are fewer than two.
    `counts`: each image's `evaluate.CoverageCounts` when the caller has them already."""
    from pipeline.evaluate import CoverageCounts, evaluate_with_counts

    groups: dict[str, list[int]] = {}
    for i, g in enumerate(gts):
        groups.setdefault(getattr(g, "source", "") or "", []).append(i)
    if len(groups) < 2:
        return {}
    if counts is None:
        counts = evaluate_with_counts(gts, dets)[1]
    out = {}
    for src, idx in sorted(groups.items()):
        if not has_text(gts[i] for i in idx):
            continue  # text-free images: over-redaction, not coverage
        out[src] = _num(sum((counts[i] for i in idx), CoverageCounts(0, 0, 0, 0, 0, 0)).text_coverage)
    return out if len(out) >= 2 else {}


def _point(params: dict[str, float], gts: Sequence[Any], dets: Sequence[Any]) -> Operating:
    """One grid point's metrics, pooled and per source, from one scoring of each image."""
    from pipeline.evaluate import evaluate_with_counts

    if not gts:
        return Operating(dict(params), 0.0, 0.0, {}, {})
    metrics, counts = evaluate_with_counts(gts, dets)
    m = metrics.as_dict()
    return Operating(dict(params), _num(m.get("text_coverage")), _num(m.get("over_redaction")), m,
                     coverage_by_source(gts, dets, counts))


def sweep(detector: Any, items: Sequence[tuple[Path, Any]], grid: Sequence[dict[str, float]] | None = None,
          threshold: float = 0.3) -> list[Operating]:
    """Metrics of `detector` at every grid point on (path, LabelledImage) items. PP-OCR-family
    detectors are re-tuned (`thresh`, `box_thresh`, `unclip_ratio`) with their probability
    maps cached, so the grid costs one forward pass per image; others sweep the score threshold."""
    from pipeline.predict import detect_set, detect_sets

    if hasattr(detector, "retuned"):
        grid = list(grid) if grid else [PPOCR_GRID_DEFAULT]
        with _maps_cached(detector):
            found_each = detect_sets([detector.retuned(**p) for p in grid], items, threshold)
        for e in dict.fromkeys(e for found in found_each for e in found.errors):   # once, not per grid point
            log.warning("validation: skipped %s", e)
        return [_point(params, [items[k][1] for k in found.ok], found.detections)
                for params, found in zip(grid, found_each)]
    found = detect_set(detector, items, min(SCORE_GRID))
    for e in found.errors:
        log.warning("validation: skipped %s", e)
    return [_point(t, [items[k][1] for k in found.ok], [d.filter(t["threshold"]) for d in found.detections])
            for t in (grid or [{"threshold": t} for t in SCORE_GRID])]


def best_within(points: Sequence[Operating], budget: float) -> Operating | None:
    """The highest-coverage point whose over-redaction is within the budget (ties: less over-redaction)."""
    ok = [p for p in points if p.over_redaction <= budget + 1e-12]
    return max(ok, key=lambda p: (p.score, -p.over_redaction)) if ok else None


def coverage_at_over(curve: Sequence[tuple[float, float]], over: float) -> float | None:
    """Coverage of a trade-off curve, given as (over-redaction, coverage) points, at over-redaction
    `over`: linear between the neighbouring points of its upper envelope (the best coverage any
    point reaches at that over-redaction or less). None when every point over-redacts more than
    `over` (the curve does not reach it); beyond the last point, the last point's coverage (no
    extrapolation). How two detectors whose calibrations differ are compared per source."""
    pts = sorted((float(o), float(c)) for o, c in curve if math.isfinite(o) and math.isfinite(c))
    if not pts or over < pts[0][0] - 1e-12:
        return None
    env: list[tuple[float, float]] = []
    for o, c in pts:
        if env and c <= env[-1][1]:
            continue  # more over-redaction for no more coverage: not on the envelope
        env.append((o, c))
    for (o0, c0), (o1, c1) in zip(env, env[1:]):
        if o0 <= over <= o1:
            return c0 if o1 - o0 < 1e-12 else c0 + (c1 - c0) * (over - o0) / (o1 - o0)
    return env[-1][1] if over >= env[-1][0] else env[0][1]


# The per-image pixel counts `matched_interval` resamples, in this column order (`evaluate.CoverageCounts`' fields)
COUNT_COLUMNS = ("covered_px", "text_px", "outside_px", "image_px")


def image_counts(gts: Sequence[Any], preds: Sequence[Any]) -> Any:
    """Per image, the pixel counts behind coverage and over-redaction (n_images, 4), in
    `COUNT_COLUMNS` order: what the bootstraps here resample."""
    import numpy as np

    from pipeline.evaluate import coverage_counts

    out = [coverage_counts(g, p, g.width, g.height) for g, p in zip(gts, preds)]
    return np.array([[getattr(c, k) for k in COUNT_COLUMNS] for c in out], dtype=np.float64).reshape(-1, 4)


def matched_interval(stock: Any, curve: Any, *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float] | None:
    """How much of a matched comparison image sampling alone explains: a paired bootstrap over
    images of (the model's coverage at stock's over-redaction, read off its curve) - (stock's
    coverage). `stock` holds per-image pixel counts (`COUNT_COLUMNS`) at stock's settings, shape
    (n_images, 4); `curve` the model's at each grid point, (n_points, n_images, 4).
    Every resample draws the same images for both. Returns the central `level` interval, or None
    when the curve reaches stock's over-redaction in fewer than half the resamples. With 20 scene
    photos a few words decide a source's verdict; this says when they do."""
    import numpy as np

    stock = np.asarray(stock, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    _check_bootstrap(level, n_boot)
    n = stock.shape[0]
    if n == 0 or curve.shape[1:] != stock.shape:
        raise ValueError(f"stock counts {stock.shape} and curve counts {curve.shape} do not describe the same images")
    weights = _resample_weights(np.random.default_rng(seed), n, n_boot)
    s = weights @ stock                                   # (B, 4)
    c = np.einsum("bn,pnk->bpk", weights, curve)          # (B, P, 4)
    deltas = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for b in range(n_boot):
            if s[b, 1] <= 0 or s[b, 3] <= 0:
                continue                                  # a resample without text
            own = coverage_at_over(list(zip(c[b, :, 2] / c[b, :, 3], c[b, :, 0] / c[b, :, 1])), s[b, 2] / s[b, 3])
            if own is not None:
                deltas.append(own - s[b, 0] / s[b, 1])
    if len(deltas) < n_boot / 2:
        return None
    return _central(deltas, level)


def _check_bootstrap(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1, got {level}, {n_boot}")


def _resample_weights(rng: Any, n: int, n_boot: int) -> Any:
    """(n_boot, n): how often each of n images is drawn in each resample (with replacement)."""
    import numpy as np

    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)


def _central(values: Any, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap values."""
    import numpy as np

    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def stock_budget(stock_points: Sequence[Operating], explicit: float | None = None, floor: float = 0.002) -> float:
    """The over-redaction budget: explicit, else stock ppocr's at its default settings (>= floor)."""
    if explicit is not None:
        return float(explicit)
    default = [p for p in stock_points if p.params == PPOCR_GRID_DEFAULT] or list(stock_points[:1])
    return max(floor, default[0].over_redaction if default else floor)


def select(points: Sequence[Operating], budget: float) -> Selection:
    return Selection(budget, best_within(points, budget), tuple(points))


@dataclass(frozen=True)
class PromotionCheck:
    """The promotion rule's verdict: candidate vs stock ppocr at the same budget on one split."""

    ok: bool
    candidate: float
    stock: float
    budget: float
    images: int
    source: str
    worst_source: str = ""       # the source the candidate loses most on (vs stock), if any
    worst_delta: float = 0.0     # its coverage minus stock's there (negative: a loss)
    interval: tuple[float, float] | None = None   # 95 % interval of candidate - stock (`validation_interval`)

    def message(self, version: str) -> str:
        if not math.isfinite(self.candidate):   # nothing was compared: say why, not "nan vs nan"
            return f"{version}: not compared with stock ppocr ({self.source}), so it cannot be shown to be as good"
        verdict = "at least" if self.ok else "below"
        text = (f"{version}: validation coverage {self.candidate:.4f} vs stock ppocr {self.stock:.4f} at over-redaction "
                f"<= {self.budget:.4f}{f' on {self.images} images' if self.images else ''} ({self.source}): "
                f"{verdict} stock")
        if self.interval is not None:
            lo, hi = self.interval
            text += f"; difference {self.candidate - self.stock:+.4f}, 95 % interval over images {lo:+.4f} .. {hi:+.4f}"
            if lo < 0.0 < hi:
                text += " (these images do not decide it)"
        if self.worst_source:
            text += f"; worst source {self.worst_source} {self.worst_delta:+.4f}"
            if vetoed(self.worst_delta):
                text += f" (loses more than {SOURCE_TOLERANCE} there: refused)"
        return text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def own_settings(detector: Any) -> list[dict[str, float]]:
    """The one grid point a detector runs at as deployed (a bundle's stored thresholds)."""
    if hasattr(detector, "retuned"):
        c = detector.config
        return [{"thresh": c.thresh, "box_thresh": c.box_thresh, "unclip_ratio": c.unclip_ratio}]
    return [{"threshold": 0.3}]


def compare_with_stock(candidate: Any, items: Sequence[tuple[Path, Any]], grid: Sequence[dict[str, float]] | None,
                       source: str, explicit_budget: float | None = None, floor: float = 0.002,
                       stock: Any = None, tolerance: float = 0.0) -> tuple[PromotionCheck, Selection, Selection]:
    """Stock ppocr swept over `grid` and `candidate` at its own (deployed) settings, on `items`,
    at the same budget; the candidate passes when its coverage at the budget is at least
    stock's best (minus `tolerance`)."""
    from pipeline.detectors.ppocr import PPOCRDetector

    if not has_text(g for _, g in items):
        nan = float("nan")
        refused = PromotionCheck(False, nan, nan, nan, len(items), f"{source}: no labelled text to compare on")
        return refused, Selection(nan, None, ()), Selection(nan, None, ())
    stock = stock or PPOCRDetector()
    with _maps_cached(stock), _maps_cached(candidate):   # the interval below reuses the sweeps' maps
        stock_points = sweep(stock, items, [PPOCR_GRID_DEFAULT, *(grid or [])])
        scored = int(stock_points[0].metrics.get("n_images", 0))
        if not stock_points[0].metrics.get("n_gt"):
            # the labelled images could not be read (skipped above, each logged): 0 >= 0 made a
            # model no one had measured current
            nan = float("nan")
            refused = PromotionCheck(False, nan, nan, nan, scored, f"{source}: no labelled text could be read to compare "
                                     f"on ({len(items) - scored} of {len(items)} images unreadable)")
            return refused, Selection(nan, None, ()), Selection(nan, None, ())
        budget = stock_budget(stock_points, explicit_budget, floor)
        s_sel = select(stock_points, budget)
        c_sel = select(sweep(candidate, items, own_settings(candidate)), budget)
        interval = validation_interval(candidate, stock, items, c_sel.best.params, s_sel.best.params) \
            if c_sel.best is not None and s_sel.best is not None else None
    worst, delta = worst_source(c_sel, s_sel, items)
    ok = passes(c_sel.coverage, s_sel.coverage, delta, tolerance)
    check = PromotionCheck(ok, c_sel.coverage, s_sel.coverage, budget, scored, source, worst, delta, interval)
    return check, c_sel, s_sel


@contextmanager
def _maps_cached(detector: Any) -> Iterator[None]:
    """Keep a PP-OCR-family detector's probability maps for the block (one forward pass per
    image for every setting read in it); other detectors are left alone."""
    if not hasattr(detector, "cache_maps"):
        yield
        return
    before = getattr(detector, "_maps", None) is not None
    detector.cache_maps(True)
    try:
        yield
    finally:
        detector.cache_maps(before)


def _per_image_counts(detector: Any, items: Sequence[tuple[Path, Any]], params: dict[str, float]
                      ) -> dict[int, tuple[float, float]]:
    """item index -> (covered text px, text px) of `detector` at `params` (PP-OCR settings, or a
    Faster R-CNN score `threshold`); unreadable images are left out."""
    from pipeline.predict import detect_set

    if hasattr(detector, "retuned"):
        found = detect_set(detector.retuned(**params), items, 0.3)
    else:
        found = detect_set(detector, items, float(params.get("threshold", min(SCORE_GRID))))
    counts = image_counts([items[k][1] for k in found.ok], found.detections)
    return {k: (float(row[0]), float(row[1])) for k, row in zip(found.ok, counts)}


def validation_interval(candidate: Any, stock: Any, items: Sequence[tuple[Path, Any]],
                        candidate_params: dict[str, float], stock_params: dict[str, float], *,
                        level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """How much of the promotion verdict image sampling explains: a paired bootstrap of the
    candidate's minus stock's validation coverage, each at its selected settings, scored as
    selection scores them (the mean over sources, pooled with one), with images resampled
    within each source and the same draws for both. None without text to cover. With 29
    validation images, three of them receipts, a +0.03 verdict can rest on one image; this says so."""
    import numpy as np

    _check_bootstrap(level, n_boot)
    c, s = _per_image_counts(candidate, items, candidate_params), _per_image_counts(stock, items, stock_params)
    keys = sorted(set(c) & set(s))
    groups: dict[str, list[int]] = {}
    for k in keys:
        groups.setdefault(getattr(items[k][1], "source", "") or "", []).append(k)
    groups = {src: ks for src, ks in groups.items() if sum(s[k][1] for k in ks) > 0}
    if len(groups) < 2:   # one source (or one with text): pooled, as Operating.score does
        groups = {"": [k for k in keys if s[k][1] > 0 or c[k][1] > 0]}
    if not any(groups.values()):
        return None
    rng = np.random.default_rng(seed)
    diff = np.zeros(n_boot)
    for ks in groups.values():
        cc = np.array([c[k] for k in ks], dtype=np.float64)
        sc = np.array([s[k] for k in ks], dtype=np.float64)
        w = _resample_weights(rng, len(ks), n_boot)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = (w @ cc[:, 0]) / (w @ cc[:, 1]) - (w @ sc[:, 0]) / (w @ sc[:, 1])
        diff += np.nan_to_num(d)          # a resample with no text in a source: no difference there
    return _central(diff / len(groups), level)


def worst_source(candidate: Selection, stock: Selection, items: Sequence[tuple[Path, Any]]) -> tuple[str, float]:
    """(source, candidate minus stock coverage) where the candidate does worst, among sources with
    at least `MIN_SOURCE_IMAGES` images; ("", 0.0) without per-source numbers."""
    counts: dict[str, int] = {}
    for _, g in items:
        src = getattr(g, "source", "") or ""
        counts[src] = counts.get(src, 0) + 1
    c = candidate.best.by_source if candidate.best else {}
    s = stock.best.by_source if stock.best else {}
    deltas = {src: c.get(src, 0.0) - v for src, v in s.items() if counts.get(src, 0) >= MIN_SOURCE_IMAGES}
    if not deltas:
        return "", 0.0
    src = min(deltas, key=lambda k: deltas[k])
    return src, float(deltas[src])


def choose_interpolation(tried: Sequence[dict[str, Any]], margin: float = BLEND_MARGIN) -> int:
    """Index of the weight-space blend to keep: among the blends no source vetoes (a loss of more
    than `SOURCE_TOLERANCE`; else among all), the smallest step from the start weights whose
    coverage at the budget is within `margin` of the best. Validation holds a few images per
    source, so differences below the margin are noise, and the smaller step keeps more of what
    the start knew. Each entry: weight, coverage_at_budget, worst_source_delta."""
    ok = [i for i, t in enumerate(tried) if not vetoed(t["worst_source_delta"])] or list(range(len(tried)))
    best = max(float(tried[i]["coverage_at_budget"]) for i in ok)
    near = [i for i in ok if float(tried[i]["coverage_at_budget"]) >= best - margin - 1e-12]
    return min(near, key=lambda i: float(tried[i]["weight"]))
