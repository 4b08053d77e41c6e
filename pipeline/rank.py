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
(clusters of `pipeline.curate.duplicates`) in one batch, optionally k-center greedy over embeddings so the
batch covers the pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported where tables are built: it is not needed to start the CLI
    import pandas as pd

from pipeline.boxes import Detections, area, greedy_match, iou_matrix, union_mask
from pipeline.catalog import HUMAN_LABELLED, ImageStatus

STRATEGIES = ("uncertainty", "committee", "tta", "random")
RANKING_TABLE = "ranking"                 # <workspace>/reports/ranking.parquet (+ .csv); push reads it
STRATEGY_HELP = (f"Batch strategy: {', '.join(STRATEGIES)}, or auto (uncertainty: measured at least as good as "
                 "committee in the active-learning simulations).")


def choose_strategy(requested: str) -> str:
    """`auto` -> `uncertainty`. In both active-learning simulations from the stock weights
    (docs/benchmarks.md: the devset pool, and a pool of microscopy overlays where stock is weak)
    uncertainty was at least as good as committee and random (microscopy: +0.097 coverage after
    24 labels vs committee +0.069, random +0.087) and it needs no second detector pass. (An
    earlier simulation from a Faster R-CNN base had favoured committee.)"""
    return "uncertainty" if requested == "auto" else requested


def plan_rank(model: Any, second: Any, strategy: str, committee_spec: str | None = None,
              **options: Any) -> tuple[RankRun, Any]:
    """The RankRun for ranking with `model` and an optional committee detector `second`, and the
    committee actually used: none when `second` is the model itself (same version: it would
    disagree nowhere), and `auto` resolved against that. One rule for `rank` and `iterate`.

    `committee_spec` is the committee as the user named it (`--committee`; `second` may be None
    when the caller already saw it is the model): an explicit `committee` strategy that has no
    second detector is a ValueError saying which of the two is missing."""
    same = second is not None and second.version == model.version
    if same:
        second = None
    if strategy == "committee" and second is None:
        if same or committee_spec:   # asked for, but it is the model: say so, not "give one"
            name = committee_spec or model.version
            raise ValueError(f"--committee {name} is the model itself ({model.version}); a committee needs a "
                             "second, different detector (e.g. a trained bundle.zip, or rank a trained model "
                             "against ppocr)")
        raise ValueError("strategy 'committee' needs a second detector: give --committee (e.g. ppocr, or a "
                         "trained bundle.zip different from the model)")
    run = RankRun(strategy=choose_strategy(strategy),
                  committee=second.version if second is not None else None, **options)
    return run, second


@dataclass(frozen=True)
class RankOptions:
    """What `textloop rank` and `iterate` ask for, before the detectors are known: `auto` and
    the committee are resolved against them by `plan` (a committee equal to the model is none)."""

    strategy: str = "auto"                   # a STRATEGIES name, or auto (see choose_strategy)
    top: int = 20
    committee: str | None = "ppocr"          # detector spec of the second detector; None = skip
    tta: bool = False                        # costs two extra inference passes per image
    diversity: bool = True                   # never two near-duplicates in a batch
    kcenter: bool = False                    # spread the batch over the pool's embeddings
    min_score: float = 0.05                  # keep weak boxes: they carry the uncertainty

    def __post_init__(self) -> None:
        if self.strategy not in (*STRATEGIES, "auto"):  # fail before any work (iterate: an hour of retraining)
            raise ValueError(f"unknown strategy {self.strategy!r}: use auto or one of {', '.join(STRATEGIES)}")
        if self.committee is not None:
            from pipeline.detectors import check_spec

            try:
                check_spec(str(self.committee))
            except (FileNotFoundError, ValueError) as exc:
                raise ValueError(f"--committee: {exc}") from None

    def plan(self, model: Any, second: Any) -> tuple[RankRun, Any]:
        """The RankRun for ranking with `model` and the loaded committee detector `second`."""
        return plan_rank(model, second, self.strategy, self.committee, top=self.top, tta=self.tta,
                         diversity=self.diversity, kcenter=self.kcenter, min_score=self.min_score)


@dataclass(frozen=True)
class RankConfig:
    band: tuple[float, float] = (0.2, 0.8)   # scores in this band are "uncertain"
    empty_floor: float = 0.35                 # score of an image with no detection at all
    iou: float = 0.5
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
    matched = int((greedy_match(iou_matrix(a.boxes, b.boxes), a.scores, iou) >= 0).sum())
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

