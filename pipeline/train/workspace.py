"""The workspace stage of training (used by `textloop train`, `textloop iterate` and the ML
backend's retrain), and the promotion rule: a model becomes current only if its validation
coverage at the over-redaction budget is at least stock ppocr's on the same split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.io import atomic_write_text
from pipeline.train.data import Sample, samples_from_jsonl, workspace_samples
from pipeline.train.engine import ResumeRefused, TrainConfig, data_signature, load_checkpoint, train
from pipeline.train.select import PromotionCheck, has_text, passes
from pipeline.workspace import check_run_name

log = logging.getLogger("pipeline.train")


class PromotionRefused(RuntimeError):
    """The promotion rule refused a model; `check` has both numbers."""

    def __init__(self, version: str, check: PromotionCheck) -> None:
        super().__init__(check.message(version) + "; force=True (--force) promotes it anyway")
        self.version = version
        self.check = check


def resolve_parent(ws: Any, parent: str, arch: str = "fasterrcnn") -> tuple[Path | None, str | None]:
    """(bundle path, version) of the model to fine-tune, or (None, None) for the architecture's
    start (stock PP-OCR weights for db, random weights for fasterrcnn).

    parent: `auto` (the current model if it is of this architecture, else the start), `none`,
    `current` (must exist and be of this architecture), a registered version, or a bundle.zip
    path. Raises ValueError with a one-line reason."""
    if parent == "none":
        return None, None
    with ws.catalog() as cat:
        if parent in ("auto", "current"):
            row = cat.current_model()
            if row is None or row["kind"] != arch:
                if parent == "current":
                    raise ValueError(f"no current {arch} model to fine-tune; start fresh with --parent none")
                return None, None
        else:
            row = cat.model(parent)
            if row is None:
                path = Path(parent)
                if path.suffix == ".zip" and path.exists():
                    from pipeline.bundle import read_bundle_meta

                    meta = read_bundle_meta(path)
                    if meta["config"].get("kind") != arch:
                        raise ValueError(f"parent {parent}: a {meta['config'].get('kind')} bundle, not {arch}")
                    return path, str(meta["config"]["version"])
                raise ValueError(f"parent {parent!r}: not a registered model version nor a bundle.zip")
            if row["kind"] != arch:
                raise ValueError(f"parent {parent}: a {row['kind']} model, not {arch} (use --arch {row['kind']})")
    path = ws.abspath(row["path"])
    if not path.is_file():   # deleted since it was registered: a traceback
        raise ValueError(f"parent {row['version']}: its bundle {path} is missing; register it again, "
                         "`textloop models promote ppocr` to go back to stock, or --parent none")
    return path, row["version"]


def workspace_training_data(ws: Any, synth_sets: Sequence[str] = ("default",), synth_images: int = 400,
                            seed: int = 0, say: Callable[[str], None] = log.info
                            ) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    """(synthetic, human train, validation, description of the validation source).

    Missing synthetic sets are generated; without labelled val images a held-out synthetic set
    is the validation set (and the caller is told so)."""
    from pipeline.synth import SynthConfig, check_complete, generate

    synth: list[Sample] = []
    for name in dict.fromkeys(synth_sets):   # `--synth a --synth a` counted the set twice
        d = ws.synth_dir(name)
        own = SynthConfig(n_images=synth_images, seed=seed)
        # an interrupted `synth --name` is not regenerated here with other options; train's
        # own generation, cut short, is finished below
        check_complete(d, finishing=own)
        if not (d / "boxes.jsonl").exists():
            say(f"generating synthetic set {name!r} ({synth_images} images)")
            generate(d, own)
        synth += samples_from_jsonl(d / "boxes.jsonl", f"synth/{name}/")
    human = workspace_samples(ws, "train")
    val = workspace_samples(ws, "val")
    val_source = "workspace val split"
    if not has_text(s.gt for s in val):   # text-free val images score 0 for every model: no selection
        d = ws.synth_dir(f"_val-{seed}")
        if not (d / "boxes.jsonl").exists():
            generate(d, SynthConfig(n_images=16, seed=seed + 1000))
        why = "no labelled val images yet" if not val else "the val split's labelled images hold no text yet"
        val = samples_from_jsonl(d / "boxes.jsonl", "synth/_val/")
        val_source = f"held-out synthetic set ({why})"
    return synth, human, val, val_source


def check_from_metrics(metrics: dict[str, Any], images: int, source: str) -> PromotionCheck | None:
    """The verdict from numbers stored at training time (db bundles), or None without them."""
    cand, stock, budget = (metrics.get(k) for k in ("coverage_at_budget", "stock_coverage_at_budget",
                                                    "over_redaction_budget"))
    if not all(isinstance(v, (int, float)) for v in (cand, stock, budget)) or not stock > 0:
        return None   # stock covering nothing: the split had no text (models stored 0 vs 0 before the check)
    worst, delta = str(metrics.get("worst_source") or ""), float(metrics.get("worst_source_delta") or 0.0)
    ok = passes(float(cand), float(stock), delta)
    iv = metrics.get("validation_interval")
    interval = (float(iv[0]), float(iv[1])) if isinstance(iv, (list, tuple)) and len(iv) == 2 else None
    return PromotionCheck(ok, float(cand), float(stock), float(budget), images, source, worst, delta, interval)


def check_promotion(ws: Any, version: str, threads: int = 0) -> PromotionCheck:
    """Compare a registered model with stock ppocr on the workspace's val split now (both at the
    same budget); without labelled val images, use the numbers stored at training time."""
    from pipeline.detectors import load_detector
    from pipeline.evaluate import workspace_ground_truth
    from pipeline.train.db import DBRecipe
    from pipeline.train.select import compare_with_stock

    with ws.catalog() as cat:
        row = cat.model(version)
    if row is None:
        raise KeyError(f"unknown model version {version!r}")
    from pipeline.detectors.ppocr import PPOCRDetector
    from pipeline.train.engine import resolve_threads

    items = workspace_ground_truth(ws, "val")
    if has_text(g for _, g in items):
        threads = resolve_threads(threads)
        detector = load_detector(str(ws.abspath(row["path"])), threads=threads)
        recipe = DBRecipe()
        check, _, _ = compare_with_stock(detector, items, recipe.grid(), "workspace val split",
                                         recipe.over_redaction_budget, recipe.min_budget,
                                         stock=PPOCRDetector(threads=threads))
        from pipeline.bundle import record_workspace_check

        record_workspace_check(ws, version, check.to_json())   # what `models list` and `redact` then show
        return check
    import json

    from pipeline.bundle import read_bundle_meta

    meta = read_bundle_meta(ws.abspath(row["path"]))
    metrics = {**json.loads(row["metrics"] or "{}"), **meta["metrics"]}
    n = int((meta["config"].get("train") or {}).get("val_images") or metrics.get("n_images") or 0)
    check = check_from_metrics(metrics, n, "validation at training time (no labelled text in the val split)")
    if check is None:
        return PromotionCheck(False, float("nan"), float("nan"), float("nan"), 0,
                              "no labelled text in the val split and no stored comparison with stock ppocr")
    return check


def promote_checked(ws: Any, version: str, force: bool = False, check: PromotionCheck | None = None,
                    threads: int = 0) -> PromotionCheck:
    """Promote `version` if the rule passes (or `force`); raise PromotionRefused otherwise. A
    forced promotion returns the failed check (`ok` False) and logs it at info level: each
    command renders it as its warning (it was printed twice, by the log and by the command)."""
    from pipeline.bundle import set_current

    check = check or check_promotion(ws, version, threads)
    if not check.ok and not force:
        raise PromotionRefused(version, check)
    if not check.ok:
        log.info("promoting %s despite the rule (--force): %s", version, check.message(version))
    set_current(ws, version)
    return check


def _result_check(result: Any, val: Sequence[Sample], val_source: str) -> PromotionCheck:
    """The rule on the run's own validation split (db: computed during selection)."""
    check = check_from_metrics(result.metrics or {}, len(val), val_source)
    if check is not None:
        return check
    from pipeline.train.db import DBRecipe
    from pipeline.train.select import compare_with_stock

    recipe = DBRecipe()
    check, _, _ = compare_with_stock(result.detector, [(s.path, s.gt) for s in val], recipe.grid(), val_source,
                                     recipe.over_redaction_budget, recipe.min_budget)
    return check


