"""The in-place leak judge: the real PP-OCRv4 recogniser reads each ground-truth text's own crop,
before and after redaction, with no detector to find it first."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pipeline.boxes import grow_quads, rect_along, xyxy_to_quad
from pipeline.legibility import Reader, legible_in_place, spells
from tests.imagegen import text_font


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


def _font(size: int) -> ImageFont.FreeTypeFont:
    return text_font(size)


def _page() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A white page with two labelled lines and one label on blank paper: (rgb, boxes, texts)."""
    im = Image.new("RGB", (520, 200), "white")
    d = ImageDraw.Draw(im)
    texts = ["Sample 4711", "Jonathan Smith", "Nowhere"]
    boxes = []
    for (x, y), t in zip(((20, 20), (20, 90)), texts[:2]):
        d.text((x, y), t, font=_font(30), fill="black")
        boxes.append(d.textbbox((x, y), t, font=_font(30)))
    boxes.append((300, 150, 420, 185))   # a label where the page is blank
    return np.asarray(im), np.asarray(boxes, float), texts


def test_a_rotated_word_is_read_along_its_own_axis(reader: Reader) -> None:
    im = Image.new("L", (900, 500), 255)
    layer = Image.new("L", (900, 500), 0)
    ImageDraw.Draw(layer).text((150, 220), "CONFIDENTIAL", font=_font(48), fill=255)
    layer = layer.rotate(30, center=(450, 250), resample=Image.BICUBIC)
    im.paste(0, mask=layer)
    rgb = np.asarray(im.convert("RGB"))
    ys, xs = np.nonzero(np.asarray(layer) > 127)
    a = np.radians(30)
    quad = rect_along(np.stack([xs, ys], 1), (np.cos(a), -np.sin(a)), margin=6)[None]
    (text, score), = reader.read_quads(rgb, quad)
    assert spells("CONFIDENTIAL", [text]), (text, score)


def test_in_place_judge_counts_what_the_output_still_spells(reader: Reader) -> None:
    rgb, boxes, texts = _page()
    quads = xyxy_to_quad(boxes)
    ignore = [False, False, False]
    x0, y0, x1, y1 = boxes[0].astype(int)

    covered = rgb.copy()
    for b in boxes[:2].astype(int):
        covered[b[1] - 4:b[3] + 4, b[0] - 4:b[2] + 4] = 0
    verdict = legible_in_place(reader, [rgb], [covered], quads, texts, ignore)
    assert verdict.counted == [0, 1, 2]
    assert verdict.readable == [0, 1]          # blank paper under the third label spells nothing
    assert verdict.leaked == []

    half = rgb.copy()                          # "Sample" covered, "4711" left: a sample ID leaks
    half[y0 - 4:y1 + 4, x0 - 4:x0 + int(0.62 * (x1 - x0))] = 0
    assert legible_in_place(reader, [rgb], [half], quads, texts, ignore).leaked == [0, 1]

    # any view that spells it is enough: the covered picture beside one that is not
    assert legible_in_place(reader, [rgb], [covered, rgb], quads, texts, ignore).leaked == [0, 1]
    # no output: nothing leaks; don't-care and too-short texts are not counted
    assert legible_in_place(reader, [rgb], None, quads, texts, ignore).leaked == []
    short = legible_in_place(reader, [rgb], [rgb], quads, ["Sample 4711", "Jo", "Nowhere"], [True, False, False])
    assert short.counted == [2] and short.leaked == []


def test_the_crop_is_the_text_grown_by_a_quarter_of_its_height(reader: Reader, monkeypatch) -> None:
    rgb, boxes, texts = _page()
    seen: list[np.ndarray] = []
    monkeypatch.setattr(reader, "read_quads", lambda im, q: seen.append(np.asarray(q)) or [("", 0.0)] * len(q))
    legible_in_place(reader, [rgb], [rgb], xyxy_to_quad(boxes[:1]), texts[:1], [False])
    assert len(seen) == 1   # nothing readable in the original: the output is not read
    np.testing.assert_allclose(seen[0], grow_quads(xyxy_to_quad(boxes[:1]), 0.0, 0.25))


