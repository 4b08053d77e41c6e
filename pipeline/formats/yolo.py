"""YOLO detection labels: `labels/<image stem>.txt`, one `class cx cy w h` line per box (fractions
of the image size), and a `data.yaml` naming the classes. YOLO has no don't-care flag, so a
don't-care box is left out (written as text it would teach that an illegible region is a word
to find), and loaded records have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.boxes import cxcywh_norm_to_xyxy, xyxy_to_cxcywh_norm
from pipeline.formats.devset import LabelledImage
from pipeline.io import atomic_write_text

FILE_NAME = "data.yaml"


def save(records: Sequence[LabelledImage], out: str | Path, classes: Sequence[str] = ("text",)) -> Path:
    """`out/labels/*.txt` per record (named after its image's stem) and `out/data.yaml`."""
    out = Path(out)
    labels_dir = out / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        lines = [f"{lab} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
                 for lab, (cx, cy, w, h), ign in zip(rec.class_ids(), xyxy_to_cxcywh_norm(rec.boxes, rec.width, rec.height),
                                                     rec.ignore) if not ign]
        atomic_write_text(labels_dir / (Path(rec.image).stem + ".txt"), "\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
    target = out / FILE_NAME
    atomic_write_text(target, f"path: {out.resolve()}\ntrain: images\nval: images\nnames:\n{names}\n")
    return target


def load(path: str | Path) -> list[LabelledImage]:
    """Records of a YOLO folder (`path` is it or its data.yaml): every image in `images/` with its
    label file (an image without one has no boxes); sizes are read from the image files."""
    from PIL import Image

    root = Path(path)
    if root.is_file():
        root = root.parent
    out = []
    for img in sorted(p for p in (root / "images").iterdir() if p.is_file() and not p.name.startswith(".")):
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
