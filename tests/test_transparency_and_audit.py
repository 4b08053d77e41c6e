"""Redaction judged by what a viewer can read: transparent inputs and the OCR legibility audit.

Text on a transparent background used to come out untouched (alpha was dropped before detection,
so black text on transparent black pixels became black on black). These tests render words on
transparent images of every layout, redact them through the CLI with defaults (the real ppocr
detector), then composite each output the ways viewers do -- over white, over black, alpha
dropped, alpha alone -- with Pillow (not with textloop's own code) and run the real PP-OCR
recogniser on every picture: it must read none of the words. Each case also checks that the
recogniser *can* read the words in the input, so the test fails if redaction does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.imaging import visible_views
from pipeline.legibility import Reader, Reading, leaked_words, normalise
from tests.fakes import FakeDetector
from tests.imagegen import em_grain, text_font

WORDS = ("Patient", "Jonathan", "48213")
SIZE = (420, 150)


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


def _font(size: int = 30) -> ImageFont.FreeTypeFont:

    return text_font(size)


def text_mask() -> np.ndarray:
    """Where the glyphs are (True), for a few words on two lines."""
    im = Image.new("L", SIZE, 0)
    d = ImageDraw.Draw(im)
    d.text((20, 20), f"{WORDS[0]}: {WORDS[1]}", font=_font(), fill=255)
    d.text((20, 85), f"ID {WORDS[2]}", font=_font(), fill=255)
    return np.asarray(im) > 127


def _rgba(ink: tuple[int, int, int], alpha_only: bool = False) -> np.ndarray:
    """Transparent canvas with `ink` glyphs; `alpha_only`: colour is uniform, the text is in alpha."""
    m = text_mask()
    a = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    a[..., :3] = ink if alpha_only else 0
    a[m, :3] = ink
    a[m, 3] = 255
    return a


def _save(kind: str, path: Path) -> Path:
    black = _rgba((0, 0, 0))
    if kind == "png_black":
        Image.fromarray(black, "RGBA").save(path)
    elif kind == "png_white":
        Image.fromarray(_rgba((255, 255, 255)), "RGBA").save(path)
    elif kind == "png_alpha_only":
        Image.fromarray(_rgba((40, 40, 40), alpha_only=True), "RGBA").save(path)
    elif kind == "png16":
        import cv2

        a16 = black.astype(np.uint16) * 257
        cv2.imwrite(str(path), a16[..., [2, 1, 0, 3]])
    elif kind == "la":
        Image.fromarray(black, "RGBA").convert("LA").save(path)
    elif kind == "palette_trns":
        p = Image.new("P", SIZE, 0)
        p.putpalette([0, 0, 0, 0, 0, 0] + [0] * (3 * 254))
        p.putdata((text_mask().ravel() * 1).tolist())
        p.save(path, transparency=0)           # index 0 transparent, index 1 black ink
    elif kind == "rgb_key":     # tRNS colour key: the background colour is transparent; ink one step off it
        a = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        a[...] = (0, 255, 0)
        a[text_mask()] = (0, 254, 0)
        Image.fromarray(a, "RGB").save(path, transparency=(0, 255, 0))
    elif kind == "l_key":
        Image.fromarray(np.where(text_mask(), 199, 200).astype(np.uint8), "L").save(path, transparency=200)
    elif kind == "bit1_key":   # 1-bit: black transparent, white ink (only over a dark page, or as alpha)
        Image.fromarray(text_mask()).convert("1").save(path, transparency=0)
    elif kind == "webp":
        Image.fromarray(black, "RGBA").save(path, lossless=True)
    elif kind == "tiff":
        tifffile.imwrite(path, black, photometric="rgb", extrasamples=(2,))
    else:
        raise AssertionError(kind)
    return path


CASES = {"png_black": "a.png", "png_white": "b.png", "png_alpha_only": "c.png", "png16": "d.png",
         "la": "e.png", "palette_trns": "f.png", "webp": "g.webp", "tiff": "h.tif", "rgb_key": "i.png",
         "l_key": "j.png", "bit1_key": "k.png"}
KEYS = {"rgb_key": (0, 255, 0), "l_key": 200, "bit1_key": 0}   # the colour keys, which outputs keep


def viewer_pictures(path: Path) -> list[np.ndarray]:
    """What viewers show of a file, composited with Pillow alone: over white, over black, alpha
    dropped, and the alpha channel as a grey picture."""
    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    out = []
    for bg in ((255, 255, 255, 255), (0, 0, 0, 255)):
        out.append(np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, bg), rgba).convert("RGB")))
    out.append(np.asarray(rgba.convert("RGB")))
    out.append(np.asarray(Image.merge("RGB", [rgba.getchannel("A")] * 3)))
    return out


def words_read(reader: Reader, pictures: list[np.ndarray]) -> set[str]:
    text = " ".join(normalise(r.text) for p in pictures for r in reader.read(p))
    return {w for w in WORDS if normalise(w) in text}


def test_transparent_inputs_come_out_unreadable(tmp_path, reader):
    src = tmp_path / "in"
    src.mkdir()
    for kind, name in CASES.items():
        _save(kind, src / name)
        assert words_read(reader, viewer_pictures(src / name)) == set(WORDS), f"{kind}: the input must be legible"
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "--json", "redact", str(src), str(out)])
    assert r.exit_code == 0, r.output
    for kind, name in CASES.items():
        left = words_read(reader, viewer_pictures(out / name))
        assert not left, f"{kind}: OCR still reads {sorted(left)} in the redacted output"
        sc = json.loads((out.parent / "out.audit" / "sidecars" / f"{name}.json").read_text())
        assert sc["n_boxes"] >= 2, kind
        if kind in KEYS:   # the transparent background stays transparent
            with Image.open(out / name) as im:
                assert im.info.get("transparency") == KEYS[kind], (kind, im.info)
    # the filled pixels are opaque: nothing of the ink shows through the fill in any view
    with Image.open(out / "a.png") as im:
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    assert (alpha[text_mask()] == 255).all()


def test_a_fill_the_colour_of_the_key_stays_opaque(tmp_path, reader):
    """From a walkthrough: an RGB PNG whose tRNS key is black, redacted with the default black
    fill, came out with every covered pixel equal to the key, i.e. transparent: the box was a
    hole showing whatever is behind the image. Covered pixels are opaque, and unreadable."""
    a = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
    a[text_mask()] = (30, 30, 30)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(a, "RGB").save(src / "k.png", transparency=(0, 0, 0))
    assert words_read(reader, viewer_pictures(src / "k.png")) == set(WORDS)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "k.png") as im:
        assert im.info.get("transparency") == (0, 0, 0)            # the key is kept ...
        rgba = np.asarray(im.convert("RGBA"))
    assert (rgba[..., 3] == 255).all()                             # ... and no pixel became see-through
    assert (rgba[text_mask()][:, :3].max(axis=1) <= 1).all()       # covered with (1, 0, 0), not left
    assert not words_read(reader, viewer_pictures(tmp_path / "out" / "k.png"))


def legible_before_not_after(tmp_path: Path, reader: Reader, src: Path, names: tuple[str, ...], pictures) -> None:
    """Every named input in `src` shows WORDS in `pictures(path)` (the viewer's pictures the test
    builds itself), `redact` with defaults runs on the folder, and no output shows any of them."""
    for name in names:
        assert words_read(reader, pictures(src / name)) == set(WORDS), f"{name}: the input must be legible"
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    for name in names:
        left = words_read(reader, pictures(tmp_path / "out" / name))
        assert not left, f"{name}: OCR still reads {sorted(left)}"


def test_premultiplied_alpha_and_extra_tiff_channels_come_out_unreadable(tmp_path, reader):
    """From a walkthrough: a TIFF with associated alpha (ExtraSamples 1) at 4 of 255 stores text
    as colours 0 vs 4, blank to the detector, yet Pillow divides the alpha out and shows it
    plainly; and text in a channel after the alpha (RGB + ExtraSamples 2, 0) was never looked
    at, though tools that show channels show it. Both come out unreadable."""
    m = text_mask()
    g = np.where(m, 0, 4).astype(np.uint8)
    premul = np.dstack([g, g, g, np.full_like(g, 4)])
    extra = np.dstack([np.full(m.shape + (3,), 200, np.uint8), np.full(m.shape, 255, np.uint8),
                       np.where(m, 0, 255).astype(np.uint8)])
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "premul.tif", premul, photometric="rgb", extrasamples=(1,))
    tifffile.imwrite(src / "extra.tif", extra, photometric="rgb", extrasamples=(2, 0))

    def pictures(path: Path) -> list[np.ndarray]:
        """Pillow's RGB (alpha divided out), and each channel as a grey picture."""
        out = []
        if path.name == "premul.tif":
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
        arr = tifffile.imread(path)
        out += [np.ascontiguousarray(np.stack([arr[..., c]] * 3, axis=-1)) for c in range(arr.shape[-1])]
        return out

    legible_before_not_after(tmp_path, reader, src, ("premul.tif", "extra.tif"), pictures)