@dataclass(frozen=True)
class TrainSummary:
    """One training run, registered; `as_dict()` is the `--json` payload."""

    version: str
    arch: str
    parent: str | None
    promoted: bool
    promotion: dict[str, Any] | None      # both numbers of the promotion rule, when promotion was asked for
    promotion_message: str | None
    forced: bool
    steps: int
    epochs: int
    stopped: str
    minutes: float
    timing_s: dict[str, float]
    peak_rss_mb: int
    val_source: str
    metrics: dict[str, Any] | None
    bundle: str
    checkpoint: str
    synthetic: int
    human: int
    val: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_workspace(ws: Any, cfg: TrainConfig, synth: Sequence[Sample], human: Sequence[Sample],
                    val: Sequence[Sample], val_source: str, parent_version: str | None,
                    promote: bool = False, progress: Callable[[int, int, dict[str, Any]], None] | None = None,
                    force: bool = False) -> TrainSummary:
    """Train, save the bundle, register it and log the run in `iterations`. Promoted only when
    asked *and* when the promotion rule passes (or `force`): `current` is what redact uses by
    default. The summary's `promotion` holds both numbers; `promoted` says what happened."""
    from pipeline.bundle import register_model
    from pipeline.evaluate import json_safe

    # the run's `train` row in `iterations`: failed (with the error) if training or saving raises
    with ws.catalog() as journal, journal.iteration("train") as it:
        it.counts = {"synthetic": len(synth), "human": len(human), "val": len(val), "steps": 0}

        def tracked(step: int, total: int, info: dict[str, Any]) -> None:
            it.counts["steps"] = step    # the counts so far, should Ctrl-C end the run (the row had {})
            if progress:
                progress(step, total, info)

        result = train(cfg, synth, human, val, progress=tracked)
        bundle = Path(cfg.out_dir) / "bundle.zip"
        version = save_result(bundle, result, parent_version,
                              {"train": {"steps": result.steps, "stopped": result.stopped, "seconds": round(result.seconds, 1),
                                         "val_source": val_source, "val_images": len(val)}})
        register_model(ws, bundle, parent=parent_version, promote=False)
        it.counts = {"synthetic": len(synth), "human": len(human), "val": len(val), "steps": result.steps}
        it.metrics = {"version": version, **(json_safe(result.metrics) or {})}
    check = _result_check(result, val, val_source) if (promote and val) else None
    promoted = False
    if promote:
        if check is None:
            check = PromotionCheck(False, float("nan"), float("nan"), float("nan"), 0, "no validation set")
        if check.ok or force:
            promote_checked(ws, version, force=force, check=check)
            promoted = True
    summary = TrainSummary(
        version=version, arch=cfg.arch, parent=parent_version, promoted=promoted,
        promotion=json_safe(check.to_json()) if check else None,
        promotion_message=check.message(version) if check else None,
        forced=bool(force and promote and check and not check.ok),
        steps=result.steps, epochs=result.epochs, stopped=result.stopped,
        minutes=round(result.seconds / 60, 2), timing_s={k: round(v, 1) for k, v in result.timing.items()},
        peak_rss_mb=round(result.peak_rss_mb), val_source=val_source, metrics=json_safe(result.metrics),
        bundle=str(ws.models_dir / version / "bundle.zip"), checkpoint=str(result.checkpoint),
        synthetic=len(synth), human=len(human), val=len(val))
    return summary


