"""YOLO detection labels: `labels/<image stem>.txt`, one `class cx cy w h` line per box (fractions
of the image size), one image list per split (`train.txt`, `val.txt`, `test.txt`: `./images/...`
paths, relative to the folder as Ultralytics reads a list) and a `data.yaml` naming the lists
and the classes. Before, data.yaml said `train: images` and `val: images`, so a trainer
validated on its own training images. YOLO has no don't-care flag, so a don't-care box is left
out (written as text it would teach that an illegible region is a word to find), and loaded
records have none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.boxes import cxcywh_norm_to_xyxy, xyxy_to_cxcywh_norm
from pipeline.config import SPLITS
from pipeline.formats.devset import LabelledImage, is_export_image
from pipeline.io import atomic_write_text
from pipeline.listing import is_hidden_name

FILE_NAME = "data.yaml"
FILES = (FILE_NAME, *(f"{s}.txt" for s in SPLITS))   # what `save` may write at the top of its folder


def _by_split(records: Sequence[LabelledImage]) -> dict[str, list[LabelledImage]]:
    """Records per split, in SPLITS order, only splits that have some; a record without a split
    (a library caller's) counts as train: never as validation data it was not chosen to be."""
    out: dict[str, list[LabelledImage]] = {s: [] for s in SPLITS}
    for rec in records:
        out[rec.split or "train"].append(rec)
    return {s: recs for s, recs in out.items() if recs}


def outputs(records: Sequence[LabelledImage]) -> set[str]:
    """The files of `FILES` that `save(records)` writes: data.yaml and the lists of the splits present."""
    return {FILE_NAME, *(f"{s}.txt" for s in _by_split(records))}


def save(records: Sequence[LabelledImage], out: str | Path, classes: Sequence[str] = ("text",)) -> Path:
    """`out/labels/*.txt` per record (named after its image's stem), `out/<split>.txt` per split
    present and `out/data.yaml` naming them (a split with no images has no key: a trainer then
    says what is missing instead of using other images for it)."""
    out = Path(out)
    labels_dir = out / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        lines = [f"{lab} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
                 for lab, (cx, cy, w, h), ign in zip(rec.class_ids(), xyxy_to_cxcywh_norm(rec.boxes, rec.width, rec.height),
                                                     rec.ignore) if not ign]
        atomic_write_text(labels_dir / (Path(rec.image).stem + ".txt"), "\n".join(lines) + ("\n" if lines else ""))
    lists = {}
    for split, recs in _by_split(records).items():
        lists[split] = f"{split}.txt"
        atomic_write_text(out / lists[split], "".join(f"./{rec.image}\n" for rec in recs))
    # quoted (JSON strings are YAML): a class named "a: b" or "#1" broke the file for every reader
    names = "\n".join(f"  {i}: {json.dumps(c, ensure_ascii=False)}" for i, c in enumerate(classes))
    keys = "".join(f"{split}: {name}\n" for split, name in lists.items())
    target = out / FILE_NAME
    # no `path:` key: Ultralytics then reads the lists beside data.yaml, wherever the folder is
    # moved or shared (an absolute `path:` sent it back to where the export was written)
    atomic_write_text(target, f"{keys}names:\n{names}\n")
    return target


def is_export(path: Path) -> bool:
    """Whether `path` (data.yaml or a split list) is a `textloop export`'s: a list naming only
    exported images, or a data.yaml of nothing but `path`, the split keys (`images` as older
    exports wrote, or a split list) and `names`."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    if path.name != FILE_NAME:
        return all(line.startswith("./") and is_export_image(line[2:]) for line in lines)
    for line in lines:
        if line.startswith(" "):          # an entry of `names`
            continue
        key, _, value = line.partition(":")
        if key in SPLITS:
            if value.strip() not in ("images", f"{key}.txt"):
                return False
        elif key not in ("path", "names"):
            return False
    return True


def load(path: str | Path) -> list[LabelledImage]:
    """Records of a YOLO folder (`path` is it or its data.yaml): every image in `images/` with its
    label file (an image without one has no boxes); sizes are read from the image files."""
    from PIL import Image

    root = Path(path)
    if root.is_file():
        root = root.parent
    out = []
    for img in sorted(p for p in (root / "images").iterdir() if p.is_file() and not is_hidden_name(p.name)):
        with Image.open(img) as im:
            w, h = im.size
        lab_file = root / "labels" / f"{img.stem}.txt"
        rows = [line.split() for line in lab_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if lab_file.exists() else []
        try:
            labels = [int(r[0]) for r in rows]
            norm = np.array([[float(v) for v in r[1:5]] for r in rows]).reshape(-1, 4)
        except (ValueError, IndexError):
            raise ValueError(f"{lab_file}: lines must be `class cx cy w h`") from None
        out.append(LabelledImage(image=f"images/{img.name}", width=w, height=h,
                                 boxes=cxcywh_norm_to_xyxy(norm, w, h), source=root.name,
                                 labels=tuple(labels) if any(labels) else ()))
    return out