def test_float_nan_and_unspecified_band_tiffs_come_out_unreadable(tmp_path, reader):
    """From a leak hunt, both passing `--verify --strict`: one NaN pixel in a float TIFF made
    every percentile NaN and the picture black to the detector and the audit (output untouched,
    "redacted"); and a 16-bit grey TIFF's second band (ExtraSamples 0, GDAL's way) was taken as
    alpha only, so text at 1010 on 1000 in it, plain when a viewer stretches the band, was never
    looked at. Judged on what auto-levels shows (min-max, NaN ignored, as Fiji does)."""
    m = text_mask()
    nan = np.where(m, 900.0, 100.0).astype(np.float32)
    nan[0, 0] = np.nan
    rng = np.random.default_rng(0)
    band = np.dstack([rng.normal(20000, 2000, m.shape).clip(0, 65535), np.where(m, 1010, 1000)]).astype(np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "nan.tif", nan)
    tifffile.imwrite(src / "band.tif", band, photometric="minisblack", planarconfig="contig")

    def levels(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        a = np.where(np.isfinite(a), a, np.nanmin(a))
        v = ((a - a.min()) / max(a.max() - a.min(), 1e-9) * 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([v] * 3, axis=-1))

    def pictures(path: Path) -> list[np.ndarray]:
        arr = tifffile.imread(path)
        return [levels(arr)] if arr.ndim == 2 else [levels(arr[..., c]) for c in range(arr.shape[-1])]

    legible_before_not_after(tmp_path, reader, src, ("nan.tif", "band.tif"), pictures)


def test_16_bit_text_past_the_auto_levels_range_comes_out_unreadable(tmp_path, reader):
    """From a leak hunt, passing `--verify --strict`: full-contrast text on a 16-bit page came
    out untouched when it covers under 0.5 % of the pixels and the page sits at the end of the
    auto-levels range (black text on a 45000 page with a white panel; white text on a 30000 page
    with black bars): the stretch clipped text and page to one level for the detector and the
    audit, while a browser shows the file plainly (value / 257). Judged on that plain picture."""
    m = np.zeros((760, 1000), bool)
    m[300:300 + SIZE[1], 40:40 + SIZE[0]] = text_mask()
    black = np.full(m.shape, 45000, np.uint16)
    black[600:] = 65535
    black[m] = 0
    white = np.full(m.shape, 30000, np.uint16)
    white[20:30] = 0
    white[m] = 65535
    light = white.copy()      # 23 levels above its page (of 255): as plain as a light-grey word
    light[m] = 36000
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(black).save(src / "black.png")
    tifffile.imwrite(src / "black.tif", black)
    tifffile.imwrite(src / "white.tif", white)
    Image.fromarray(light).save(src / "light.png")

    def plain(path: Path) -> list[np.ndarray]:
        arr = tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path), np.float64)
        v = np.clip(np.rint(np.asarray(arr, np.float64) / 257), 0, 255).astype(np.uint8)
        return [np.ascontiguousarray(np.stack([v] * 3, axis=-1))]

    legible_before_not_after(tmp_path, reader, src, ("black.png", "black.tif", "white.tif", "light.png"), plain)
    # predict, push and serve (Pillow's decode) look at the plain picture too; a label brighter
    # than the range on a darker micrograph shows after auto-levels, and costs no extra picture
    from pipeline.imaging import plain_view, views_of

    assert len(views_of(Image.open(src / "black.png"))) == 2
    label = np.random.default_rng(0).normal(3000, 300, m.shape).clip(0, 65535).astype(np.uint16)
    label[m] = 60000
    assert plain_view(label, 65535.0) is None and plain_view(black, 65535.0) is not None
    cell = label.copy()       # a bright cell's core past the range: clipped, yet no page
    cell[200:260, 200:260] = 20000
    cell[215:245, 215:245] = 40000
    assert plain_view(cell, 65535.0) is None