def test_a_known_verdict_on_the_original_is_not_read_again(reader: Reader, monkeypatch) -> None:
    rgb, boxes, texts = _page()
    quads = xyxy_to_quad(boxes)
    first = legible_in_place(reader, [rgb], None, quads, texts, [False] * 3)
    assert first.readable == [0, 1] and first.leaked == []
    read: list[int] = []
    real = reader.read_quads
    monkeypatch.setattr(reader, "read_quads", lambda im, q: read.append(len(q)) or real(im, q))
    again = legible_in_place(reader, None, [rgb], quads, texts, [False] * 3, readable=first.readable)
    assert again.readable == [0, 1] and again.leaked == [0, 1]
    assert read == [2]                       # the output's two crops, not the original's three
    with pytest.raises(ValueError, match="original"):
        legible_in_place(reader, None, [rgb], quads, texts, [False] * 3)


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_blur_and_pixelate_leave_nothing_the_recogniser_reads_in_place(reader: Reader, style: str) -> None:
    """`--style blur|pixelate` (on request only, warned as reversible) must still defeat a viewer
    reading the box itself: the recogniser reads every crop before and none after, from 12 px
    text to 72 px (the strength grows with the box's height)."""
    from pipeline.redact.core import apply_redaction

    for size in (12, 30, 72):
        for word in ("Sample 4711", "Jonathan Smith"):
            im = Image.new("RGB", (size * 10, size * 3), "white")
            d = ImageDraw.Draw(im)
            d.text((size // 2, size), word, font=_font(size), fill="black")
            x0, y0, x1, y1 = d.textbbox((size // 2, size), word, font=_font(size))
            p = max(1, (y1 - y0) // 10)   # redact's default pad, 10 % of the height
            box = np.array([[x0 - p, y0 - p, x1 + p, y1 + p]])
            rgb = np.asarray(im)
            (before, _), = reader.read_boxes(rgb, box.astype(float))
            (after, _), = reader.read_boxes(apply_redaction(rgb, box, style), box.astype(float))
            assert spells(word, [before]) and not spells(word, [after]), (size, word, before, after)


def test_a_crop_read_before_is_not_recognised_again() -> None:
    """An audit reads each output again after covering more, and in every viewer's picture:
    the recogniser runs once per distinct crop, and what it returns cannot be spoiled by a caller."""
    reader = Reader()
    rgb, boxes, _ = _page()
    first = reader.read_boxes(rgb, boxes[:2])
    memo = reader._engine().text_rec.memory
    assert (memo.hits, memo.misses) == (0, 2)
    assert [spells(t, [r[0]]) for t, r in zip(["Sample 4711", "Jonathan Smith"], first)] == [True, True]

    other = rgb.copy()
    other[boxes[1, 1].astype(int):boxes[1, 3].astype(int), boxes[1, 0].astype(int):boxes[1, 2].astype(int)] = 0
    again = reader.read_boxes(other, boxes[:2])   # the first line's pixels unchanged, the second's covered
    assert (memo.hits, memo.misses) == (1, 3)
    assert again[0] == first[0] and not spells("Jonathan Smith", [again[1][0]])

    crop = np.ascontiguousarray(rgb[20:60, 20:220, ::-1])
    res, _ = reader._engine().text_rec([crop, crop.copy()], True)   # twice in one call: read once, with its CTC columns
    assert memo.misses == 4 and res[0] == res[1] and res[0][2][1] == [list("Sample 4711")]
    res[0][2].clear()                          # RapidOCR writes word boxes into what it gets back
    assert reader._engine().text_rec([crop], True)[0][0] == res[1] and memo.misses == 4


def test_tiles_no_new_cover_touched_are_not_read_again() -> None:
    """An audit's later round reads the whole output again; a large image is read in tiles, and
    a tile whose pixels did not change reads as before without running OCR on it again."""
    from pipeline.legibility import READ_MAX_SIDE

    reader = Reader(scales=(1.0,))
    w = READ_MAX_SIDE + 400                       # two tiles at 1x
    im = Image.new("RGB", (w, 300), "white")
    d = ImageDraw.Draw(im)
    d.text((40, 120), "Sample 4711", font=_font(36), fill="black")
    d.text((w - 400, 120), "Jonathan Smith", font=_font(36), fill="black")
    rgb = np.asarray(im)
    first = reader.read(rgb)
    assert reader._tiles.misses == 2 and reader._tiles.hits == 0
    assert any(spells("Sample 4711", [r.text]) for r in first) and any(spells("Jonathan Smith", [r.text]) for r in first)

    covered = rgb.copy()
    covered[110:170, 30:320] = 0                  # the left word covered: only the left tile changes
    again = reader.read(covered)
    assert reader._tiles.misses == 3 and reader._tiles.hits == 1
    assert not any(spells("Sample 4711", [r.text]) for r in again)
    right = [r for r in again if spells("Jonathan Smith", [r.text])]
    assert right and right[0] in first              # the same reading, box and all, from memory


def test_lines_mostly_under_the_fill_are_not_read(reader: Reader) -> None:
    """The audit reads the lines a detector's look found (`read_lines`) in every round's output;
    a line at least half under the fill cannot count (`legible`), so it is not read at all (a
    form's contrast look holds every line of the page), and the others read as before."""
    rgb, boxes, _ = _page()
    quads = xyxy_to_quad(boxes[:2])
    covered = np.zeros(rgb.shape[:2], bool)
    x0, y0, x1, y1 = boxes[1].astype(int)
    covered[y0:y1, x0:x1 - (x1 - x0) // 3] = True          # two thirds of the second line under the fill
    everything = reader.read_lines(rgb, quads)
    left = reader.read_lines(rgb, quads, covered=covered)
    assert [spells(t, [r.text]) for t, r in zip(["Sample 4711", "Jonathan Smith"], everything)] == [True, True]
    assert [r.text for r in left] == [everything[0].text]
    assert reader.legible(everything, covered) == reader.legible(left, covered)   # nothing that counted is lost
