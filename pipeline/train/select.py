"""Model selection and promotion at an over-redaction budget.

Fine-tuning shifts a detector's score calibration, so two models are compared at matched
over-redaction, not at one fixed threshold: each is swept over a small grid of its post-
processing settings on the validation split, and its *coverage at the budget* is the best
text coverage among the settings whose over-redaction stays within the budget (0 if none
does). The budget defaults to what stock `ppocr` over-redacts on that split with its default
settings (never below `min_budget`). Stock `ppocr` gets the same sweep, so the promotion rule
("at least as good as stock") compares like with like.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline.train")

PPOCR_GRID_DEFAULT = {"thresh": 0.3, "box_thresh": 0.3, "unclip_ratio": 1.6}
SCORE_GRID = (0.3, 0.5, 0.7)   # Faster R-CNN: score thresholds


@dataclass(frozen=True)
class Operating:
    """One point on a detector's coverage / over-redaction trade-off curve."""

    params: dict[str, float]
    text_coverage: float
    over_redaction: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """A detector's sweep on one validation set and its best point within `budget`."""

    budget: float
    best: Operating | None
    points: tuple[Operating, ...]

    @property
    def coverage(self) -> float:
        return self.best.text_coverage if self.best is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        from pipeline.evaluate import json_safe

        return json_safe({"budget": self.budget, "coverage_at_budget": self.coverage,
                          "best": asdict(self.best) if self.best else None,
                          "points": [{"params": p.params, "text_coverage": p.text_coverage,
                                      "over_redaction": p.over_redaction} for p in self.points]})  # type: ignore[return-value]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def sweep(detector: Any, items: Sequence[tuple[Path, Any]], grid: Sequence[dict[str, float]] | None = None,
          threshold: float = 0.3) -> list[Operating]:
    """Metrics of `detector` at every grid point on (path, LabelledImage) items. PP-OCR-family
    detectors are re-tuned (`thresh`, `box_thresh`, `unclip_ratio`) with their probability
    maps cached, so the grid costs one forward pass per image; others sweep the score threshold."""
    from pipeline.evaluate import evaluate
    from pipeline.predict import detect_set

    points = []
    if hasattr(detector, "retuned"):
        grid = list(grid) if grid else [PPOCR_GRID_DEFAULT]
        cached = getattr(detector, "_maps", None) is not None
        detector.cache_maps(True)
        try:
            for params in grid:
                ok, dets, errors, _ = detect_set(detector.retuned(**params), items, threshold)
                for e in errors:
                    log.warning("validation: skipped %s", e)
                m = evaluate([items[k][1] for k in ok], dets) if ok else {}
                points.append(Operating(dict(params), _num(m.get("text_coverage")), _num(m.get("over_redaction")), m))
        finally:
            detector.cache_maps(cached)
        return points
    ok, dets, errors, _ = detect_set(detector, items, min(SCORE_GRID))
    for e in errors:
        log.warning("validation: skipped %s", e)
    for t in (grid or [{"threshold": t} for t in SCORE_GRID]):
        m = evaluate([items[k][1] for k in ok], [d.filter(t["threshold"]) for d in dets]) if ok else {}
        points.append(Operating(dict(t), _num(m.get("text_coverage")), _num(m.get("over_redaction")), m))
    return points


def best_within(points: Sequence[Operating], budget: float) -> Operating | None:
    """The highest-coverage point whose over-redaction is within the budget (ties: less over-redaction)."""
    ok = [p for p in points if p.over_redaction <= budget + 1e-12]
    return max(ok, key=lambda p: (p.text_coverage, -p.over_redaction)) if ok else None


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

    def message(self, version: str) -> str:
        verdict = "at least" if self.ok else "below"
        return (f"{version}: validation coverage {self.candidate:.4f} vs stock ppocr {self.stock:.4f} at over-redaction "
                f"<= {self.budget:.4f} on {self.images} images ({self.source}): {verdict} stock")

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

    stock = stock or PPOCRDetector()
    stock_points = sweep(stock, items, [PPOCR_GRID_DEFAULT, *(grid or [])])
    budget = stock_budget(stock_points, explicit_budget, floor)
    s_sel = select(stock_points, budget)
    c_sel = select(sweep(candidate, items, own_settings(candidate)), budget)
    check = PromotionCheck(c_sel.coverage + tolerance >= s_sel.coverage, c_sel.coverage, s_sel.coverage, budget,
                           len(items), source)
    return check, c_sel, s_sel
