"""`textloop iterate`: one full round of the loop.

pull -> curate -> retrain from the current model (default: fine-tune PP-OCR's DB network) ->
evaluate on the test split -> promote only if not worse than the current model on the test split
*and* at least as good as stock ppocr on the val split at the over-redaction budget (a
regression report otherwise) -> predict and rank the pool -> push the next batch.

Every step is one of the stages' own library calls and is idempotent, so an interrupted round
is finished by running `iterate` again: pull and push never duplicate, curation recomputes
the same tables, a training run whose model is already registered (same parent, same training
data) is not repeated, and an interrupted training resumes from its checkpoint. The round is
logged in `iterations` (step `iterate`) with every step's counts and metrics, and the round's
artefacts land in `runs/<iteration>/`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipeline.evaluate import Metrics
from pipeline.rank import RankOptions
from pipeline.train.engine import TrainConfig, data_signature

# Metrics that decide promotion (spelled once, on Metrics)
HIGHER_BETTER, LOWER_BETTER = Metrics.HIGHER_BETTER, Metrics.LOWER_BETTER


# A round's retraining: short, and stopped after 10 minutes (the best model kept). Everything
# else is TrainConfig's own default; out_dir, parent_bundle and resume are set per round.
ROUND_TRAINING = TrainConfig(epochs=3, steps_per_epoch=50, budget_minutes=10.0)


@dataclass(frozen=True)
class IterateConfig:
    """One round of the loop: the ranking as `textloop rank` takes it, the retraining as
    `textloop train` takes it, and what only the round decides."""

    rank: RankOptions = RankOptions()
    train: TrainConfig = ROUND_TRAINING
    synth_images: int = 200               # a missing synthetic set is generated this big (train's default: 400)
    engine: str = "permissive"            # curation engine (fastdup is non-commercial, opt in)
    curate_apply: bool = True             # act on duplicates and the worst label issues
    label_action: str = "review"          # review | exclude
    force: bool = False                   # promote even below stock ppocr (the test-split rule still applies)
    tolerance: float = 0.005              # "not worse": allowed change against the current model
    threshold: float = 0.3
    push: bool = True

    def __post_init__(self) -> None:
        """Options the round's later steps use are checked before its first: a bad --engine or
        --label-action failed after pull, and a bad committee after the retraining."""
        from pipeline.curate.duplicates import DuplicateConfig

        DuplicateConfig(engine=self.engine)
        if self.label_action not in ("review", "exclude"):
            raise ValueError(f"--label-action must be review or exclude, got {self.label_action!r}")


@dataclass
class RoundResult:
    iteration: int
    steps: dict[str, Any] = field(default_factory=dict)
    promoted: bool = False
    candidate: str | None = None
    current: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_decision(candidate: Metrics | Mapping[str, float], current: Metrics | Mapping[str, float] | None,
                       tolerance: float = 0.005) -> tuple[bool, list[str]]:
    """Promote when no decision metric is worse than the current model's by more than `tolerance`.

    Returns (promote, regressions) where each regression names the metric and both values.
    Metrics that are undefined (NaN/None) on either side are not compared."""
    if current is None:
        return True, []
    candidate = candidate.as_dict() if isinstance(candidate, Metrics) else candidate
    current = current.as_dict() if isinstance(current, Metrics) else current
    regressions = []
    for key in HIGHER_BETTER + LOWER_BETTER:
        a, b = candidate.get(key), current.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        worse = (b - a) if key in HIGHER_BETTER else (a - b)
        if worse > tolerance:
            regressions.append(f"{key}: {a:.4f} vs current {b:.4f}")
    return not regressions, regressions


def _evaluate_on(detector: Any, gt: list, threshold: float) -> Metrics:
    """Metrics on the (path, LabelledImage) pairs; an unreadable image is logged and left out
    instead of failing the round after its training finished."""
    from pipeline.evaluate import evaluate
    from pipeline.predict import detect_set

    found = detect_set(detector, gt, threshold)
    ok, dets, errors = found.ok, found.detections, found.errors
    for e in errors:
        logging.getLogger("textloop.loop").warning("evaluate: skipped %s", e)
    return evaluate([gt[k][1] for k in ok], dets)


def _test_set(ws: Any, seed: int) -> tuple[list, str]:
    """The workspace test split's human labels, or (cold start) a held-out synthetic set."""
    from pipeline.evaluate import workspace_ground_truth
    from pipeline.formats import read_jsonl
    from pipeline.synth import SynthConfig, generate

    gt = workspace_ground_truth(ws, "test")
    if gt:
        return gt, "workspace test split"
    d = ws.synth_dir(f"_test-{seed}")
    if not (d / "boxes.jsonl").exists():
        generate(d, SynthConfig(n_images=16, seed=seed + 2000))
    return [(d / r.image, r) for r in read_jsonl(d / "boxes.jsonl")], "held-out synthetic set (no labelled test images yet)"


