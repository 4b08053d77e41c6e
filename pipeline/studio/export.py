"""`textloop export`: the human-labelled dataset for use elsewhere (jsonl | coco | yolo).

Labelled and verified-empty images (the latter with no boxes) from the catalog's annotations.
Images are hard-linked (copied across filesystems) into `OUT/images/`; an image with an EXIF
orientation is written upright instead, because every box is in the upright frame.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.formats import LabelledImage, atomic_write_text, write_jsonl
from pipeline.workspace import Workspace

FORMATS = ("jsonl", "coco", "yolo")


def labelled_rows(ws: Workspace, split: str | None = None, sources: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per image: its latest human annotation (state submitted or empty); excluded
    images are not part of the dataset."""
    with ws.catalog() as cat:
        return list(cat.latest_annotations(include_excluded=False, split=split, sources=sources).values())


def _place_image(ws: Workspace, row: dict[str, Any], dest_dir: Path) -> str:
    src = ws.abspath(row["path"])
    name = f"{row['image_id']}{src.suffix}"
    if int(row.get("orientation") or 1) != 1:
        from PIL import Image, ImageOps

        name = f"{row['image_id']}.png"
        dest = dest_dir / name
        if not dest.exists():
            with Image.open(src) as im:
                up = ImageOps.exif_transpose(im)
                tmp = dest.with_suffix(".tmp.png")
                up.save(tmp, format="PNG")
                os.replace(tmp, dest)
        return name
    dest = dest_dir / name
    if not dest.exists():
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    return name


def export(ws: Workspace, out: Path, fmt: str = "jsonl", split: str | None = None, classes: tuple[str, ...] = ("text",)) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = labelled_rows(ws, split)
    records: list[tuple[LabelledImage, list[int]]] = []
    for r in rows:
        name = _place_image(ws, r, images_dir)
        boxes = json.loads(r["boxes"])
        labels = json.loads(r["labels"]) or [0] * len(boxes)
        rec = LabelledImage(image=f"images/{name}", width=int(r["width"]), height=int(r["height"]), boxes=boxes,
                            ignore=json.loads(r["ignore"]) or [], source=r["source"])
        records.append((rec, [int(x) for x in labels]))
    n_boxes = sum(len(rec.boxes) for rec, _ in records)
    if fmt == "jsonl":
        write_jsonl(out / "boxes.jsonl", [rec for rec, _ in records])
        target = out / "boxes.jsonl"
    elif fmt == "coco":
        coco: dict[str, Any] = {"images": [], "annotations": [],
                                "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
        aid = 1
        for k, (rec, labels) in enumerate(records, 1):
            coco["images"].append({"id": k, "file_name": rec.image, "width": rec.width, "height": rec.height})
            for box, lab, ign in zip(rec.boxes, labels, rec.ignore):
                x0, y0, x1, y1 = (float(v) for v in box)
                coco["annotations"].append({"id": aid, "image_id": k, "category_id": lab + 1, "iscrowd": int(bool(ign)),
                                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                            "area": round((x1 - x0) * (y1 - y0), 2)})
                aid += 1
        target = out / "annotations.json"
        atomic_write_text(target, json.dumps(coco))
    else:
        labels_dir = out / "labels"
        labels_dir.mkdir(parents=True, exist_ok=True)
        for rec, labels in records:
            lines = []
            for box, lab in zip(rec.boxes, labels):
                x0, y0, x1, y1 = (float(v) for v in box)
                lines.append(f"{lab} {(x0 + x1) / 2 / rec.width:.6f} {(y0 + y1) / 2 / rec.height:.6f} "
                             f"{(x1 - x0) / rec.width:.6f} {(y1 - y0) / rec.height:.6f}")
            atomic_write_text(labels_dir / (Path(rec.image).stem + ".txt"), "\n".join(lines) + ("\n" if lines else ""))
        names = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
        target = out / "data.yaml"
        atomic_write_text(target, f"path: {out.resolve()}\ntrain: images\nval: images\nnames:\n{names}\n")
    return {"format": fmt, "out": str(target), "images": len(records), "boxes": n_boxes,
            "empty_images": sum(1 for rec, _ in records if len(rec.boxes) == 0)}
