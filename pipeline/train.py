"""Training and fine-tuning the Faster R-CNN text detector on CPU.

An explicit loop in the style of torchvision's references/detection, with what a shared CPU
box needs: one checkpoint dict (model, optimizer, lr_scheduler, epoch, step, config, RNG
state, early-stopping state) written atomically every epoch and on a budget stop, so
`resume=True` continues exactly where it stopped; batches are a pure function of
(seed, step), so a resumed run sees the same images as an uninterrupted one.

Data: synthetic images (`pipeline.synth` folders) and human-labelled images (catalog
annotations of the train split, or any devset-format records) mixed by `human_fraction`.
Augmentations: scale jitter with random crops of large images (so small text keeps its
pixels), colour, channel swaps, inversion, blur, noise and JPEG artefacts. Don't-care boxes are
blanked out rather than taught as background.

Validation each epoch with `pipeline.evaluate.evaluate` on the val split (or a held-out
synthetic set); early stopping on `val_metric`; the best weights are kept. A non-finite loss
stops training with a clear message naming the step and learning rate.
"""

from __future__ import annotations

import io
import json
import logging
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pipeline.detectors.fasterrcnn import FasterRCNNConfig, FasterRCNNDetector, build_model, to_tensor
from pipeline.formats import LabelledImage, atomic_write_bytes, read_jsonl
from pipeline.imaging import load_rgb

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no data, incompatible checkpoint)."""


@dataclass(frozen=True)
class Sample:
    """One training/validation image: where its pixels are, its ground truth, a stable key."""

    path: Path
    gt: LabelledImage
    key: str


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/train"
    model: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)
    parent_bundle: str | None = None          # fine-tune from this bundle (its model config wins)
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    optimizer: str = "adamw"                   # adamw | sgd
    human_fraction: float = 0.5                # share of human-labelled images per batch (if any)
    scale_jitter: tuple[float, float] = (0.6, 1.3)
    crop: int = 384                            # train on random crops this big (0 = whole images)
    augment: bool = True
    val_threshold: float = 0.3
    val_metric: str = "f1"                     # any key of evaluate(); higher is better
    patience: int = 3
    min_delta: float = 0.002
    budget_minutes: float | None = None
    seed: int = 0
    threads: int = 2
    grad_clip: float = 10.0
    resume: bool = False
    # Keep BatchNorm running statistics fixed while training. None = when fine-tuning from a parent:
    # batches of 2-4 crops would otherwise overwrite the statistics the parent learnt on thousands
    # of images, and a few fine-tuning steps then lose more than the new labels teach.
    freeze_bn: bool | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_json()
        return json.loads(json.dumps(d))


@dataclass
class TrainResult:
    detector: FasterRCNNDetector
    model: Any
    config: TrainConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    steps: int
    epochs: int
    seconds: float
    peak_rss_mb: float
    stopped: str                               # done | early_stop | budget
    checkpoint: Path
    train_keys: list[str]


# --- data ------------------------------------------------------------------------------------

def samples_from_jsonl(path: str | Path, prefix: str = "") -> list[Sample]:
    """Records of a devset-format boxes.jsonl (e.g. a synth folder) as samples."""
    path = Path(path)
    return [Sample(path.parent / r.image, r, f"{prefix}{r.image}") for r in read_jsonl(path)]


def samples_from_devset(records: Sequence[tuple[Path, LabelledImage]]) -> list[Sample]:
    return [Sample(p, r, f"{r.source}/{r.image}") for p, r in records]


def workspace_samples(ws: Any, split: str) -> list[Sample]:
    """Human-labelled workspace images of a split (the latest submitted/empty annotation per image,
    as `evaluate.workspace_ground_truth` reads them), keyed by image id."""
    from pipeline.evaluate import workspace_ground_truth

    return [Sample(path, gt, path.stem) for path, gt in workspace_ground_truth(ws, split)]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def augment(img: np.ndarray, gt: LabelledImage, rng: np.random.Generator, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Scaled/cropped/photometrically jittered pixels and the matching (N, 4) boxes (care boxes only)."""
    img = img.copy()
    boxes = gt.boxes.astype(np.float64)
    if gt.ignore.any():  # don't-care regions: blank them, so they teach neither text nor background
        fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        for x0, y0, x1, y1 in boxes[gt.ignore].astype(int):
            img[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = fill
        boxes = boxes[~gt.ignore]
    h, w = img.shape[:2]
    side = cfg.model.train_max_side
    fit = side / max(h, w)
    jitter = rng.uniform(*cfg.scale_jitter) if cfg.augment else 1.0
    # large images: half the time keep (near) native scale and crop, so small text keeps its pixels
    base = fit if (fit >= 1.0 or not cfg.augment or rng.random() < 0.5) else rng.uniform(fit, 1.0)
    s = float(np.clip(base * jitter, 0.05, 3.0))
    nh, nw = max(8, int(round(h * s))), max(8, int(round(w * s)))
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR if s > 1 else Image.BOX))
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h])
    limit = cfg.crop if cfg.crop and cfg.augment else int(side * 1.25)
    crop_w, crop_h = min(nw, limit), min(nh, limit)
    if (crop_w, crop_h) != (nw, nh):
        if len(boxes) and rng.random() < 0.7:  # most crops around some text, the rest anywhere
            bx = boxes[int(rng.integers(len(boxes)))]
            cx, cy = (bx[0] + bx[2]) / 2 + rng.uniform(-0.4, 0.4) * crop_w, (bx[1] + bx[3]) / 2 + rng.uniform(-0.4, 0.4) * crop_h
            x0 = int(np.clip(cx - crop_w / 2, 0, nw - crop_w))
            y0 = int(np.clip(cy - crop_h / 2, 0, nh - crop_h))
        else:
            x0, y0 = int(rng.integers(0, nw - crop_w + 1)), int(rng.integers(0, nh - crop_h + 1))
        img = img[y0:y0 + crop_h, x0:x0 + crop_w]
        full = boxes.copy()
        boxes = boxes - np.array([x0, y0, x0, y0])
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, crop_w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, crop_h)
        vis = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        orig = np.maximum((full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1]), 1e-6)
        partial = (vis > 0) & (vis < 0.4 * orig)
        if partial.any():  # mostly cut-off text: blank the visible sliver rather than call it background
            fill = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            img = img.copy()
            for bx0, by0, bx1, by1 in boxes[partial]:
                img[int(by0):int(math.ceil(by1)), int(bx0):int(math.ceil(bx1))] = fill
        boxes = boxes[vis >= 0.4 * orig]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
    boxes = boxes[keep]
    if cfg.augment:
        f = img.astype(np.float32)
        if rng.random() < 0.8:
            f = (f - f.mean()) * rng.uniform(0.6, 1.4) + f.mean() + rng.uniform(-40, 40)
        if rng.random() < 0.3:
            f = f[..., rng.permutation(3)]
        if rng.random() < 0.15:
            f = np.repeat(f.mean(axis=-1, keepdims=True), 3, axis=-1)
        if rng.random() < 0.1:
            f = 255 - f
        if rng.random() < 0.3:
            f = f + rng.normal(0, rng.uniform(2, 12), f.shape)
        img = np.clip(f, 0, 255).astype(np.uint8)
        if rng.random() < 0.2:
            img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))))
        if rng.random() < 0.3:
            img = _jpeg(img, int(rng.integers(25, 90)))
    return np.ascontiguousarray(img), boxes.reshape(-1, 4)


