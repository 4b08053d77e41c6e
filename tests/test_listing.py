"""One listing rule for every stage that reads an image folder (`pipeline.listing`): harvest,
predict, synth backgrounds and redact (folder and glob) take the same images from one tree."""

from __future__ import annotations

import json
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


def test_names_that_are_not_utf8_are_rejected_where_the_catalog_keeps_them_and_redacted_elsewhere(tmp_path):
    """One such name stopped a whole harvest with a traceback (SQLite refuses the string)."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    src = tmp_path / "in"
    _img(src / "a.png")
    bad_file, bad_dir = os.fsdecode(b"x\xff.png"), os.fsdecode(b"d\xfe")
    _img(src / bad_file)
    _img(src / bad_dir / "inner.png")
    (src / os.fsdecode(b"n\xfd.txt")).write_text("not an image: ignored, as any other name would be")
    ignored: list[str] = []
    items, rejects = expand_sources([str(src)], ignored)
    assert [Path(i.source).name for i in items] == ["a.png"]
    assert sorted((Path(r.shown).name, r.reason) for r in rejects) == [("d\\xfe", "name_not_utf8"), ("x\\xff.png", "name_not_utf8")]
    assert [rel for _, rel in list_image_files([src])] == ["a.png"]
    # redact keeps each file under its own bytes (its log and manifest show them as \xff)
    assert sorted(it.rel for it in plan_input(str(src), tmp_path / "out").items) == ["a.png", f"{bad_dir}/inner.png", bad_file]
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "harvest", str(src)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["new"] == 1 and out["rejected"] == {"name_not_utf8": 2}
    assert out["ignored_files"] == [str(src / "n\\xfd.txt")]