@pytest.mark.parametrize("alpha", [None, 200])
@pytest.mark.parametrize("ink, paper", [(245, 255), (28, 20), (138, 128)])
def test_faint_text_on_a_plain_picture_comes_out_unreadable(tmp_path, reader, ink, paper, alpha):
    """From a leak hunt: text 8-10 levels off its background, legible to a viewer and plain
    after auto-levels, was blank to the detector and the audit: untouched, "redacted", and
    `--verify --strict` passed it. A picture of such a narrow range is looked at stretched,
    opaque or translucent (judged on its colours and its composite over white, by Pillow)."""
    m = text_mask()
    rgb = np.where(m[..., None], ink, paper).astype(np.uint8).repeat(3, axis=-1)
    src = tmp_path / "faint.png"
    Image.fromarray(rgb if alpha is None else np.dstack([rgb, np.full(m.shape, alpha, np.uint8)])).save(src)

    def levels(path: Path) -> list[np.ndarray]:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
        shown = [rgba.convert("RGB"), Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")]
        out = []
        for picture in shown:
            g = np.asarray(picture, np.float64).mean(axis=-1)
            v = ((g - g.min()) / max(g.max() - g.min(), 1e-9) * 255).astype(np.uint8)
            out.append(np.ascontiguousarray(np.stack([v] * 3, axis=-1)))
        return out

    assert words_read(reader, levels(src)) == set(WORDS)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "redact", str(src), str(tmp_path / "out.png")])
    assert r.exit_code == 0, r.output
    left = words_read(reader, levels(tmp_path / "out.png"))
    assert not left, f"OCR still reads {sorted(left)}"


def _rgb_profile(trc: bytes) -> bytes:
    """A minimal v2 RGB display profile (D50 primaries of sRGB) with `trc` as all three curves."""
    import struct

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + struct.pack(">iii", *(round(v * 65536) for v in (x, y, z)))

    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", 2) + b"x\0" + bytes(78)),
            (b"cprt", b"text" + bytes(4) + b"x\0"), (b"wtpt", xyz(0.9642, 1, 0.8249)),
            (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    table, data, start = b"", b"", 132 + 12 * len(tags)
    for sig, blob in tags:
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", sig, start + len(data), len(blob))
        data += blob
    header = bytearray(128)
    struct.pack_into(">I", header, 0, start + len(data))
    header[8:24] = b"\x02\x10\x00\x00mntrRGB XYZ "
    header[36:40] = b"acsp"
    header[68:80] = struct.pack(">iii", round(0.9642 * 65536), 65536, round(0.8249 * 65536))
    return bytes(header) + struct.pack(">I", len(tags)) + table + data


def test_text_an_icc_profile_reveals_comes_out_unreadable(tmp_path, reader):
    """From a walkthrough: text at 244 on 250 whose profile stretches 238..250 to the full range
    was blank to the detector, and plain in any colour-managed viewer (OCR 0.96). The picture a
    viewer renders through the profile is looked at too -- only for profiles that stretch
    contrast like that: ordinary gamma curves (sRGB, 1.8, 2.2) cost no second look."""
    import io
    import struct

    from PIL import ImageCms

    from pipeline.redact.codec import _icc_transform

    def curv(values: list[int]) -> bytes:
        return b"curv" + bytes(4) + struct.pack(f">I{len(values)}H", len(values), *values)

    ramp = np.clip((np.arange(256) - 238) / 12, 0, 1)
    stretch = _rgb_profile(curv([round(v * 65535) for v in ramp]))
    for gamma in (1.8, 2.2):
        assert _icc_transform(_rgb_profile(curv([round(gamma * 256)])), "RGB") is None, gamma
    assert _icc_transform(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), "RGB") is None
    assert _icc_transform(stretch, "RGB") is not None
    a = np.full((SIZE[1], SIZE[0], 3), 250, np.uint8)
    a[text_mask()] = 244
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(a).save(src / "c.png", icc_profile=stretch)

    def managed(path: Path) -> list[np.ndarray]:
        with Image.open(path) as im:
            prof = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return [np.asarray(ImageCms.profileToProfile(im.convert("RGB"), prof, ImageCms.createProfile("sRGB")))]

    assert words_read(reader, managed(src / "c.png")) == set(WORDS)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert not words_read(reader, managed(tmp_path / "out" / "c.png"))


def test_each_tiff_page_is_looked_at_and_written_with_its_own_icc_profile(tmp_path, reader):
    """A multi-page TIFF whose second page alone carries a text-revealing profile: the file's
    profile used to be page 1's, for every page, so page 2 was looked at (and written) without
    its own. Its words came out legible in a colour-managed viewer."""
    import io
    import struct

    from PIL import ImageCms

    from pipeline.redact.codec import scrub_icc

    ramp = np.clip((np.arange(256) - 238) / 12, 0, 1)
    values = [round(v * 65535) for v in ramp]
    stretch = _rgb_profile(b"curv" + bytes(4) + struct.pack(f">I{len(values)}H", len(values), *values))
    plain = np.full((SIZE[1], SIZE[0], 3), 235, np.uint8)
    faint = np.full((SIZE[1], SIZE[0], 3), 250, np.uint8)
    faint[text_mask()] = 244
    src = tmp_path / "in"
    src.mkdir()
    with tifffile.TiffWriter(src / "two.tif") as tw:
        tw.write(plain, photometric="rgb")
        tw.write(faint, photometric="rgb", iccprofile=stretch)

    def page_two_managed(path: Path) -> list[np.ndarray]:
        with tifffile.TiffFile(path) as tf:
            arr, icc = tf.pages[1].asarray(), bytes(tf.pages[1].tags[34675].value)
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return [np.asarray(ImageCms.profileToProfile(Image.fromarray(arr), prof, ImageCms.createProfile("sRGB")))]

    assert words_read(reader, page_two_managed(src / "two.tif")) == set(WORDS)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "redact", str(src), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(tmp_path / "out" / "two.tif") as tf:
        assert len(tf.pages) == 2 and 34675 not in tf.pages[0].tags      # page 1 still has none
        assert bytes(tf.pages[1].tags[34675].value) == scrub_icc(stretch)  # page 2 keeps its own
    assert not words_read(reader, page_two_managed(tmp_path / "out" / "two.tif"))