def make_batch(step: int, synth: Sequence[Sample], human: Sequence[Sample], cfg: TrainConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    """The batch of `step`: a pure function of (cfg.seed, step) so resume replays exactly."""
    import torch

    rng = np.random.default_rng([cfg.seed, 1, step])
    images, targets = [], []
    attempts = 0
    while len(images) < cfg.batch_size:
        attempts += 1
        if attempts > cfg.batch_size * 10:
            raise TrainingError("could not load any training image (see the warnings above)")
        use_human = bool(human) and (not synth or rng.random() < cfg.human_fraction)
        pool = human if use_human else synth
        s = pool[int(rng.integers(len(pool)))]
        try:
            img = load_rgb(s.path)
        except Exception as exc:  # a bad image is logged and skipped; the batch draws another
            log.warning("%s: skipped (%s)", s.path, exc)
            continue
        img, boxes = augment(img, s.gt, rng, cfg)
        images.append(to_tensor(img))
        targets.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.ones(len(boxes), dtype=torch.int64)})
    return images, targets


# --- validation ------------------------------------------------------------------------------

def validate(detector: FasterRCNNDetector, val: Sequence[Sample], threshold: float) -> dict[str, Any]:
    from pipeline.evaluate import evaluate
    from pipeline.predict import detect_set

    ok, preds, errors, _ = detect_set(detector, [(s.path, s.gt) for s in val], threshold)
    for e in errors:
        log.warning("skipped in validation: %s", e)
    return evaluate([val[k].gt for k in ok], preds) if ok else {}


def _metric(metrics: dict[str, Any], key: str) -> float:
    """The early-stopping value; undefined (NaN, e.g. F1 of a model that finds nothing yet) counts as 0."""
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


# --- the loop ---------------------------------------------------------------------------------

