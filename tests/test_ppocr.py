"""The frozen PP-OCR backend: finds rendered text, ignores flat images, tiles large ones."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from pipeline.boxes import iou_matrix
from pipeline.detectors import load_detector
from pipeline.detectors.ppocr import PPOCRDetector
from pipeline.detectors.tiling import merge_boxes
from tests.imagegen import text_font


def render(text: str, size: tuple[int, int], xy: tuple[int, int], px: int = 24,
           bg=(225, 228, 230), fg=(15, 15, 15)) -> tuple[np.ndarray, list[float]]:
    """An RGB image with `text` drawn in DejaVu Sans and the box of its ink."""
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    font = text_font(px)
    draw.text(xy, text, font=font, fill=fg)
    arr = np.asarray(img)
    ink = np.argwhere(np.abs(arr.astype(int) - np.array(bg)).sum(axis=2) > 60)
    (y0, x0), (y1, x1) = ink.min(axis=0), ink.max(axis=0)
    return arr, [float(x0), float(y0), float(x1 + 1), float(y1 + 1)]


@pytest.fixture(scope="module")
def det() -> PPOCRDetector:
    return PPOCRDetector()


def test_finds_rendered_text(det: PPOCRDetector) -> None:
    arr, box = render("Sample ID 42-17", (420, 200), (40, 80))
    (d,) = det.detect([arr])
    assert len(d) >= 1
    assert iou_matrix(np.array([box]), d.boxes).max() > 0.5
    assert np.all((d.scores > 0) & (d.scores <= 1))
    assert det.name == "ppocr" and det.version == "ppocr-v4-det"


def test_flat_image_has_no_text(det: PPOCRDetector) -> None:
    (d,) = det.detect([np.full((240, 320, 3), 128, dtype=np.uint8)])
    assert len(d) == 0


def test_tiled_large_image_finds_text_across_a_tile_seam() -> None:
    # max_side forces tiling; the text straddles the seam between the first two tiles
    det = PPOCRDetector(max_side=600, tile_size=512, tile_overlap=64, full_view=False)
    assert det.version.startswith("ppocr-v4-det+")
    arr, box = render("SPECIMEN 2024-03-11", (1100, 300), (300, 120), px=28)
    assert [tiled for _, tiled in det._passes(1100, 300)] == [True]
    (d,) = det.detect([arr])
    ious = iou_matrix(np.array([box]), d.boxes)
    assert ious.max() > 0.5, (box, d.boxes)
    assert (ious > 0).sum() == 1  # the pieces from both tiles were merged into one box


def test_load_detector_ppocr_passes_options() -> None:
    det = load_detector("ppocr", box_thresh=0.6)
    assert det.config.box_thresh == 0.6 and det.version != "ppocr-v4-det"
    with pytest.raises(ValueError, match="unknown ppocr option"):
        PPOCRDetector(nonsense=1)
    from pipeline.detectors.ppocr import PPOCRConfig

    with pytest.raises(ValueError, match="scales must be different from each other, got 1, 1"):
        PPOCRConfig(scales=(1.0, 1.0))   # `--scales 1,1` ran the same pass twice
    with pytest.raises(ValueError, match="large_text_side"):
        PPOCRConfig(large_text_side=-1)
    for bad in ({"edge_strip": -1}, {"edge_border": 5000}, {"edge_strip": 1.5}, {"edge_scale": 0}, {"edge_scale": 5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PPOCRConfig(**bad)
    # the strips change what is found: outputs made without them are redone, not resumed
    assert load_detector("ppocr", edge_strip=96).version != load_detector("ppocr").version
    # an integer given for a float option is that float: `-o edge_scale=2` redid outputs of 2.0
    assert load_detector("ppocr", edge_strip=96, edge_scale=2).version == load_detector("ppocr", edge_strip=96, edge_scale=2.0).version
    assert PPOCRConfig(max_upscale=2).max_upscale == 2.0 and isinstance(PPOCRConfig(max_upscale=2).max_upscale, float)
    # with no strips their border and scale change nothing found, nor the version; with them they do
    assert load_detector("ppocr", edge_border=8, edge_scale=2.0).version == load_detector("ppocr").version
    assert load_detector("ppocr", edge_strip=96, edge_scale=2.0).version != load_detector("ppocr", edge_strip=96).version


def test_the_summary_names_the_passes_that_ran() -> None:
    """`--scales 2` (one 2x pass) was described as "one 1x pass"."""
    from pipeline.cli.redact import _describe_model

    def said(scales: list[float], refine: str | None = None, large: int | None = None, edge: int | None = None,
             edge_scale: float | None = None) -> str:
        return _describe_model({"passes": {"scales": scales, "refine": refine, "scale_max_side": None,
                                           "large_text_side": large, "edge_strip": edge, "edge_scale": edge_scale}})

    assert said([2.0]) == " (one 2x pass)" and said([0.5], large=640) == " (one 0.5x pass, large text at 640 px)"
    assert said([1.0, 2.0], "small") == " (1x + 2x on small-text cells)"
    assert said([1.0, 2.5], "small", 640, 96, 1.0) == " (1x + 2.5x on small-text cells, large text at 640 px, edge strips 96 px deep at 1x)"
    # the depth is in px at the strips' scale: the summary gives it in the image's
    assert said([1.0], edge=128, edge_scale=2.0) == " (one 1x pass, edge strips 64 px deep at 2x)"
    assert _describe_model({"passes": {"scales": [1.0], "colour_text": 16}}) == " (one 1x pass, coloured text on grey images)"
    assert _describe_model({"passes": {"scales": [1.0], "colour_text": 16, "faint_text": 10}}) \
        == " (one 1x pass, coloured text on grey images, faint text on pages)"
    assert _describe_model({"passes": {"scales": [1.0], "crossed_text": 0.5}}) == " (one 1x pass, text crossing text)"


def test_merge_boxes_unions_line_pieces_and_duplicates() -> None:
    boxes = np.array([[0, 0, 60, 10], [50, 1, 120, 11],    # one line cut by a seam (groups 0, 1)
                      [200, 0, 240, 10], [201, 0, 240, 10],  # duplicate from two passes
                      [0, 40, 50, 50], [60, 40, 100, 50]])   # two words, same tile: kept apart
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    group = np.array([0, 1, 0, 2, 0, 0])
    b, s = merge_boxes(boxes, scores, group)
    got = sorted(map(tuple, b.tolist()))
    assert got == [(0, 0, 120, 11), (0, 40, 50, 50), (60, 40, 100, 50), (200, 0, 240, 10)]
    assert s.max() == pytest.approx(0.9)


def test_cached_maps_give_the_same_boxes_without_running_the_network_again() -> None:
    """A validation grid re-tunes the post-processing over cached probability maps: the same
    boxes as an uncached run, one forward pass per distinct input, none for a repeat."""
    arr, _ = render("Sample ID 42-17", (420, 200), (40, 80))
    other, _ = render("Plate 7", (420, 200), (60, 40))
    det = PPOCRDetector(threads=1)
    plain = det.retuned(unclip_ratio=2.0).detect([arr])[0]
    calls = []
    forward = det.forward_maps
    det.forward_maps = lambda x: calls.append(x.shape) or forward(x)
    det.cache_maps(True)
    first = det.detect([arr])[0]
    grid = det.retuned(unclip_ratio=2.0)           # shares the network and the cache
    again = grid.detect([arr])[0]
    assert len(calls) == 1 and np.allclose(again.boxes, plain.boxes) and len(first)
    grid.detect([other])
    assert len(calls) == 2                          # a different image is not a cache hit
    det.cache_maps(False)
    det.detect([arr])
    assert len(calls) == 3                          # caching off: the network runs


def test_the_version_changes_with_what_the_passes_find_and_only_that(monkeypatch) -> None:
    """Outputs are resumed by detector version: it moves with any option that changes the boxes,
    and not with refinement settings of a second pass that a one-pass detector never runs."""
    from pipeline.detectors.ppocr import BASE_VERSION, PPOCRConfig, config_version

    one = config_version(BASE_VERSION, PPOCRConfig())
    assert one == BASE_VERSION == config_version(BASE_VERSION, PPOCRConfig(refine="small", scale_max_side=1600))
    # turning the large-text pass off is another detector; its other settings then change nothing
    off = config_version(BASE_VERSION, PPOCRConfig(large_text_side=0))
    assert off.startswith(BASE_VERSION + "+") and off == config_version(BASE_VERSION, PPOCRConfig(large_text_side=0,
                                                                                                  large_text_keep=3))
    two = config_version(BASE_VERSION, PPOCRConfig(scales=(1.0, 2.0), refine="small", scale_max_side=1600))
    assert two.startswith(BASE_VERSION + "+")
    assert two != config_version(BASE_VERSION, PPOCRConfig(scales=(1.0, 2.0), refine="image", scale_max_side=1600))
    assert config_version(BASE_VERSION, PPOCRConfig(threads=1)) == one          # threads find the same boxes
    assert config_version("db-x", PPOCRConfig(thresh=0.2), skip=("thresh",)) == "db-x"
    import pipeline.detectors.ppocr as pp   # a new way of choosing small-text windows: a new version

    monkeypatch.setattr(pp, "SMALL_WINDOWS_REVISION", pp.SMALL_WINDOWS_REVISION + 1)
    assert config_version(BASE_VERSION, PPOCRConfig(scales=(1.0, 2.0), refine="small", scale_max_side=1600)) != two
    assert config_version(BASE_VERSION, PPOCRConfig()) == one


@pytest.mark.parametrize("word,px,size", [("JOE", 240, (600, 340)), ("DOE", 600, (1500, 800))])
def test_text_too_large_for_the_first_pass_is_covered_whole(word: str, px: int, size: tuple[int, int]) -> None:
    """A name filling most of a small image (upscaled to 736 px for the first pass) or a 600 px
    banner at 1x: DB boxed parts of letters (a "J" with no box, the inside of an "O"), so a
    black fill left "JO" readable. The coarse pass finds the words whole; without it they are not."""
    import cv2

    img = Image.new("RGB", size, "white")
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), px)
    ImageDraw.Draw(img).text((20, 10), word, font=font, fill="black")
    arr = np.asarray(img)
    ink = arr.min(axis=2) < 128

    def covered(det: PPOCRDetector) -> float:
        (d,) = det.detect([arr])
        m = np.zeros(ink.shape, np.uint8)
        cv2.fillPoly(m, [np.round(q).astype(np.int32) for q in d.quads], 1)
        return float((m.astype(bool) & ink).sum() / ink.sum())

    det = PPOCRDetector()
    assert covered(det) > 0.995
    assert covered(det.with_options(large_text_side=0)) < 0.8


@pytest.mark.parametrize("windows,whole", [([[0, 0, 480, 200], [0, 160, 480, 360]], True), ([[0, 0, 480, 180]], False)])
def test_small_text_windows_as_large_as_the_image_run_as_one_whole_pass(monkeypatch, windows, whole: bool) -> None:
    """Windows that add up to the image's area cost as much as one untiled pass over it, and
    every window edge may cut a line: the second pass then runs on the whole image."""
    arr, _ = render("Sample ID 42-17", (480, 360), (40, 80))
    det = PPOCRDetector(scales=(1.0, 2.0), refine="small")
    monkeypatch.setattr(PPOCRDetector, "small_text_windows", lambda self, *a, **k: np.array(windows))
    seen: list[tuple[int, int]] = []
    run = PPOCRDetector._run

    def spy(self, bgr, scale, keep=None):
        seen.append(bgr.shape[:2])
        return run(self, bgr, scale, keep)

    monkeypatch.setattr(PPOCRDetector, "_run", spy)
    det.detect_one(arr)
    expected = [(360, 480)] if whole else [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in windows]
    assert seen[1:] == expected


def test_a_small_box_runs_on_only_where_strokes_go_on_beside_it() -> None:
    """The small-text pass looks past the ends of a small first-pass box only where the line
    goes on (strokes as strong as half the box's own), not beside every word on a noisy page."""
    import cv2

    from pipeline.detectors.ppocr import _runs_on

    rng = np.random.default_rng(1)
    bg = (200 + rng.normal(0, 6, (120, 600, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    font = text_font(14)
    d.text((60, 20), "Lot 4471", font=font, fill=(20, 20, 20))               # a word alone on noise
    d.text((60, 70), "2026-10-16 18:51", font=font, fill=(20, 20, 20))       # a line 1x boxed in part
    a, b = d.textbbox((60, 20), "Lot 4471", font=font), d.textbbox((60, 70), "2026-10-16", font=font)
    grad = cv2.morphologyEx(cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    runs = _runs_on(grad, np.array([a, b], float), max_height=24, reach=8)
    assert [(round(y0), side) for _, y0, _, _, side in runs] == [(b[1], 1)]   # only the date, to the right
    assert runs[0][2] - runs[0][0] == 8 * (b[3] - b[1])


def test_preprocess_is_pp_ocr_normalisation_for_every_pixel_value() -> None:
    from pipeline.detectors.ppocr import preprocess

    bgr = np.random.default_rng(3).integers(0, 256, (33, 17, 3), dtype=np.uint8)
    bgr[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    want = np.ascontiguousarray(((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])
    got = preprocess(bgr[:, ::-1][:, ::-1])       # a strided view too
    assert got.dtype == np.float32 and got.shape == (1, 3, 33, 17) and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, want)
    assert got[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0] and got[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(preprocess(bgr.astype(np.float32)), want)   # float input: same numbers


def _blend_word(base: np.ndarray, colour: tuple[int, int, int], alpha: float, at=(40, 60), size=40) -> np.ndarray:
    """`base` (RGB) with "DRAFT" drawn in `colour` at `alpha`; returns the ink mask too."""
    ink = Image.new("L", base.shape[1::-1])
    ImageDraw.Draw(ink).text(at, "DRAFT", font=ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), size), fill=255)
    m = np.asarray(ink, np.float32)[..., None] / 255 * alpha
    return (base * (1 - m) + np.array(colour, np.float32) * m).round().astype(np.uint8), np.asarray(ink) > 127


def test_colour_view_shows_coloured_strokes_of_grey_images_as_ink() -> None:
    """The colour pass's view: a faint purple word on a noisy grey image black on white, the
    noise white; nothing to look at on an image without colour, on a colour photo, or where the
    colour is an area (a fluorescent cell), not strokes."""
    import cv2

    from pipeline.detectors.ppocr import COLOUR_MARGIN, colour_view

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.normal(128, 30, (200, 320)).clip(0, 255).astype(np.uint8)[..., None], 3, 2)
    assert colour_view(grey, 16) is None
    marked, ink = _blend_word(grey, (110, 0, 110), 0.3)
    view, (x0, y0, x1, y1) = colour_view(cv2.cvtColor(marked, cv2.COLOR_RGB2BGR), 16)
    ys, xs = np.nonzero(ink)
    assert x0 <= xs.min() and y0 <= ys.min() and x1 > xs.max() and y1 > ys.max()   # the word's window ...
    assert x0 >= xs.min() - COLOUR_MARGIN - 2 and y1 <= ys.max() + COLOUR_MARGIN + 3   # ... with its margin
    assert view.shape == (y1 - y0, x1 - x0, 3)
    v, k = view[..., 0], ink[y0:y1, x0:x1]
    core = cv2.erode(k.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0   # not the antialiased rims
    assert (v[core] < 100).mean() > 0.8 and (v[~cv2.dilate(k.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)] > 240).mean() > 0.97
    # a colour photo: hues everywhere, which DB sees as brightness
    hue = np.linspace(0, 179, 320, dtype=np.float32)[None, :].repeat(200, 0).astype(np.uint8)
    photo = cv2.cvtColor(np.dstack([hue, np.full_like(hue, 160), np.full_like(hue, 200)]), cv2.COLOR_HSV2BGR)
    assert colour_view(_blend_word(photo, (110, 0, 110), 0.3)[0], 16) is None
    # a grey image whose only colour is a cell 60 px across
    cell = grey.copy()
    cv2.circle(cell, (160, 100), 30, (40, 200, 40), -1)
    assert colour_view(cell, 16) is None


def test_faint_view_shows_a_pages_faint_marks_as_ink() -> None:
    """The faint pass's view: a light-grey footer (244 on a white page that also holds black
    text) is black ink on white in it, inside one of its windows; dark pages too (10 on black
    under white text). Nothing to look at on a page without faint marks (the black text's
    anti-aliased rims are not marks), or on a photo-like image (no page: texture everywhere)."""
    import cv2

    from pipeline.detectors.ppocr import faint_view
    from tests.imagegen import faint_page

    for page, ink, level in ((255, 0, 244), (0, 255, 10)):
        rgb, boxes = faint_page(level, page, ink)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        view, marks, wins = faint_view(bgr, 6)
        assert view.shape == bgr.shape
        for x0, y0, x1, y1 in boxes:
            assert any(a <= x0 and b <= y0 and c >= x1 and d >= y1 for a, b, c, d in wins), (boxes, wins)
            assert marks[y0:y1, x0:x1].sum() >= 30
            strokes = np.abs(rgb[y0:y1, x0:x1, 0].astype(int) - page) >= abs(level - page) - 1
            assert (view[y0:y1, x0:x1, 0][strokes] < 100).mean() > 0.8   # the footer: plain ink
        assert (view[rgb[..., 0] == page] == 255).all()                    # the page: white
        plain, _ = faint_page(page, page, ink)                             # the "footer" at the page's level
        assert faint_view(cv2.cvtColor(plain, cv2.COLOR_RGB2BGR), 6) is None
    noisy = np.random.default_rng(0).normal(128, 20, (300, 400)).clip(0, 255).astype(np.uint8)
    assert faint_view(np.repeat(noisy[..., None], 3, 2), 6) is None


@pytest.mark.parametrize("option,view,arg", [("colour_text", "colour_view", "min_chroma"), ("faint_text", "faint_view", "step"),
                                             ("crossed_text", None, None)])
def test_the_extra_views_are_range_checked_and_part_of_the_version(option: str, view: str, arg: str) -> None:
    """`-o colour_text=300` / `faint_text=300` is refused by name; the views refuse 0 ("off" for
    the option: no view can be made with it); turning a pass on changes the detector version,
    so outputs made without it are redone, not resumed."""
    from pipeline.detectors import ppocr

    with pytest.raises(ValueError, match=option):
        ppocr.PPOCRConfig(**{option: 300})
    if view:
        with pytest.raises(ValueError, match=arg):
            getattr(ppocr, view)(np.full((40, 60, 3), 255, np.uint8), 0)
    on = 0.5 if option == "crossed_text" else 6
    assert load_detector("ppocr", **{option: on}).version != load_detector("ppocr").version


def test_text_crossing_text_is_kept_in_pieces() -> None:
    """A watermark across a line of a sign joins it in DB's bitmap: one X-shaped component whose
    rectangle is mostly wall, scored under `box_thresh`, so the 1x pass dropped the line and the
    watermark both. With `crossed_text` the component is covered in pieces: both are found, and
    an image without crossing text gets nothing new."""
    from pipeline.boxes import quads_mask
    from tests.imagegen import crossed_sign, faint_page

    rgb, line, wm = crossed_sign()
    h, w = line.shape
    plain = load_detector("ppocr", threads=1).detect_one(rgb)
    pieces = load_detector("ppocr", crossed_text=0.5, threads=1).detect_one(rgb)
    before, after = quads_mask(plain.quads, w, h), quads_mask(pieces.quads, w, h)
    for ink in (line, wm):
        assert before[ink].mean() < 0.5          # dropped together
        assert after[ink].mean() > 0.9
    page, _ = faint_page(0)   # no crossing: the same boxes
    a = load_detector("ppocr", threads=1).detect_one(page)
    b = load_detector("ppocr", crossed_text=0.5, threads=1).detect_one(page)
    assert np.array_equal(a.quads, b.quads)


def test_the_faint_pass_adds_the_faint_words_and_leaves_found_ink_alone() -> None:
    """With the faint pass the footer is found, and nothing the other passes found changes: the
    view shows the page's grey print (40 levels off the page: faint marks too, like a receipt's)
    fatter, and boxes of it would only add over-redaction."""
    import cv2

    from pipeline.boxes import quads_mask
    from tests.imagegen import faint_page

    rgb, boxes = faint_page(244, ink=215)
    plain = PPOCRDetector(threads=1).detect_one(rgb)
    faint = PPOCRDetector(faint_text=6, threads=1).detect_one(rgb)
    h, w = rgb.shape[:2]
    covered = quads_mask(faint.quads, w, h)
    for x0, y0, x1, y1 in boxes:
        assert not quads_mask(plain.quads, w, h)[y0:y1, x0:x1].any()    # DB alone sees none of it
        assert covered[y0:y1, x0:x1].mean() > 0.95
    assert len(faint) == len(plain) + len(boxes) or len(faint) == len(plain) + 1   # a footer line or its two words
    for b in plain.boxes:   # the grey print's boxes unchanged ...
        assert iou_matrix(b[None], faint.boxes).max() > 0.99
    # ... and the pass itself adds nothing over it (merging hid that here; on the devset's
    # receipts such finds spanned words boxed one by one and added 0.015 of the image)
    added = np.concatenate([q for q, _ in PPOCRDetector(faint_text=6, threads=1)._faint_pass(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1.0, [plain.quads])])
    assert len(added) == len(boxes) and all(q[:, 1].min() > 500 for q in added), added


def test_the_faint_pass_keeps_short_faint_words_not_specks(monkeypatch) -> None:
    """A faint "42" or "A1" is not twice as long as tall, the rule other made-up views keep
    words by, and stayed legible; the faint pass keeps such a find when its marks are glyphs side
    by side (`_glyph_row`). Faint dirt on the same page (clusters of 1-4 px dots, as on the
    devset's scanned forms), which DB boxes in the faint view, stays unboxed."""
    import cv2

    from pipeline.boxes import quads_mask
    from pipeline.detectors import ppocr
    from tests.imagegen import faint_page

    rgb, boxes = faint_page(244, words=("42", "A1", "No 5"), font=34)
    rgb = rgb.copy()
    rng = np.random.default_rng(3)
    for _ in range(30):   # dirt: 5-25 dots of 1-3 px at 225-246 in a 20-40 px patch
        cx, cy, spread = int(rng.integers(60, 740)), int(rng.integers(180, 470)), int(rng.integers(10, 20))
        for _ in range(int(rng.integers(5, 25))):
            x, y = cx + int(rng.normal(0, spread / 2)), cy + int(rng.normal(0, spread / 2))
            cv2.circle(rgb, (x, y), int(rng.integers(1, 4)), (int(rng.integers(225, 247)),) * 3, -1)
    h, w = rgb.shape[:2]
    plain = PPOCRDetector(threads=1).detect_one(rgb)
    faint = PPOCRDetector(faint_text=6, threads=1).detect_one(rgb)
    covered = quads_mask(faint.quads, w, h)
    for x0, y0, x1, y1 in boxes:
        assert not quads_mask(plain.quads, w, h)[y0:y1, x0:x1].any()   # DB alone sees none of it
        assert covered[y0:y1, x0:x1].mean() > 0.95
    assert not covered[150:500].any()   # no dirt boxed ...
    monkeypatch.setattr(ppocr, "_glyph_row", lambda marks, tall: True)
    anything = PPOCRDetector(faint_text=6, threads=1).detect_one(rgb)
    assert quads_mask(anything.quads, w, h)[150:500].any()   # ... which DB boxes in the view


def test_the_colour_pass_keeps_words_not_dots_of_colour() -> None:
    """A star field (coloured dots on a dark grey sky) passes the colour check, and DB boxes
    dots in its view one by one; almost none of that is kept. A faint coloured word on the same
    sky is."""
    import cv2

    from pipeline.detectors.ppocr import colour_view

    rng = np.random.default_rng(1)
    sky = np.repeat(rng.normal(20, 6, (480, 640)).clip(0, 255).astype(np.uint8)[..., None], 3, 2)
    for _ in range(150):
        c = tuple(int(v) for v in rng.integers(60, 256, 3))
        cv2.circle(sky, (int(rng.integers(0, 640)), int(rng.integers(0, 480))), int(rng.integers(1, 4)), c, -1)
    det = PPOCRDetector(colour_text=16, threads=1)
    bgr = cv2.cvtColor(sky, cv2.COLOR_RGB2BGR)
    view, (x0, y0, _, _) = colour_view(bgr, 16)
    raw: list = []
    det._pass(view, 1.0, False, x0, y0, raw)
    n_raw = sum(len(q) for q, _ in raw)
    kept = det._colour_pass(bgr, 1.0)
    n_kept = sum(len(q) for q, _ in kept)
    # DB boxes dozens of dots in the view; the pass keeps at most a pair of dots that touch (as
    # on the devset's Hubble deep field: README)
    assert n_raw >= 10 and n_kept <= 1, (n_raw, n_kept)
    word, ink = _blend_word(sky, (200, 60, 200), 0.35, at=(200, 200))
    kept = det._colour_pass(cv2.cvtColor(word, cv2.COLOR_RGB2BGR), 1.0)
    boxes = np.concatenate([q for q, _ in kept]).reshape(-1, 4, 2)
    ys, xs = np.nonzero(ink)
    assert any(b[:, 0].min() <= xs.min() + 4 and b[:, 0].max() >= xs.max() - 4
               and b[:, 1].min() <= ys.min() + 4 and b[:, 1].max() >= ys.max() - 4 for b in boxes)