def test_visible_views_of_an_opaque_image_is_the_image_itself():
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    assert len(visible_views(rgb, None)) == 1
    assert len(visible_views(rgb, np.full((8, 9), 255, np.uint8))) == 1
    views = visible_views(rgb, np.zeros((8, 9), np.uint8))        # fully transparent: no alpha shape
    assert len(views) == 3 and all(v.shape == rgb.shape and v.dtype == np.uint8 for v in views)
    alpha = np.zeros((8, 9), np.uint16)
    alpha[2:4, 2:6] = 65535                                          # 16-bit alpha holding a shape
    views = visible_views(rgb, alpha)
    assert len(views) == 4 and (views[-1][2:4, 2:6] == 0).all() and (views[-1][0] == 255).all()


def test_the_labellers_picture_of_a_transparent_png_shows_its_text(tmp_path):
    """`load_rgb` (training crops, the label-noise reader, report thumbnails, rank's TTA, the
    duplicate check) dropped alpha: black text on transparent black pixels was all black, so a
    model was taught boxes on a blank picture. It is now the picture over white, as Label Studio
    shows it; over black on request."""
    from pipeline.imaging import load_rgb

    p = _save("png_black", tmp_path / "t.png")
    m = text_mask()
    white, black = load_rgb(p), load_rgb(p, background=0)
    assert white[~m].min() == 255 and white[m].mean() < 64          # dark words on a white page
    assert (black == 0).all()                                        # black on black: what a dark viewer shows
    rgb = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(load_rgb(tmp_path / "opaque.png"), rgb)   # an alpha that hides nothing changes nothing


def test_predict_sees_text_on_a_transparent_png(tmp_path):
    from pipeline.detectors import load_detector
    from pipeline.predict import predict_images

    p = _save("png_black", tmp_path / "t.png")
    (pred,) = predict_images(load_detector("ppocr"), [p])
    assert pred.ok and len(pred.result) >= 2
    m = text_mask()
    covered = np.zeros_like(m)
    for x0, y0, x1, y1 in pred.result.boxes.astype(int):
        covered[y0:y1 + 1, x0:x1 + 1] = True
    assert covered[m].mean() > 0.95


def OneWordDetector() -> FakeDetector:
    """Covers the first line only, so the second line's word stays legible."""
    return FakeDetector([[10.0, 10.0, 400.0, 62.0]], [0.9])


