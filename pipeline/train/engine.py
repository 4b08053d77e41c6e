"""The training loop shared by both architectures (`db`, the default, and `fasterrcnn`).

An explicit loop with what a shared CPU box needs: one checkpoint dict (model, optimizer,
lr_scheduler, epoch, step, config, RNG state, early-stopping state, the architecture's own
state) written atomically every epoch, on a budget stop and on Ctrl-C, so `resume=True`
continues exactly where it stopped; batches are a pure function of (seed, step), so a resumed
run sees the same images as an uninterrupted one.

Validation every `steps_per_epoch` steps (and on a budget stop); the architecture says what
is maximised (`db`: text coverage at the over-redaction budget, see `pipeline.train.select`;
`fasterrcnn`: `val_metric`); early stopping after `patience` epochs without improvement; the
best weights are kept. A non-finite loss stops training with a message naming the step and lr.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import check_number, check_scale_range
from pipeline.detectors.fasterrcnn import FasterRCNNConfig
from pipeline.io import atomic_write_bytes, peak_rss_mb
from pipeline.train.data import Sample
from pipeline.train.db import DBRecipe

log = logging.getLogger("pipeline.train")

ARCHS = ("db", "fasterrcnn")
DEFAULT_LR = {"db": 5e-5, "fasterrcnn": 2e-3}   # db: detection benchmark run 7; fasterrcnn: what it always used
DEFAULT_WEIGHT_DECAY = {"db": 0.0, "fasterrcnn": 1e-4}   # db: L2-SP toward stock instead of toward zero


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no data, incompatible checkpoint)."""


class ResumeRefused(TrainingError):
    """`--resume` asked for what the checkpoint cannot give: another architecture, other options or
    other data than it was trained with (a usage error: the CLI exits 2, like other bad options)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint dict; ResumeRefused naming the file, in one line, when it cannot be read
    (truncated, overwritten, not a checkpoint at all): torch's own message ran on for sentences."""
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict):
            raise ValueError("not a textloop training checkpoint")
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises for a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split(". ")[0][:160]
        raise ResumeRefused(f"{path}: not a readable checkpoint ({first}); start the run again without --resume "
                            "(--restart discards it)") from None
    return ck


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/train"
    arch: str = "db"                           # db (PP-OCR's network, fine-tuned) | fasterrcnn (from scratch)
    model: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)   # fasterrcnn only
    db: DBRecipe = field(default_factory=DBRecipe)                      # db only
    parent_bundle: str | None = None          # fine-tune from this bundle (its model config wins)
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 4
    lr: float | None = None                    # None: DEFAULT_LR[arch]
    weight_decay: float | None = None          # None: 0 for db (L2-SP instead), 1e-4 for fasterrcnn
    warmup_steps: int = 50
    optimizer: str = "adamw"                   # adamw | sgd
    human_fraction: float = 0.5                # share of human-labelled images per batch (if any)
    scale_jitter: tuple[float, float] = (0.6, 1.3)   # fasterrcnn (db: `db.scale_jitter`)
    crop: int = 384                            # fasterrcnn: random crops this big (0 = whole images)
    augment: bool = True
    val_threshold: float = 0.3                 # fasterrcnn
    val_metric: str = "f1"                     # fasterrcnn: any key of evaluate(); higher is better
    patience: int = 3
    min_delta: float = 0.002
    budget_minutes: float | None = None
    seed: int = 0
    threads: int = 0                           # 0 = auto (see resolve_threads)
    grad_clip: float = 10.0
    resume: bool = False
    # Keep BatchNorm running statistics fixed while training. None = when fine-tuning (always for
    # db): batches of 2-4 crops would otherwise overwrite statistics learnt on far more images.
    freeze_bn: bool | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: use {' or '.join(ARCHS)}")
        for name, hi in (("epochs", 100_000), ("steps_per_epoch", 1_000_000), ("patience", 100_000),
                         ("batch_size", 256)):    # 100,000 crops in one batch filled the memory
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
            check_number(name, value, 1, hi, integer=True)
        check_number("seed", self.seed, 0, 2**32 - 1, integer=True)
        check_number("threads", self.threads, 0, 1024, integer=True)
        check_number("human_fraction", self.human_fraction, 0, 1)
        check_number("val_threshold", self.val_threshold, 0, 1)
        check_number("min_delta", self.min_delta, 0, 1)
        if self.crop != 0:
            check_number("crop", self.crop, 32, 4096, integer=True)
        check_scale_range("scale_jitter", self.scale_jitter)
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        from pipeline.evaluate import Metrics

        metric_names = [f.name for f in fields(Metrics)]
        if self.val_metric not in metric_names:
            raise ValueError(f"val_metric must be one of {', '.join(metric_names)}, got {self.val_metric!r}")
        for name in ("lr", "budget_minutes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "threads"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def effective_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.arch])

    @property
    def effective_weight_decay(self) -> float:
        return float(self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.arch])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_json()
        return json.loads(json.dumps(d))

    def arch_key(self) -> Any:
        """What a checkpoint must match to be resumed."""
        return {"arch": self.arch, "model": self.model.to_json() if self.arch == "fasterrcnn" else None}

    # may differ between a run and its resume: where it writes, how many threads, the flag itself,
    # more time (the schedule is the checkpoint's); the parent is the checkpoint's own
    RESUME_FREE = ("out_dir", "threads", "resume", "budget_minutes", "parent_bundle", "model")

    def run_options(self) -> dict[str, Any]:
        """The options a run's checkpoint is bound to (all but RESUME_FREE), as JSON values."""
        return {k: v for k, v in self.to_json().items() if k not in self.RESUME_FREE}

    def adopting(self, saved: dict[str, Any], keep: Collection[str]) -> "TrainConfig":
        """This config with a checkpoint's value for every run option not named in `keep` (field
        names; `db.<field>` for the DB recipe): `--resume` continues the run as it was started,
        so the printed `textloop train --run R --resume` works without repeating every option."""
        def like(current: Any, value: Any) -> Any:
            return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value

        changes: dict[str, Any] = {}
        for key, value in self.run_options().items():
            if key not in saved or saved[key] == value:
                continue
            if key == "db" and isinstance(saved["db"], dict):
                sub = {f: like(getattr(self.db, f), v) for f, v in saved["db"].items()
                       if hasattr(self.db, f) and f"db.{f}" not in keep}
                changes["db"] = replace(self.db, **sub)
            elif key not in keep:
                changes[key] = like(getattr(self, key), saved[key])
        return replace(self, **changes) if changes else self

    def resume_differences(self, saved: dict[str, Any]) -> list[str]:
        """Training options that differ from a checkpoint's config (`name old -> new`): a resume
        with them would follow the checkpoint's schedule while its bundle recorded the new values."""
        def shown(v: Any) -> str:   # "lr None -> 0.0001" said nothing of the checkpoint's own lr
            return "the default" if v is None else repr(v)

        return [f"{k} {shown(saved.get(k))} -> {shown(v)}" for k, v in self.run_options().items()
                if k in saved and saved[k] != v]


