"""What an OCR engine can still read in an image: the legibility audit and the *leak* metric.

Redaction is judged by what a viewer can read in the output, not by what a detector found:
a detector run again on the same blind pixels passes the same leak twice. So the audit runs
the PP-OCRv4 recogniser that ships inside the `rapidocr-onnxruntime` wheel (its own DB
detector finds lines, the CRNN reads them; nothing is downloaded) over every view a viewer
may show (`imaging.visible_views`), and reports strings of at least `min_chars` letters or
digits outside the covered areas.

The leak metric (`leaked_words`) counts ground-truth texts (words, or lines with one word or
more) that such a reading still spells out, in whole or one word of them, at their place.
OCR reads only what its own detector finds, and that detector is DB, the network `redact`
runs: text DB cannot see (a blurred sign, a faint watermark on noise) is neither covered nor
counted. `legible_in_place` is the stricter judge, a viewer who knows where to look: the
recogniser alone reads each ground-truth text's own crop, before and after.
"""

from __future__ import annotations

import copy
import difflib
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.boxes import inside_fraction, quad_thickness
from pipeline.io import LRU, array_digest

# What reads, and how: outputs audited by another version are audited again. 2: images longer
# than RapidOCR's 2000 px (at 1x, or 2x) are read in tiles, not shrunk; the image's edge is
# repeated around what is read. 3: the 2x read on images of any size (it stopped at 1600 px: a
# 9 px "ID 48213" on a 3200 px micrograph, legible to a viewer who zooms in, went unread).
# 4: the audit reads on beyond each cover's ends (`Reader.read_on`).
READER_VERSION = "ppocr-v4-rec.4"
DEFAULT_MIN_CHARS = 3
DEFAULT_MIN_SCORE = 0.5
# The audit reads this many line heights beyond each end of a cover (`Reader.read_on`): the rest
# of a line the detector boxed only in part
RUN_ON = 4.0
# ... where its first NEAR_RUN_ON heights hold ink: grey levels off the cover spanning at least
# BLANK_RANGE (1st-99th percentile; a receipt's blank paper spans 13-17 in JPEG noise)
NEAR_RUN_ON, BLANK_RANGE = 1.5, 24.0
# ... and what it reads there counts from this confidence: beside covers on EM grain the grain
# read as "8888" and "88388" at 0.53-0.58, the rests of labels ("Fi" of "Fig. 3") at 0.62-0.97
READ_ON_MIN_SCORE = 0.6
IN_PLACE_MARGIN = 0.25   # the crop `legible_in_place` reads: the text's rectangle grown by this x its height
COVERED_INSIDE = 0.5     # a reading whose box lies this much inside the fill does not count (`legible`)
MIN_READ_SIDE = 32             # short side (px) the reader pads a thin strip to, after its 2000 px cap
READ_MAX_SIDE = 2000           # RapidOCR shrinks a longer input to this (`max_side_len`) ...
READ_OVERLAP = 200             # ... so a larger image is read at 1x in tiles this much overlapping
READ_EDGE_BORDER = 32          # px of the image's edge repeated outside it for the reader (see `_read_once`)
MEMO_SIZE = 8192               # crops whose readings a reader remembers (`_RecognitionMemo`; ~2 KB each)
TILE_MEMO_SIZE = 64            # images (or tiles) whose OCR a reader remembers (`_ocr_bgr`)


@dataclass(frozen=True)
class Reading:
    """One line the recogniser read: its text, confidence, xyxy box (pixels), the view, and the
    line's height along its own short side (`thickness`; its box's short side when unknown)."""

    text: str
    score: float
    box: tuple[float, float, float, float]
    view: int = 0
    thickness: float | None = None

    @property
    def height(self) -> float:
        """The read line's height: a turned line's box is taller than the line."""
        return self.thickness if self.thickness is not None else min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def as_dict(self, masked: bool = False) -> dict[str, object]:
        """`masked`: the text as `mask_text` shows it (what an audit trail may keep)."""
        d = asdict(self)
        d["score"] = round(self.score, 4)
        d["box"] = [round(v, 1) for v in self.box]
        if self.thickness is not None:
            d["thickness"] = round(self.thickness, 1)
        if masked:
            d["text"] = mask_text(self.text)
        return d