def tta_variants(detector: Any, image: np.ndarray, scales: Sequence[float] = (0.75,),
                 min_score: float = 0.0) -> list[Detections]:
    """`detector`'s detections (at least `min_score`) under a horizontal flip and rescales,
    mapped back to the original frame: what `tta_score` compares with the plain view."""
    from PIL import Image

    h, w = image.shape[:2]
    views = [np.ascontiguousarray(image[:, ::-1])]
    for s in scales:
        views.append(np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))))))
    outs = [d.filter(min_score) for d in detector.detect(views)]
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

def select_diverse(order: Sequence[str], group_of: dict[str, str], k: int, labelled: Collection[str] = ()) -> list[str]:
    """Walk `order` (best first), skipping images whose near-duplicate group is already in the batch
    or holds an image a human labelled (`labelled`: such groups; a duplicate group is labelled once).

    `group_of` maps image id -> duplicate cluster id (from `pipeline.curate.duplicates`); images
    without a group are unique."""
    picked: list[str] = []
    groups: set[str] = set(labelled)
    for image_id in order:
        if len(picked) >= k:
            break
        g = group_of.get(image_id) or ""
        if g and g in groups:
            continue
        picked.append(image_id)
        if g:
            groups.add(g)
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

def reason_for(row: pd.Series, cfg: RankConfig, strategy: str = "uncertainty") -> str:
    """Why `strategy` ranks this image where it does, its own signal first, then the others'."""
    def score(name: str) -> float | None:   # NaN where the strategy was not computed
        x = row.get(f"score_{name}")
        return None if x is None or x != x else float(x)

    committee, tta = score("committee"), score("tta")
    own = {
        "uncertainty": ("nothing detected: may be missed text" if row.get("n_boxes", 0) == 0 else
                        f"{int(row['n_uncertain'])} box{'es' if int(row['n_uncertain']) != 1 else ''} with scores "
                        f"in {cfg.band[0]:.1f}-{cfg.band[1]:.1f}"
                        if row.get("n_uncertain", 0) else ""),
        "committee": "" if committee is None else
                     f"detectors {'disagree' if committee > 0.3 else 'mostly agree'} ({committee:.2f})",
        "tta": f"unstable under flip/scale ({tta:.2f})" if tta is not None and tta > 0.3 else "",
        "random": "random pick",
    }
    if strategy != "committee" and committee is not None and committee <= 0.3:
        own["committee"] = ""      # agreement is news only when it is why the image was picked
    parts = [own[strategy]] + [v for k, v in own.items() if k not in (strategy, "random")]
    return "; ".join(p for p in parts if p) or "confident prediction"


def ranking_table(
    images: Sequence[dict], model: dict[str, Detections], cfg: RankConfig = RankConfig(),
    committee: dict[str, Detections] | None = None, tta: dict[str, list[Detections]] | None = None,
    strategy: str = "uncertainty",
) -> pd.DataFrame:
    """One row per image with every strategy's score (NaN where not computed) and the reason
    `strategy` ranks it (its own signal first)."""
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
    import pandas as pd

    df = pd.DataFrame(rows, columns=["image_id", "width", "height", "n_boxes", "n_uncertain", "mean_score",
                                     *[f"score_{s}" for s in STRATEGIES]])
    df["reason"] = [reason_for(r, cfg, strategy) for _, r in df.iterrows()] if len(df) else []
    return df


def order_by(df: pd.DataFrame, strategy: str) -> list[str]:
    col = f"score_{strategy}"
    if len(df) == 0:
        return []
    if col not in df or df[col].isna().all():
        raise ValueError(f"strategy {strategy!r} was not computed in this ranking (have: "
                         f"{[c[6:] for c in df.columns if c.startswith('score_') and df[c].notna().any()]})")
    return df.sort_values([col, "image_id"], ascending=[False, True])["image_id"].tolist()


# --- the workspace stage ---------------------------------------------------------------------

UNLABELLED = (ImageStatus.NEW, ImageStatus.PUSHED)


@dataclass(frozen=True)
class RankRun:
    """What `rank_workspace` was asked to do (defaults: model predictions + ppocr committee)."""

    strategy: str = "uncertainty"
    top: int = 20
    committee: str | None = "ppocr"          # second detector for `committee`; None = skip
    tta: bool = False                        # costs two extra inference passes per image
    diversity: bool = True                   # never two near-duplicates in a batch
    kcenter: bool = False                    # spread the batch over the pool's embeddings
    min_score: float = 0.05                  # keep weak boxes: they carry the uncertainty
    config: RankConfig = RankConfig()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.strategy == "committee" and not self.committee:
            raise ValueError("strategy 'committee' needs a committee detector")
        if self.strategy == "tta" and not self.tta:
            object.__setattr__(self, "tta", True)


