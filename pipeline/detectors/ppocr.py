"""`ppocr`: the frozen PP-OCRv4 text detector that ships inside the `rapidocr-onnxruntime` wheel.

Detection only (no recognition). We drive the ONNX model ourselves instead of calling
`RapidOCR()(...)` because RapidOCR's `TextDetector` drops the per-box scores that the DB
post-processing computes; we keep them. The score of a box is PP-OCR's own "fast" box score:
the mean text probability of the segmentation map inside the box before unclipping
(rapidocr's `DBPostProcess.box_score_fast`), in [0, 1].

Images are run at one or more scales; an image whose scaled long side exceeds `max_side` is
cut into overlapping tiles (plus one downscaled whole-image view for large text) instead of
being shrunk, so small text in large images is still found. Quads become their enclosing
xyxy boxes (`pipeline.boxes.quad_to_xyxy`). When several passes/tiles ran, duplicate and
fragmented boxes are merged (union of the boxes, max of the scores).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.boxes import Detections, quad_to_xyxy

BASE_VERSION = "ppocr-v4-det"


@dataclass(frozen=True)
class PPOCRConfig:
    """Options of the PP-OCR detector. The defaults favour recall (scores carry the confidence)."""

    box_thresh: float = 0.3        # candidate floor on the box score (PP-OCR's default is 0.5)
    thresh: float = 0.3            # binarisation threshold of the probability map
    unclip_ratio: float = 1.6      # how far DB grows the shrunk text kernel back out
    min_side: int = 736            # upscale so the short side is at least this (as rapidocr does)
    max_side: int = 2000           # a pass whose long side would exceed this is tiled, not shrunk
    tile_size: int = 1280          # tile edge (pixels at the pass's scale)
    tile_overlap: int = 160        # overlap between tiles (pixels at the pass's scale)
    max_upscale: float = 4.0       # cap of the `min_side` upscaling for tiny images
    scales: tuple[float, ...] = (1.0,)  # extra passes, e.g. (1.0, 2.0) to find tiny text
    full_view: bool = True         # with tiling, also run one whole-image pass at `tile_size`
    threads: int = 2               # onnxruntime intra-op threads
    model_path: str = ""           # default: the model inside the rapidocr wheel

    def __post_init__(self) -> None:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.tile_overlap >= self.tile_size:
            raise ValueError("tile_overlap must be smaller than tile_size")


def _default_model_path() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


def _tiles(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by >= `overlap`."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


class PPOCRDetector:
    """PP-OCRv4 detection; the ONNX session is created once per instance."""

    name = "ppocr"

    def __init__(self, config: PPOCRConfig | None = None, **options: object) -> None:
        if config is None:
            fields = PPOCRConfig.__dataclass_fields__
            unknown = sorted(set(options) - set(fields))
            if unknown:
                raise ValueError(f"unknown ppocr option(s): {', '.join(unknown)}")
            if "scales" in options:
                options["scales"] = tuple(float(s) for s in options["scales"])  # type: ignore[union-attr]
            config = PPOCRConfig(**options)  # type: ignore[arg-type]
        self.config = config
        self.version = self._version(config)

        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        model = Path(config.model_path) if config.model_path else _default_model_path()
        if not model.exists():
            raise FileNotFoundError(f"{model}: PP-OCR detection model not found (is rapidocr-onnxruntime installed?)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.intra_op_num_threads = max(1, min(int(config.threads), os.cpu_count() or 1))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._post = DBPostProcess(
            thresh=config.thresh, box_thresh=config.box_thresh, max_candidates=1000,
            unclip_ratio=config.unclip_ratio, score_mode="fast", use_dilation=True,
        )

    @staticmethod
    def _version(config: PPOCRConfig) -> str:
        """Stable string: the base name for default options, plus a short hash of the changed ones."""
        default = asdict(PPOCRConfig())
        changed = {k: v for k, v in asdict(config).items() if default[k] != v and k not in ("threads", "model_path")}
        if not changed:
            return BASE_VERSION
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
        return f"{BASE_VERSION}+{digest}"

    # --- one forward pass --------------------------------------------------------------

    def _run(self, bgr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Quads (N,4,2) in `bgr` pixel coordinates and their scores, running at `scale`."""
        import cv2

        h, w = bgr.shape[:2]
        rh = max(32, int(round(h * scale / 32)) * 32)
        rw = max(32, int(round(w * scale / 32)) * 32)
        img = cv2.resize(bgr, (rw, rh), interpolation=cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA)
        x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
        x = x.transpose(2, 0, 1)[None].astype(np.float32)
        pred = self._session.run(None, {self._input: x})[0]
        quads, scores = self._post(pred, (h, w))
        quads = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(quads):
            # drop slivers (rapidocr's filter: sides of 3 px or less), keeping scores aligned
            sides = np.stack([np.linalg.norm(quads[:, 0] - quads[:, 1], axis=1),
                              np.linalg.norm(quads[:, 0] - quads[:, 3], axis=1)], axis=1)
            keep = sides.min(axis=1) > 3
            quads, scores = quads[keep], scores[keep]
        return quads, scores

    def _passes(self, w: int, h: int) -> list[tuple[float, bool]]:
        """(scale, tiled) for every pass over an image of w x h."""
        c = self.config
        base = min(max(1.0, c.min_side / max(1, min(w, h))), c.max_upscale)
        passes: list[tuple[float, bool]] = []
        for s in c.scales:
            scale = base * s
            passes.append((scale, max(w, h) * scale > c.max_side))
        if c.full_view and all(tiled for _, tiled in passes):  # no whole-image view yet: add one for big text
            passes.append((c.tile_size / max(w, h), False))
        return passes

    def detect_one(self, image: np.ndarray) -> Detections:
        """Detections for one upright uint8 RGB (or grey) image."""
        import cv2

        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
        bgr = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2BGR)  # PP-OCR was trained on BGR
        h, w = bgr.shape[:2]
        c = self.config
        boxes, scores, group = [], [], []
        passes = self._passes(w, h)
        g = 0
        for scale, tiled in passes:
            if not tiled:
                q, s = self._run(bgr, scale)
                boxes.append(quad_to_xyxy(q))
                scores.append(s)
                group.append(np.full(len(s), g))
                g += 1
                continue
            tile = max(32, int(round(c.tile_size / scale)))
            overlap = int(round(c.tile_overlap / scale))
            for y0 in _tiles(h, tile, overlap):
                for x0 in _tiles(w, tile, overlap):
                    q, s = self._run(bgr[y0:y0 + tile, x0:x0 + tile], scale)
                    b = quad_to_xyxy(q)
                    b[:, [0, 2]] += x0
                    b[:, [1, 3]] += y0
                    boxes.append(b)
                    scores.append(s)
                    group.append(np.full(len(s), g))
                    g += 1
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        all_scores = np.concatenate(scores) if scores else np.zeros((0,))
        if g > 1:
            all_boxes, all_scores = merge_boxes(all_boxes, all_scores, np.concatenate(group))
        all_boxes[:, [0, 2]] = np.clip(all_boxes[:, [0, 2]], 0, w)
        all_boxes[:, [1, 3]] = np.clip(all_boxes[:, [1, 3]], 0, h)
        order = np.argsort(-all_scores, kind="stable")
        return Detections(all_boxes[order], all_scores[order], np.zeros(len(order), dtype=np.int64))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [self.detect_one(im) for im in images]