@dataclass
class TrainResult:
    detector: Any
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
    bundle_config: Any = None                  # FasterRCNNConfig or DBModelConfig (what save_bundle records)
    onnx: bytes | None = None                  # db: the exported network
    selection: dict[str, Any] = field(default_factory=dict)  # db: budget, own and stock coverage at it
    timing: dict[str, float] = field(default_factory=dict)   # seconds in data, steps, validation


def losses_of(history: Sequence[dict[str, Any]]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def _metric(metrics: dict[str, Any], key: str) -> float:
    """The early-stopping value; undefined (NaN, e.g. F1 of a model that finds nothing yet) counts as 0."""
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _lr_lambda(cfg: TrainConfig, horizon: dict[str, int]) -> Callable[[int], float]:
    """Linear warm-up, then a cosine down to 5 % at `horizon["steps"]` (read at every step: a
    budgeted run moves it once it knows its pace, see `budget_horizon`)."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return 0.05 + 0.95 * step / max(1, cfg.warmup_steps)
        total = max(1, horizon["steps"])
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f


def budget_horizon(step: int, planned: int, seconds_per_step: float, seconds_per_validation: float,
                   steps_per_epoch: int, seconds_left: float) -> int:
    """The step a time-budgeted run should end its learning-rate schedule at: the steps (each
    epoch also paying one validation) that fit in the time left, at most the planned ones. Why:
    with the schedule planned in epochs, a 20-minute budget stopped runs at a third of the
    cosine, at 80 % of the peak rate, so each run's weights were wherever a high learning rate
    left them (two runs of one recipe differed by 0.035 on held-out scene text)."""
    per_step = max(1e-6, seconds_per_step + seconds_per_validation / max(1, steps_per_epoch))
    return int(min(planned, max(step + 1, step + math.floor(max(0.0, seconds_left) / per_step))))


def selection_reserve(budget_seconds: float, finish_seconds: float) -> float:
    """Seconds of the budget the training loop leaves for the selection after it (db: each
    blend exported and validated), at most half the budget. Without it a 20-minute benchmark
    run took 21.9 minutes (runs with it: 19.9)."""
    return max(0.0, min(float(finish_seconds), 0.5 * float(budget_seconds)))


def _save(path: Path, ckpt: dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_threads(requested: int = 0) -> int:
    """CPU threads for torch: `requested` if > 0, else the cores the load average leaves free
    (at least 1). Why: on 2 cores shared with other jobs, torch with 2 threads ran a Faster R-CNN
    step in 7-22 s against 1.3 s with 1 thread (and a DB step in 4-6 s against 2 s): its
    threads wait on each other whenever another process holds a core. That made
    `train --budget-minutes 20` run 40 steps."""
    import os

    if requested and requested > 0:
        return int(requested)
    cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def data_signature(samples: Sequence[Sample]) -> str:
    """What a run learns from, in one hash (each sample's key and boxes, in order): a resume
    must see the same, or its batches are no longer the ones the checkpoint's step counts."""
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(s.key.encode())
        h.update(np.asarray(s.gt.boxes, dtype=np.float64).round(1).tobytes())
    return h.hexdigest()[:16]


def _arch(cfg: TrainConfig) -> Any:
    if cfg.arch == "db":
        from pipeline.train.db import DBArch

        return DBArch(cfg)
    from pipeline.train.fasterrcnn import FasterRCNNArch

    return FasterRCNNArch(cfg)


def train(cfg: TrainConfig, synth: Sequence[Sample] = (), human: Sequence[Sample] = (), val: Sequence[Sample] = (),
          progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) and return the best model as a Detector with its metrics."""
    import torch

    if not synth and not human:
        raise TrainingError("no training images: generate synthetic data (`textloop synth`) or label some images")
    threads = resolve_threads(cfg.threads)
    cfg = replace(cfg, threads=threads)   # decided once: the run's own load must not change it
    torch.set_num_threads(threads)
    log.info("training with %d torch thread(s)", threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    arch = _arch(cfg)
    model, cfg, parent_version = arch.setup()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.effective_lr, momentum=0.9, weight_decay=cfg.effective_weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=cfg.effective_weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: use adamw or sgd")
    planned = cfg.epochs * cfg.steps_per_epoch
    horizon = {"steps": planned, "fitted": False}   # fitted to the budget once the pace is known
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, horizon))
    step, best, best_state, bad_epochs, history = 0, -math.inf, None, 0, []
    data_sig = data_signature([*synth, *human])
    torch.manual_seed(cfg.seed)
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        saved = ck["config"]
        if {"arch": saved.get("arch", "fasterrcnn"), "model": saved["model"] if saved.get("arch", "fasterrcnn") ==
                "fasterrcnn" else None} != cfg.arch_key():
            raise ResumeRefused(f"{ckpt_path}: checkpoint was trained with another architecture or model config; "
                                "start a new run")
        data_then = ck.get("data")
        if data_then is not None and data_then != data_sig:
            raise ResumeRefused(f"{ckpt_path}: the training data changed since this checkpoint (images added, removed "
                                "or relabelled, or a synthetic set made again), so the run cannot continue step-exact; "
                                "--restart trains on the data as it is now")
        changed = cfg.resume_differences(saved)
        if changed:
            raise ResumeRefused(f"{ckpt_path}: resumed with other training options than the checkpoint's "
                                f"({', '.join(changed)}); resume with the same options, or --restart")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        step, best, bad_epochs, history = ck["step"], ck["best"], ck["bad_epochs"], ck["history"]
        horizon.update(ck.get("horizon") or {})
        best_state = ck.get("best_model")
        parent_version = ck.get("parent", parent_version)
        arch.load_state(ck.get("arch_state") or {})
        torch.set_rng_state(ck["rng"]["torch"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    timing = {"data": 0.0, "step": 0.0, "validation": 0.0}
    n_validations = 0

    def checkpoint() -> None:
        _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                          "epoch": step // cfg.steps_per_epoch, "step": step, "config": cfg.to_json(),
                          "rng": {"torch": torch.get_rng_state()}, "best": best, "best_model": best_state,
                          "bad_epochs": bad_epochs, "history": history, "parent": parent_version,
                          "arch_state": arch.state(), "horizon": dict(horizon), "data": data_sig})

    start, start_step = time.monotonic(), step
    deadline = start + cfg.budget_minutes * 60 if cfg.budget_minutes else math.inf

    def loop_deadline() -> float:
        """When the training loop must stop so that the selection after it also ends inside the budget."""
        if not (cfg.budget_minutes and val and n_validations and hasattr(arch, "finish_seconds")):
            return deadline
        return deadline - selection_reserve(cfg.budget_minutes * 60,
                                            arch.finish_seconds(timing["validation"] / n_validations))

    def refit() -> None:
        """Fit the schedule's end to the time left at the pace measured so far in this session."""
        horizon["steps"] = budget_horizon(
            step, planned, (timing["data"] + timing["step"]) / max(1, step - start_step),
            timing["validation"] / n_validations if (val and n_validations) else 0.0,
            cfg.steps_per_epoch, loop_deadline() - time.monotonic())
        horizon["fitted"] = True
        log.info("budget: learning-rate schedule ends at step %d", horizon["steps"])

    stopped = "done"
    loss_ema: float | None = None
    if val and step == 0:
        t0 = time.monotonic()
        arch.prepare_validation(val)   # db: stock ppocr's trade-off curve and the budget
        timing["validation"] += time.monotonic() - t0
        n_validations += 1
    arch.train_mode()
    stop_now = bad_epochs >= cfg.patience and step > 0
    if stop_now:
        stopped = "early_stop"
    try:
        while step < horizon["steps"] and not stop_now:
            t0 = time.monotonic()
            batch = arch.batch(step, synth, human)
            t1 = time.monotonic()
            losses = arch.losses(batch)
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
            timing["data"] += t1 - t0
            timing["step"] += time.monotonic() - t1
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
            elapsed = time.monotonic() - start
            history.append({"step": step, "loss": value, "lr": sched.get_last_lr()[0],
                            **{k: float(v.detach()) for k, v in losses.items()}})
            if (cfg.budget_minutes and not horizon["fitted"] and step - start_step >= max(cfg.warmup_steps, 10)
                    and (n_validations or not val)):
                refit()   # the pace of this run on this machine now (steps, and validations if any) sets the schedule
            total = horizon["steps"]
            if progress:
                eta = min(elapsed / (step - start_step) * (total - step), max(0.0, loop_deadline() - time.monotonic()))
                progress(step, total, {"loss": loss_ema, "lr": sched.get_last_lr()[0], "epoch": step // cfg.steps_per_epoch,
                                       "eta_s": eta})
            end_of_epoch = step % cfg.steps_per_epoch == 0
            over_budget = time.monotonic() > loop_deadline()
            if end_of_epoch or over_budget or step == total:
                if val:  # every epoch end, and on a budget stop so the last partial epoch can win too
                    t0 = time.monotonic()
                    metrics, m = arch.validate(val)
                    timing["validation"] += time.monotonic() - t0
                    n_validations += 1
                    arch.train_mode()
                    if m > best + cfg.min_delta or best_state is None:
                        best, bad_epochs = max(m, best), 0
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    elif best > 0:  # patience only counts once the model has found something
                        bad_epochs += 1
                    history.append({"epoch": step // cfg.steps_per_epoch, "step": step, "val": metrics, "score": m,
                                    "seconds": time.monotonic() - start})
                    log.info("epoch %d step %d loss %.4f val %s=%.4f", step // cfg.steps_per_epoch, step, loss_ema or 0,
                             arch.score_name, m)
                if horizon["fitted"] and cfg.budget_minutes and not over_budget and step < horizon["steps"] \
                        and step > start_step:
                    refit()   # every epoch: a machine that got busier (or quieter) moves the end, not the budget stop
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
    if best_state is not None:
        model.load_state_dict(best_state)
    t0 = time.monotonic()
    done = arch.finish(val)
    timing["validation"] += time.monotonic() - t0
    seconds = time.monotonic() - start   # with the final selection: its parts added up to more than the total
    keys = [s.key for s in synth] + [s.key for s in human]
    log.info("trained %d steps in %.0f s (data %.0f s, steps %.0f s, validation %.0f s)", step, seconds,
             timing["data"], timing["step"], timing["validation"])
    return TrainResult(detector=done["detector"], model=model, config=cfg, metrics=done["metrics"], history=history,
                       steps=step, epochs=step // cfg.steps_per_epoch, seconds=seconds, peak_rss_mb=peak_rss_mb(),
                       stopped=stopped, checkpoint=ckpt_path, train_keys=keys, bundle_config=done["bundle_config"],
                       onnx=done.get("onnx"), selection=done.get("selection", {}), timing=timing)


def replace_config(cfg: TrainConfig, **kw: Any) -> TrainConfig:
    return replace(cfg, **kw)