def pick_batch(df: pd.DataFrame, run: RankRun, group_of: dict[str, str] | None = None,
               embeddings: dict[str, np.ndarray] | None = None, labelled_groups: Collection[str] = ()) -> list[str]:
    """The batch to label next: top of the strategy, diverse (no two of a duplicate group, none of
    a group already labelled), optionally k-center over the top 3k."""
    order = order_by(df, run.strategy)
    if run.kcenter and embeddings:
        pool = [i for i in order[: max(run.top * 3, run.top)] if i in embeddings]
        emb = np.stack([embeddings[i] for i in pool]) if pool else np.zeros((0, 1))
        chosen = [pool[j] for j in kcenter_greedy(emb, len(pool), range(len(pool)))]
        order = chosen + [i for i in order if i not in set(chosen)]
    if run.diversity and group_of:
        return select_diverse(order, group_of, run.top, labelled_groups)
    return order[: run.top]


class RankError(RuntimeError):
    """Ranking could not run on this workspace (e.g. nothing left to rank)."""


@dataclass(frozen=True, eq=False)
class RankResult:
    """The ranking table (one row per unlabelled image, the batch first), the images that could
    not be read, and what was run; `as_dict()` is the `--json` payload of `textloop rank`."""

    frame: pd.DataFrame
    errors: list[tuple[str, str]]            # (image id, error)
    iteration: int
    run: RankRun
    model_version: str
    table: str                               # reports/ranking.parquet (+ .csv)

    @property
    def batch(self) -> pd.DataFrame:
        return self.frame[self.frame["batch_rank"].notna()]

    def as_dict(self) -> dict[str, Any]:
        s = self.run.strategy
        return {"pool": len(self.frame), "strategy": s, "model_version": self.model_version,
                "committee": self.run.committee,
                "batch": self.batch[["image_id", "original_name", "batch_rank", f"score_{s}", "reason"]].to_dict("records"),
                "errors": [{"image_id": i, "error": e} for i, e in self.errors], "table": self.table}


def rank_images(ws: Any, options: RankOptions = RankOptions(), detector: str = "current",
                progress: Callable[[int, int], None] | None = None) -> RankResult:
    """`textloop rank` as one call: load the model and the committee, resolve `auto`, rank.
    Raises ValueError / FileNotFoundError for a detector or strategy that cannot be used, and
    RankError when the workspace cannot be ranked."""
    from pipeline.bundle import resolve_detector
    from pipeline.detectors import load_detector

    det = load_detector(resolve_detector(detector, ws))
    second = load_detector(resolve_detector(options.committee, ws)) if options.committee else None
    run, second = options.plan(det, second)
    try:
        return rank_workspace(ws, det, run, committee_detector=second, progress=progress)
    except ValueError as exc:
        raise RankError(str(exc)) from exc


