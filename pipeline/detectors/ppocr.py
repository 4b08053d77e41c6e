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
duplicate and fragmented boxes are merged by the tiler's `union` merge
(`pipeline.detectors.tiling`: union of the boxes, max of the scores); a merged box gets the
minimum-area rectangle around its parts as its quad.

This is also the inference path of every tuned DB model (`pipeline.detectors.dbnet`): the same
class with another ONNX (`model_path`, or `model_bytes` from a bundle) and its own thresholds.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import (Detections, centre_inside, inside_matrix, quad_frames, quad_thickness, quad_to_xyxy,
                            quads_mask)
from pipeline.config import check_number
from pipeline.detectors.graph import fold_bytes, folded_bytes
from pipeline.detectors.tiling import (Tiler, cut_by_inner_edge, edge_border, edge_strips, merge_boxes,
                                      touches_image_edge)
from pipeline.io import array_digest, one_line, sha256_json

log = logging.getLogger(__name__)

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
    scale_max_side: int = 0        # passes after the first run only on images up to this long side (0: all)
    refine: str = "image"          # where passes after the first run: "image" (whole) | "small" (see below)
    refine_thresh: float = 0.1     # "small": first-pass map above this = possible text ...
    refine_max_height: float = 24.0  # ... in blobs at most this tall (image px): windows around them
    refine_edges: int = 48         # ... and word-like clusters of strong edges (morphological gradient
                                   #     above this, 0-255) that no first-pass box holds (0: map only)
    refine_cell: int = 192         # candidates mark cells of a grid of this size (image px) ...
    refine_margin: int = 32        # ... and each row run of marked cells runs with this context
                                   # (DB needs it: a 96 px window around a 6 px word finds nothing)
    refine_continue: float = 8.0   # a first-pass box at most `refine_max_height` tall whose line goes
                                   # on beside it (strokes there) marks the cells this many x its
                                   # height past that end (a date half on tissue, half on white:
                                   # 1x boxes only the half it sees; 0: off)
    refine_whole: float = 1.0      # windows adding up to this share of the image: the pass runs on
                                   # the whole image when that needs no tiles (no dearer, cuts no line)
    # Text too large for the first pass (a name 240 px tall on a 600 px image, upscaled to 736 px,
    # or a 500 px banner at 1x: DB sees strokes, not words, and boxes only parts of letters) is
    # whole at a coarser scale. When the first pass finds something this thick (its pixels), one
    # more pass runs with the image's long side at `large_text_side` px, and keeps what it finds
    # at least `large_text_keep` px thick there (small text it cannot see stays the 1x pass's).
    # On a small image the pass runs at half the first pass's scale instead, and it also runs when
    # the thickest find is `large_text_share` of the image's short side (and half the trigger in
    # image px), or nothing was found (DB boxed two 90 px pieces of a 480 px "42" on a 700x520
    # image, or none, and no coarse pass ran).
    large_text_side: int = 640     # 0: never
    large_text_trigger: float = 128.0
    large_text_keep: float = 16.0
    large_text_share: float = 0.12
    # Text touching the image's edge ("100 µm" at y = 0, a corner "Fig. 3") or a few px from it
    # gets a map of 0 from DB, which sees no background beyond it. Strips this deep (px at their
    # own scale, `edge_scale` x the first pass's) along the edges, each grown by `edge_border`
    # replicated px on its outer side (and mirrored on a noisy image), run as their own inputs
    # after the first pass (tiled or not); what they find touching the edge or wholly inside the
    # strip joins it (0: off). Their own inputs, not a border around the whole image: that
    # shifts the map everywhere.
    edge_strip: int = 0
    edge_border: int = 32
    edge_scale: float = 1.0
    # Text in colour on a grey image (a purple "DO NOT COPY" at 30 % over an electron micrograph,
    # a red annotation on a scan) can differ from its background in hue alone: DB, which sees
    # mostly brightness, misses it. On a grey image with strokes this much more colourful than
    # its background (chroma = max - min of R, G, B, 0-255; see `colour_view`) one more pass runs,
    # at the first pass's scale, on a view where chroma is ink: white where grey, black from 1.5x
    # this above the background (0: off).
    colour_text: int = 0
    # Faint text on a page (a light-grey footer at 244 on a white page of black text, a pale
    # "CONFIDENTIAL", a grey note in a shaded table row): a viewer reads it, DB sees nothing from
    # about 12 levels off its paper, and the whole-picture levels view (`imaging.levels_view`)
    # does not fire on a page that also holds full-contrast ink. On a page (mostly flat paper at
    # a few levels) with marks a few levels off the paper, away from ordinary ink, the first pass
    # runs once more on windows around them, on a view where the distance from the paper is ink:
    # black from this many levels off it (see `faint_view`; 0: off).
    faint_text: int = 0
    # Text crossing text (a watermark over a line, a stamp over a signature): DB's bitmap joins
    # them into one component, its rectangle is mostly background, scores under `box_thresh`,
    # and both were dropped. A component whose own pixels average at least this probability,
    # yet whose rectangle is dropped so, is covered in pieces instead (see `_crossed_pieces`;
    # 0: off).
    crossed_text: float = 0.0
    threads: int = 2               # onnxruntime intra-op threads
    model_path: str = ""           # default: the model inside the rapidocr wheel

    def __post_init__(self) -> None:
        for name, (lo, hi, kind) in _RANGES.items():
            check_number(name, getattr(self, name), lo, hi, integer=kind is int)
            if kind is float:   # `-o edge_scale=2` is the same setting as 2.0: one detector version
                object.__setattr__(self, name, float(getattr(self, name)))
        if not self.scales or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
                                      and 0 < x <= MAX_SCALE for x in self.scales):
            # a pass at scale s holds s^2 times the image's pixels: 100x of a small image is 20 GB
            raise ValueError(f"scales must be numbers above 0 and at most {MAX_SCALE:g}, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):   # `--scales 1,1` ran the same pass twice
            raise ValueError(f"scales must be different from each other, got {', '.join(f'{x:g}' for x in self.scales)}")
        if self.tile_overlap >= self.tile_size:
            raise ValueError("tile_overlap must be smaller than tile_size")
        if self.refine not in ("image", "small"):
            raise ValueError(f"refine must be 'image' or 'small', got {self.refine!r}")


MAX_SCALE = 4.0
# field: (lowest, highest, int | float). Thresholds of 0 or 1 mark everything or nothing.
_RANGES: dict[str, tuple[float, float, type]] = {
    "box_thresh": (0.0, 1.0, float), "thresh": (0.001, 0.999, float), "unclip_ratio": (0.1, 10.0, float),
    "min_side": (32, 16384, int), "max_side": (64, 16384, int), "tile_size": (64, 8192, int),
    "tile_overlap": (0, 8192, int), "max_upscale": (1.0, 16.0, float), "scale_max_side": (0, 1 << 20, int),
    "refine_thresh": (0.0, 1.0, float), "refine_max_height": (1.0, 10000.0, float), "refine_edges": (0, 255, int),
    "refine_cell": (16, 8192, int), "refine_margin": (0, 8192, int), "refine_continue": (0.0, 1000.0, float),
    "refine_whole": (0.0, 1000.0, float), "edge_strip": (0, 4096, int), "edge_border": (0, 1024, int),
    "edge_scale": (0.25, MAX_SCALE, float), "colour_text": (0, 255, int), "faint_text": (0, 255, int),
    "crossed_text": (0.0, 1.0, float),
    "threads": (1, 1024, int),
    "large_text_side": (0, 16384, int), "large_text_trigger": (1.0, 16384.0, float), "large_text_keep": (0.0, 16384.0, float),
    "large_text_share": (0.0, 1.0, float),
}


# How `small_text_windows` chooses its windows; raised when that changes what a "small" second
# pass finds, so outputs of the older choice are redone, not resumed. 2: a form's ruling is
# taken out of the edge clusters. 3: a small first-pass box marks the cells its line runs on into.
SMALL_WINDOWS_REVISION = 3
# What edge strips keep; raised when that changes, as above. 2: also quads wholly inside a strip.
# 3: a find the strip's inner side cuts that no first-pass box holds is followed inward; strips
# also run after a tiled first pass. 4: on a noisy image, strips grown by the image mirrored too.
EDGE_STRIP_REVISION = 4
_BORDER_MODES = {"replicate": 1, "mirror": 4}   # cv2.BORDER_REPLICATE, cv2.BORDER_REFLECT_101
# How `colour_view` makes its view; raised when that changes, as the two above.
COLOUR_VIEW_REVISION = 1
# How `faint_view` finds and shows faint marks and which finds the faint pass keeps; raised
# when that changes, as above.
FAINT_VIEW_REVISION = 4   # 2: the paper's local level (grey cells, bands, shading) and its noise; 3: short words ("42"); 4: ruled lines are ink
# How `_crossed_pieces` cuts a crossed component; raised when that changes, as above.
CROSSED_REVISION = 1


def config_version(base: str, config: PPOCRConfig, skip: tuple[str, ...] = ()) -> str:
    """`base`, plus a short hash of the options that differ from the defaults (threads, the
    model path and `skip` never count) and, when a second pass runs on small-text windows, of
    how they are chosen: a detector version that changes with what it finds."""
    default = asdict(PPOCRConfig())
    ignore = {"threads", "model_path", *skip}
    if len(config.scales) == 1:   # one pass: how later passes would run changes nothing
        ignore |= {k for k in default if k.startswith("refine") or k == "scale_max_side"}
    changed = {k: v for k, v in asdict(config).items() if k not in ignore and default[k] != v}
    if len(config.scales) > 1 and config.refine == "small":
        changed["small_windows_revision"] = SMALL_WINDOWS_REVISION
    if config.edge_strip:
        changed["edge_strip_revision"] = EDGE_STRIP_REVISION
    else:   # off: how deep a border it would add, at which scale, changes nothing
        changed.pop("edge_border", None)
        changed.pop("edge_scale", None)
    if config.colour_text:
        changed["colour_view_revision"] = COLOUR_VIEW_REVISION
    if config.faint_text:
        changed["faint_view_revision"] = FAINT_VIEW_REVISION
    if config.crossed_text:
        changed["crossed_revision"] = CROSSED_REVISION
    if not config.large_text_side:   # off: how it would run changes nothing
        for k in ("large_text_trigger", "large_text_keep", "large_text_share"):
            changed.pop(k, None)
    if not changed:
        return base
    return f"{base}+{sha256_json(changed)[:8]}"


_NORMALISED = ((np.arange(256, dtype=np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)


def preprocess(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) -> the DB network's float32 NCHW input (PP-OCR's normalisation, `(x /
    255 - 0.5) / 0.5`, as a lookup: the same floats, in one pass). The one copy: inference,
    validation and training crops all go through it."""
    if bgr.dtype == np.uint8:
        return np.ascontiguousarray(np.take(_NORMALISED, bgr.transpose(2, 0, 1))[None])
    x = (bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def default_model_path() -> Path:
    """The stock PP-OCRv4 detection ONNX inside the rapidocr wheel."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


_default_model_path = default_model_path


class PPOCRDetector:
    """PP-OCRv4 detection; the ONNX session is created once per instance."""

    name = "ppocr"

    def __init__(self, config: PPOCRConfig | None = None, *, model_bytes: bytes | None = None,
                 cache_graph: bool = True, **options: object) -> None:
        """`model_bytes`: an in-memory ONNX (a bundle's); `cache_graph=False`: the folded graph
        is not written to the user cache (a network scored once while training)."""
        if config is None:
            fields = PPOCRConfig.__dataclass_fields__
            unknown = sorted(set(options) - set(fields))
            if unknown:
                raise ValueError(f"unknown ppocr option(s): {', '.join(unknown)}")
            if "scales" in options:
                options["scales"] = _scales(options["scales"])
            config = PPOCRConfig(**options)  # type: ignore[arg-type]
        self.config = config
        self.version = self._version(config)

        import onnxruntime as ort

        self._maps: dict[bytes, np.ndarray] | None = None   # see cache_maps
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.intra_op_num_threads = self._call_threads()
        opts.inter_op_num_threads = 1
        # no busy-waiting between ops: decode/encode threads get the cores, CPU-s stay honest
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if model_bytes is None:
            model = Path(config.model_path) if config.model_path else default_model_path()
            if not model.exists():
                raise FileNotFoundError(f"{model}: PP-OCR detection model not found (is rapidocr-onnxruntime installed?)")
            model_bytes = model.read_bytes()
        try:
            folded = folded_bytes(model_bytes) if cache_graph else fold_bytes(model_bytes)
            self._session = ort.InferenceSession(folded, sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - e.g. a damaged cached copy: the graph as given
            log.warning("folded ONNX graph did not load (%s); running it as given", one_line(exc)[:200])
            self._session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._post = self._make_post(config)

    @property
    def parallel_calls(self) -> int:
        """Calls that may run at once: an onnxruntime session is thread-safe and the rest of a
        call keeps its state local, so as many as the cores hold at `threads` each (two calls of
        one thread beat one call of two on two cores: 3.2 vs 2.6 images/s, README Pace)."""
        return max(1, (os.cpu_count() or 1) // self._call_threads())

    def _call_threads(self) -> int:
        """onnxruntime intra-op threads of one call: `threads`, at most the cores."""
        return max(1, min(int(self.config.threads), os.cpu_count() or 1))

    @staticmethod
    def _make_post(config: PPOCRConfig) -> object:
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        return DBPostProcess(thresh=config.thresh, box_thresh=config.box_thresh, max_candidates=1000,
                             unclip_ratio=config.unclip_ratio, score_mode="fast", use_dilation=True)

    def with_options(self, **changes: Any) -> "PPOCRDetector":
        """A copy sharing the ONNX session (and map cache) with other `PPOCRConfig` fields
        (scales, refine, tiling, thresholds): variants of one model never load it twice."""
        import copy
        from dataclasses import replace

        if "model_path" in changes or "threads" in changes:
            raise ValueError("with_options() cannot change model_path or threads (they make the session)")
        if "scales" in changes:
            changes["scales"] = _scales(changes["scales"])
        other = copy.copy(self)
        other.config = replace(self.config, **changes)
        other._post = self._make_post(other.config)
        if type(self)._version is PPOCRDetector._version and self.version.startswith(BASE_VERSION):
            other.version = other._version(other.config)
        return other

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

    def passes(self) -> dict[str, Any]:
        """The passes this detector runs, for summaries and sidecars (the version only hashes them)."""
        c = self.config
        return {"scales": list(c.scales), "refine": c.refine if len(c.scales) > 1 else None,
                "scale_max_side": (c.scale_max_side or None) if len(c.scales) > 1 else None,
                "large_text_side": c.large_text_side or None, "edge_strip": c.edge_strip or None,
                "edge_scale": c.edge_scale if c.edge_strip else None, "colour_text": c.colour_text or None,
                "faint_text": c.faint_text or None, "crossed_text": c.crossed_text or None}

    def cache_maps(self, on: bool = True) -> None:
        """Keep each input's probability map in memory (validation grids; off by default). Turning
        it on again keeps the maps already there (a sweep inside a block that caches reuses them)."""
        self._maps = (self._maps if self._maps is not None else {}) if on else None

    def forward_maps(self, x: np.ndarray) -> np.ndarray:
        """The network: float32 NCHW input -> N x 1 x H x W probability map."""
        return self._session.run(None, {self._input: x})[0]

    def _probability_map(self, bgr: np.ndarray) -> np.ndarray:
        """The network's map of a uint8 BGR input. With `cache_maps` on, the key hashes the
        uint8 pixels (a quarter of the float input's bytes; a threshold grid looks each one up
        once per point) and a cached map skips building the float input at all."""
        if self._maps is None:
            return self.forward_maps(preprocess(bgr))
        key = array_digest(bgr)
        if key not in self._maps:
            self._maps[key] = self.forward_maps(preprocess(bgr))
        return self._maps[key]

    @staticmethod
    def _version(config: PPOCRConfig) -> str:
        """Stable string: the base name for default options, plus a short hash of the changed ones."""
        return config_version(BASE_VERSION, config)

    # --- one forward pass --------------------------------------------------------------

    def _run(self, bgr: np.ndarray, scale: float, keep_map: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Quads (N,4,2) in `bgr` pixel coordinates and their scores, running at `scale`
        (`keep_map`: the probability map is appended to it)."""
        import cv2

        h, w = bgr.shape[:2]
        rh = max(32, int(round(h * scale / 32)) * 32)
        rw = max(32, int(round(w * scale / 32)) * 32)
        img = cv2.resize(bgr, (rw, rh), interpolation=cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA)
        pred = self._probability_map(img)
        if keep_map is not None:
            keep_map.append(pred[0, 0])
        quads, scores = self._post(pred, (h, w))
        quads = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(quads):
            keep = quad_thickness(quads) > 3   # drop slivers (rapidocr's filter: 3 px or thinner)
            quads, scores = quads[keep], scores[keep]
        return quads, scores

    def _passes(self, w: int, h: int) -> list[tuple[float, bool]]:
        """(scale, tiled) for every pass over an image of w x h."""
        c = self.config
        base = min(max(1.0, c.min_side / max(1, min(w, h))), c.max_upscale)
        scales = c.scales
        if c.scale_max_side and max(w, h) > c.scale_max_side:
            scales = scales[:1]
        passes: list[tuple[float, bool]] = []
        for s in scales:
            scale = base * s
            passes.append((scale, self._tiled(w, h, scale)))
        if c.full_view and all(tiled for _, tiled in passes):  # no whole-image view yet: add one for big text
            passes.append((c.tile_size / max(w, h), False))
        return passes

    def _tiled(self, w: int, h: int, scale: float) -> bool:
        """Whether a pass over w x h image px at `scale` runs in tiles (`max_side`)."""
        return max(w, h) * scale > self.config.max_side

    def _pass(self, bgr: np.ndarray, scale: float, tiled: bool, x0: int, y0: int,
              out: list[tuple[np.ndarray, np.ndarray]], keep_map: list | None = None) -> None:
        """One pass over `bgr` (a window of the image at offset x0, y0), tiled when asked:
        each tile's (quads in image coordinates, scores) appended to `out`, and the pass's
        probability map to `keep_map` if given."""
        import cv2

        c = self.config
        if not tiled:
            q, s = self._run(bgr, scale, keep_map)
            out.append((q + np.array([x0, y0], dtype=np.float64), s))
            return
        # a tiled pass keeps its map too (the small-text windows of a 3200 px micrograph are chosen
        # on it): the tiles' maps stitched at `bgr`'s own size, as uint8 (0-255), the larger where
        # tiles overlap. Bytes: one per image pixel, as the image's own edge map costs.
        canvas = np.zeros(bgr.shape[:2], np.uint8) if keep_map is not None else None
        tiler = Tiler(max(32, int(round(c.tile_size / scale))), int(round(c.tile_overlap / scale)))
        for (tx, ty, tx1, ty1), view in tiler.slices(bgr):
            tile_map: list[np.ndarray] | None = [] if canvas is not None else None
            q, s = self._run(view, scale, tile_map)
            out.append((q + np.array([x0 + tx, y0 + ty], dtype=np.float64), s))
            if canvas is not None and tile_map:
                m = cv2.resize(tile_map[0], (tx1 - tx, ty1 - ty),
                               interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
                part = canvas[ty:ty1, tx:tx1]
                np.maximum(part, np.clip(m * 255.0 + 0.5, 0, 255).astype(np.uint8), out=part)
        if canvas is not None:
            keep_map.append(canvas)

    def _large_text_pass(self, bgr: np.ndarray, first_scale: float, found: list[tuple[np.ndarray, np.ndarray]]
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The coarse pass for text too large for the first one (see `large_text_side`): only when
        the first pass found nothing or something `large_text_trigger` thick (or
        `large_text_share` of the short side), at `large_text_side` px or, where that is not
        1.5x coarser than the first pass, at half its scale; what it finds thinner than
        `large_text_keep` is dropped.
        Its finds join the others after the small-text windows are chosen: a large box must not
        hide the small words inside its area from the 2x pass."""
        c = self.config
        h, w = bgr.shape[:2]
        if not c.large_text_side:
            return []
        scale = c.large_text_side / max(w, h)
        if scale * 1.5 > first_scale:
            scale = first_scale / 2
        quads = np.concatenate([q for q, _ in found]) if found else np.zeros((0, 4, 2))
        if len(quads):   # nothing found at all also runs it: a 480 px "42" gave the first pass no box
            thickest = float(quad_thickness(quads).max())
            # the share alone would fire on ordinary 30 px lines of a 200 px crop: it needs half
            # the trigger in the image's own pixels too
            share = bool(c.large_text_share) and thickest >= max(c.large_text_share * min(w, h), c.large_text_trigger / 2)
            if thickest * first_scale < c.large_text_trigger and not share:
                return []
        extra: list[tuple[np.ndarray, np.ndarray]] = []
        self._pass(bgr, scale, False, 0, 0, extra)
        kept = []
        for q, s in extra:
            keep = quad_thickness(q) * scale >= c.large_text_keep
            kept.append((q[keep], s[keep]))
        return kept

    def _edge_pass(self, bgr: np.ndarray, scale: float, first: np.ndarray | None = None,
                   grad: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """What DB finds near the image's edge in strips along it (`tiling.edge_strips`, see
        `edge_strip`): each strip `edge_strip` px deep at `scale`, grown by `edge_border`
        replicated px outside the image (and mirrored ones on a noisy image). Kept: quads
        reaching the image's edge, and those wholly inside the strip (DB's map at the first
        pass's scale is blind a text height or so from
        the edge too). A line the strip's inner side cuts is the first pass's when a first-pass
        box (`first`, xyxy) holds its centre; otherwise the first pass missed it too ("x40" 12 px
        from the edge, 30 px tall, running past a 64 px strip, on EM noise), and it is followed
        inward (`_run_on_windows`). `grad`: the image's `_edges`, when at hand."""
        c = self.config
        depth, border = round(c.edge_strip / scale), round(c.edge_border / scale)
        # a replicated border smears a label the edge cuts into streaks; on an image too noisy
        # for the small-text search (EM grain) DB then sees nothing of it ("100 µm", "x40" cut
        # 3-6 px), so there the strips also run grown by the image mirrored, which makes the cut
        # glyphs whole shapes and goes on as grain. Mirrored alone doubles a line a few px inside
        # the edge into two and loses it ("14/09/2008" 10 px from the top), hence both (README:
        # edge strips); a constant border made the grain beside it read as text.
        noisy = _texture(grad if grad is not None else _edges(bgr)) >= NOISY_TEXTURE
        modes = ("replicate", "mirror") if noisy else ("replicate",)
        return [found for mode in modes for found in self._edge_strips(bgr, scale, first, depth, border, mode)]

    def _edge_strips(self, bgr: np.ndarray, scale: float, first: np.ndarray | None, depth: int, border: int,
                     mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """`_edge_pass` with one way of growing the strips past the edge (`_BORDER_MODES`)."""
        h, w = bgr.shape[:2]
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for side, (window, grow) in zip(("top", "bottom", "left", "right"), edge_strips(w, h, depth, border)):
            q, s = self._run_window(bgr, window, grow, scale, mode)
            xyxy = quad_to_xyxy(q)
            cut = cut_by_inner_edge(xyxy - np.tile(window[:2], 2), window, w, h)
            lost = cut & ~centre_inside(xyxy, first)
            keep = ~cut | touches_image_edge(xyxy, w, h) | lost   # lost: the part the strip saw, whatever follows
            out.append((q[keep], s[keep]))
            if not lost.any():
                continue
            for run_on in _run_on_windows(side, xyxy[lost], quad_thickness(q[lost]), depth, w, h):
                q2, s2 = self._run_window(bgr, run_on, edge_border(run_on, w, h, border), scale, mode)
                b2 = quad_to_xyxy(q2)
                keep = (~cut_by_inner_edge(b2 - np.tile(run_on[:2], 2), run_on, w, h)
                        | touches_image_edge(b2, w, h) | (inside_matrix(b2, xyxy[lost]) > 0).any(1))
                out.append((q2[keep], s2[keep]))
        return out

    def _run_window(self, bgr: np.ndarray, window: tuple[int, int, int, int], grow: tuple[int, int, int, int],
                    scale: float, mode: str = "replicate") -> tuple[np.ndarray, np.ndarray]:
        """DB on a window of the image grown past its edges (top, bottom, left, right px;
        `mode` in `_BORDER_MODES`): quads in the image's frame. In tiles when it holds more px at
        `scale` than the largest untiled pass (`max_side` squared): a strip along a 40000 px
        slide is one long thin input."""
        import cv2

        x0, y0, x1, y1 = window
        t, b, le, r = grow
        grown = cv2.copyMakeBorder(bgr[y0:y1, x0:x1], t, b, le, r, _BORDER_MODES[mode])
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        tiled = grown.shape[0] * grown.shape[1] * scale * scale > self.config.max_side ** 2
        self._pass(grown, scale, tiled, x0 - le, y0 - t, parts)
        return np.concatenate([q for q, _ in parts]), np.concatenate([s for _, s in parts])

    def _colour_pass(self, bgr: np.ndarray, scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """The first pass again on `colour_view` of a grey image's coloured marks (see
        `colour_text`), over the window that holds them; what it finds is kept when it is a word
        holding strokes (`_words_with_strokes`)."""
        view = colour_view(bgr, self.config.colour_text)
        if view is None:
            return []
        ink, (x0, y0, x1, y1) = view
        found: list[tuple[np.ndarray, np.ndarray]] = []
        self._pass(ink, scale, self._tiled(x1 - x0, y1 - y0, scale), x0, y0, found)
        return [_words_with_strokes(q, s, ink, (x0, y0)) for q, s in found]

    def _faint_pass(self, bgr: np.ndarray, scale: float, seen: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The first pass again on `faint_view` of a page's faint marks (see `faint_text`), in
        windows around them; what it finds is kept as the colour pass keeps its finds (words
        holding strokes) when it is new text: at most `FAINT_MAX_SEEN` inside the quads found so
        far (`seen`; the view shows the page's ordinary ink too, grown fatter, and a receipt's
        grey print is all marks, yet boxed already) and holding `FAINT_MIN_AREA` px of the marks
        outside them."""
        view = faint_view(bgr, self.config.faint_text)
        if view is None:
            return []
        ink, marks, wins = view
        h, w = marks.shape
        seen_q = np.concatenate(seen) if seen else np.zeros((0, 4, 2))
        covered = quads_mask(seen_q, w, h) if len(seen_q) else np.zeros((h, w), bool)
        marks = marks & ~covered
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for x0, y0, x1, y1 in wins:
            found: list[tuple[np.ndarray, np.ndarray]] = []
            win = np.ascontiguousarray(ink[y0:y1, x0:x1])
            self._pass(win, scale, self._tiled(x1 - x0, y1 - y0, scale), int(x0), int(y0), found)
            here, done = marks[y0:y1, x0:x1], covered[y0:y1, x0:x1]
            for q, s in found:
                q, s = _words_with_strokes(q, s, win, (int(x0), int(y0)), FAINT_MIN_ASPECT)
                _, _, eu, ev = quad_frames(q)
                short = (eu[:, 1] - eu[:, 0]) < COLOUR_MIN_ASPECT * (ev[:, 1] - ev[:, 0])
                keep = np.zeros(len(q), bool)
                for i in range(len(q)):   # new text, not ink found already and shown fatter
                    m = quads_mask(q[i:i + 1] - np.array([x0, y0]), x1 - x0, y1 - y0)
                    keep[i] = done[m].mean() <= FAINT_MAX_SEEN and np.count_nonzero(here[m]) >= FAINT_MIN_AREA
                    if keep[i] and short[i]:   # "42", not a scan's speckle: glyphs side by side
                        keep[i] = _glyph_row(here & m, float(ev[i, 1] - ev[i, 0]))
                out.append((q[keep], s[keep]))
        return out

    def small_text_windows(self, prob: np.ndarray, w: int, h: int, bgr: np.ndarray | None = None,
                           found: np.ndarray | None = None, grad: np.ndarray | None = None) -> np.ndarray:
        """Integer xyxy windows (image px) where a larger scale may find text the first pass
        missed; `prob` is the first pass's map (0-1 at its own resolution, or a tiled pass's
        stitched uint8 map, 0-255). Candidates: blobs of the first-pass probability map above `refine_thresh` no
        taller than `refine_max_height` image px (text at the edge of being seen), and, since
        DB's map is blank for text a few pixels tall, word-like clusters of strong edges of that
        height (strong = above `refine_edges` and twice the image's 75th gradient percentile, so
        noise and texture do not count; long straight runs, a form's ruling, taken out first so
        they do not join the words they touch); both only where their centre lies in no first-pass box
        (`found`, xyxy: what 1x already found needs no second look). A candidate marks the
        `refine_cell` grid cell of its centre. A small first-pass box marks the cells of its row
        that its line may run on into (`refine_continue`): 1x often boxes only the part of a line
        it sees (a white date half on tissue, half on a white background), and a window that
        ends inside a line cuts it. Each run of marked cells in a row is one window, with
        `refine_margin` of context (no union rectangles: cost follows the marked area). `grad`:
        `bgr`'s `_edges`, when at hand."""
        import cv2

        c = self.config
        mh, mw = prob.shape
        sx, sy = w / mw, h / mh
        cand = []   # xyxy in image px
        thresh = c.refine_thresh * 255 if prob.dtype == np.uint8 else c.refine_thresh   # a tiled pass's map: 0-255
        n, _, stats, _ = cv2.connectedComponentsWithStats((prob > thresh).astype(np.uint8), connectivity=8)
        if n > 1:
            st = stats[1:].astype(np.float64)
            x0, y0 = st[:, 0] * sx, st[:, 1] * sy
            bw, bh = st[:, 2] * sx, st[:, 3] * sy
            keep = (bh <= c.refine_max_height) & (np.minimum(bh, bw) >= 2.0)
            cand.append(_not_inside(np.stack([x0, y0, x0 + bw, y0 + bh], 1)[keep], found))
        if grad is None and bgr is not None and (c.refine_edges or (c.refine_continue and found is not None)):
            grad = _edges(bgr)
        texture = _texture(grad) if grad is not None else 0   # the image's `texture_level`
        if c.refine_edges and grad is not None:
            edge = max(c.refine_edges, 2 * texture)
            strong = (grad >= edge).astype(np.uint8)
            # a form's ruling lines join every word they touch into one page-sized cluster:
            # take out straight runs three times longer than the tallest text looked for
            run = max(16, int(3 * c.refine_max_height))
            lines = (cv2.morphologyEx(strong, cv2.MORPH_OPEN, np.ones((1, run), np.uint8))
                     | cv2.morphologyEx(strong, cv2.MORPH_OPEN, np.ones((run, 1), np.uint8)))
            strong = cv2.morphologyEx(strong & (1 - lines), cv2.MORPH_CLOSE, np.ones((3, 7), np.uint8))
            n, _, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
            if n > 1:
                st = stats[1:].astype(np.float64)
                x0, y0, bw, bh, area = st[:, 0], st[:, 1], st[:, 2], st[:, 3], st[:, 4]
                keep = (bh >= 3) & (bh <= c.refine_max_height) & (bw >= 1.5 * bh) & (area >= 0.3 * bw * bh)
                cand.append(_not_inside(np.stack([x0, y0, x0 + bw, y0 + bh], 1)[keep], found))
        cand = [x for x in cand if len(x)]
        cell, m = max(32, int(c.refine_cell)), int(c.refine_margin)
        grid = _cell_grid(np.concatenate(cand) if cand else np.zeros((0, 4)), cell, w, h)
        gh = grid.shape[0]
        if c.refine_continue and found is not None and len(found) and grad is not None:
            for x0, y0, x1, y1, _side in _runs_on(grad, np.asarray(found, np.float64).reshape(-1, 4),
                                                 c.refine_max_height, c.refine_continue, floor=2 * texture):
                r = int(min(gh - 1, (y0 + y1) / 2 // cell))
                grid[r, int(max(0, x0) // cell):int(min(w - 1, x1) // cell) + 1] = True
        return _row_windows(grid, cell, m, w, h)

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
        found: list[tuple[np.ndarray, np.ndarray]] = []
        passes = self._passes(w, h)
        first_map: list[np.ndarray] = []
        large: list[tuple[np.ndarray, np.ndarray]] = []
        # the edge strips and the small-text windows both read the image's edge strength: once
        grad = _edges(bgr) if c.edge_strip or (len(passes) > 1 and c.refine == "small") else None
        for k, (scale, tiled) in enumerate(passes):
            if k > 0 and c.refine == "small" and scale > passes[0][0]:
                first = quad_to_xyxy(np.concatenate([q for q, _ in found])) if found else None
                wins = self.small_text_windows(first_map[0], w, h, bgr, first, grad)
                if not tiled and len(wins) and np.prod(wins[:, 2:] - wins[:, :2], axis=1).sum() >= c.refine_whole * w * h:
                    # windows adding up to the image cost as much as one untiled pass and cut lines
                    self._pass(bgr, scale, tiled, 0, 0, found)
                    continue
                for x0, y0, x1, y1 in wins:
                    win = bgr[y0:y1, x0:x1]
                    self._pass(win, scale, self._tiled(win.shape[1], win.shape[0], scale), int(x0), int(y0), found)
                continue
            self._pass(bgr, scale, tiled, 0, 0, found, first_map if k == 0 else None)
            if k == 0 and not tiled:
                large = self._large_text_pass(bgr, scale, found)
            if k == 0 and c.edge_strip:   # after a tiled first pass too: large images have edges
                seen = [q for q, _ in found + large]
                first = quad_to_xyxy(np.concatenate(seen)) if seen else None
                found += self._edge_pass(bgr, scale * c.edge_scale, first, grad)
            if k == 0 and c.colour_text:
                found += self._colour_pass(bgr, scale)
            if k == 0 and c.faint_text:
                found += self._faint_pass(bgr, scale, [q for q, _ in found + large])
            if k == 0 and c.crossed_text:   # last: the first pass's own finds decide the others
                found.append(_crossed_pieces(first_map[0], self._post, c.crossed_text, (h, w)))
        first_map.clear()
        found += large
        all_quads = np.concatenate([q for q, _ in found]) if found else np.zeros((0, 4, 2))
        all_scores = np.concatenate([s for _, s in found]) if found else np.zeros((0,))
        group = np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(found)]) if found else np.zeros((0,), int)
        all_boxes = quad_to_xyxy(all_quads)
        if len(found) > 1:
            all_boxes, all_scores, all_quads = merge_boxes(all_boxes, all_scores, group, quads=all_quads)
        # boxes are clipped to the image; quads are not (clipping a rotated rectangle's corners
        # one by one would cut into it): covering clips them when it rasterises
        return Detections(all_boxes, all_scores, (), all_quads).clip(w, h).sorted_by_score()

    def closer_look(self, image: np.ndarray) -> Detections:
        """Lines for a reader to confirm on an image too noisy for the passes (`NOISY_TEXTURE`):
        one pass over the whole image at `CLOSER_SCALE` x the first pass's scale, in tiles. On
        EM grain DB's map is 0 on 7-12 px labels at 1x-2.5x, and at 3x it boxes most of them,
        among a hundred or more boxes of grain (README: the noisy-image audit), which is why the
        audit reads each and covers only what reads as text."""
        return self._plain_pass(scales=(CLOSER_SCALE,), full_view=False).detect_one(image)

    def contrast_look(self, image: np.ndarray) -> Detections:
        """Lines for a reader to confirm where the picture's contrast is low: one plain pass at
        the first pass's scale over `contrast_view` of the image. DB's map is 0 on a translucent
        grey "DO NOT COPY" 45 levels off a beige micrograph, a "© Lab 2024" over dark
        fluorescence, a faint "1 nm", all plain to a viewer; on the view they are lines. It also
        boxes amplified texture, which is why `redact --verify` reads each line and covers only
        what reads as text (README: the contrast look)."""
        return self._plain_pass(scales=self.config.scales[:1]).detect_one(contrast_view(image))

    def _plain_pass(self, **changes: Any) -> "PPOCRDetector":
        """This detector's network and thresholds with one pass of DB and none of the passes
        beyond it (large text, edge strips, colour, faint and crossed text): the looks whose
        lines a reader confirms. `changes`: other `PPOCRConfig` fields (its scale, tiling)."""
        return self.with_options(**{"refine": "image", "large_text_side": 0, "edge_strip": 0, "colour_text": 0,
                                    "faint_text": 0, "crossed_text": 0.0, **changes})

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return [self.detect_one(im) for im in images]


def _scales(value: object) -> tuple[float, ...]:
    """`scales` as given (`-o scales=2`, `scales=1,2`, a list): a tuple of floats, or ValueError."""
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(float(x) for x in items)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"scales must be numbers, got {value!r}") from None


def _not_inside(b: np.ndarray, found: np.ndarray | None) -> np.ndarray:
    """The xyxy boxes `b` whose centre lies in none of the `found` boxes."""
    return b[~centre_inside(b, found)]


# A strip's find its inner side cuts, which no first-pass box holds, is followed inward: a
# window from the edge this many x its thickness past the strip (a label's line runs on).
EDGE_RUN_ON = 8.0


def _run_on_windows(side: str, boxes: np.ndarray, thickness: np.ndarray, depth: int, w: int, h: int
                    ) -> list[tuple[int, int, int, int]]:
    """Integer xyxy windows, from the `side` edge of a w x h image, that follow `boxes` (xyxy,
    cut by a strip `depth` px deep) inward: `EDGE_RUN_ON` x their `thickness` past the strip,
    their thickness wider on both sides along the edge; overlapping ones joined (one run each)."""
    wins: list[list[int]] = []
    for (x0, y0, x1, y1), t in zip(boxes, thickness):
        reach, m = int(depth + EDGE_RUN_ON * t), int(np.ceil(t))
        if side in ("left", "right"):
            a, b = max(0, int(y0) - m), min(h, int(np.ceil(y1)) + m)
            win = [0, a, min(w, reach), b] if side == "left" else [max(0, w - reach), a, w, b]
        else:
            a, b = max(0, int(x0) - m), min(w, int(np.ceil(x1)) + m)
            win = [a, 0, b, min(h, reach)] if side == "top" else [a, max(0, h - reach), b, h]
        for other in [o for o in wins if o[0] < win[2] and win[0] < o[2] and o[1] < win[3] and win[1] < o[3]]:
            wins.remove(other)
            win = [min(win[0], other[0]), min(win[1], other[1]), max(win[2], other[2]), max(win[3], other[3])]
        wins.append(win)
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in wins]


# `colour_view`: coloured marks on a grey image cover at most this share of it (more is a
# picture in colour, which DB sees as brightness), and a view is worth a pass with at least
# this many pixels of coloured strokes (a word, not JPEG fringes)
COLOUR_MAX_SHARE = 0.2
COLOUR_MIN_PIXELS = 64
COLOUR_MAX_STROKE = 9   # px: coloured areas at least this wide everywhere are not ink
COLOUR_MIN_ASPECT = 2.0   # its finds kept: this many times as long as tall (words, not dots)
COLOUR_MIN_EDGES = 28     # ... holding strokes: this mean edge strength in the view (see `_colour_pass`)
COLOUR_MARGIN = 32   # image px of context around the coloured marks (DB needs some)


# `contrast_view`: CLAHE on the grey picture (OpenCV's default clip of 40 amplifies texture into
# lines; 3 shows translucent watermarks and faint labels to DB: forty-third session)
CONTRAST_CLIP = 3.0
CONTRAST_TILES = 8


def contrast_view(rgb: np.ndarray) -> np.ndarray:
    """The uint8 (H, W, 3) picture's grey, its local contrast equalised (CLAHE, `CONTRAST_CLIP`
    over `CONTRAST_TILES` x `CONTRAST_TILES` tiles), as RGB: text a few tens of levels off a
    smooth background is as dark as any ink there."""
    import cv2

    arr = np.asarray(rgb)
    grey = arr if arr.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY)
    eq = cv2.createCLAHE(CONTRAST_CLIP, (CONTRAST_TILES, CONTRAST_TILES)).apply(np.ascontiguousarray(grey))
    return np.ascontiguousarray(np.stack([eq] * 3, axis=-1))


def colour_view(bgr: np.ndarray, min_chroma: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """A grey image's coloured marks as black ink on white, cropped to the xyxy window that holds
    them with `COLOUR_MARGIN` of context, as BGR; None when the image is not grey (its median
    chroma, after a 3x3 blur so sensor noise is not colour, above half of `min_chroma`) or has
    no coloured strokes (pixels `min_chroma` above that median, `COLOUR_MIN_PIXELS` of them in
    strokes narrower than `COLOUR_MAX_STROKE`, on at most `COLOUR_MAX_SHARE` of the image). A
    semi-transparent purple watermark over a micrograph differs from it by little brightness and
    30-45 chroma: black on white here.
    """
    import cv2

    b, g, r = cv2.split(cv2.blur(bgr, (3, 3)))   # per-channel sensor noise is not colour
    chroma = cv2.subtract(cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r))
    floor = _u8_percentile(chroma, 0.5)   # the background's own chroma
    t = int(min_chroma)
    if t < 1:
        raise ValueError(f"min_chroma must be 1-255, got {min_chroma}")
    if floor > t // 2:   # a colour image: DB sees its colours as brightness already
        return None
    marks = (chroma >= floor + t).astype(np.uint8)
    n = int(np.count_nonzero(marks))
    if n < COLOUR_MIN_PIXELS or n > COLOUR_MAX_SHARE * marks.size:
        return None
    # strokes, not areas: a fluorescent cell or a red car is wider than a letter's stroke
    kernel = np.ones((COLOUR_MAX_STROKE, COLOUR_MAX_STROKE), np.uint8)
    strokes = marks & (1 - cv2.morphologyEx(marks, cv2.MORPH_OPEN, kernel))
    if int(np.count_nonzero(strokes)) < COLOUR_MIN_PIXELS:
        return None
    ys, xs = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))   # no index per pixel
    h, w = marks.shape
    x0, y0 = max(0, int(xs[0]) - COLOUR_MARGIN), max(0, int(ys[0]) - COLOUR_MARGIN)
    x1, y1 = min(w, int(xs[-1]) + 1 + COLOUR_MARGIN), min(h, int(ys[-1]) + 1 + COLOUR_MARGIN)
    # white up to half the step above the background, black at the step and a half: its noise
    # must stay white (amplified, it made DB box 481 "words" on one generated micrograph)
    ink = 255 - cv2.convertScaleAbs(cv2.subtract(chroma[y0:y1, x0:x1], floor + t // 2), alpha=255.0 / t)
    return cv2.cvtColor(ink, cv2.COLOR_GRAY2BGR), (x0, y0, x1, y1)


def _words_with_strokes(q: np.ndarray, s: np.ndarray, view: np.ndarray, at: tuple[int, int],
                        min_aspect: float = COLOUR_MIN_ASPECT) -> tuple[np.ndarray, np.ndarray]:
    """Of a made-up view's finds (quads `q` in image px, scores `s`; `view` is the BGR window at
    image offset `at`), the words holding strokes: at least `min_aspect` times as long as tall
    (a star field's coloured dots, a page's specks are boxed one by one) and a mean edge
    strength in the view of at least `COLOUR_MIN_EDGES` (DB boxed the smooth blue of a shadow on
    a wall and two pale arrow outlines in the devset's photos: 5-20; faint watermarks' boxes
    32-37, others more)."""
    if not len(q):
        return q, s
    _, _, eu, ev = quad_frames(q)
    keep = (eu[:, 1] - eu[:, 0]) >= min_aspect * (ev[:, 1] - ev[:, 0])
    if not keep.any():
        return q[keep], s[keep]
    grad = _edges(view)
    vh, vw = view.shape[:2]
    for i in np.flatnonzero(keep):
        m = quads_mask(q[i:i + 1] - np.array(at), vw, vh)
        keep[i] = m.any() and grad[m].mean() >= COLOUR_MIN_EDGES
    return q[keep], s[keep]


CROSSED_MIN_AREA = 64   # map px: a smaller component is no line, crossed or not
CROSSED_CELL = 3.0      # a crossed component is cut in square cells of this many times its thickness


def _crossed_pieces(prob: np.ndarray, post: Any, min_score: float, dest: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Quads (N,4,2) in `dest` (h, w) px and scores of the components of the first pass's
    probability map `prob` (float, or a tiled pass's uint8) that `post` (rapidocr's DB
    post-process) drops although they are text: their own pixels average `min_score` or more,
    their rectangle scores under `box_thresh`. Two lines that cross (a watermark over a sign)
    make such a component, an X whose rectangle is mostly background. Each is cut in square
    cells `CROSSED_CELL` times its thickness (2 x area / perimeter), and `post` boxes the pieces
    as it boxes any line, so they cover both."""
    import cv2

    if prob.dtype == np.uint8:   # a tiled pass's stitched map (0-255)
        prob = prob.astype(np.float32) / 255.0
    bitmap = cv2.dilate((prob > post.thresh).astype(np.uint8), np.ones((2, 2), np.uint8))   # as `post` does
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
    # candidates at once: confident, and with so little of their bounding box that DB's
    # rectangle (inside that box, around all of them) may score under box_thresh
    mass = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)
    area, bbox = stats[:, 4], stats[:, 2] * stats[:, 3]
    candidates = (area >= CROSSED_MIN_AREA) & (mass >= min_score * area) & (mass < post.box_thresh * bbox)
    candidates[0] = False
    cut = np.zeros_like(bitmap)
    for i in np.flatnonzero(candidates):
        x, y, cw, ch = (int(v) for v in stats[i, :4])
        comp = (labels[y:y + ch, x:x + cw] == i).astype(np.uint8)
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea) + np.array([x, y], np.int32)
        if post.box_score_fast(prob, post.get_mini_boxes(outline)[0].reshape(-1, 2)) >= post.box_thresh:
            continue   # DB keeps it
        cell = max(8, int(round(CROSSED_CELL * 2 * area[i] / max(1.0, cv2.arcLength(outline, True)))))
        comp[::cell] = 0      # cut along the cells' edges: each piece is a contour of its own
        comp[:, ::cell] = 0
        cut[y:y + ch, x:x + cw] |= comp
    if not cut.any():
        return np.zeros((0, 4, 2)), np.zeros((0,))
    quads, scores = post.boxes_from_bitmap(prob, cut, dest[1], dest[0])
    return np.asarray(quads, np.float64).reshape(-1, 4, 2), np.asarray(scores, np.float64).reshape(-1)


def _glyph_row(marks: np.ndarray, tall: float) -> bool:
    """Whether a short find's marks (bool, the find's own) are glyphs side by side: two specks
    or more, each at least `FAINT_GLYPH_HEIGHT` of the find's height (and 10 px) tall, of like
    heights (within 1.6x), on one row (their spans overlapping by half) and at most their own
    height apart. A faint "42" or "A1" is; a scan's speckle, a dot, a tick mostly is not."""
    import cv2

    ys, xs = np.nonzero(marks)
    if len(ys) == 0:
        return False
    crop = marks[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    _, _, st, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    st = st[1:]
    st = st[st[:, 3] >= max(10.0, FAINT_GLYPH_HEIGHT * tall)]
    st = st[np.argsort(st[:, 0])]
    for a, b in zip(st[:-1], st[1:]):
        ha, hb = float(a[3]), float(b[3])
        overlap = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        gap = b[0] - (a[0] + a[2])
        if max(ha, hb) <= 1.6 * min(ha, hb) and overlap >= 0.5 * min(ha, hb) and gap <= max(ha, hb):
            return True
    return False


def _cell_grid(boxes: np.ndarray, cell: int, w: int, h: int) -> np.ndarray:
    """The (rows, cols) bool grid of `cell`-px cells of a w x h image in which the centre of
    some xyxy box lies."""
    gw, gh = -(-w // cell), -(-h // cell)
    grid = np.zeros((gh, gw), bool)
    if len(boxes):
        b = np.asarray(boxes, np.float64)
        cx = np.clip(((b[:, 0] + b[:, 2]) / 2 // cell).astype(int), 0, gw - 1)
        cy = np.clip(((b[:, 1] + b[:, 3]) / 2 // cell).astype(int), 0, gh - 1)
        grid[cy, cx] = True
    return grid


def _mask_grid(mask: np.ndarray, cell: int) -> np.ndarray:
    """The (rows, cols) bool grid of `cell`-px cells of a bool (H, W) mask that hold some of it."""
    h, w = mask.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((gh * cell, gw * cell), bool)
    padded[:h, :w] = mask
    return padded.reshape(gh, cell, gw, cell).any(axis=(1, 3))


def _row_windows(grid: np.ndarray, cell: int, margin: int, w: int, h: int) -> np.ndarray:
    """Integer xyxy windows: one per run of marked cells in a row of `grid`, with `margin` px of
    context (no union rectangles: a pass's cost follows the marked area)."""
    wins = []
    for gy in range(grid.shape[0]):
        row = np.concatenate([[False], grid[gy], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(row))
        for a, e in zip(edges[::2], edges[1::2]):
            wins.append([max(0, a * cell - margin), max(0, gy * cell - margin),
                         min(w, e * cell + margin), min(h, (gy + 1) * cell + margin)])
    return np.asarray(wins, np.int64).reshape(-1, 4)


# `faint_view`: a page has this share of its pixels flat paper (within 2 levels of its paper after
# a 3x3 blur) ...
FAINT_PAGE_SHARE = 0.5
FAINT_LOCAL = 25     # ... the paper's local level: a median over this many px (letters' strokes do not move it)
FAINT_LEVEL_SHARE = 0.05   # ... at levels that each hold this share of the image (a photo's levels drift)
# faint marks lie this many levels off the paper (1-2 is JPEG and scanner noise; more than the
# most is ordinary ink, which DB sees), at least this far (px) from ordinary ink (its
# anti-aliasing and JPEG ringing are a few levels off the paper too), in specks of this many px
FAINT_MIN_STEP = 3
FAINT_MAX_STEP = 48
FAINT_CLEAR = 3
FAINT_MIN_AREA = 16
FAINT_MIN_ASPECT = 1.0   # its finds kept: this many times as long as tall (a faint "42", "A1")
FAINT_GLYPH_HEIGHT = 0.4   # ... a short one's glyphs: each this share of its height (see `_glyph_row`)
FAINT_MAX_SEEN = 0.25   # a find this much inside quads found already is that ink, shown fatter
FAINT_CELL = 192     # marks choose cells of this size; each row run of them is a window ...
FAINT_MARGIN = 32    # ... with this much context


def _paper(grey: np.ndarray, smooth: np.ndarray, page: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local level, paper level, distance of the 3x3-blurred picture from the paper): the paper
    is the page's commonest grey, or, where the level around a pixel (a `window`-px median)
    differs from it (a grey table cell or band, a vignetted or shaded scan), that level."""
    import cv2

    local = cv2.medianBlur(grey, window)
    paper = np.where(cv2.absdiff(local, np.full_like(local, page)) <= 2, np.uint8(page), local)
    return local, paper, cv2.absdiff(smooth, paper)


def _is_page(grey: np.ndarray, smooth: np.ndarray, page: int, window: int) -> bool:
    """Whether most of the picture is flat paper (`FAINT_PAGE_SHARE`, within 2 levels of its
    paper) at a few levels (white, a grey table, a noisy scan's grey), each holding
    `FAINT_LEVEL_SHARE` of it; a photo's levels drift, and its flat parts (a sky, a wall) hold
    too little."""
    local, paper, off = _paper(np.ascontiguousarray(grey), np.ascontiguousarray(smooth), page, window)
    band = np.convolve(np.bincount(local.ravel(), minlength=256), np.ones(5), mode="same")
    levels = band >= FAINT_LEVEL_SHARE * grey.size
    return np.count_nonzero((off <= 2) & levels[paper]) >= FAINT_PAGE_SHARE * grey.size


def faint_view(bgr: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A page's distance from its paper as black ink on white (white at the paper's own level
    and its noise, black from `step` levels off it, BGR), the bool mask of its faint marks, and
    the xyxy windows that hold them; None when the image is not a page or has no such marks (see
    `faint_text`). Text at 244 on a white page of black text is plain black here, and so is
    text at 227 in a table row shaded 235."""
    import cv2

    if not 1 <= int(step) <= 255:
        raise ValueError(f"step must be 1-255, got {step}")
    grey = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    page = int(np.bincount(grey.ravel(), minlength=256).argmax())
    smooth = cv2.blur(grey, (3, 3))
    # a page (decided at half size: most images are none, and the median is the check's cost)
    if not _is_page(grey[::2, ::2], smooth[::2, ::2], page, FAINT_LOCAL // 2 | 1):
        return None
    _, paper, off = _paper(grey, smooth, page, FAINT_LOCAL)
    # the paper's own noise (a scan's grain: the 75th percentile off the paper of what is not
    # ordinary ink, after the 3x3 blur) raises the step marks must clear, and a noisy paper is
    # shown blurred
    noise = _u8_percentile(off[off <= FAINT_MAX_STEP], 0.75)
    least = max(FAINT_MIN_STEP, noise + FAINT_MIN_STEP)
    # ordinary ink, before the blur too: a 1 px ruled line at 189 is 22 levels off after it, and
    # its band of "marks" swallowed the faint words written on it
    strong = ((off > FAINT_MAX_STEP) | (cv2.absdiff(grey, paper) > FAINT_MAX_STEP)).astype(np.uint8)
    clear = 1 - cv2.dilate(strong, np.ones((2 * FAINT_CLEAR + 1, 2 * FAINT_CLEAR + 1), np.uint8))
    marks = ((off >= least) & (strong == 0)).astype(np.uint8) & clear
    _, labels, stats, _ = cv2.connectedComponentsWithStats(marks, connectivity=8)
    keep = (stats[:, 4] >= FAINT_MIN_AREA) & (stats[:, 3] >= 4)
    keep[0] = False
    if not keep.any():
        return None
    # the cells every kept speck touches, not only its centre's: a long one (a faint rule with
    # words touching it) reaches cells its centre does not
    wins = _row_windows(_mask_grid(keep[labels], FAINT_CELL), FAINT_CELL, FAINT_MARGIN, w, h)
    raw = cv2.absdiff(grey if least == FAINT_MIN_STEP else smooth, paper)
    floor = least - FAINT_MIN_STEP + 1   # white up to the noise, black `step` levels past it
    ink = 255 - cv2.convertScaleAbs(cv2.subtract(raw, floor), alpha=255.0 / max(1, int(step) - 1))
    return cv2.cvtColor(ink, cv2.COLOR_GRAY2BGR), marks.astype(bool), wins


def _edges(bgr: np.ndarray) -> np.ndarray:
    """The uint8 edge strength of a BGR (or already grey) image: the 3x3 morphological gradient
    of its grey."""
    import cv2

    grey = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))


# An image this textured (`texture_level`) hides small text from `small_text_windows`: its
# strokes must beat twice that (128 of 255) in a 3x3 neighbourhood to count, and white 7-12 px
# labels on electron-micrograph grain (texture 123) do not; nor does DB's map show them at any
# scale (README: small text on heavy grain). The devset's photos, forms and receipts are at most
# 47, the generated JPEG and TIFF throughput sets at most 45.
NOISY_TEXTURE = 64
CLOSER_SCALE = 3.0   # `closer_look`'s pass: 7-12 px grain labels are 21-36 px there


def texture_level(bgr: np.ndarray) -> int:
    """The image's own noise or texture level, 0-255: the 75th percentile of its 3x3 edge
    strength, the bar (doubled) strokes must clear to count as small text. BGR, or its grey."""
    return _texture(_edges(bgr))


def _texture(grad: np.ndarray) -> int:
    """`texture_level` of an image whose `_edges` are at hand."""
    return _u8_percentile(grad, 0.75)


def _u8_percentile(a: np.ndarray, q: float) -> int:
    """The `q` quantile (0-1) of a uint8 array, from its histogram: the image's own noise or
    texture level of an edge map (0.75), its background's chroma (0.5)."""
    hist = np.cumsum(np.bincount(a.ravel(), minlength=256))
    return int(np.searchsorted(hist, q * hist[-1]))


def _runs_on(grad: np.ndarray, found: np.ndarray, max_height: float, reach: float,
             floor: float = 8.0) -> list[tuple[float, float, float, float, int]]:
    """Where the lines of small first-pass boxes may run on: for each `found` box at most
    `max_height` tall and each side (-1 left, +1 right) whose next stretch (twice the box's
    height) has stroke-like edges, the xyxy strip `reach` x its height long on that side.
    Stroke-like: at least a third of the stretch's columns hold an edge (`grad`, the
    morphological gradient) half as strong as the box's own strokes (their 90th percentile) and
    at least `floor` (twice the image's texture level), so a flat or noisy background beside a
    word does not count and a line that goes on over another background does (a white date
    half on tissue, half on white)."""
    h, w = grad.shape
    out = []
    for x0, y0, x1, y1 in found:
        bh = y1 - y0
        if bh > max_height or bh < 2:
            continue
        ya, yb = max(0, int(y0)), min(h, int(np.ceil(y1)))
        inside = grad[ya:yb, max(0, int(x0)):min(w, int(np.ceil(x1)))]
        if yb <= ya or not inside.size:
            continue
        strong = max(floor, 8.0, 0.5 * float(np.percentile(inside, 90)))
        for side in (-1, 1):
            a, b = (x0 - 2 * bh, x0) if side < 0 else (x1, x1 + 2 * bh)
            stretch = grad[ya:yb, max(0, int(a)):min(w, int(np.ceil(b)))]
            if stretch.shape[1] < 2 or (stretch >= strong).any(axis=0).mean() < 1 / 3:
                continue
            out.append((x0 - reach * bh, y0, x0, y1, side) if side < 0 else (x1, y0, x1 + reach * bh, y1, side))
    return out
