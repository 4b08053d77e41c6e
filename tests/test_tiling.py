"""The one tiler (`pipeline.detectors.tiling`): window layout, frames, and its two merges."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.boxes import Detections, iou_matrix
from pipeline.detectors.tiling import Tiler, cut_by_inner_edge, merge_parts, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(100, 100, 10), (1100, 512, 64), (1000, 300, 299), (50, 64, 8)])
def test_tiles_cover_the_length_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert min(starts[-1] + tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


def _seeing(truth: np.ndarray, tiler: Tiler):
    """A 1100 x 300 page whose text boxes are `truth`, and a fake detector over `tiler`'s tiles
    (called in window order) that reports each box clipped to what the tile shows."""
    page = np.zeros((300, 1100, 3), np.uint8)
    windows = iter(tiler.windows(1100, 300))

    def detect(views):
        out = []
        for v in views:
            x0, y0, _, _ = next(windows)
            h, w = v.shape[:2]
            b = np.clip(truth - np.array([x0, y0, x0, y0]), 0, [w, h, w, h])
            keep = (b[:, 2] - b[:, 0] > 4) & (b[:, 3] - b[:, 1] > 4)
            out.append(Detections(b[keep], np.full(keep.sum(), 0.9)))
        return out
    return page, detect


def test_a_line_longer_than_the_overlap_is_whole_after_the_union_merge():
    line = np.array([[100.0, 100.0, 900.0, 130.0]])       # crosses two seams, far longer than the overlap
    union = Tiler(400, 64, merge="union")
    page, detect = _seeing(line, union)
    merged = union.combine(union.detect(page, detect))
    assert len(merged) == 1 and iou_matrix(merged.boxes, line)[0, 0] == pytest.approx(1.0)
    # the nms merge drops every cut piece: only a whole-image pass could still find this line
    nms = Tiler(400, 64, merge="nms")
    page, detect = _seeing(line, nms)
    assert len(nms.combine(nms.detect(page, detect))) == 0


def test_a_word_inside_one_tile_overlap_is_found_once_by_both_merges():
    word = np.array([[370.0, 50.0, 390.0, 70.0]])        # inside the overlap of the first two tiles
    for merge in ("union", "nms"):
        tiler = Tiler(400, 64, merge=merge)
        page, detect = _seeing(word, tiler)
        merged = tiler.combine(tiler.detect(page, detect))
        assert len(merged) == 1 and np.allclose(merged.boxes, word), merge


def test_union_is_wrong_for_low_score_candidates_and_nms_right():
    """Why Faster R-CNN (candidates down to 0.05) merges by nms: a 0.06 junk box around a 0.9 word
    would swallow it under the union merge, and the merged box would carry the 0.9 score."""
    whole = Detections([[0, 0, 200, 100]], [0.06])
    tile = Detections([[10, 10, 60, 30]], [0.9])
    union = merge_parts([whole, tile], "union")
    assert len(union) == 1 and union.scores[0] == pytest.approx(0.9) and np.allclose(union.boxes, [[0, 0, 200, 100]])
    nms = merge_parts([whole, tile], "nms")
    assert len(nms) == 2 and np.allclose(nms.filter(0.5).boxes, [[10, 10, 60, 30]])


def test_cut_by_inner_edge_ignores_image_edges():
    boxes = np.array([[0, 10, 20, 20], [50, 10, 100, 20], [30, 30, 40, 40]])
    assert cut_by_inner_edge(boxes, (0, 0, 100, 100), 100, 100).tolist() == [False, False, False]
    assert cut_by_inner_edge(boxes, (0, 0, 100, 100), 300, 100).tolist() == [False, True, False]
    assert cut_by_inner_edge(boxes, (60, 0, 160, 100), 300, 100).tolist() == [True, True, False]


def test_unknown_merge_is_refused():
    with pytest.raises(ValueError, match="union or nms"):
        Tiler(100, 10, merge="wbf")


def test_edge_strips_lie_along_each_edge_with_the_border_outside_the_image() -> None:
    from pipeline.detectors.tiling import edge_strips

    strips = edge_strips(100, 60, 16, 4)
    assert [w for w, _ in strips] == [(0, 0, 100, 16), (0, 44, 100, 60), (0, 0, 16, 60), (84, 0, 100, 60)]
    for (x0, y0, x1, y1), (t, b, l, r) in strips:
        # replicated px only where the strip meets the image's edge, never on its inner side
        assert (t > 0) == (y0 == 0) and (b > 0) == (y1 == 60) and (l > 0) == (x0 == 0) and (r > 0) == (x1 == 100)
    # an image shallower than the strips: each strip is the whole image along that edge
    assert edge_strips(40, 10, 16, 4)[0][0] == (0, 0, 40, 10) and edge_strips(40, 10, 16, 4)[1][0] == (0, 0, 40, 10)


def test_touches_image_edge() -> None:
    from pipeline.detectors.tiling import touches_image_edge

    boxes = np.array([[1, 20, 30, 40], [20, 1.5, 30, 10], [20, 20, 99, 30], [20, 20, 30, 59], [10, 10, 90, 50], [-5, -5, 3, 3]])
    assert touches_image_edge(boxes, 100, 60).tolist() == [True, True, True, True, False, True]


def test_edge_pass_maps_what_each_strip_finds_back_onto_the_image() -> None:
    """Whatever a strip's input holds, a find at its outer edge lands on the image's edge, one
    wholly inside the strip is kept where it lies (DB's first-pass map is blind there too), and
    one cut by its inner side (where the image goes on) is left to the first pass when a box of
    it holds the find's centre."""
    from pipeline.detectors.ppocr import PPOCRDetector

    det = PPOCRDetector(edge_strip=16, edge_border=4)
    seen = []

    def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    def run(grown: np.ndarray, scale: float, keep_map: list | None = None):
        gh, gw = grown.shape[:2]
        seen.append((gh, gw))
        cx, cy = gw / 2, gh / 2
        # the strips come top, bottom, left, right: a quad from the middle to the inner side
        inner = [rect(cx - 1, cy, cx + 1, gh), rect(cx - 1, 0, cx + 1, cy),
                 rect(cx, cy - 1, gw, cy + 1), rect(0, cy - 1, cx, cy + 1)][len(seen) - 1]
        return np.array([rect(0, 0, gw, gh), rect(cx - 1, cy - 1, cx + 1, cy + 1), inner], float), np.array([0.9, 0.8, 0.7])

    det._run = run   # type: ignore[method-assign]
    out = det._edge_pass(np.zeros((60, 100, 3), np.uint8), 1.0, first=np.array([[0.0, 0.0, 100.0, 60.0]]))
    assert seen == [(20, 108), (20, 108), (68, 20), (68, 20)]
    assert [s.tolist() for _, s in out] == [[0.9, 0.8]] * 4   # the ones cut by the inner side are dropped
    # the whole grown input maps to its window grown outward: off the image by the border only
    boxes = [(q[0].min(0).tolist(), q[0].max(0).tolist()) for q, _ in out]
    assert boxes == [([-4, -4], [104, 16]), ([-4, 44], [104, 64]), ([-4, -4], [16, 64]), ([84, -4], [104, 64])]
    # the middle one to the middle of its window
    assert [q[1].mean(0).tolist() for q, _ in out] == [[50, 6], [50, 54], [6, 30], [94, 30]]


def test_a_line_the_strip_cuts_and_the_first_pass_missed_is_followed_inward() -> None:
    """"x40" 12 px from the left edge of a micrograph ran past the 64 px strip: the strip boxed
    "x4", cut by its inner side, and the first pass found nothing there, so the label stayed
    legible. Such a find is kept, and a window from the edge, 8x its thickness past the strip
    (with the replicated border on the image's side only), looks for the rest of its line."""
    from pipeline.detectors.ppocr import PPOCRDetector

    det = PPOCRDetector(edge_strip=16, edge_border=4)
    seen = []

    def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    def run(grown: np.ndarray, scale: float, keep_map: list | None = None):
        seen.append(grown.shape[:2])
        if len(seen) == 3:   # top, bottom, then the left strip: a line from the edge to its inner side, y 20-24
            return np.array([rect(4, 24, 20, 28)], float), np.array([0.8])
        if len(seen) == 4:   # the window that follows it: the whole line, a cut stranger, a find inside
            gh, gw = grown.shape[:2]
            return np.array([rect(10, 4, 40, 8), rect(30, 0, gw, 3), rect(12, 6, 14, 7)], float), np.array([0.9, 0.5, 0.6])
        return np.zeros((0, 4, 2)), np.zeros(0)

    det._run = run   # type: ignore[method-assign]
    img = np.zeros((60, 100, 3), np.uint8)
    out = det._edge_pass(img, 1.0)
    # the left strip's find (x 0-16, y 20-24, 4 thick; touching the edge is no reason to stop) is followed 16 + 8 * 4 = 48 px in, 4 px wider
    # on both sides along the edge: a 48 x 12 window grown by 4 px on the image's (left) side only
    assert seen[3] == (12, 52) and len(seen) == 5     # ... before the right strip
    kept = [(quad[0].tolist(), quad[2].tolist(), float(sc)) for q, s in out for quad, sc in zip(q, s)]
    assert ([0, 20], [16, 24], 0.8) in kept           # the strip's part of the line stays
    assert ([6, 20], [36, 24], 0.9) in kept           # the window's whole line
    assert ([8, 22], [10, 23], 0.6) in kept           # what lies wholly inside the window
    assert all(sc != 0.5 for *_, sc in kept)          # cut by its top, not the line followed: the first pass's
    # a first-pass box holding the find's centre: no window (the find stays: it touches the edge)
    seen.clear()
    out = det._edge_pass(img, 1.0, first=np.array([[0.0, 18.0, 60.0, 26.0]]))
    assert len(seen) == 4 and out[2][1].tolist() == [0.8]


def test_a_strip_larger_than_the_largest_untiled_pass_runs_in_tiles() -> None:
    """A strip along a huge slide is one long thin input: past `max_side` squared px at its
    scale it runs in tiles along its length, each mapped back onto the image."""
    from pipeline.detectors.ppocr import PPOCRDetector

    det = PPOCRDetector(edge_strip=16, edge_border=0, max_side=128, tile_size=256, tile_overlap=32)
    shapes: list[tuple[int, int]] = []

    def run(view: np.ndarray, scale: float, keep_map: list | None = None):
        shapes.append(view.shape[:2])
        return np.array([[[1, 1], [5, 1], [5, 5], [1, 5]]], float), np.array([0.9])

    det._run = run   # type: ignore[method-assign]
    q, _ = det._run_window(np.zeros((40, 2000, 3), np.uint8), (0, 0, 2000, 16), (0, 0, 0, 0), 1.0)
    assert len(shapes) > 1 and all(w <= 256 for _, w in shapes)     # 16 x 2000 = 32000 px > 128 ** 2
    assert sorted(q[:, 0, 0].tolist())[:2] == [1.0, 1.0 + 256 - 32]   # each tile's find in the image's frame
    shapes.clear()
    det._run_window(np.zeros((40, 2000, 3), np.uint8), (0, 0, 1000, 16), (0, 0, 0, 0), 1.0)
    assert shapes == [(16, 1000)]                                   # 16000 px: one input
    shapes.clear()
    det._run_window(np.zeros((40, 2000, 3), np.uint8), (0, 0, 1100, 16), (0, 0, 0, 0), 1.0)
    assert len(shapes) > 1                                          # 17600
    shapes.clear()
    det._run_window(np.zeros((40, 2000, 3), np.uint8), (0, 0, 1100, 16), (0, 0, 0, 0), 0.5)    # 4400 at its scale
    assert shapes == [(16, 1100)]


def test_a_tiled_pass_keeps_its_map_stitched_where_each_tile_lies() -> None:
    """The small-text windows of a large image are chosen on its first pass's map; a tiled pass
    had none, so images over 2000 px got no second look. Each tile's map lands at its tile's
    place in one uint8 map of the image's size, the larger value where tiles overlap."""
    from pipeline.detectors.ppocr import PPOCRDetector

    det = PPOCRDetector(max_side=128, tile_size=128, tile_overlap=32, full_view=False)

    def run(view: np.ndarray, scale: float, keep_map: list | None = None):
        h, w = view.shape[:2]   # a "network" whose map is the view's first channel / 255, at scale
        if keep_map is not None:
            keep_map.append(cv2.resize(view[..., 0].astype(np.float32) / 255, (round(w * scale), round(h * scale)),
                                       interpolation=cv2.INTER_NEAREST))
        return np.zeros((0, 4, 2)), np.zeros(0)

    import cv2

    det._run = run   # type: ignore[method-assign]
    img = np.zeros((150, 300, 3), np.uint8)
    img[..., 0] = (np.arange(300)[None, :] * 7 + np.arange(150)[:, None] * 3) % 251   # unlike itself anywhere
    maps: list = []
    det._pass(img, 2.0, True, 0, 0, [], maps)
    assert len(maps) == 1 and maps[0].dtype == np.uint8 and maps[0].shape == (150, 300)
    assert np.abs(maps[0].astype(int) - img[..., 0]).max() <= 1
    maps.clear()
    det._pass(img, 2.0, True, 0, 0, [])          # not asked for: nothing kept
    assert maps == []
