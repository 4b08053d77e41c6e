"""One listing rule for every stage that reads an image folder (`pipeline.listing`): harvest,
predict, synth backgrounds and redact (folder and glob) take the same images from one tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.harvest import expand_sources
from pipeline.listing import IMAGE_EXTENSIONS, Listed, Skipped, iter_glob
from pipeline.predict import list_image_files
from pipeline.redact import codec
from pipeline.redact.run import plan_input
from pipeline.synth import list_images


def _img(path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path, format=fmt)


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    _img(src / "a.png")
    _img(src / "b.JPG", "JPEG")
    _img(src / "c.jpe", "JPEG")          # was taken by redact only: every stage takes it now
    _img(src / "sub" / "d.webp", "WEBP")
    _img(src / ".hidden.png")            # hidden: never listed, but named among the ignored
    _img(src / ".cache" / "e.png")       # inside a hidden folder: never listed (the folder is named)
    (src / ".DS_Store").write_bytes(b"\0")   # hidden and not an image: silent
    (src / "notes.txt").write_text("not an image")
    os.mkfifo(src / "pipe.png")          # a FIFO with an image name: reported, never opened
    _img(tmp_path / "outside.png")
    (src / "leak.png").symlink_to(tmp_path / "outside.png")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return src


EXPECTED = ["a.png", "b.JPG", "c.jpe", "sub/d.webp"]


def test_every_stage_takes_the_same_images(tmp_path):
    src = _tree(tmp_path)
    ignored: list[str] = []
    items, rejects = expand_sources([str(src)], ignored)
    assert sorted(Path(i.source).relative_to(src).as_posix() for i in items) == EXPECTED
    # named, as redact names it (below): a hidden scan left out of a redacted copy is not a secret
    assert sorted(Path(p).name for p in ignored) == [".cache", ".hidden.png", "notes.txt"]
    assert {Path(r.source).name: r.reason for r in rejects} == {
        "pipe.png": "not_a_regular_file", "leak.png": "outside_tree", "gone.png": "dangling_symlink"}
    assert sorted(rel for _, rel in list_image_files([src])) == EXPECTED
    assert sorted(p.relative_to(src).as_posix() for p in list_images(src)) == EXPECTED
    plan = plan_input(str(src), tmp_path / "out")
    assert sorted(it.rel for it in plan.items) == EXPECTED
    assert sorted(Path(p).name for p in plan.ignored) == [".cache", ".hidden.png", "notes.txt"]


def test_a_hidden_folder_reached_through_a_link_is_listed_not_ignored(tmp_path):
    src = tmp_path / "in"
    _img(src / ".raw" / "e.png")
    (src / "raw").symlink_to(src / ".raw")
    plan = plan_input(str(src), tmp_path / "out")
    assert [it.rel for it in plan.items] == ["raw/e.png"] and plan.ignored == []


def test_redact_glob_input_follows_the_same_rule(tmp_path):
    src = _tree(tmp_path)
    entries = list(iter_glob(str(src / "**" / "*.png"), src))
    assert sorted(e.rel for e in entries if isinstance(e, Listed)) == ["a.png"]
    assert {e.rel: e.reason for e in entries if isinstance(e, Skipped)} == {
        "pipe.png": "not_a_regular_file", "leak.png": "outside_tree", "gone.png": "dangling_symlink"}


def test_the_listing_extensions_are_the_ones_redact_can_write():
    assert set(IMAGE_EXTENSIONS) == set(codec.EXTENSIONS)
