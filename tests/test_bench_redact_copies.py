"""bench_redact's lossless devset copies stay in its work folder, whatever the image paths say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_redact.py"


def test_copies_of_images_outside_the_set_stay_under_work(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_redact", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    elsewhere = tmp_path / "photos" / "a.jpg"          # a record pointing out of its source folder
    elsewhere.parent.mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(elsewhere)
    src = tmp_path / "x" / "set" / "scene"
    src.mkdir(parents=True)
    rec = {"image": "../../../photos/a.jpg", "width": 30, "height": 20, "boxes": [[2, 2, 10, 8]]}
    (src / "boxes.jsonl").write_text(json.dumps(rec) + "\n")
    root, recs = mod.lossless_copies(tmp_path / "x" / "set", tmp_path / "work")
    (rel, _), = recs
    copy = root / rel
    assert copy.is_file() and copy.resolve().is_relative_to((tmp_path / "work").resolve())
    assert not (tmp_path / "photos" / "a.png").exists()          # nothing written beside the original


def test_two_images_with_the_same_name_get_two_copies(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_redact", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "set" / "scene"
    for i, folder in enumerate(("images", "more")):
        (src / folder).mkdir(parents=True)
        Image.fromarray(np.full((20, 30, 3), 50 + 100 * i, np.uint8)).save(src / folder / "a.jpg")
    recs = [{"image": f"{f}/a.jpg", "width": 30, "height": 20, "boxes": []} for f in ("images", "more")]
    (src / "boxes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    root, out = mod.lossless_copies(tmp_path / "set", tmp_path / "work")
    rels = [rel for rel, _ in out]
    assert len(set(rels)) == 2 and rels[0] == "scene/images/a.png"
    assert [int(np.asarray(Image.open(root / r))[0, 0, 0]) for r in rels] == [50, 150]


def test_two_bundles_with_the_same_file_name_keep_two_results() -> None:
    """Every benchmark run writes its model as bundle.zip: two of them must not share a result row."""
    spec = importlib.util.spec_from_file_location("bench_redact", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    labels: list[str] = []
    for name in ("default", "/runs/a/bundle.zip", "/runs/b/bundle.zip", "/runs/b/bundle.zip@1"):
        labels.append(mod.unique_label(name, labels))
    assert labels == ["default", "bundle", "bundle#2", "/runs/b/bundle.zip@1"]


def test_gaps_split_lost_coverage_and_over_redaction_by_where_they_are() -> None:
    """A found word with an uncovered edge, a missed word, fill hugging a label and fill far away."""
    from pipeline.boxes import union_mask
    from pipeline.formats import LabelledImage

    spec = importlib.util.spec_from_file_location("bench_redact", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = LabelledImage("a.png", 100, 60, boxes=[[10, 10, 30, 20], [60, 10, 80, 20]])
    red = np.zeros((60, 100), bool)
    red[10:20, 10:28] = True        # word 1: 18 of 20 columns covered -> 20 px uncovered at a found word
    red[20:22, 10:30] = True        # 2 rows of fill just under word 1: near
    red[50:55, 0:10] = True         # 50 px far from any label
    g = mod.gaps(red, rec, union_mask(rec.boxes, 100, 60))
    assert g == {"uncovered_missed": 200, "uncovered_margins": 20, "over_near": 40, "over_far": 50}