def test_verify_reads_what_was_left_and_strict_writes_nothing(tmp_path, monkeypatch, reader):
    import pipeline.detectors as dets
    import pipeline.redact.run as rr

    monkeypatch.setattr(dets, "load_detector", lambda *a, **k: OneWordDetector())
    monkeypatch.setattr(rr, "build_ppocr", lambda *a, **k: OneWordDetector())
    im = Image.new("RGB", SIZE, (250, 250, 245))
    Image.fromarray(np.where(text_mask()[..., None], 10, np.asarray(im)).astype(np.uint8)).save(tmp_path / "s.png")
    run = ["-w", str(tmp_path / "ws"), "-q", "--json", "redact", str(tmp_path / "s.png"), str(tmp_path / "o.png"),
           "--detector", "ppocr", "--verify"]
    r = CliRunner().invoke(app, run + ["--verify-rounds", "0"])   # report only
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["remaining_text"] >= 1 and summary["audit_covered"] == 0
    sc = json.loads((tmp_path / "o.audit" / "sidecars" / "s.png.json").read_text())
    assert sc["verify"]["reader"].startswith("ppocr-v4-rec") and sc["verify"]["legible"][0]["score"] >= 0.5
    # the line it reads is the uncovered second one ("ID 48213", y 85-125), reported masked
    assert all(x["box"][1] > 62 and x["text"].endswith(")") for x in sc["verify"]["legible"]), sc["verify"]
    (tmp_path / "o.png").unlink()
    r = CliRunner().invoke(app, run + ["--verify-rounds", "0", "--strict", "--force"])
    assert r.exit_code == 1 and not (tmp_path / "o.png").exists()
    assert "legible" in json.loads(r.stdout)["errors"][0]
    # the default: what OCR reads is covered and read again; nothing legible is left to fail on
    r = CliRunner().invoke(app, run + ["--strict"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["audit_covered"] >= 1 and summary["remaining_text"] == 0
    sc = json.loads((tmp_path / "o.audit" / "sidecars" / "s.png.json").read_text())
    assert any(x["box"][1] > 62 for x in sc["verify"]["covered"])
    assert words_read(reader, viewer_pictures(tmp_path / "o.png")).isdisjoint(set(WORDS))   # an independent read
    # the words it removed are nowhere in the audit trail (sidecars, log, manifest, summary)
    trail = " ".join(normalise(f.read_text(errors="replace")) for f in (tmp_path / "o.audit").rglob("*")
                     if f.is_file() and f.suffix in (".json", ".log", ".csv", ".jsonl"))
    assert trail and not any(normalise(w) in trail for w in WORDS), [w for w in WORDS if normalise(w) in trail]
    assert not any(normalise(w) in normalise(r.stdout) for w in WORDS)


def test_leak_metric_counts_words_read_at_their_place():
    gt = np.array([[0, 0, 100, 20], [0, 40, 100, 60], [0, 80, 100, 100], [0, 120, 50, 140]], float)
    texts = ["Jonathan", "48213", "Smith", "ab"]
    readings = [Reading("Name:Jonathan", 0.9, (0, 0, 120, 22)),      # word inside a longer line
                Reading("48213", 0.9, (200, 40, 260, 60)),           # right text, wrong place
                Reading("Smlth", 0.8, (0, 80, 100, 100))]            # 4 of 5 letters in runs
    assert leaked_words(gt, texts, [False, False, False, False], readings) == [0, 2]
    assert leaked_words(gt, texts, [True, False, False, False], readings) == [2]
    # a line label leaks when one word of it can be read, though that is under 60 % of the line
    line = np.array([[300, 0, 460, 14]], float)
    assert leaked_words(line, ["2026-10-16 18:51"], [False], [Reading("-1618:51", 0.8, (380, 0, 460, 14))]) == [0]
    assert leaked_words(line, ["2026-10-16 18:51"], [False], [Reading("2026", 0.8, (300, 0, 340, 14))]) == []   # half a word: not counted
    # a reading of some far taller thing over the text is not the text: OCR's "181" for a 250 x 480
    # px block of a form's fill bars over a covered 15 px "8181"
    word = np.array([[100, 300, 160, 315]], float)
    assert leaked_words(word, ["8181"], [False], [Reading("181", 0.7, (0, 100, 250, 580))]) == []
    assert leaked_words(word, ["8181"], [False], [Reading("8181", 0.7, (90, 295, 170, 320))]) == [0]
    # a turned line's box is tall, the line is not: its height is the reader's quad's short side
    # (a word of a 45-degree line: the word's box 60 px, the line's 300)
    slanted = np.array([[120, 120, 180, 180]], float)
    assert leaked_words(slanted, ["Jonathan"], [False], [Reading("Mr Jonathan Smith", 0.9, (0, 0, 300, 300), 0, 30.0)]) == [0]


@pytest.mark.parametrize("kind", ["png_white", "png_alpha_only", "la"])
def test_verify_covers_a_missed_line_of_a_transparent_image(tmp_path, monkeypatch, reader, kind):
    """The audit reads every picture a viewer may show of the output and what it covers is
    filled on every plane: a line the detector missed on a transparent input ends up unreadable
    however the output is composited (read by OCR on Pillow's own composites)."""
    import pipeline.detectors as dets
    import pipeline.legibility as leg
    import pipeline.redact.run as rr

    monkeypatch.setattr(dets, "load_detector", lambda *a, **k: OneWordDetector())
    monkeypatch.setattr(rr, "build_ppocr", lambda *a, **k: OneWordDetector())
    monkeypatch.setattr(leg, "Reader", lambda *a, **k: reader)        # the module's real reader, loaded once
    src = _save(kind, tmp_path / "t.png")
    assert "48213" in words_read(reader, viewer_pictures(src))
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "--json", "redact", str(src), str(tmp_path / "o.png"),
                                 "--detector", "ppocr", "--verify", "--strict"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["audit_covered"] >= 1 and summary["remaining_text"] == 0
    assert words_read(reader, viewer_pictures(tmp_path / "o.png")).isdisjoint(set(WORDS))


def test_a_reading_knows_its_lines_height_when_turned(reader: Reader) -> None:
    """The leak metric compares a reading's line height with the text's (`leaked_words`); a line
    turned 30 degrees has a box four times its height, and the reading must carry the height."""
    im = Image.new("RGB", (700, 500), "white")
    ImageDraw.Draw(im).text((150, 230), "Jonathan Smith", font=_font(40), fill="black")
    rgb = np.asarray(im.rotate(30, fillcolor="white"))
    hit = [r for r in reader.read(rgb) if "jonathan" in normalise(r.text)]
    assert hit, [r.text for r in reader.read(rgb)]
    x0, y0, x1, y1 = hit[0].box
    assert 30 <= hit[0].height <= 70 and y1 - y0 > 2.5 * hit[0].height, (hit[0].height, hit[0].box)


def test_the_audit_reads_long_thin_strips(reader: Reader, tmp_path: Path, monkeypatch) -> None:
    """A 3000 x 60 banner (and a 2-pixel sliver) used to fail `--verify` (the recogniser's resize
    rounded the short side to 0); the audit must read the strip's words where they are, and a
    sliver is simply empty. A tall one is padded as RapidOCR pads a wide one: its DB scaled the
    66 px side of each tile up to 736 px (a 736 x 21952 input; a minute for the blank sliver)."""
    im = Image.new("RGB", (3000, 60), "white")
    ImageDraw.Draw(im).text((2400, 8), "Jonathan", font=_font(40), fill="black")
    readings = reader.read(np.asarray(im))
    hit = [r for r in readings if "jonathan" in normalise(r.text)]
    assert hit, [r.text for r in readings]
    x0, y0, x1, y1 = hit[0].box
    assert 2350 <= x0 < x1 <= 2650 and 0 <= y0 < y1 <= 60  # in the strip's own coordinates
    shapes, ocr = [], reader._ocr
    monkeypatch.setattr(reader, "_ocr", lambda bgr, **kw: (shapes.append(bgr.shape[:2]), ocr(bgr, **kw))[1])
    assert reader.read(np.full((3000, 2, 3), 255, np.uint8)) == []
    assert shapes and all(h <= 8 * w for h, w in shapes), shapes
    monkeypatch.undo()
    src = tmp_path / "in"
    src.mkdir()
    im.save(src / "banner.png")
    Image.new("RGB", (2, 3000), "white").save(src / "sliver.png")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / "out"),
                                 "--detector", "ppocr", "--verify"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["failed"] == 0
    # and the banner's word is gone from what a viewer sees
    out = np.asarray(Image.open(tmp_path / "out" / "banner.png").convert("RGB"))
    assert not [x for x in reader.read(out) if "jonathan" in normalise(x.text)]


def test_the_audit_reads_small_text_of_a_large_image_at_full_size(tmp_path, monkeypatch, reader):
    """RapidOCR shrinks an input longer than 2000 px: the audit read a 6000 px wide image at
    1/3 size, where a name in a 12 px font is garbage to it, and passed it, though a viewer who
    zooms in reads it. Such an image is read at 1x in tiles now; with a detector that misses
    the name, `--verify` covers it."""
    import pipeline.detectors as dets
    import pipeline.redact.run as rr

    im = Image.new("RGB", (6000, 400), "white")
    ImageDraw.Draw(im).text((3050, 170), "Jonathan 48213", font=_font(12), fill="black")
    rgb = np.asarray(im)
    whole = [t for t, _, _ in reader._ocr_bgr(np.ascontiguousarray(rgb[..., ::-1]))]   # as RapidOCR reads it at once
    assert not any(w in normalise(t) for t in whole for w in ("jonathan", "48213")), whole
    hit = [r for r in reader.read(rgb) if "jonathan" in normalise(r.text)]
    assert hit and 3000 <= hit[0].box[0] < hit[0].box[2] <= 3250 and 150 <= hit[0].box[1] < hit[0].box[3] <= 200
    monkeypatch.setattr(dets, "load_detector", lambda *a, **k: FakeDetector([]))
    monkeypatch.setattr(rr, "build_ppocr", lambda *a, **k: FakeDetector([]))
    im.save(tmp_path / "wide.png")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "--json", "redact", str(tmp_path / "wide.png"),
                                 str(tmp_path / "o.png"), "--detector", "ppocr", "--verify", "--strict"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["audit_covered"] >= 1
    out = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert words_read(reader, [np.ascontiguousarray(out[50:350, 2900:3400])]).isdisjoint({"Jonathan", "48213"})


def test_very_large_words_come_out_covered_and_unreadable(tmp_path, reader):
    """Words filling most of an image (a 240-450 px name) were boxed in parts by DB, which left
    letters standing (a walkthrough read "JO" under a black fill); the large-text pass covers
    them whole. Opaque and transparent inputs through the CLI with defaults: every glyph pixel is
    covered in every viewer picture, and the recogniser, which reads the words in the inputs'
    thumbnails (it cannot read 300 px glyphs at full size), reads none of them in the outputs'."""
    import cv2
    from matplotlib import font_manager

    bold = font_manager.findfont("DejaVu Sans:bold")
    cases = {"smith.png": ("SMITH", 450, (1700, 700)), "patient.png": ("PATIENT", 300, (1500, 420)),
             "joe.png": ("JOE", 240, (600, 340)), "smith_rgba.png": ("SMITH", 450, (1700, 700)),
             # a later walkthrough: on a small image no coarse pass ran (two boxes inside the
             # letters; "4" read in the output)
             "id42.png": ("42", 480, (700, 520))}
    src = tmp_path / "in"
    src.mkdir()
    inks = {}
    for name, (word, px, size) in cases.items():
        m = Image.new("L", size, 0)
        ImageDraw.Draw(m).text((20, -60 if name == "id42.png" else 20), word, font=ImageFont.truetype(bold, px), fill=255)
        ink = np.asarray(m) > 127
        a = np.zeros((size[1], size[0], 4), np.uint8)
        a[..., :3] = 255 if "rgba" not in name else 0
        a[..., 3] = 255 if "rgba" not in name else 0
        a[ink] = (0, 0, 0, 255)
        Image.fromarray(a, "RGBA").save(src / name)
        inks[name] = ink

    def thumbs(pictures: list[np.ndarray]) -> list[np.ndarray]:
        return [cv2.resize(p, (p.shape[1] // k, p.shape[0] // k), interpolation=cv2.INTER_AREA)
                for p in pictures for k in (4, 6)]

    def read(path: Path, word: str) -> bool:
        return normalise(word) in " ".join(normalise(r.text) for p in thumbs(viewer_pictures(path)) for r in reader.read(p))

    for name in ("smith.png", "patient.png", "smith_rgba.png"):   # the recogniser can read these inputs (not 2 digits)
        assert read(src / name, cases[name][0]), name
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "--json", "redact", str(src), str(out),
                                 "--color", "255,0,255"])
    assert r.exit_code == 0, r.output
    for name, (word, _, _) in cases.items():
        assert not read(out / name, word), f"{name}: OCR still reads {word}"
        for picture in viewer_pictures(out / name)[:3]:   # over white, over black, alpha dropped
            filled = (np.abs(picture.astype(int) - [255, 0, 255]).sum(axis=2) < 30)[inks[name]].mean()
            assert filled > 0.995, (name, filled)


def test_verify_covers_the_short_rest_of_a_line_it_covered(tmp_path, monkeypatch, reader):
    """From a walkthrough: with nothing found by the detector, the audit covered "PAGETWO" and
    left the "22" after it legible (OCR reads it at 1.0; 2 characters were below the audit's
    3), and `--strict` passed. A short reading on the line of a cover is covered now; short
    readings elsewhere are still not counted (OCR reads specks as "1" or "l")."""
    import pipeline.detectors as dets
    import pipeline.redact.run as rr

    blind = FakeDetector([], [])
    monkeypatch.setattr(dets, "load_detector", lambda *a, **k: blind)
    monkeypatch.setattr(rr, "build_ppocr", lambda *a, **k: blind)
    from matplotlib import font_manager

    bold = ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans",
                                                                                weight="bold")), 36)
    im = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(im).text((30, 70), "PAGETWO  22", font=bold, fill="black")
    im.save(tmp_path / "p.png")
    # the reader sees two lines here, the second one "22" (this case is what the test is about;
    # with one space, and the image's edge repeated around it, it reads one line "PAGETWO22")
    assert {normalise(r.text) for r in reader.read_views([np.asarray(im)])} >= {"pagetwo", "22"}
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(tmp_path / "p.png"),
                                 str(tmp_path / "o.png"), "--detector", "ppocr", "--verify", "--strict"])
    assert r.exit_code == 0, r.output
    out = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    left = {normalise(x.text) for x in reader.read_views([out])}
    assert not any(t and t in "pagetwo22" for t in left), left
    # a short reading away from every cover is not a finding
    mask = np.zeros((200, 400), bool)
    mask[70:110, 30:230] = True
    near = Reading("22", 0.99, (240.0, 72.0, 290.0, 108.0))
    far = Reading("22", 0.99, (240.0, 150.0, 290.0, 190.0))
    tall = Reading("1", 0.95, (240.0, 20.0, 330.0, 199.0))    # OCR's "1" for a logo beside the line
    wide = Reading("1", 0.95, (235.0, 75.0, 330.0, 105.0))    # ... and for a row of fill-in underscores
    assert reader.legible([near, far, tall, wide], mask) == [near]


