"""torchvision Faster R-CNN for text, built from scratch (no downloadable weights) and tuned for CPU.

Choices (and why):
- Backbone MobileNetV3-Large (default) or ResNet-50, both with an FPN over the stride 8/16/32
  stages. torchvision's stock mobilenet FPN taps only stride-32 features, which cannot see
  8-px text; the stride-8 level can.
- A slim FPN (`fpn_channels`) and box head (`representation_size`): CPU speed and a small bundle.
- Anchors for text: one to two sizes per level and aspect ratios (h/w) 1/8 .. 1, so a 60x8
  word and a 300x20 line both have a close anchor.
- Smaller RPN/ROI sample counts than torchvision's defaults (pre/post NMS top-n 600/300 in training, 128 samples per
  image): ~2.4x faster training steps on CPU than the defaults.
- No resizing inside the model (`_NoResize`): the caller decides the scale. Training scales
  images to around `train_max_side`; inference scales the whole image to fit `max_side` and, for
  larger images, also runs overlapping native-resolution tiles so small text is not shrunk away,
  then merges both by NMS.

Labels: the model predicts class 1..K internally (0 is background); `detect` returns 0-based
class indices into `config.classes` (one class, "text", so every label is 0).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from pipeline.boxes import Detections
from pipeline.detectors.tiling import Tiler


@dataclass(frozen=True)
class FasterRCNNConfig:
    backbone: str = "mobilenet_v3_large"      # or "resnet50"
    classes: tuple[str, ...] = ("text",)
    width_mult: float = 1.0                    # MobileNetV3 width multiplier
    fpn_channels: int = 96
    representation_size: int = 256
    anchor_sizes: tuple[tuple[int, ...], ...] = ((12, 20), (32, 48), (72, 104), (160, 256))
    aspect_ratios: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    train_max_side: int = 640                  # training images are scaled around this long side
    max_side: int = 1024                       # inference: whole image fit into this long side
    tile: bool = True                          # plus native-resolution tiles for larger images
    tile_overlap: int = 160
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 500
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 300
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.4
    merge_iou: float = 0.5                     # NMS between tiles and the whole-image pass

    def __post_init__(self) -> None:
        if self.backbone not in ("mobilenet_v3_large", "resnet50"):
            raise ValueError(f"backbone must be mobilenet_v3_large or resnet50, got {self.backbone!r}")
        if len(self.anchor_sizes) != 4:
            raise ValueError("anchor_sizes needs one tuple per FPN level (4: strides 8, 16, 32, 64)")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FasterRCNNConfig":
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        if "classes" in kw:
            kw["classes"] = tuple(kw["classes"])
        if "anchor_sizes" in kw:
            kw["anchor_sizes"] = tuple(tuple(int(s) for s in level) for level in kw["anchor_sizes"])
        if "aspect_ratios" in kw:
            kw["aspect_ratios"] = tuple(float(r) for r in kw["aspect_ratios"])
        return cls(**kw)


def build_model(cfg: FasterRCNNConfig = FasterRCNNConfig()) -> Any:
    """A randomly initialised FasterRCNN (weights=None, weights_backbone=None: nothing is downloaded)."""
    import torch.nn as nn
    from torchvision.models import mobilenet_v3_large, resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    class _NoResize(GeneralizedRCNNTransform):
        """Normalise and batch only; the scale is chosen outside the model."""

        def resize(self, image, target=None):  # type: ignore[override]
            return image, target

    if cfg.backbone == "mobilenet_v3_large":
        body = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d, width_mult=cfg.width_mult).features
        stages = [0] + [i for i, b in enumerate(body) if getattr(b, "_is_cn", False)] + [len(body) - 1]
        picked = stages[2:5]  # strides 8, 16, 32
        return_layers = {str(k): str(v) for v, k in enumerate(picked)}
        in_channels = [body[k].out_channels for k in picked]
    else:
        body = resnet50(weights=None, norm_layer=nn.BatchNorm2d)
        return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
        in_channels = [512, 1024, 2048]
    backbone = BackboneWithFPN(body, return_layers, in_channels, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(cfg.anchor_sizes, (cfg.aspect_ratios,) * len(cfg.anchor_sizes))
    box_head = TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size)
    model = FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors, box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.representation_size, len(cfg.classes) + 1),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image, box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img, box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
    )
    t = model.transform
    model.transform = _NoResize(t.min_size, t.max_size, t.image_mean, t.image_std)
    return model


def to_tensor(img: np.ndarray, scale: float = 1.0) -> Any:
    """uint8 RGB (H, W, 3) -> float CHW in [0, 1], resized by `scale` (antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.array(img, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1).float().div_(255.0)
    if abs(scale - 1.0) > 1e-6:
        h, w = img.shape[:2]
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    return t


class FasterRCNNDetector:
    """The Detector protocol over a FasterRCNN model (eval mode, CPU)."""

    name = "fasterrcnn"

    def __init__(self, model: Any, config: FasterRCNNConfig, version: str = "fasterrcnn-untrained",
                 score_threshold: float | None = None, max_side: int | None = None, tile: bool | None = None,
                 threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.model = model.eval()
        self.config = config
        self.version = version
        self.max_side = int(max_side or config.max_side)
        self.tile = config.tile if tile is None else bool(tile)
        if score_threshold is not None:
            self.model.roi_heads.score_thresh = float(score_threshold)

    def _run(self, tensors: list[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        import torch

        with torch.inference_mode():
            outs = self.model(tensors)
        return [(o["boxes"].numpy().astype(np.float64), o["scores"].numpy().astype(np.float64),
                 o["labels"].numpy().astype(np.int64) - 1) for o in outs]

    def detect_one(self, img: np.ndarray) -> Detections:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        long_side = max(h, w)
        scale = min(1.0, self.max_side / long_side)
        boxes, scores, labels = self._run([to_tensor(img, scale)])[0]
        boxes = boxes / scale
        if not (self.tile and long_side > self.max_side * 1.15):
            return Detections(boxes, scores, labels)
        # native-resolution tiles catch the small text the whole-image pass shrank away; the tiler's
        # `nms` merge (this detector emits candidates down to box_score_thresh: see tiling)
        tiler = Tiler(self.max_side, min(self.config.tile_overlap, self.max_side // 4),  # overlap <= a quarter tile
                      merge="nms", nms_iou=self.config.merge_iou)
        tiles = tiler.detect(img, lambda views: [Detections(*r) for r in self._run([to_tensor(v) for v in views])], batch=2)
        merged = tiler.combine([Detections(boxes, scores, labels), *tiles])
        return merged[: self.config.box_detections_per_img * 2]

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [self.detect_one(img) for img in images]
