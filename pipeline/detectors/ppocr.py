"""`ppocr`: the frozen PP-OCRv4 text detector that ships inside the `rapidocr-onnxruntime` wheel.

Detection only (no recognition). We drive the ONNX model ourselves instead of calling
`RapidOCR()(...)` because RapidOCR's `TextDetector` drops the per-box scores that the DB
post-processing computes; we keep them. The score of a box is PP-OCR's own "fast" box score:
the mean text probability of the segmentation map inside the box before unclipping
(rapidocr's `DBPostProcess.box_score_fast`), in [0, 1].

Images are run at one or more scales; an image whose scaled long side exceeds `max_side` is
cut into overlapping tiles (plus one downscaled whole-image view for large text) instead of
being shrunk, so small text in large images is still found. The quads DB finds are kept
(`Detections.quads`); the xyxy box is their enclosing rectangle. When several passes/tiles ran,
duplicate and fragmented boxes are merged (union of the boxes, max of the scores); a merged box
falls back to its rectangle as its quad.

This is also the inference path of every tuned DB model (`pipeline.detectors.dbnet`): the same
class with another ONNX (`model_path`, or `model_bytes` from a bundle) and its own thresholds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.boxes import Detections, quad_to_xyxy, xyxy_to_quad

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


def default_model_path() -> Path:
    """The stock PP-OCRv4 detection ONNX inside the rapidocr wheel."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


_default_model_path = default_model_path


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

    def __init__(self, config: PPOCRConfig | None = None, *, model_bytes: bytes | None = None,
                 session: bool = True, **options: object) -> None:
        """`model_bytes`: an in-memory ONNX (a bundle's); `session=False`: a subclass runs the
        network itself (`_forward`)."""
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

        self._maps: dict[bytes, np.ndarray] | None = None   # see cache_maps
        self._session = None
        if session:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            opts.intra_op_num_threads = max(1, min(int(config.threads), os.cpu_count() or 1))
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if model_bytes is not None:
                source: bytes | str = model_bytes
            else:
                model = Path(config.model_path) if config.model_path else default_model_path()
                if not model.exists():
                    raise FileNotFoundError(f"{model}: PP-OCR detection model not found (is rapidocr-onnxruntime installed?)")
                source = str(model)
            self._session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        self._post = self._make_post(config)

    @staticmethod
    def _make_post(config: PPOCRConfig) -> object:
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        return DBPostProcess(thresh=config.thresh, box_thresh=config.box_thresh, max_candidates=1000,
                             unclip_ratio=config.unclip_ratio, score_mode="fast", use_dilation=True)

    def retuned(self, **post: float) -> "PPOCRDetector":
        """A copy sharing the network (and the map cache) with other `thresh`, `box_thresh`,
        `unclip_ratio`: a threshold grid costs one forward pass per image, not one per point."""
        import copy
        from dataclasses import replace

        allowed = {"thresh", "box_thresh", "unclip_ratio"}
        if set(post) - allowed:
            raise ValueError(f"retuned() takes only {sorted(allowed)}")
        other = copy.copy(self)
        other.config = replace(self.config, **post)
        other._post = self._make_post(other.config)
        return other

    def cache_maps(self, on: bool = True) -> None:
        """Keep each input's probability map in memory (validation grids; off by default)."""
        self._maps = {} if on else None

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The network: float32 NCHW input -> N x 1 x H x W probability map."""
        return self._session.run(None, {self._input: x})[0]

    def _probability_map(self, x: np.ndarray) -> np.ndarray:
        if self._maps is None:
            return self._forward(x)
        key = hashlib.blake2b(x.tobytes(), digest_size=16).digest() + repr(x.shape).encode()
        if key not in self._maps:
            self._maps[key] = self._forward(x)
        return self._maps[key]

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
        pred = self._probability_map(x)
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
        quads, scores, group = [], [], []
        passes = self._passes(w, h)
        g = 0
        for scale, tiled in passes:
            if not tiled:
                q, s = self._run(bgr, scale)
                quads.append(q)
                scores.append(s)
                group.append(np.full(len(s), g))
                g += 1
                continue
            tile = max(32, int(round(c.tile_size / scale)))
            overlap = int(round(c.tile_overlap / scale))
            for y0 in _tiles(h, tile, overlap):
                for x0 in _tiles(w, tile, overlap):
                    q, s = self._run(bgr[y0:y0 + tile, x0:x0 + tile], scale)
                    quads.append(q + np.array([x0, y0], dtype=np.float64))
                    scores.append(s)
                    group.append(np.full(len(s), g))
                    g += 1
        all_quads = np.concatenate(quads) if quads else np.zeros((0, 4, 2))
        all_scores = np.concatenate(scores) if scores else np.zeros((0,))
        all_boxes = quad_to_xyxy(all_quads)
        if g > 1:
            all_boxes, all_scores, all_quads = merge_boxes(all_boxes, all_scores, np.concatenate(group),
                                                           quads=all_quads)
        all_quads = all_quads.copy()
        all_quads[..., 0] = np.clip(all_quads[..., 0], 0, w)
        all_quads[..., 1] = np.clip(all_quads[..., 1], 0, h)
        all_boxes[:, [0, 2]] = np.clip(all_boxes[:, [0, 2]], 0, w)
        all_boxes[:, [1, 3]] = np.clip(all_boxes[:, [1, 3]], 0, h)
        order = np.argsort(-all_scores, kind="stable")
        return Detections(all_boxes[order], all_scores[order], np.zeros(len(order), dtype=np.int64), all_quads[order])

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [self.detect_one(im) for im in images]


def merge_boxes(boxes: np.ndarray, scores: np.ndarray, group: np.ndarray,
                iou: float = 0.5, contain: float = 0.8, same_line: float = 0.6,
                quads: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Merge boxes found by different passes/tiles: duplicates (IoU >= `iou`), boxes mostly inside
    another (>= `contain` of the smaller one's area), and intersecting pieces of one line cut by a
    tile edge (from different groups, vertical overlap >= `same_line` of the lower height).
    Merged boxes become their union with the max score, repeated until nothing changes.
    With `quads` (N, 4, 2), also returns them: a box that merged nothing keeps its quad, a
    merged one gets its rectangle's."""
    b = [list(map(float, x)) for x in boxes]
    s = [float(x) for x in scores]
    gr = [{int(x)} for x in group]
    q = None if quads is None else [np.asarray(x, dtype=np.float64) for x in quads]
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
            if q is not None:
                q[target] = xyxy_to_quad(np.asarray([b[target]]))[0]
            changed = True
        b = [b[k] for k in kept]
        s = [s[k] for k in kept]
        gr = [gr[k] for k in kept]
        if q is not None:
            q = [q[k] for k in kept]
    out_b, out_s = np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(s, dtype=np.float64)
    if q is None:
        return out_b, out_s
    return out_b, out_s, np.asarray(q, dtype=np.float64).reshape(-1, 4, 2)


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