def test_a_detectors_line_counts_from_two_characters_read_with_confidence(reader):
    """Lines the detector found (the closer look) are where text is likely: a "40" read there at
    0.8 or more in a box as wide as 2 characters counts (an "x40" on grain), while the same
    reading from OCR's own detector, away from any cover, stays noise; unsure, too wide for 2
    characters, or under the fill, it does not count either."""
    mask = np.zeros((200, 400), bool)
    mask[150:200, :] = True
    forty = Reading("40", 0.97, (100.0, 40.0, 120.0, 52.0))
    unsure = Reading("40", 0.7, (200.0, 40.0, 220.0, 52.0))
    wide = Reading("40", 0.97, (100.0, 80.0, 180.0, 92.0))       # 6.7 heights for 2 characters
    under = Reading("40", 0.97, (100.0, 160.0, 120.0, 172.0))
    word = Reading("ID 48213", 0.6, (200.0, 80.0, 280.0, 92.0))  # 3+ characters: the rule that stays
    assert reader.legible([forty, unsure, wide, under, word], mask, found=True) == [forty, word]
    assert reader.legible([forty, unsure, wide, under, word], mask) == [word]


def _grain_label(path: Path) -> np.ndarray:
    """An 800 x 600 electron-micrograph-like image (smooth variation plus pixel noise of sd 35)
    with a white 15 px "Sample A-17" in it, saved to `path`; its ink mask."""
    w, h = 800, 600
    im = Image.fromarray(em_grain(np.random.default_rng(0), w, h))
    mask = Image.new("L", (w, h))
    for canvas, fill in ((im, (255, 255, 255)), (mask, 255)):
        ImageDraw.Draw(canvas).text((380, 290), "Sample A-17", font=_font(15), fill=fill)
    im.save(path)
    return np.asarray(mask) > 0