def mask_text(text: str) -> str:
    """What the audit trail keeps of a string OCR read: its first and last character and its
    length ("S...h (5)"). The sidecars, logs and summaries of a redaction are shared with its
    outputs; the words it removed (a patient's name the audit found and covered) must not be
    in them. Short strings keep nothing but their length."""
    t = " ".join(str(text).split())
    return f"{t[0]}...{t[-1]} ({len(t)})" if len(t) >= 5 else f"... ({len(t)})"


def normalise(text: str) -> str:
    """Letters and digits only, lower case: how leaked strings are compared."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def meaningful(text: str, min_chars: int = DEFAULT_MIN_CHARS) -> bool:
    return len(normalise(text)) >= min_chars


class Reader:
    """PP-OCRv4 detection + recognition from the rapidocr wheel; one ONNX session set per
    instance, calls serialised (each already uses every thread it is given)."""

    name = "ppocr-rec"
    version = READER_VERSION

    def __init__(self, min_chars: int = DEFAULT_MIN_CHARS, min_score: float = DEFAULT_MIN_SCORE,
                 scales: Sequence[float] = (1.0, 2.0), threads: int = 2) -> None:
        """Reads at each of `scales`, on images of any size (2x: small text a viewer reads by
        zooming in; it once stopped at 1600 px, and a 9 px label on a 3200 px micrograph went
        unread). The OCR engine is built on first use: `redact` holds a reader for the images
        it audits by default (too noisy for the detector's small-text search) and most runs
        have none."""
        if min_chars < 1:
            raise ValueError(f"min_chars must be >= 1, got {min_chars}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {tuple(scales)}")
        self.min_chars, self.min_score = int(min_chars), float(min_score)
        self.scales = tuple(float(s) for s in scales)
        self._threads = int(threads)
        self._ocr: Any = None
        self._lock, self._build_lock = threading.Lock(), threading.Lock()
        self._tiles = LRU(TILE_MEMO_SIZE)   # OCR of whole inputs, by their bytes (under `_lock`)

    def _engine(self) -> Any:
        """RapidOCR, built the first time something is read."""
        if self._ocr is None:
            with self._build_lock:
                if self._ocr is None:
                    from rapidocr_onnxruntime import RapidOCR

                    # det box_thresh low: a faint line is still worth trying to read; the
                    # reading's own confidence decides. text_score 0: we filter on min_score.
                    ocr = RapidOCR(intra_op_num_threads=self._threads, inter_op_num_threads=1,
                                   det_box_thresh=0.3, text_score=0.0, print_verbose=False)
                    ocr.text_rec = _RecognitionMemo(ocr.text_rec)   # what its pipeline calls, and `_recognise`
                    self._ocr = ocr
        return self._ocr

    def _read_once(self, rgb: np.ndarray, scale: float) -> list[tuple[str, float, np.ndarray]]:
        """(text, confidence, quad in `rgb` px) of every line read at `scale`. RapidOCR shrinks
        an input longer than `READ_MAX_SIDE`: a 4000 px image would be read at half size, its
        small text unreadable there and legible to a viewer who zooms in (and the 2x read of a
        1600 px image at 1.25x). So a larger input is read in overlapping tiles."""
        import cv2

        from pipeline.detectors.tiling import Tiler, edge_border

        bgr = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2BGR)
        if scale != 1.0:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        h, w = bgr.shape[:2]
        side = READ_MAX_SIDE - 2 * READ_EDGE_BORDER   # what RapidOCR takes whole, with the border
        tiled = max(h, w) > side
        out = []
        for (x0, y0, x1, y1) in Tiler(side, READ_OVERLAP).windows(w, h) if tiled else [(0, 0, w, h)]:
            # DB sees no background beyond the image's edge: a label the edge cuts went unread on
            # a 2400 px micrograph, and is read with the edge's pixels repeated outside it
            t, b, le, r = edge_border((x0, y0, x1, y1), w, h, READ_EDGE_BORDER)
            view = cv2.copyMakeBorder(bgr[y0:y1, x0:x1], t, b, le, r, cv2.BORDER_REPLICATE)
            out += [(text, sc, (q + (x0 - le, y0 - t)) / scale) for text, sc, q in self._ocr_bgr(view)]
        return out

    def _ocr_bgr(self, bgr: np.ndarray) -> list[tuple[str, float, np.ndarray]]:
        """RapidOCR's (text, confidence, quad in `bgr` px) for one BGR image, as it reads it."""
        import cv2

        # RapidOCR shrinks the long side to 2000 px and rounds sides to 32: a strip 30 px tall
        # and 4000 long would round to 0 and raise. Grow the short side (edge pixels repeated,
        # below/right, so reading coordinates are unchanged) until it survives.
        h, w = bgr.shape[:2]
        need = max(MIN_READ_SIDE, math.ceil(max(h, w) / READ_MAX_SIDE * 2 * MIN_READ_SIDE))
        if min(h, w) < need:
            bgr = cv2.copyMakeBorder(bgr, 0, max(0, need - h), 0, max(0, need - w), cv2.BORDER_REPLICATE)
        # its DB then scales the short side up to 736 px: a wide strip it first pads to a quarter
        # of its width, a tall one it does not, and a 66 x 1968 column became a 736 x 21952 input
        # (a minute for a blank 2 px sliver). Pad a tall one as it pads a wide one.
        h, w = bgr.shape[:2]
        if h > 8 * w:
            bgr = cv2.copyMakeBorder(bgr, 0, 0, 0, math.ceil(h / 4) - w, cv2.BORDER_REPLICATE)
        key = array_digest(bgr)   # an audit's later round: the tiles no new cover reached come from memory
        with self._lock:
            out = self._tiles.get(key)
            if out is None:
                res, _ = self._engine()(bgr, use_cls=False, use_det=True, use_rec=True)
                out = [(str(text), float(score), np.asarray(quad, dtype=np.float64).reshape(-1, 2))
                       for quad, text, score in res or []]
                for _, _, q in out:
                    q.setflags(write=False)   # shared with later callers: changing one in place raises
                self._tiles.put(key, out)
        return list(out)

    def read(self, rgb: np.ndarray, view: int = 0) -> list[Reading]:
        """Lines read in one uint8 RGB image (all of them, whatever their length or score)."""
        h, w = rgb.shape[:2]
        readings: list[Reading] = []
        for s in self.scales:
            for text, score, q in self._read_once(rgb, s):
                box = (float(max(0.0, q[:, 0].min())), float(max(0.0, q[:, 1].min())),
                       float(min(w, q[:, 0].max())), float(min(h, q[:, 1].max())))
                readings.append(Reading(text, score, box, view, float(quad_thickness(q[None])[0])))
        return readings

    def read_lines(self, rgb: np.ndarray, quads: np.ndarray, view: int = 0,
                   margin: float = IN_PLACE_MARGIN, covered: np.ndarray | None = None) -> list[Reading]:
        """Readings of lines someone else found (quads (N, 4, 2) in `rgb` px): the recogniser on
        each quad grown by `margin` x its height, as the in-place judge reads a text's crop. The
        audit reads lines this way where OCR's own detector finds none (the detector's closer
        look at a noisy image and contrast look: `PPOCRDetector.closer_look`, `contrast_look`).
        `covered` (bool mask): lines whose box is `COVERED_INSIDE` covered are not read, as
        `legible` would not count their readings (a form's contrast look holds every line)."""
        from pipeline.boxes import grow_quads, quad_to_xyxy

        q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
        h, w = rgb.shape[:2]
        if len(q) and covered is not None:
            q = q[inside_fraction(np.clip(quad_to_xyxy(q), 0, [w, h, w, h]), covered, empty=0.0) < COVERED_INSIDE]
        if not len(q):
            return []
        boxes = np.clip(quad_to_xyxy(q), 0, [w, h, w, h])
        thick = quad_thickness(q)
        return [Reading(text, score, tuple(float(v) for v in b), view, float(t))
                for (text, score), b, t in zip(self.read_quads(rgb, grow_quads(q, 0.0, margin)), boxes, thick)]

    def read_boxes(self, rgb: np.ndarray, boxes: np.ndarray) -> list[tuple[str, float]]:
        """(text, confidence) of the recogniser alone on each xyxy box's crop: "does this box
        hold one readable piece of text?", the question a label box or an unlabelled detection
        answers for label-noise scoring. A crop at least 1.5x taller than wide is read turned
        (as PP-OCR turns its vertical lines); a box with no pixel in the image reads ("", 0.0)."""
        h, w = rgb.shape[:2]
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        crops, where = [], []
        for i, (x0, y0, x1, y1) in enumerate(b):
            x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
            x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1, 2::-1])  # RGB -> BGR, as the session expects
            if crop.shape[0] >= 1.5 * crop.shape[1]:
                crop = np.ascontiguousarray(np.rot90(crop))
            crops.append(crop)
            where.append(i)
        return [r[:2] for r in self._recognise(crops, where, len(b))]

    def read_quads(self, rgb: np.ndarray, quads: np.ndarray) -> list[tuple[str, float]]:
        """(text, confidence) of the recogniser alone on each quad's crop, warped upright along
        its long side (a 30-degree watermark is read as a line, as PP-OCR reads its rotated
        boxes); the image's edge is repeated where a quad reaches past it."""
        from pipeline.boxes import oriented_rects

        rects = oriented_rects(np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2))
        crops, where = _upright_crops(rgb, rects)
        return [r[:2] for r in self._recognise(crops, where, len(rects))]

    def read_on(self, rgb: np.ndarray, shapes: np.ndarray, covered: np.ndarray | None = None, view: int = 0,
                length: float = RUN_ON) -> list[Reading]:
        """What covered lines run on into: the recogniser on a strip beyond each end of each of
        `shapes` (the covered rectangles, (N,4,2)), as tall as it and `length` x its height long
        along its own axis. Each reading's box runs from the cover to just past its outermost
        character (CTC's columns), so covering it joins the cover. A line's end that no detector
        finds is read where it lies: "Acquired 20." covered on an EM micrograph, its grey italic
        "08.18 14:37" on the grain after it was read in place ("08.814.27" at 0.92), which neither
        the passes nor OCR's own detector found. A strip stops at the next cover; blank ones are not read;
        readings under `READ_ON_MIN_SCORE` are dropped (grain beside a cover reads as digits)."""
        from pipeline.boxes import end_strips, quad_to_xyxy, strip_part, to_int_pixels

        h, w = rgb.shape[:2]
        strips, lengths, thick = end_strips(shapes, length, w, h, covered)
        use = lengths >= np.maximum(thick, 2.0)    # room for a character or two
        for i in np.flatnonzero(use):   # a line goes on within a word's gap of its cover, or not at all
            near = strip_part(strips[i], lengths[i], after=i % 2 == 0, a=0.0, b=NEAR_RUN_ON * thick[i])
            x0, y0, x1, y1 = to_int_pixels(quad_to_xyxy(near[None]), w, h)[0]
            crop = np.asarray(rgb[y0:y1, x0:x1], np.float64)
            gray = crop[..., :3].mean(axis=2) if crop.ndim == 3 else crop
            if covered is not None:
                gray = gray[~covered[y0:y1, x0:x1]]
            lo, hi = np.percentile(gray, (1, 99)) if gray.size else (0.0, 0.0)
            use[i] = hi - lo >= BLANK_RANGE
        idx = np.flatnonzero(use)
        crops, where = _upright_crops(rgb, strips[idx])
        out = []
        for k, (text, score, cols) in enumerate(self._recognise(crops, where, len(idx), columns=True)):
            if not text or cols is None or score < READ_ON_MIN_SCORE:
                continue
            i, t = idx[k], thick[idx[k]]
            first, last = cols   # from the cover to just past the character furthest from it
            reach = (last if i % 2 == 0 else 1.0 - first) * lengths[i] + 0.25 * t
            rect = strip_part(strips[i], lengths[i], after=i % 2 == 0, a=0.0, b=reach)
            box = np.clip(quad_to_xyxy(rect[None])[0], 0, [w, h, w, h])
            out.append(Reading(text, score, tuple(float(x) for x in box), view, float(t)))
        return out

    def _recognise(self, crops: list[np.ndarray], where: list[int], n: int, columns: bool = False
                   ) -> list[tuple[str, float, tuple[float, float] | None]]:
        """The recogniser on BGR `crops` (of items `where` of `n`); ("", 0.0, None) for the
        others. With `columns`, each reading's first character's start and last character's
        end as shares of its crop's width (CTC's output columns), else None."""
        out: list[tuple[str, float, tuple[float, float] | None]] = [("", 0.0, None)] * n
        if crops:
            with self._lock:
                res, _ = self._engine().text_rec(crops, return_word_box=columns)
            for i, r in zip(where, res):
                span = None
                if columns and r[0]:
                    ncols, cols = float(r[2][0]), [c for word in r[2][2] for c in word]
                    if cols and ncols > 0:
                        span = (min(cols) / ncols, min(1.0, (max(cols) + 1) / ncols))
                out[i] = (str(r[0]), float(r[1]), span)
        return out

    def read_views(self, views: Sequence[np.ndarray]) -> list[Reading]:
        """Readings over every view of one image (duplicates across views and scales dropped)."""
        seen: dict[tuple[str, int, int], Reading] = {}
        for i, v in enumerate(views):
            for r in self.read(v, view=i):
                key = (normalise(r.text), int(r.box[0] // 8), int(r.box[1] // 8))
                if key not in seen or r.score > seen[key].score:
                    seen[key] = r
        return list(seen.values())

    def legible(self, readings: Iterable[Reading], covered: np.ndarray | None = None,
                inside: float = COVERED_INSIDE, found: bool = False) -> list[Reading]:
        """Readings a person could use: `min_chars`+ letters/digits, confidence >= `min_score`,
        and less than `inside` of the line's box within the covered (filled) area. A shorter
        reading (char-shaped, confidence >= `SHORT_MIN_SCORE`) counts too where text is likely:
        on the line of a covered area, within its own height of it (the rest of a line the cover
        did not reach: "22" after a covered "PAGETWO", a bed number, an age), and, with `found`
        (readings of lines a detector found: `read_lines` on the closer look at a noisy image),
        from 2 characters anywhere (an 11 px "x40" on grain read "40" at 0.99; of the closer
        look's boxes off the labels on 22 grain images of the benchmark's large and edge sets
        none read so). Short readings elsewhere stay OCR's noise."""
        out = []
        for r in readings:
            if r.score < self.min_score or (covered is not None and covered_fraction(covered, r.box) >= inside):
                continue
            short = meaningful(r.text, 1) and r.score >= SHORT_MIN_SCORE and char_shaped(r)
            if meaningful(r.text, self.min_chars) or (short and (
                    (found and meaningful(r.text, 2)) or (covered is not None and beside_cover(covered, r.box)))):
                out.append(r)
        return out


class _RecognitionMemo:
    """RapidOCR's recogniser with a memory of the crops it has read (same bytes, same reading).
    An audit reads each output again after covering more, in every viewer's picture, and beyond
    every cover's ends each round; most of those crops are the pixels it read before (a 179-line
    form paid a second full round for two covered characters). Calls are serialised by the
    `Reader`'s lock. A reading can differ in its last digits from one made in another batch
    (the recogniser pads a batch to its widest crop); either is the crop's reading."""

    def __init__(self, recognise: Any, size: int = MEMO_SIZE) -> None:
        self._recognise, self.memory = recognise, LRU(size)

    def __call__(self, img_list: np.ndarray | list[np.ndarray], return_word_box: bool = False
                 ) -> tuple[list[Any], float]:
        crops = [img_list] if isinstance(img_list, np.ndarray) else list(img_list)
        keys = [(bool(return_word_box), array_digest(c)) for c in crops]
        known: dict[tuple[Any, ...], Any] = {}
        todo: dict[tuple[Any, ...], int] = {}   # each crop not remembered, read once
        for i, k in enumerate(keys):
            if k in known or k in todo:
                continue
            value = self.memory.get(k)
            if value is None:
                todo[k] = i
            else:
                known[k] = value
        elapse = 0.0
        if todo:
            res, elapse = self._recognise([crops[i] for i in todo.values()], return_word_box)
            for k, r in zip(todo, res):
                known[k] = r
                self.memory.put(k, r)
        # copies: RapidOCR writes word boxes into the readings it returns
        return [copy.deepcopy(known[k]) for k in keys], elapse


def _upright_crops(rgb: np.ndarray, rects: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """BGR crops of canonical rectangles (N,4,2: `boxes.oriented_rects` order), each warped
    upright along its first side, the image's edge repeated where one reaches past it; and the
    indices of the rectangles cropped (2 px or more each way)."""
    import cv2

    bgr = np.ascontiguousarray(np.asarray(rgb)[..., 2::-1])
    crops, where = [], []
    for i, r in enumerate(np.asarray(rects, dtype=np.float64).reshape(-1, 4, 2)):
        w, h = float(np.linalg.norm(r[1] - r[0])), float(np.linalg.norm(r[3] - r[0]))
        if w < 2 or h < 2:
            continue
        cw, ch = int(math.ceil(w)), int(math.ceil(h))
        dst = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
        m = cv2.getPerspectiveTransform(r.astype(np.float32), dst)
        crops.append(cv2.warpPerspective(bgr, m, (cw, ch), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE))
        where.append(i)
    return crops, where


SHORT_MIN_SCORE = 0.8   # a 1-2 character reading beside a cover counts from this confidence


def char_shaped(r: Reading) -> bool:
    """Whether a short reading's box could hold its characters: at most ~1.2 heights wide per
    character (OCR's "1" for a row of fill-in underscores was 2.3 heights wide)."""
    x0, y0, x1, y1 = r.box
    return (x1 - x0) <= (1.2 * len(normalise(r.text)) + 0.5) * max(1.0, y1 - y0)


def beside_cover(covered: np.ndarray, box: Sequence[float]) -> bool:
    """Whether `box` continues a covered line: within one box height left or right of it, a run
    of covered rows holds its middle row, spans at least half its height and is at least half
    as tall as it. (OCR's one-letter "readings" of a logo or a ruled box are far taller than
    the covered lines beside them: on funsd they doubled what the audit covered when any covered
    pixel nearby counted.)"""
    hgt, wid = covered.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(wid, int(np.ceil(box[2]))), min(hgt, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return False
    h = y1 - y0
    ya, yb = max(0, y0 - h), min(hgt, y1 + h)
    rows = np.zeros(yb - ya, bool)
    for side in (covered[ya:yb, max(0, x0 - h):x0], covered[ya:yb, x1:min(wid, x1 + h)]):
        if side.size:
            rows |= side.any(axis=1)
    mid = (y0 + y1) // 2 - ya
    if not rows[mid]:
        return False
    lo = hi = mid
    while lo > 0 and rows[lo - 1]:
        lo -= 1
    while hi < len(rows) - 1 and rows[hi + 1]:
        hi += 1
    run = min(hi, y1 - ya - 1) - max(lo, y0 - ya) + 1    # the run's rows inside the box
    return run >= 0.5 * h and h <= 2 * (hi - lo + 1)


def covered_fraction(covered: np.ndarray, box: Sequence[float]) -> float:
    """Share of a box's pixels that lie inside a boolean (H, W) mask; 0.0 for a box with no
    pixel in the image (a reading is never written off as covered on no evidence)."""
    return float(inside_fraction([box], covered, empty=0.0)[0])


def _matched_chars(word: str, text: str) -> int:
    """Characters of `word` that appear, in order and in runs of 2+, in `text`."""
    sm = difflib.SequenceMatcher(None, word, text, autojunk=False)
    return sum(b.size for b in sm.get_matching_blocks() if b.size >= 2 or b.size == len(word))


def spells(gt_text: str, readings: Iterable[str], min_chars: int = DEFAULT_MIN_CHARS, min_share: float = 0.6) -> bool:
    """Whether one of `readings` spells out `gt_text`: at least `min_share` of the letters and
    digits (and `min_chars` of them), in order, of the whole text or of one of its words."""
    near = [normalise(t) for t in readings]
    if not near:
        return False
    words = {normalise(gt_text)} | {w for w in map(normalise, gt_text.split()) if len(w) >= min_chars}
    for w in words:
        best = max(_matched_chars(w, t) for t in near)
        if best >= min_chars and best >= min_share * len(w):
            return True
    return False


READ_MAX_HEIGHT = 4.0   # a reading 4x taller than a text is some other thing read (see `leaked_words`)


def leaked_words(gt_boxes: np.ndarray, gt_texts: Sequence[str], gt_ignore: Sequence[bool],
                 readings: Sequence[Reading], min_chars: int = DEFAULT_MIN_CHARS,
                 min_share: float = 0.6) -> list[int]:
    """Indices of ground-truth texts still legible: a reading whose box meets the text's box
    spells at least `min_share` of the letters/digits (and `min_chars` of them) in order of the
    whole text or of one of its words. A line label counts as soon as one word of it can be
    read: "-16 18:51" left of "2026-10-16 18:51" is a leaked time, though under 60 % of the line.

    A reading counts for a text only when its line is at most `READ_MAX_HEIGHT` times as tall as
    the text's box is on its short side: OCR's detector boxed a 250 x 480 px block of a form's
    fill bars and read it "181", which is not the "8181" under the cover at 15 px.

    Texts shorter than `min_chars`, don't-care texts ('###') and texts without a transcription
    are not counted (see `countable_words`)."""
    out = []
    boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    for i in countable_words(gt_texts, gt_ignore, min_chars):
        b = boxes[i]
        tallest = READ_MAX_HEIGHT * max(1.0, min(b[2] - b[0], b[3] - b[1]))
        near = [r.text for r in readings if r.height <= tallest
                and min(b[2], r.box[2]) > max(b[0], r.box[0]) and min(b[3], r.box[3]) > max(b[1], r.box[1])]
        if spells(gt_texts[i], near, min_chars, min_share):
            out.append(i)
    return out


@dataclass(frozen=True)
class InPlace:
    """One image's ground-truth texts under the in-place judge: those the leak metric counts,
    those the recogniser reads in their own crop of the original, and of those, the ones it
    still reads in the output (indices into the image's texts)."""

    counted: list[int]
    readable: list[int]
    leaked: list[int]


def legible_in_place(reader: Reader, original: Sequence[np.ndarray] | None, output: Sequence[np.ndarray] | None,
                     gt_quads: np.ndarray, gt_texts: Sequence[str], gt_ignore: Sequence[bool],
                     margin: float = IN_PLACE_MARGIN, min_chars: int = DEFAULT_MIN_CHARS,
                     readable: Sequence[int] | None = None) -> InPlace:
    """The in-place judge: the recogniser reads each counted text's own crop (its rectangle,
    `gt_quads` (N,4,2), grown by `margin` x its height and turned upright) in every view of the
    original and of the output (`codec.detector_views`: each picture a viewer may show; None:
    no output, nothing leaks); a text leaks when some view of the original and some view of the
    output spell it (`spells`). Stricter than `leaked_words`, whose readings come from OCR's own
    detector: a viewer needs none to read a blurred sign or a faint watermark where it is.
    `readable`: the original's verdict from an earlier call (`InPlace.readable`), which is then
    not read again (`original` may be None): a benchmark judges many outputs of one original."""
    from pipeline.boxes import grow_quads

    counted = countable_words(gt_texts, gt_ignore, min_chars)
    crops = grow_quads(np.asarray(gt_quads, dtype=np.float64).reshape(-1, 4, 2)[counted], 0.0, margin)

    def spelled(views: Sequence[np.ndarray], which: list[int]) -> list[int]:
        """Of `which` (positions in `counted`), those some view's crop spells."""
        if not which:
            return []
        per_view = [reader.read_quads(v, crops[which]) for v in views]
        return [j for k, j in enumerate(which) if spells(gt_texts[counted[j]], [pv[k][0] for pv in per_view], min_chars)]

    if readable is None:
        if original is None:
            raise ValueError("legible_in_place needs the original's views or its `readable` verdict")
        known = spelled(original, list(range(len(counted))))
    else:
        known = [j for j, i in enumerate(counted) if i in set(readable)]
    leaked = spelled(output, known) if output is not None else []
    return InPlace(counted, [counted[j] for j in known], [counted[j] for j in leaked])


def countable_words(gt_texts: Sequence[str], gt_ignore: Sequence[bool], min_chars: int = DEFAULT_MIN_CHARS) -> list[int]:
    """Ground-truth words the leak metric counts: transcribed, not don't-care, `min_chars`+ long."""
    ignore = list(gt_ignore) + [False] * (len(gt_texts) - len(gt_ignore))
    return [i for i, t in enumerate(gt_texts) if not ignore[i] and len(normalise(t or "")) >= min_chars]