def require_images(ws: Any) -> None:
    """ValueError unless the workspace holds images: a round on a blank one generated 400
    synthetic images and trained for minutes (from the CLI, and from serve's retrain)."""
    with ws.catalog() as cat:
        if not cat.row_counts()["images"]:
            raise ValueError(f"no images in {ws.root}: `textloop harvest FOLDER` (or `textloop import LABELS`) "
                             "first; a round learns from the labels of harvested images")


def iterate(ws: Any, cfg: IterateConfig = IterateConfig(), client: Any = None,
            say: Callable[[str], None] = lambda s: None) -> RoundResult:
    """Run one round; raises the first step's error after logging the round as failed, and
    ValueError (`require_images`) before any step on a workspace without images."""
    from pipeline.bundle import data_hash, register_model, resolve_detector, set_current
    from pipeline.curate.duplicates import DuplicateConfig
    from pipeline.curate.stage import run_curate
    from pipeline.detectors import load_detector
    from pipeline.evaluate import json_safe
    from pipeline.io import atomic_write_text
    from pipeline.rank import batch_from_ranking, rank_workspace
    from pipeline.train import check_promotion, resolve_parent, train_workspace, workspace_training_data

    require_images(ws)
    tc, rk = cfg.train, cfg.rank
    # The round's row in `iterations`: its counts are the steps so far, written after each step;
    # `failed` with the error if any step raises.
    with ws.catalog() as journal, journal.iteration("iterate") as it:
        iteration = it.id
        res = RoundResult(iteration)
        it.counts = res.steps
        run_dir = ws.run_dir(iteration)

        def log_step(name: str, data: dict[str, Any]) -> None:
            res.steps[name] = json_safe(data)
            it.save()

        studio = None
        if cfg.push:
            from pipeline.studio.launcher import connect_workspace
            from pipeline.studio.pull import pull

            studio = client or connect_workspace(ws.root)  # the server `studio up` started
            say("pull: reading annotations from Label Studio")
            log_step("pull", pull(ws, studio).as_dict())

        say(f"curate: duplicates ({cfg.engine}) and label noise")
        cur = run_curate(ws, DuplicateConfig(engine=cfg.engine), apply=cfg.curate_apply, label_action=cfg.label_action,
                         iteration=iteration)
        log_step("curate", {k: v for k, v in cur.as_dict().items() if k in ("duplicates", "label_noise")})
        noise = cur.label_noise or {}
        skipped = noise.get("skipped_images") or []
        if skipped:   # offline, imported labels have no out-of-sample prediction: say so, not "label noise" done
            say(f"curate: label noise scored {noise.get('labelled_images', 0)} labelled images, {len(skipped)} not "
                f"(e.g. {skipped[0].get('name') or skipped[0]['image_id'][:16]}: {skipped[0]['reason']})")

        # --- retrain from the current model ---
        parent_path, parent_version = resolve_parent(ws, "auto", tc.arch)
        synth, human, val, val_source = workspace_training_data(ws, ("default",), cfg.synth_images, tc.seed, say=say)
        # Keyed by what the model learns from (labels included, not just image ids), its parent and
        # the training options: a rerun with another --seed or recipe is a new run, not a resume of
        # a checkpoint made with other options (which train refuses).
        # What the round learns from apart from its parent (the samples, `train.data_signature`,
        # the one hash of keys and boxes that --resume checks too, and the options): the current
        # model, if a round trained it from exactly this, has nothing to learn from a new run
        # (rerunning `iterate` with no new label trained, and promoted, one more model each time).
        round_key = data_hash([data_signature([*human, *synth]), f"arch:{tc.arch}",
                               f"options:{json.dumps(tc.run_options(), sort_keys=True)}"])[:12]
        data_key = data_hash([round_key, f"parent:{parent_version}"])[:12]
        out = ws.runs_dir / f"train-iterate-{data_key}"
        with ws.catalog() as cat:
            current_row = cat.current_model()
        learnt = json.loads(current_row["metrics"] or "{}").get("round_data") if current_row is not None else None
        if learnt == round_key:
            candidate = str(current_row["version"])
            say(f"train: no new labels since {candidate} was trained on them, not training again")
            log_step("train", {"version": candidate, "reused": True, "reason": "no new labels"})
        elif (out / "bundle.zip").exists():  # a rerun after this step finished: same data, same parent
            candidate = register_model(ws, out / "bundle.zip", parent=parent_version)
            say(f"train: model {candidate} was already trained on this data, not training again")
            log_step("train", {"version": candidate, "reused": True})
        else:
            tcfg = replace(tc, out_dir=str(out), parent_bundle=str(parent_path) if parent_path else None,
                           resume=(out / "checkpoint.pt").exists())
            say(f"train {tc.arch}: {len(synth)} synthetic + {len(human)} human-labelled images, parent "
                f"{parent_version or ('stock PP-OCR' if tc.arch == 'db' else 'none (from scratch)')}")
            summary = train_workspace(ws, tcfg, synth, human, val, val_source, parent_version, promote=False)
            candidate = summary.version
            log_step("train", summary.as_dict())
        res.candidate = candidate

        # --- evaluate candidate vs current on the test split; promote only if not worse ---
        gt, gt_source = _test_set(ws, tc.seed)
        with ws.catalog() as cat:
            cur_row = cat.current_model()
            cand_row = cat.model(candidate)
        current_det = load_detector(resolve_detector("current", ws))
        res.current = current_det.version
        say(f"evaluate: {candidate} vs current {current_det.version} on {len(gt)} images ({gt_source})")
        cand_det = load_detector(str(ws.abspath(cand_row["path"])))
        m_cand = _evaluate_on(cand_det, gt, cfg.threshold)
        m_cur = _evaluate_on(current_det, gt, cfg.threshold) if current_det.version != candidate else None
        promote, regressions = promotion_decision(m_cand, m_cur, cfg.tolerance)
        already_current = cur_row is not None and cur_row["version"] == candidate
        stock_check = None
        if already_current:  # a rerun after the promotion: nothing to decide
            promote, regressions = False, []
        elif promote:  # never promote a blind model: at least stock ppocr on val at the over-redaction budget
            stock_check = check_promotion(ws, candidate, tc.threads)
            say(stock_check.message(candidate))
            if not stock_check.ok:
                if cfg.force:
                    logging.getLogger("textloop.loop").warning("promoting %s below stock ppocr (force)", candidate)
                else:
                    promote = False
                    regressions.append(f"validation coverage at over-redaction <= {stock_check.budget:.4f}: "
                                       f"{stock_check.candidate:.4f} vs stock ppocr {stock_check.stock:.4f}")
        evaluation = {"test_set": gt_source, "images": len(gt), "candidate": {"version": candidate, **m_cand.as_dict()},
                      "current": {"version": current_det.version, **(m_cur.as_dict() if m_cur else {})}, "promoted": promote,
                      "regressions": regressions, "stock_check": stock_check.to_json() if stock_check else None}
        with ws.catalog() as cat:
            merged = {**json.loads(cand_row["metrics"] or "{}"), "test": json_safe(m_cand),
                      "labelled_images": len(human), "round_data": round_key}
            cat.set_model_metrics(candidate, json_safe(merged))
        if promote:
            set_current(ws, candidate)   # the rule was applied above
            say(f"promote: {candidate} is now current")
        elif already_current:
            say(f"promote: {candidate} is already current")
        else:
            atomic_write_text(run_dir / "regression.json", json.dumps(json_safe(evaluation), indent=2))
            say(f"promote: kept {current_det.version}; {candidate} is worse ({'; '.join(regressions)}); "
                f"see {run_dir / 'regression.json'}")
        res.promoted = promote
        log_step("evaluate", evaluation)

        # --- predict and rank the pool with the (possibly new) current model ---
        # Reuse the detectors loaded for the evaluation rather than building them again.
        model = cand_det if (promote or already_current) else current_det
        second = None
        if rk.committee and rk.committee != model.name:
            second = current_det if current_det.name == rk.committee else load_detector(resolve_detector(rk.committee, ws))
        run, second = rk.plan(model, second)
        say(f"rank: {run.strategy} with {model.version}")
        ranked = rank_workspace(ws, model, run, committee_detector=second)
        batch = batch_from_ranking(ranked.frame, run.strategy, rk.top)
        log_step("rank", {"pool": len(ranked.frame), "batch": len(batch), "strategy": run.strategy, "model_version": model.version})

        if cfg.push and studio is not None:
            from pipeline.studio.push import push_images

            say(f"push: {len(batch)} ranked images")
            pushed = push_images(ws, batch, model_version=model.version, client=studio, keep_order=True).as_dict()
            if pushed["reopened_for_review"]:
                say(f"review: reopened {pushed['reopened_for_review']} tasks whose labels curation suspects")
            log_step("push", pushed)
        it.metrics = {"candidate": candidate, "promoted": promote, **json_safe(m_cand)}
        atomic_write_text(run_dir / "iterate.json", json.dumps(json_safe(res.as_dict()), indent=2))
    return res
