"""Faster R-CNN (from scratch or fine-tuned from a fasterrcnn bundle): batches, losses, validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.detectors.fasterrcnn import FasterRCNNDetector, build_model, to_tensor
from pipeline.train.data import Sample, augment, draw_images

log = logging.getLogger("pipeline.train")


def make_batch(step: int, synth: Sequence[Sample], human: Sequence[Sample], cfg: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The batch of `step`: a pure function of (cfg.seed, step) so resume replays exactly."""
    import torch

    rng = np.random.default_rng([cfg.seed, 1, step])
    images, targets = [], []
    for s, img in draw_images(rng, synth, human, cfg):
        img, boxes = augment(img, s.gt, rng, cfg)
        images.append(to_tensor(img))
        targets.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.ones(len(boxes), dtype=torch.int64)})
        if len(images) == cfg.batch_size:
            break
    return images, targets


def validate(detector: Any, val: Sequence[Sample], threshold: float) -> dict[str, Any]:
    from pipeline.evaluate import evaluate
    from pipeline.predict import detect_set

    found = detect_set(detector, [(s.path, s.gt) for s in val], threshold)
    ok, preds, errors = found.ok, found.detections, found.errors
    for e in errors:
        log.warning("skipped in validation: %s", e)
    return evaluate([val[k].gt for k in ok], preds).as_dict() if ok else {}


def train_mode(model: Any, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm layers kept in eval mode (fixed statistics) if `freeze_bn`."""
    import torch

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class FasterRCNNArch:
    """The engine's hooks for torchvision Faster R-CNN."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.score_name = cfg.val_metric
        self.model: Any = None

    def setup(self) -> tuple[Any, Any, str | None]:
        import torch

        from pipeline.bundle import load_model

        cfg, parent_version = self.cfg, None
        if cfg.parent_bundle:
            model, parent_cfg, meta = load_model(cfg.parent_bundle)
            if meta["config"].get("kind") != "fasterrcnn":
                from pipeline.train.engine import TrainingError

                raise TrainingError(f"{cfg.parent_bundle}: a {meta['config'].get('kind')} bundle cannot be the parent of "
                                    "a fasterrcnn model")
            parent_version = meta["config"]["version"]
            cfg = replace(cfg, model=parent_cfg)
        else:
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model)
        self.cfg, self.model = cfg, model
        self.freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else bool(cfg.parent_bundle)
        return model, cfg, parent_version

    def prepare_validation(self, val: Sequence[Sample]) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def train_mode(self) -> None:
        train_mode(self.model, self.freeze_bn)

    def batch(self, step: int, synth: Sequence[Sample], human: Sequence[Sample]) -> Any:
        return make_batch(step, synth, human, self.cfg)

    def losses(self, batch: Any) -> dict[str, Any]:
        images, targets = batch
        return self.model(images, targets)

    def validate(self, val: Sequence[Sample]) -> tuple[dict[str, Any], float]:
        from pipeline.train.engine import _metric

        det = FasterRCNNDetector(self.model, self.cfg.model, version="training")
        metrics = validate(det, val, self.cfg.val_threshold)
        return metrics, _metric(metrics, self.cfg.val_metric)

    def finish(self, val: Sequence[Sample]) -> dict[str, Any]:
        from pipeline.bundle import round_model_

        round_model_(self.model)  # exactly the weights a bundle stores
        detector = FasterRCNNDetector(self.model, self.cfg.model, version="unsaved")
        metrics = validate(detector, val, self.cfg.val_threshold) if val else {}
        return {"detector": detector, "metrics": metrics, "bundle_config": self.cfg.model}