def merge_boxes(boxes: np.ndarray, scores: np.ndarray, group: np.ndarray,
                iou: float = 0.5, contain: float = 0.8, same_line: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Merge boxes found by different passes/tiles: duplicates (IoU >= `iou`), boxes mostly inside
    another (>= `contain` of the smaller one's area), and intersecting pieces of one line cut by a
    tile edge (from different groups, vertical overlap >= `same_line` of the lower height).
    Merged boxes become their union with the max score, repeated until nothing changes."""
    b = [list(map(float, x)) for x in boxes]
    s = [float(x) for x in scores]
    gr = [{int(x)} for x in group]
    changed = True
    while changed:
        changed = False
        order = sorted(range(len(b)), key=lambda i: -s[i])
        kept: list[int] = []
        for i in order:
            target = None
            for k in kept:
                if _should_merge(b[i], b[k], gr[i], gr[k], iou, contain, same_line):
                    target = k
                    break
            if target is None:
                kept.append(i)
                continue
            bk, bi = b[target], b[i]
            b[target] = [min(bk[0], bi[0]), min(bk[1], bi[1]), max(bk[2], bi[2]), max(bk[3], bi[3])]
            s[target] = max(s[target], s[i])
            gr[target] |= gr[i]
            changed = True
        b = [b[k] for k in kept]
        s = [s[k] for k in kept]
        gr = [gr[k] for k in kept]
    return np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(s, dtype=np.float64)


def _should_merge(a: list[float], b: list[float], ga: set[int], gb: set[int],
                  iou: float, contain: float, same_line: float) -> bool:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return False
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if inter / max(area_a + area_b - inter, 1e-9) >= iou:
        return True
    if inter / max(min(area_a, area_b), 1e-9) >= contain:
        return True
    if ga.isdisjoint(gb):  # pieces of one line seen by different tiles/passes
        return iy / max(min(a[3] - a[1], b[3] - b[1]), 1e-9) >= same_line
    return False
