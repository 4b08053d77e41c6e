"""Active-learning ranking: which unlabelled images a human should label next.

Pure per-image scores (higher = more useful to label):
- `uncertainty`: boxes whose score falls in the uncertain band, weighted by closeness to the
  middle of the band and by size; an image where nothing is detected gets a floor score so
  "no boxes" never reads as "certain" (it may be the image whose text the model misses).
- `committee`: disagreement between two detectors: 1 - F1 of boxes matched at IoU 0.5, and
  text-pixel disagreement (1 - IoU of their union masks); the score is their mean.
- `tta`: the model against itself under a horizontal flip and a rescale (1 - F1, mean).
- `random`: a seeded hash of the image id (the control).

Batch selection then takes the top of one strategy while never putting two near-duplicates
(perceptual-hash distance) in one batch, optionally k-center greedy over embeddings so the
batch covers the pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.boxes import Detections, area, iou_matrix, union_mask

STRATEGIES = ("uncertainty", "committee", "tta", "random")


@dataclass(frozen=True)
class RankConfig:
    band: tuple[float, float] = (0.2, 0.8)   # scores in this band are "uncertain"
    empty_floor: float = 0.35                 # score of an image with no detection at all
    iou: float = 0.5
    near_dup_distance: int = 6                # max perceptual-hash Hamming distance of near-duplicates
    seed: int = 0


# --- per-image scores (pure) -------------------------------------------------------------

def uncertainty_score(det: Detections, width: int, height: int, cfg: RankConfig = RankConfig()) -> float:
    """Sum over boxes in the band of closeness-to-the-middle x (1 + relative size); floor for empties."""
    if len(det) == 0:
        return cfg.empty_floor
    lo, hi = cfg.band
    s = det.scores
    in_band = (s >= lo) & (s <= hi)
    if not in_band.any():
        # Only confident boxes (or only very weak ones): little to learn, but weak-only is not certain.
        return 0.1 * float(np.mean(s < lo))
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    closeness = 1.0 - np.abs(s[in_band] - mid) / half          # 1 at the band's middle, 0 at its edges
    rel_area = area(det.boxes[in_band]) / float(max(width * height, 1))
    size_weight = 1.0 + np.sqrt(np.clip(rel_area, 0, 1)) * 10   # larger boxes weigh more
    return float(np.sum((0.5 + 0.5 * closeness) * size_weight))


def match_f1(a: Detections, b: Detections, iou: float = 0.5) -> float:
    """F1 of greedy one-to-one matching at IoU >= iou (1.0 when both are empty)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    if len(a) == 0 or len(b) == 0:
        return 0.0
    m = iou_matrix(a.boxes, b.boxes)
    matched = 0
    used_b: set[int] = set()
    for i in np.argsort(-a.scores):
        j_candidates = [j for j in np.argsort(-m[i]) if m[i, j] >= iou and j not in used_b]
        if j_candidates:
            used_b.add(int(j_candidates[0]))
            matched += 1
    return 2.0 * matched / (len(a) + len(b))


def pixel_disagreement(a: Detections, b: Detections, width: int, height: int) -> float:
    """1 - IoU of the two union masks (0 when both are empty)."""
    ma, mb = union_mask(a.boxes, width, height), union_mask(b.boxes, width, height)
    union = np.logical_or(ma, mb).sum()
    if union == 0:
        return 0.0
    return float(1.0 - np.logical_and(ma, mb).sum() / union)


def committee_score(a: Detections, b: Detections, width: int, height: int, cfg: RankConfig = RankConfig()) -> float:
    return 0.5 * (1.0 - match_f1(a, b, cfg.iou)) + 0.5 * pixel_disagreement(a, b, width, height)


def tta_score(original: Detections, variants: Sequence[Detections], cfg: RankConfig = RankConfig()) -> float:
    """Mean 1 - F1 between the original and each test-time-augmented prediction (mapped back)."""
    if not variants:
        return 0.0
    return float(np.mean([1.0 - match_f1(original, v, cfg.iou) for v in variants]))


def random_score(image_id: str, seed: int = 0) -> float:
    h = hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()
    return int(h[:12], 16) / float(1 << 48)


# --- test-time augmentation ----------------------------------------------------------------