def rank_workspace(ws, detector, run: RankRun = RankRun(), committee_detector=None,
                   progress: Callable[[int, int], None] | None = None) -> RankResult:
    """Score every unlabelled workspace image, pick the next batch and write the ranking table.

    Model (and committee) predictions are stored in the catalog under their versions, so `push`
    sends the boxes that were ranked (above its --min-score). Writes `reports/ranking.parquet` + `.csv` (read by
    `push --strategy`) and a copy under `runs/<iteration>/`."""
    from pipeline.imaging import load_rgb
    from pipeline.predict import predict_workspace

    with ws.catalog() as journal, journal.iteration("rank") as it:   # `failed` (with the error) if it raises
        rows = journal.images()
        errors: list[tuple[str, str]] = []
        images = []
        for r in rows:
            if r["status"] in UNLABELLED:
                # a copy damaged since its predictions were stored was ranked on them, first
                problem = ws.stored_problem(r["path"], r["bytes"])
                if problem is None:
                    images.append(r)
                else:
                    errors.append((r["id"], f"{r['original_name']}: {problem}"))
        iteration = it.id
        ids = [r["id"] for r in images]
        unreadable: list[tuple[str, str]] = []
        model = predict_workspace(ws, detector, ids, threshold=run.min_score, progress=progress, errors=unreadable,
                                  skip_existing=True)
        committee = None
        if committee_detector is not None:
            committee = predict_workspace(ws, committee_detector, ids, threshold=run.min_score, errors=unreadable,
                                          skip_existing=True)
        names = {r["id"]: r["original_name"] for r in images}
        first: dict[str, str] = {}
        for image_id, message in unreadable:   # once per image (the committee meets it too), named by its file
            first.setdefault(image_id, message)
        errors += [(i, f"{names.get(i) or i}: {m}") for i, m in first.items()]
        tta = None
        if run.tta:
            tta = {}
            for r in images:
                if r["id"] in model:
                    tta[r["id"]] = tta_variants(detector, load_rgb(ws.abspath(r["path"])), min_score=run.min_score)
        failed = {i for i, _ in errors}
        ok_images = [r for r in images if r["id"] not in failed]
        df = ranking_table(ok_images, model, run.config, committee, tta, run.strategy)
        df["model_version"] = detector.version
        df["split"] = [r["split"] for r in ok_images]
        df["original_name"] = [r["original_name"] for r in ok_images]

        group_of: dict[str, str] = {}
        embeddings: dict[str, np.ndarray] = {}
        # labelled images join the duplicate search: a near-copy of one is not worth a label
        labelled = [r for r in rows if r["status"] in HUMAN_LABELLED] if run.diversity else []
        if (run.diversity or run.kcenter) and len(ok_images) + len(labelled) > 1:
            from pipeline.curate.duplicates import DuplicateConfig, find_duplicates, image_ref

            rep = find_duplicates([image_ref(ws, r) for r in ok_images + labelled], DuplicateConfig(engine="permissive"))
            group_of = dict(zip(rep.images["image_id"], rep.images["cluster_id"]))
            emb = rep.extra.get("embeddings")
            if emb is not None:
                embeddings = dict(zip(rep.extra["embedding_ids"], emb))
        labelled_groups = {group_of[r["id"]] for r in labelled if group_of.get(r["id"])}
        df["duplicate_group"] = [group_of.get(i, "") for i in df["image_id"]]
        df["duplicate_of_labelled"] = [bool(group_of.get(i)) and group_of.get(i) in labelled_groups for i in df["image_id"]]
        batch = pick_batch(df, run, group_of, embeddings, labelled_groups)
        pos = {iid: k + 1 for k, iid in enumerate(batch)}
        df["batch_strategy"] = run.strategy
        # nullable integers: the CSV says 3, not 3.0, and the rest of the pool stays empty
        df["batch_rank"] = df["image_id"].map(pos).astype("Int64")
        df = df.sort_values(["batch_rank", f"score_{run.strategy}"], ascending=[True, False], na_position="last",
                            ignore_index=True)

        from pipeline.io import write_table

        write_table(df, [ws.reports_dir, ws.run_dir(iteration)], RANKING_TABLE)
        it.counts.update({"pool": len(images), "ranked": len(df), "batch": len(batch), "errors": len(errors)})
        it.metrics.update({"strategy": run.strategy, "model_version": detector.version})
    return RankResult(df, errors, iteration, run, detector.version, str(ws.reports_dir / f"{RANKING_TABLE}.parquet"))


def load_ranking(ws) -> pd.DataFrame | None:
    """The latest ranking table, or None when `textloop rank` has not run."""
    from pipeline.io import read_table

    return read_table(ws.reports_dir, RANKING_TABLE)


def batch_from_ranking(df: pd.DataFrame, strategy: str, top: int) -> list[str]:
    """Image ids to push for `strategy`: the diverse batch `rank` picked when it was run for this
    strategy, else the top of that strategy's scores."""
    if "batch_rank" in df and (df.get("batch_strategy") == strategy).any():
        picked = df[df["batch_rank"].notna()].sort_values("batch_rank")["image_id"].tolist()
        if len(picked) >= top:
            return picked[:top]
        rest = [i for i in order_by(df, strategy) if i not in set(picked)]
        return (picked + _copies_last(df, rest))[:top]
    return _copies_last(df, order_by(df, strategy))[:top]


def _copies_last(df: pd.DataFrame, order: list[str]) -> list[str]:
    """`order` with near-copies of labelled images (`duplicate_of_labelled`) moved to its end."""
    if "duplicate_of_labelled" not in df:
        return order
    copies = set(df.loc[df["duplicate_of_labelled"].fillna(False).astype(bool), "image_id"])
    return [i for i in order if i not in copies] + [i for i in order if i in copies]