def test_small_text_on_heavy_grain_is_audited_without_verify(tmp_path, reader):
    """White small labels on electron-micrograph grain stayed legible after the default redact
    (2 of 37 in bench_redact's large set): DB's map is 0 on them at every pass, and the grain
    hides their strokes from the small-text search. OCR reads them, so the default audits (and
    covers what it reads in) the images that noisy, without --verify."""
    from pipeline.detectors import load_detector
    from pipeline.redact.run import noisy, pass_options

    src = tmp_path / "in"
    src.mkdir()
    ink = _grain_label(src / "grain.png")
    rgb = np.asarray(Image.open(src / "grain.png").convert("RGB"))
    assert noisy(rgb)
    hit = np.zeros(ink.shape, bool)
    for x0, y0, x1, y1 in load_detector("ppocr", **pass_options()).detect([rgb])[0].boxes.astype(int):
        hit[y0:y1, x0:x1] = True
    assert (hit & ink).sum() < 0.1 * ink.sum()                             # every pass misses it
    def read(pictures: list[np.ndarray]) -> str:
        return " ".join(normalise(r.text) for p in pictures for r in reader.read(p))

    assert "samplea17" in read([rgb])                                      # legible in the input ...

    def redact(out: str, *extra: str) -> dict:
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / out),
                                     "--detector", "ppocr", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    summary = redact("out")
    assert summary["audited"] == 1 and summary["audit_covered"] >= 1 and summary["remaining_text"] == 0
    left = read(viewer_pictures(tmp_path / "out" / "grain.png"))
    assert "sample" not in left and "a17" not in left, left                # ... not in the output
    sc = json.loads((tmp_path / "out.audit" / "sidecars" / "grain.png.json").read_text())
    assert sc["verify"]["because"] == "noisy" and sc["verify"]["covered"]
    again = redact("out")                                                  # done: resumed, not redone
    assert again["skipped"] == 1 and again["audited"] == 1
    off = redact("off", "--no-audit-noisy")                                # the detector alone leaves it
    assert off["audited"] == 0 and "samplea17" in read(viewer_pictures(tmp_path / "off" / "grain.png"))
    assert off["settings"] != summary["settings"]                         # outputs of one are not the other's


def test_a_clean_image_is_not_audited_and_builds_no_ocr(tmp_path):
    """Most images are not noisy: the default holds a reader for the ones that are, which must
    cost nothing (no OCR engine built) where none comes."""
    from pipeline.redact.run import Item, RedactConfig, Redactor, noisy

    im = Image.new("RGB", SIZE, (250, 250, 245))
    Image.fromarray(np.where(text_mask()[..., None], 10, np.asarray(im)).astype(np.uint8)).save(tmp_path / "s.png")
    assert not noisy(np.asarray(Image.open(tmp_path / "s.png").convert("RGB")))
    lazy = Reader()
    (tmp_path / "o.audit").mkdir()
    item = Item(str(tmp_path / "s.png"), "s.png", str(tmp_path / "o.png"), str(tmp_path / "o.audit" / "s.png.json"))
    res = Redactor(OneWordDetector(), RedactConfig(), lazy).process(item)
    assert res.status == "redacted" and not res.audited
    assert lazy._ocr is None
    assert "verify" not in json.loads((tmp_path / "o.audit" / "s.png.json").read_text())