def tta_variants(detect: Callable[[list[np.ndarray]], list[Detections]], image: np.ndarray,
                 scales: Sequence[float] = (0.75,)) -> list[Detections]:
    """Detections under a horizontal flip and rescales, mapped back to the original frame."""
    from PIL import Image

    h, w = image.shape[:2]
    views = [np.ascontiguousarray(image[:, ::-1])]
    for s in scales:
        views.append(np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))))))
    outs = detect(views)
    flipped = outs[0]
    fb = flipped.boxes.copy()
    fb[:, [0, 2]] = w - flipped.boxes[:, [2, 0]]
    mapped = [Detections(fb, flipped.scores, flipped.labels)]
    for s, d in zip(scales, outs[1:]):
        vh, vw = views[len(mapped)].shape[:2]
        scale = np.array([w / vw, h / vh, w / vw, h / vh])
        mapped.append(Detections(d.boxes * scale, d.scores, d.labels))
    return mapped


# --- batch selection -------------------------------------------------------------------------

def hamming(a: int, b: int) -> int:
    return int(bin(a ^ b).count("1"))


def select_diverse(order: Sequence[str], hashes: dict[str, int], k: int, max_distance: int) -> list[str]:
    """Walk `order` (best first), skipping anything within `max_distance` of an already picked image."""
    picked: list[str] = []
    for image_id in order:
        if len(picked) >= k:
            break
        h = hashes.get(image_id)
        if h is not None and any(hamming(h, hashes[p]) <= max_distance for p in picked if p in hashes):
            continue
        picked.append(image_id)
    return picked


def kcenter_greedy(embeddings: np.ndarray, k: int, candidates: Sequence[int], covered: Sequence[int] = ()) -> list[int]:
    """Greedy k-center: repeatedly pick the candidate farthest from everything chosen/covered."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if len(emb) == 0 or k <= 0:
        return []
    cand = list(candidates)
    chosen: list[int] = []
    centers = list(covered)
    dist = np.full(len(emb), np.inf)
    for c in centers:
        dist = np.minimum(dist, np.linalg.norm(emb - emb[c], axis=1))
    if not centers:
        first = cand[0]
        chosen.append(first)
        dist = np.minimum(dist, np.linalg.norm(emb - emb[first], axis=1))
    while len(chosen) < min(k, len(cand)):
        remaining = [c for c in cand if c not in chosen]
        nxt = max(remaining, key=lambda c: dist[c])
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(emb - emb[nxt], axis=1))
    return chosen


# --- the ranking table ------------------------------------------------------------------------

def reason_for(row: pd.Series, cfg: RankConfig) -> str:
    parts = []
    if row.get("n_boxes", 0) == 0:
        parts.append("nothing detected: may be missed text")
    elif row.get("n_uncertain", 0):
        parts.append(f"{int(row['n_uncertain'])} boxes with scores in {cfg.band[0]:.1f}-{cfg.band[1]:.1f}")
    if pd.notna(row.get("score_committee")) and row.get("score_committee", 0) > 0.3:
        parts.append(f"detectors disagree ({row['score_committee']:.2f})")
    if pd.notna(row.get("score_tta")) and row.get("score_tta", 0) > 0.3:
        parts.append(f"unstable under flip/scale ({row['score_tta']:.2f})")
    return "; ".join(parts) or "confident prediction"


def ranking_table(
    images: Sequence[dict], model: dict[str, Detections], cfg: RankConfig = RankConfig(),
    committee: dict[str, Detections] | None = None, tta: dict[str, list[Detections]] | None = None,
) -> pd.DataFrame:
    """One row per image with every strategy's score (NaN where not computed) and a reason."""
    rows = []
    for im in images:
        iid, w, h = im["id"], int(im["width"]), int(im["height"])
        det = model.get(iid, Detections())
        lo, hi = cfg.band
        row = {
            "image_id": iid, "width": w, "height": h, "n_boxes": len(det),
            "n_uncertain": int(np.sum((det.scores >= lo) & (det.scores <= hi))),
            "mean_score": float(det.scores.mean()) if len(det) else np.nan,
            "score_uncertainty": uncertainty_score(det, w, h, cfg),
            "score_committee": committee_score(det, committee[iid], w, h, cfg) if committee and iid in committee else np.nan,
            "score_tta": tta_score(det, tta[iid], cfg) if tta and iid in tta else np.nan,
            "score_random": random_score(iid, cfg.seed),
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=["image_id", "width", "height", "n_boxes", "n_uncertain", "mean_score",
                                     *[f"score_{s}" for s in STRATEGIES]])
    df["reason"] = [reason_for(r, cfg) for _, r in df.iterrows()] if len(df) else []
    return df


def order_by(df: pd.DataFrame, strategy: str) -> list[str]:
    col = f"score_{strategy}"
    if col not in df or df[col].isna().all():
        raise ValueError(f"strategy {strategy!r} was not computed in this ranking (have: "
                         f"{[c[6:] for c in df.columns if c.startswith('score_') and df[c].notna().any()]})")
    return df.sort_values([col, "image_id"], ascending=[False, True])["image_id"].tolist()