class CheckpointExists(RuntimeError):
    """A run of that name has a checkpoint: continue it (resume) or discard it (restart)."""


def run_dir(ws: Any, run: str) -> Path:
    """Where run RUN keeps its checkpoint and bundle."""
    check_run_name(run, "--run")
    return ws.runs_dir / f"train-{run}"


def train_run(ws: Any, cfg: TrainConfig, *, synth_sets: Sequence[str] = ("default",), synth_images: int = 400,
              parent: str = "auto", run: str = "train", restart: bool = False, promote: bool = False,
              force: bool = False, say: Callable[[str], None] = log.info,
              progress: Callable[[int, int, dict[str, Any]], None] | None = None,
              given: Collection[str] | None = None) -> TrainSummary:
    """`textloop train` as one call: the run's folder (`cfg.out_dir` and `cfg.parent_bundle` are
    filled in), the parent model, the training data (missing synthetic sets generated), training,
    registration and promotion by the rule. A finished run trains again when the labels changed
    since (each round of the loop), and refuses when they did not. Raises CheckpointExists when
    an unfinished run has a checkpoint and neither `cfg.resume` nor `restart`, ValueError for an
    unknown parent or a finished run with nothing new, TrainingError when training cannot go on;
    Ctrl-C leaves the checkpoint for `resume`. `given`: the options the user set (TrainConfig
    field names, `db.<field>` for the recipe); a run resumed or trained again keeps its own
    options for the others, and a finished run trains again when a given one differs from its
    own (None: every option of `cfg` counts as given)."""
    out = run_dir(ws, run)
    ckpt = out / "checkpoint.pt"
    bundle = out / "bundle.zip"
    finished = (not restart and ckpt.exists() and bundle.exists()
                and bundle.stat().st_mtime >= ckpt.stat().st_mtime)   # the bundle comes after the last checkpoint
    if finished and cfg.resume:
        # resuming would redo the selection and register the same weights again under a new version
        raise ValueError(f"run {run!r} already finished as model {_bundle_version(bundle)} ({bundle}): "
                         "nothing to resume")
    if ckpt.exists() and not (cfg.resume or restart or finished):
        raise CheckpointExists(f"{ckpt} exists: continue it with --resume or start over with --restart")
    if cfg.resume and not restart and not ckpt.exists():
        raise ValueError(f"run {run!r} has no checkpoint to resume ({ckpt}); drop --resume to start it")
    saved = _checkpoint(ckpt, cfg.resume) if (cfg.resume or finished) and not restart else {}
    then = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    if then and given is not None:   # the run's own options, with what the user typed on top
        cfg = cfg.adopting(then, given)
        own = _read_run_file(out)        # and its data options: `--synth s1` was lost on --resume
        if "synth" not in given and own.get("synth"):
            synth_sets = tuple(own["synth"])
        if "synth_images" not in given and own.get("synth_images"):
            synth_images = int(own["synth_images"])
    if cfg.resume and not restart and then and given is not None and "parent" not in given:
        # the weights the run started from, even if another model was promoted since ("auto")
        parent_path, parent_version = _checkpoint_parent(then, saved)
    else:
        parent_path, parent_version = resolve_parent(ws, parent, cfg.arch)
    synth, human, val, val_source = workspace_training_data(ws, synth_sets, synth_images, cfg.seed, say=say)
    if not human and cfg.human_fraction > 0 and (given is None or "human_fraction" in given):
        # asked for a share of human labels, got none: said, not silently ignored
        say(f"warning: --human-fraction {cfg.human_fraction:g} asked for human-labelled images, but the train split "
            "has none: every batch is synthetic (label images in Label Studio and `pull`, or `import` labels)")
    if not (cfg.resume and not restart):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_FILE, json.dumps({"synth": list(dict.fromkeys(synth_sets)),
                                                      "synth_images": synth_images}, indent=1) + "\n")
    if finished:
        # the Quick start's loop (`pull && train --promote`) runs this every round: new labels
        # train the run again; the same data would only make the same model again
        version = _bundle_version(bundle)
        other = cfg.resume_differences(then) if then else []   # typed options that differ from the run's
        if other:   # new hyperparameters: they were dropped, and the old (maybe broken) model offered
            say(f"run {run!r} finished as model {version} with other options ({', '.join(other)}): "
                "training it again")
        elif saved.get("data") == data_signature([*synth, *human]):
            with ws.catalog() as cat:
                current = cat.current_model()
            use = ("it is the current model" if current is not None and current["version"] == version
                   else f"`textloop models promote {version}` to use it")
            raise ValueError(f"run {run!r} already finished as model {version} on these same labels ({bundle}); "
                             f"{use}, --restart to train it again")
        else:
            say(f"run {run!r} finished as model {version}; its training data changed since (labels added, changed "
                "or removed): training it again")
        restart = True
    if restart and ckpt.exists():
        ckpt.unlink()
    if cfg.resume and not restart:   # training checks the options and the data are the checkpoint's
        say(f"resuming run {run!r} from its checkpoint ({ckpt})")
    cfg = replace(cfg, out_dir=str(out), parent_bundle=str(parent_path) if parent_path else None)
    start = "stock PP-OCR weights" if cfg.arch == "db" else "random weights"
    say(f"training {cfg.arch} on {len(synth)} synthetic + {len(human)} human-labelled images; "
        f"validating on {len(val)} ({val_source}); parent: {parent_version or 'none (' + start + ')'}")
    return train_workspace(ws, cfg, synth, human, val, val_source, parent_version, promote, progress, force=force)

