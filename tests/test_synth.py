"""Synthetic overlays: exact ink boxes, tightness, determinism, idempotent output folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.boxes import area, polygon_area, quads_mask, to_int_pixels
from pipeline.formats import read_jsonl
from pipeline.imaging import load_rgb
from pipeline.synth import SynthConfig, generate, render_overlays, synth_image

SMALL = SynthConfig(n_images=4, seed=7, width=(160, 320), overlays=(4, 8), p_empty=0.0,
                    p_rotate=0.5, p_shadow=0.3, p_plate=0.3)


def _cover_count(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    count = np.zeros((h, w), dtype=np.int32)
    for x0, y0, x1, y1 in to_int_pixels(boxes, w, h):
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize("granularity", ["line", "word"])
def test_every_ink_pixel_in_exactly_one_box_and_boxes_tight(granularity: str) -> None:
    cfg = dataclasses.replace(SMALL, granularity=granularity)
    total = 0
    for i in range(6):
        r = synth_image(i, cfg)
        h, w = r.ink.shape
        count = _cover_count(r.boxes, h, w)
        ink = r.ink > 0
        assert (count[ink] == 1).all()
        for k, (x0, y0, x1, y1) in enumerate(to_int_pixels(r.boxes, w, h)):
            own = r.ink == k + 1
            assert own[y0:y1, x0:x1].sum() == own.sum()          # its ink is inside its box
            ys, xs = np.nonzero(own)
            margins = (xs.min() - x0, ys.min() - y0, x1 - 1 - xs.max(), y1 - 1 - ys.max())
            assert max(margins) <= 2, margins                      # tight on all four sides
        if granularity == "word":
            assert all(t and " " not in t for t in r.texts)
        total += len(r.boxes)
    assert total > 10


def test_rotated_text_carries_its_rotated_rectangle_to_the_training_polygons(tmp_path: Path) -> None:
    """A tilted watermark's box is mostly background; its `polys` entry holds all its ink in far
    less area, survives boxes.jsonl, and is the polygon training shrinks (upright text: the box)."""
    cfg = dataclasses.replace(SMALL, kinds=("watermark", "sample_id"), n_images=6, width=(320, 480))
    rotated = upright = 0
    ratios: list[float] = []
    for i in range(cfg.n_images):
        r = synth_image(i, cfg)
        h, w = r.ink.shape
        assert len(r.polys) == len(r.boxes)
        for k, (box, poly) in enumerate(zip(r.boxes, r.polys)):
            if not poly:
                upright += 1
                continue
            rotated += 1
            quad = np.asarray(poly).reshape(1, 4, 2)
            own = r.ink == k + 1
            assert not (own & ~quads_mask(quad, w, h)).any()          # every ink pixel inside
            ratios.append(polygon_area(quad)[0] / area(box[None])[0])
    assert rotated >= 3 and upright >= 3
    assert max(ratios) < 1.02 and min(ratios) < 0.6   # never looser (but for pixel corners), often far tighter
    generate(tmp_path / "s", cfg)
    rec = next(r for r in read_jsonl(tmp_path / "s/boxes.jsonl") if any(r.polys))
    polys = rec.polygons()
    for poly, p, (x0, y0, x1, y1) in zip(polys, rec.polys, rec.boxes):
        expect = np.asarray(p).reshape(-1, 2) if p else np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        np.testing.assert_allclose(poly, expect)


def test_changed_pixels_are_boxed_when_no_plates_or_bars() -> None:
    """Crosses the pixel boundary: whatever differs from the background is text inside one box."""
    cfg = dataclasses.replace(SMALL, p_plate=0.0, scale_bars=False)
    rng = np.random.default_rng(3)
    bg = np.full((200, 300, 3), 90, dtype=np.uint8)
    r = render_overlays(bg, rng, cfg, n_overlays=8)
    changed = (r.image != bg).any(axis=-1)
    assert changed.sum() > 100
    count = _cover_count(r.boxes, 200, 300)
    assert (count[changed] == 1).all()
    for x0, y0, x1, y1 in to_int_pixels(r.boxes, 300, 200):
        ys, xs = np.nonzero(changed[y0:y1, x0:x1])
        assert len(ys) and xs.min() <= 2 and ys.min() <= 2 and x1 - x0 - 1 - xs.max() <= 2 and y1 - y0 - 1 - ys.max() <= 2


def test_unicode_and_kinds_render() -> None:
    cfg = dataclasses.replace(SMALL, kinds=("scale_bar", "instrument"), n_images=1)
    texts = [t for i in range(8) for t in synth_image(i, cfg).texts]
    assert any("µm" in t for t in texts)
    with pytest.raises(ValueError):
        SynthConfig(kinds=("nope",))


def test_config_errors_name_the_one_bad_setting() -> None:
    with pytest.raises(ValueError, match=r"width must be .* got 0,0"):
        SynthConfig(width=(0, 0))
    with pytest.raises(ValueError, match=r"number of images must be >= 0, got -1"):
        SynthConfig(n_images=-1)


def test_generate_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", SMALL)
    generate(tmp_path / "b", SMALL)
    assert not a.skipped and a.boxes > 0
    assert (tmp_path / "a/boxes.jsonl").read_bytes() == (tmp_path / "b/boxes.jsonl").read_bytes()
    for p in sorted((tmp_path / "a/images").iterdir()):
        assert p.read_bytes() == (tmp_path / "b/images" / p.name).read_bytes()
    recs = read_jsonl(tmp_path / "a/boxes.jsonl")
    assert len(recs) == SMALL.n_images
    img = load_rgb(tmp_path / "a" / recs[0].image)
    assert img.shape[:2] == (recs[0].height, recs[0].width)
    mtime = (tmp_path / "a/boxes.jsonl").stat().st_mtime_ns
    again = generate(tmp_path / "a", SMALL)
    assert again.skipped and again.boxes == a.boxes and (tmp_path / "a/boxes.jsonl").stat().st_mtime_ns == mtime
    generate(tmp_path / "c", dataclasses.replace(SMALL, seed=8))
    assert (tmp_path / "c/boxes.jsonl").read_bytes() != (tmp_path / "a/boxes.jsonl").read_bytes()
    assert json.loads((tmp_path / "a/manifest.json").read_text())["config"]["seed"] == 7
    # made again smaller, the set holds only its own images (the larger one's stayed behind)
    generate(tmp_path / "a", dataclasses.replace(SMALL, n_images=SMALL.n_images - 1))
    assert len(list((tmp_path / "a/images").iterdir())) == SMALL.n_images - 1


def test_an_interrupted_generation_is_never_read_as_a_finished_set(ws, tmp_path: Path) -> None:
    """Ctrl-C while a set was rewritten with other options left its new images beside the old
    boxes.jsonl: training read them as labelled, and the old options' rerun took the folder as
    finished. `train --synth NAME` regenerated an interrupted set with its own 400 images."""
    from pipeline.synth import check_complete
    from pipeline.train.workspace import workspace_training_data

    d = ws.synth_dir("mine")
    generate(d, SMALL)
    old_labels = (d / "boxes.jsonl").read_bytes()

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(d, dataclasses.replace(SMALL, seed=8), progress=stop)
    assert not (d / "boxes.jsonl").exists() and not (d / "manifest.json").exists()
    with pytest.raises(ValueError, match=r"mine is incomplete .* run `textloop synth` with the same options"):
        workspace_training_data(ws, synth_sets=("mine",))
    assert not generate(d, SMALL).skipped                       # the old options: made again, not "up to date"
    assert (d / "boxes.jsonl").read_bytes() == old_labels
    check_complete(d)                                           # finished: no marker left
    assert len(workspace_training_data(ws, synth_sets=("mine",))[0]) == SMALL.n_images


def test_backgrounds_folder_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import os

    from PIL import Image

    (tmp_path / "bg").mkdir()
    Image.fromarray(np.full((100, 120, 3), (10, 200, 30), np.uint8)).save(tmp_path / "bg/x.png")
    os.mkfifo(tmp_path / "bg" / "pipe.png")
    (tmp_path / "bg" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    from pipeline.synth import list_images

    cfg = dataclasses.replace(SMALL, real_background_fraction=1.0, n_images=1, p_empty=1.0)
    with caplog.at_level("WARNING"):
        found = list_images(tmp_path / "bg")
    assert [p.name for p in found] == ["x.png"]   # the FIFO is never opened, and both are named
    assert "pipe.png: background skipped (not_a_regular_file" in caplog.text
    assert "gone.png: background skipped (dangling_symlink" in caplog.text
    r = synth_image(0, cfg, found)
    assert len(r.boxes) == 0
    assert (np.abs(r.image.astype(int) - (10, 200, 30)) <= 1).all()


def test_workspace_backgrounds_only_text_free_images(ws, tmp_path: Path) -> None:
    """Only images the detector finds empty (or humans verified empty) become backgrounds."""
    from PIL import Image

    from pipeline.boxes import Detections
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.synth import workspace_backgrounds
    from tests.fakes import FakeDetector

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(src / "clean.png")
    Image.fromarray(np.full((40, 60, 3), 10, np.uint8)).save(src / "texty.png")
    harvest(ws, [str(src)], HarvestConfig())

    dark_has_text = FakeDetector(lambda im: Detections([[1, 1, 9, 9]], [0.9]) if im.mean() < 100 else Detections())
    bgs = workspace_backgrounds(ws, detector=dark_has_text)
    assert len(bgs) == 1 and load_rgb(bgs[0]).mean() > 100


def test_synth_counts_the_backgrounds_it_could_use(tmp_path: Path) -> None:
    """`synth --backgrounds` said "3 real backgrounds available" when 2 of the 3 were unreadable."""
    from PIL import Image

    from pipeline.synth import generate, list_images

    (tmp_path / "bg").mkdir()
    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(tmp_path / "bg/good.png")
    (tmp_path / "bg/bad1.png").write_bytes(b"not a png")
    (tmp_path / "bg/bad2.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = dataclasses.replace(SMALL, real_background_fraction=1.0, n_images=12)
    s = generate(tmp_path / "out", cfg, list_images(tmp_path / "bg"))
    assert s.backgrounds == 3 and s.unusable_backgrounds == 2
    assert 0 < s.on_real_backgrounds < 12      # the unreadable draws fell back to procedural ones
    again = generate(tmp_path / "out", cfg, list_images(tmp_path / "bg"))
    assert again.skipped and (again.on_real_backgrounds, again.unusable_backgrounds) == (s.on_real_backgrounds, 2)


def test_from_workspace_uses_verified_text_free_images_and_says_when_there_are_none(tmp_path: Path) -> None:
    """`synth --from-workspace` on a workspace with no text-free image fell back to procedural
    backgrounds without a word; an image a human verified as text-free is painted on."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.formats import LabelledImage, write_jsonl
    from tests.imagegen import noise_image

    ws = str(tmp_path / "ws")
    args = ["synth", "-n", "1", "--width", "96", "--from-workspace"]
    r = CliRunner().invoke(app, ["-w", ws, *args, "--name", "none"])
    assert r.exit_code == 0 and "no workspace image is verified text-free" in " ".join(r.stderr.split()), r.output
    (tmp_path / "lab").mkdir()
    noise_image(3, (120, 90)).save(tmp_path / "lab" / "plain.png")
    write_jsonl(tmp_path / "lab" / "boxes.jsonl", [LabelledImage("plain.png", 120, 90)])   # labelled: no text
    assert CliRunner().invoke(app, ["-w", ws, "import", str(tmp_path / "lab" / "boxes.jsonl")]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", ws, "--json", *args, "--name", "real"])
    assert r.exit_code == 0 and json.loads(r.stdout)["on_real_backgrounds"] == 1, r.output
    assert "warning" not in r.stderr