def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    total = max(1, cfg.epochs * cfg.steps_per_epoch)

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return 0.05 + 0.95 * step / max(1, cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _save(path: Path, ckpt: dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _train_mode(model: Any, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm layers kept in eval mode (fixed statistics) if `freeze_bn`."""
    import torch

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(cfg: TrainConfig, synth: Sequence[Sample] = (), human: Sequence[Sample] = (), val: Sequence[Sample] = (),
          progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) and return the best model as a Detector with its metrics."""
    import torch

    from pipeline.bundle import load_model, round_model_

    if not synth and not human:
        raise TrainingError("no training images: generate synthetic data (`textloop synth`) or label some images")
    torch.set_num_threads(max(1, int(cfg.threads)))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    parent_version = None
    if cfg.parent_bundle:
        model, parent_cfg, meta = load_model(cfg.parent_bundle)
        parent_version = meta["config"]["version"]
        cfg = replace(cfg, model=parent_cfg)
    else:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: use adamw or sgd")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    step, best, best_state, bad_epochs, history = 0, -math.inf, None, 0, []
    torch.manual_seed(cfg.seed)
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["config"]["model"] != cfg.model.to_json():
            raise TrainingError(f"{ckpt_path}: checkpoint was trained with another model config; start a new run")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        step, best, bad_epochs, history = ck["step"], ck["best"], ck["bad_epochs"], ck["history"]
        best_state = ck.get("best_model")
        parent_version = ck.get("parent", parent_version)
        torch.set_rng_state(ck["rng"]["torch"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    total = cfg.epochs * cfg.steps_per_epoch

    def checkpoint() -> None:
        _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                          "epoch": step // cfg.steps_per_epoch, "step": step, "config": cfg.to_json(),
                          "rng": {"torch": torch.get_rng_state()}, "best": best, "best_model": best_state,
                          "bad_epochs": bad_epochs, "history": history, "parent": parent_version})

    start, start_step = time.monotonic(), step
    deadline = start + cfg.budget_minutes * 60 if cfg.budget_minutes else math.inf
    stopped = "done"
    loss_ema: float | None = None
    freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else bool(cfg.parent_bundle)
    _train_mode(model, freeze_bn)
    stop_now = bad_epochs >= cfg.patience and step > 0
    if stop_now:
        stopped = "early_stop"
    try:
        while step < total and not stop_now:
            images, targets = make_batch(step, synth, human, cfg)
            losses = model(images, targets)
            loss = sum(losses.values())
            value = float(loss.detach())
            if not math.isfinite(value):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise TrainingError(
                    f"non-finite loss at step {step} ({parts}) with lr {sched.get_last_lr()[0]:.3g}: lower the learning "
                    f"rate (--lr) or check the labels; the last good checkpoint is {ckpt_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
            elapsed = time.monotonic() - start
            history.append({"step": step, "loss": value, **{k: float(v.detach()) for k, v in losses.items()}})
            if progress:
                eta = min(elapsed / (step - start_step) * (total - step), max(0.0, deadline - time.monotonic()))
                progress(step, total, {"loss": loss_ema, "lr": sched.get_last_lr()[0], "epoch": step // cfg.steps_per_epoch,
                                       "eta_s": eta})
            end_of_epoch = step % cfg.steps_per_epoch == 0
            over_budget = time.monotonic() > deadline
            if end_of_epoch or over_budget or step == total:
                metrics = {}
                if val:  # every epoch end, and on a budget stop so the last partial epoch can win too
                    det = FasterRCNNDetector(model, cfg.model, version="training")
                    metrics = validate(det, val, cfg.val_threshold)
                    _train_mode(model, freeze_bn)
                    m = _metric(metrics, cfg.val_metric)
                    if m > best + cfg.min_delta or best_state is None:
                        best, bad_epochs = max(m, best), 0
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    elif best > 0:  # patience only counts once the model has found something
                        bad_epochs += 1
                    history.append({"epoch": step // cfg.steps_per_epoch, "step": step, "val": metrics,
                                    "seconds": time.monotonic() - start})
                    log.info("epoch %d step %d loss %.4f val %s=%.4f", step // cfg.steps_per_epoch, step, loss_ema or 0,
                             cfg.val_metric, m)
                checkpoint()
                if over_budget:
                    stopped = "budget"
                    break
                if bad_epochs >= cfg.patience:
                    stopped = "early_stop"
                    break
    except KeyboardInterrupt:  # Ctrl-C: keep every finished step; `--resume` replays from here exactly
        checkpoint()
        raise
    seconds = time.monotonic() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    round_model_(model)  # exactly the weights a bundle stores
    detector = FasterRCNNDetector(model, cfg.model, version="unsaved")
    final = validate(detector, val, cfg.val_threshold) if val else {}
    keys = [s.key for s in synth] + [s.key for s in human]
    return TrainResult(detector=detector, model=model, config=cfg, metrics=final, history=history, steps=step,
                       epochs=step // cfg.steps_per_epoch, seconds=seconds, peak_rss_mb=peak_rss_mb(),
                       stopped=stopped, checkpoint=ckpt_path, train_keys=keys)


def losses_of(history: Sequence[dict[str, Any]]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]



# --- the workspace stage (used by `textloop train` and `textloop iterate`) -----------------------

def resolve_parent(ws: Any, parent: str) -> tuple[Path | None, str | None]:
    """(bundle path, version) of the model to fine-tune, or (None, None) to train from scratch.

    parent: `auto` (the current fasterrcnn model, else scratch), `none`, `current` (must exist),
    a registered version, or a bundle.zip path. Raises ValueError with a one-line reason."""
    if parent == "none":
        return None, None
    with ws.catalog() as cat:
        if parent in ("auto", "current"):
            row = cat.current_model()
            if row is None or row["kind"] != "fasterrcnn":
                if parent == "current":
                    raise ValueError("no current fasterrcnn model to fine-tune; train from scratch with --parent none")
                return None, None
        else:
            rows = cat.query("SELECT * FROM models WHERE version = ?", (parent,))
            if not rows:
                path = Path(parent)
                if path.suffix == ".zip" and path.exists():
                    from pipeline.bundle import read_bundle_meta

                    return path, str(read_bundle_meta(path)["config"]["version"])
                raise ValueError(f"parent {parent!r}: not a registered model version nor a bundle.zip")
            row = rows[0]
    return ws.abspath(row["path"]), row["version"]


def workspace_training_data(ws: Any, synth_sets: Sequence[str] = ("default",), synth_images: int = 400,
                            seed: int = 0, say: Callable[[str], None] = log.info
                            ) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    """(synthetic, human train, validation, description of the validation source).

    Missing synthetic sets are generated; without labelled val images a held-out synthetic set
    is the validation set (and the caller is told so)."""
    from pipeline.synth import SynthConfig, generate

    synth: list[Sample] = []
    for name in synth_sets:
        d = ws.root / "synth" / name
        if not (d / "boxes.jsonl").exists():
            say(f"generating synthetic set {name!r} ({synth_images} images)")
            generate(d, SynthConfig(n_images=synth_images, seed=seed))
        synth += samples_from_jsonl(d / "boxes.jsonl", f"synth/{name}/")
    human = workspace_samples(ws, "train")
    val = workspace_samples(ws, "val")
    val_source = "workspace val split"
    if not val:
        d = ws.root / "synth" / f"_val-{seed}"
        if not (d / "boxes.jsonl").exists():
            generate(d, SynthConfig(n_images=16, seed=seed + 1000))
        val = samples_from_jsonl(d / "boxes.jsonl", "synth/_val/")
        val_source = "held-out synthetic set (no labelled val images yet)"
    return synth, human, val, val_source


def train_workspace(ws: Any, cfg: TrainConfig, synth: Sequence[Sample], human: Sequence[Sample],
                    val: Sequence[Sample], val_source: str, parent_version: str | None,
                    promote: bool = False, progress: Callable[[int, int, dict[str, Any]], None] | None = None,
                    ) -> dict[str, Any]:
    """Train, save the bundle, register it and log the run in `iterations`. Promoted only when
    asked: `current` is what redact uses by default, so a model becomes current only after it has
    been compared (by `iterate`, or by a person with `evaluate` + `models promote`)."""
    from pipeline.bundle import register_model, save_bundle
    from pipeline.evaluate import json_safe

    with ws.catalog() as cat:
        iteration = cat.start_iteration("train")
    try:
        result = train(cfg, synth, human, val, progress=progress)
    except (TrainingError, KeyboardInterrupt) as exc:
        with ws.catalog() as cat:
            cat.finish_iteration(iteration, "failed", metrics={"error": str(exc) or "interrupted"})
        raise
    bundle = Path(cfg.out_dir) / "bundle.zip"
    version = save_bundle(bundle, result.model, result.config.model, result.metrics, result.train_keys,
                          parent=parent_version, extra={"train": {"steps": result.steps, "stopped": result.stopped,
                                                                  "seconds": round(result.seconds, 1),
                                                                  "val_source": val_source}})
    do_promote = bool(promote)
    register_model(ws, bundle, parent=parent_version, promote=do_promote)
    summary = {"version": version, "parent": parent_version, "promoted": do_promote, "steps": result.steps,
               "epochs": result.epochs, "stopped": result.stopped, "minutes": round(result.seconds / 60, 2),
               "peak_rss_mb": round(result.peak_rss_mb), "val_source": val_source, "metrics": json_safe(result.metrics),
               "bundle": str(ws.models_dir / version / "bundle.zip"), "checkpoint": str(result.checkpoint),
               "synthetic": len(synth), "human": len(human), "val": len(val)}
    with ws.catalog() as cat:
        cat.finish_iteration(iteration, "done", counts={"synthetic": len(synth), "human": len(human),
                                                        "val": len(val), "steps": result.steps},
                             metrics={"version": version, **(json_safe(result.metrics) or {})})
    return summary