def _run_on_line(path: Path, alpha: int | None = None) -> tuple[list[float], np.ndarray]:
    """Grey italic "Acquired 20.08.18 14:37" on a blotchy micrograph, 720 x 160 (an RGBA PNG
    of opacity `alpha` if given): the box of "Acquired 20." (what a detector found) and the quad
    of the rest."""
    import cv2
    from matplotlib import font_manager

    rng = np.random.default_rng(0)
    w, h = 720, 160
    field = 128 + 50 * cv2.resize(rng.normal(0, 1, (h // 6, w // 6)).astype(np.float32), (w, h),
                                  interpolation=cv2.INTER_CUBIC)
    ink = Image.new("L", (w, h))
    draw = ImageDraw.Draw(ink)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Serif:italic"), 30)
    draw.text((20, 60), "Acquired 20.", font=font, fill=255)
    cut = int(20 + draw.textlength("Acquired 20.", font=font))
    draw.text((cut, 60), "08.18 14:37", font=font, fill=255)
    m = np.asarray(ink, np.float32)[..., None] / 255
    grey = (field[..., None] * (1 - m) + 90 * m).clip(0, 255).round().astype(np.uint8)
    rgb = np.repeat(grey, 3, 2)
    if alpha is not None:
        rgb = np.dstack([rgb, np.full(grey.shape, alpha, np.uint8)])
    Image.fromarray(rgb).save(path)
    ys, xs = np.nonzero(np.asarray(ink) > 0)
    first = [float(xs[xs < cut].min() - 4), float(ys.min() - 4), float(cut + 2), float(ys.max() + 4)]
    rest = np.array([[[cut, ys.min()], [xs.max() + 1, ys.min()], [xs.max() + 1, ys.max() + 1], [cut, ys.max() + 1]]], float)
    return first, rest


@pytest.mark.parametrize("alpha", [None, 170], ids=["opaque", "translucent"])
def test_the_audit_reads_on_where_a_covered_line_goes_on(tmp_path, monkeypatch, reader, alpha):
    """A detector boxed "Acquired 20." of a grey timestamp on grain and not "08.18 14:37" after
    it (the benchmark's microscopy image 20: no pass of the default boxes it), and OCR's own detector finds
    nothing of it in the output either, while a viewer reads it where it is. The audit reads
    beyond each cover's ends (`Reader.read_on`) and covers what it reads there, round after
    round: nothing of the line is read in place in any picture a viewer may show of an opaque
    or a translucent RGBA PNG, and the cover stays on its line."""
    from pipeline.boxes import grow_quads
    from pipeline.legibility import IN_PLACE_MARGIN
    from pipeline.redact.run import RedactConfig, Redactor, plan, run_local

    src = tmp_path / "stamp.png"
    first, rest = _run_on_line(src, alpha)
    crop = grow_quads(rest, 0.0, IN_PLACE_MARGIN)

    def read_rest(path: Path) -> list[str]:   # per viewer picture (over white, over black, alpha dropped, alpha)
        return [normalise(t) for p in viewer_pictures(path) for t, _ in reader.read_quads(p, crop)]

    assert any(t.startswith("081814") for t in read_rest(src))         # legible in the input

    def redact(name: str) -> tuple:
        items, _, _ = plan(str(src), tmp_path / name / "out.png")
        (res,) = list(run_local(Redactor(FakeDetector([first]), RedactConfig(verify=True), verifier=reader),
                                items, workers=1))
        return res, tmp_path / name / "out.png"

    with monkeypatch.context() as m:                                    # without reading on: left legible
        m.setattr(Reader, "read_on", lambda self, *a, **k: [])
        res, out = redact("without")
        assert res.status == "redacted" and res.remaining == 0 and max(map(len, read_rest(out))) >= 6
    crops, inputs = reader._engine().text_rec.memory, reader._tiles
    before = crops.hits, crops.misses, inputs.hits
    res, out = redact("with")
    assert res.status == "redacted" and res.audit_covered >= 1 and max(map(len, read_rest(out))) < 2
    # what the audit read before comes from the reader's memory (the first round's output, the
    # same bytes as the run without reading on; the strips of the first cover in the second round)
    assert crops.hits > before[0] and inputs.hits > before[2] and crops.misses > before[1]
    changed = (np.asarray(Image.open(out).convert("RGB")) != np.asarray(Image.open(src).convert("RGB"))).any(-1)
    ys, xs = np.nonzero(changed)
    band = 0.25 * (first[3] - first[1])                                # the pad and a little more
    assert ys.min() >= first[1] - band and ys.max() <= first[3] + band and xs.max() <= rest[0, 1, 0] + 2 * band


def test_reading_on_skips_blank_paper_and_what_is_covered(reader, monkeypatch):
    """Reading on costs a recognition per strip (~25 ms): a strip of blank paper after a line's
    end, or one that meets the next cover at once, is not read; text after a cover is, and its
    reading's box runs from the cover to the text's end."""
    im = Image.new("RGB", (600, 120), "white")
    ImageDraw.Draw(im).text((300, 40), "Tuesday", font=_font(30), fill="black")
    rgb = np.asarray(im)
    covered = np.zeros(rgb.shape[:2], bool)
    covered[38:78, 40:200] = True                   # a covered line with blank paper around it
    shape = np.array([[[40.0, 38.0], [200.0, 38.0], [200.0, 78.0], [40.0, 78.0]]])
    crops: list[int] = []
    real = Reader._recognise
    monkeypatch.setattr(Reader, "_recognise", lambda self, c, *a, **k: crops.append(len(c)) or real(self, c, *a, **k))
    assert reader.read_on(rgb, shape, covered) == [] and sum(crops) == 0
    covered[38:78, 200:292] = True                  # ... now reaching to the word: its rest is read
    shape[0, 1:3, 0] = 292.0
    (r,) = reader.read_on(rgb, shape, covered)
    assert normalise(r.text) == "tuesday" and r.box[0] == 292.0 and 400 < r.box[2] < 470 and sum(crops) == 1


def test_verify_reads_the_contrast_look_and_covers_a_watermark_db_cannot_see(tmp_path, reader):
    """A translucent "© Lab 2024" over a 362 px fluorescence-like micrograph (bench_redact's
    small set, image 33) stayed legible in place after `redact --verify`: DB's map is 0 on it at
    every pass, and OCR, whose detector is DB, read nothing there either. On the picture's
    local-contrast view (CLAHE) DB finds it as a line; `--verify` reads the lines of that look
    in every round's output and covers what reads as text. An output audited before the look
    is not taken as done."""
    from pipeline.synth import SynthConfig, synth_image

    cfg = SynthConfig(n_images=40, seed=4242, width=(128, 384), background_kinds=("fluorescence", "brightfield", "em"),
                      kinds=("sample_id", "timestamp", "scale_bar", "instrument", "corner_label", "watermark"))
    r = synth_image(33, cfg)
    k = r.texts.index("© Lab 2024")
    ys, xs = np.nonzero(r.ink == k + 1)
    quad = np.array([[[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.max() + 1, ys.max() + 1], [xs.min(), ys.max() + 1]]], float)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(r.image).save(src / "cell.png")

    def in_place(path: Path) -> str:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        return " ".join(normalise(x.text) for x in reader.read_lines(rgb, quad))

    def redact(out: str, *extra: str) -> dict:
        res = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(tmp_path / out),
                                       "--detector", "ppocr", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    assert "lab2024" in in_place(src / "cell.png")                                  # a viewer reads it ...
    redact("plain")
    assert "lab" in in_place(tmp_path / "plain" / "cell.png")                       # ... the default's passes leave "Lab"
    summary = redact("checked", "--verify")
    assert summary["audit_covered"] >= 1 and summary["remaining_text"] == 0
    assert "lab" not in in_place(tmp_path / "checked" / "cell.png")                 # --verify covers it
    sidecar = tmp_path / "checked.audit" / "sidecars" / "cell.png.json"
    sc = json.loads(sidecar.read_text())
    assert sc["verify"]["contrast_look"] >= 1 and sc["verify"]["covered"]
    assert redact("checked", "--verify")["skipped"] == 1                            # done is done ...
    del sc["verify"]["contrast_look"]
    sidecar.write_text(json.dumps(sc))
    assert redact("checked", "--verify")["redacted"] == 1                           # ... unless audited before the look