def _bundle_version(bundle: Path) -> str:
    from pipeline.bundle import read_bundle_meta

    return str(read_bundle_meta(bundle)["config"]["version"])


RUN_FILE = "run.json"   # a run's data options (synthetic sets), which its checkpoint's config does not hold


def _read_run_file(out: Path) -> dict[str, Any]:
    try:
        own = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return own if isinstance(own, dict) else {}


def _checkpoint_parent(config: dict[str, Any], saved: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The parent bundle and version a checkpoint's run started from; ValueError when the
    bundle is gone (resuming from other weights would not be the same run)."""
    path = config.get("parent_bundle")
    if path and not Path(path).is_file():
        raise ValueError(f"the run's parent bundle {path} is missing: the run cannot be resumed from the weights "
                         "it started from; --restart trains it again from --parent")
    return (Path(path) if path else None), saved.get("parent")


def _checkpoint(ckpt: Path, resume: bool) -> dict[str, Any]:
    """A checkpoint's training-data signature (`data`) and options (`config`). Unreadable: {} for
    a finished run (it trains again), ResumeRefused when resuming, before any data is made (the
    400-image default synthetic set was generated first, under the wrong options)."""
    try:
        ck = load_checkpoint(ckpt)
    except ResumeRefused:
        if resume:
            raise
        return {}
    return {"data": ck.get("data"), "config": ck.get("config"), "parent": ck.get("parent")}


def save_result(path: str | Path, result: Any, parent: str | None = None, extra: dict[str, Any] | None = None,
                version: str | None = None) -> str:
    """The bundle of a TrainResult (either architecture); returns its version."""
    from pipeline.bundle import save_bundle

    return save_bundle(path, result.model, result.bundle_config, result.metrics, result.train_keys, version=version,
                       parent=parent, extra={**(extra or {}), **({"selection": result.selection} if result.selection else {})},
                       onnx=result.onnx)
