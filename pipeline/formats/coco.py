"""COCO detection JSON: `images` (id, file_name, width, height), `annotations` (image_id, bbox
[x, y, w, h], category_id, iscrowd / ignore -> don't-care, and a one-part polygon
`segmentation` <-> the record's `polys`: rotated and quadrilateral text keeps its shape) and
`categories`.

Don't-care boxes are written as `iscrowd: 1`; class index k is category id k + 1 (COCO ids
start at 1). A box's transcription is COCO-Text's `utf8_string`; an image entry's `split`,
`original_name` and `original_source` (written when known) are what `textloop export` knows of
the image, so importing the export keeps each image in its split.

Reading is strict about references: an annotation whose `image_id` is not an image of the file,
or whose `category_id` is not one of its `categories` (when it lists any), is a problem, not a
silent drop or a silent "text".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import xywh_to_xyxy, xyxy_to_xywh
from pipeline.config import SPLITS
from pipeline.formats.devset import LabelledImage, is_export_image, is_polygon
from pipeline.io import atomic_write_text

FILE_NAME = "annotations.json"
FILES = (FILE_NAME,)   # what `save` may write at the top of its folder
_IMAGE_KEYS = ("split", "original_name", "original_source")


def to_dict(records: Sequence[LabelledImage], classes: Sequence[str] = ("text",)) -> dict[str, Any]:
    """The COCO document for `records` (`file_name` is each record's `image`)."""
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    aid = 1
    for k, rec in enumerate(records, 1):
        entry: dict[str, Any] = {"id": k, "file_name": rec.image, "width": rec.width, "height": rec.height}
        entry.update({key: getattr(rec, key) for key in _IMAGE_KEYS if getattr(rec, key)})
        coco["images"].append(entry)
        polys = rec.polys if len(rec.polys) == len(rec.boxes) else [()] * len(rec.boxes)
        texts = rec.texts if len(rec.texts) == len(rec.boxes) else [""] * len(rec.boxes)
        for xywh, lab, ign, poly, text in zip(xyxy_to_xywh(rec.boxes), rec.class_ids(), rec.ignore, polys, texts):
            x, y, w, h = (float(v) for v in xywh)
            ann = {"id": aid, "image_id": k, "category_id": lab + 1, "iscrowd": int(bool(ign)),
                   "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2)}
            if poly:
                ann["segmentation"] = [[round(float(v), 2) for v in poly]]
            if text:
                ann["utf8_string"] = text
            coco["annotations"].append(ann)
            aid += 1
    return coco


def save(records: Sequence[LabelledImage], out: str | Path, classes: Sequence[str] = ("text",)) -> Path:
    """Write `out/annotations.json` (atomic)."""
    target = Path(out) / FILE_NAME
    atomic_write_text(target, json.dumps(to_dict(records, classes), ensure_ascii=False))
    return target


def outputs(records: Sequence[LabelledImage]) -> set[str]:
    """The files of `FILES` that `save(records)` writes."""
    return {FILE_NAME}


def is_export(path: Path) -> bool:
    """Whether `path` (an annotations.json) is a `textloop export`'s: COCO whose every image is an
    exported one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list) and all(
        isinstance(im, dict) and is_export_image(str(im.get("file_name", ""))) for im in data["images"])


def load(path: str | Path, categories: Sequence[str] | None = None,
         problems: list[str] | None = None) -> list[LabelledImage]:
    """Records of a COCO JSON (or of `annotations.json` in a folder); `image` is the file_name,
    `source` the JSON's stem. All categories are text unless `categories` names the ones to keep.
    ValueError naming the file for anything that is not COCO detection JSON. A malformed image
    entry or annotation raises too, unless `problems` is given: then it gets one line there
    ("file: annotation 7: ...") and is skipped, so `import` keeps the rest of the file. So does an
    annotation of an image_id the file does not list, one of a category_id its `categories` do
    not list (one without a category_id, or a file without categories: the box is text), and an image whose `split` is not
    train, val or test, and every image whose id another image has too."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable COCO JSON ({exc})") from None
    if _is_label_studio_export(data):
        raise ValueError(f"{path}: a Label Studio JSON export (a list of tasks), not COCO JSON: export the project "
                         "as COCO in Label Studio and import that, or, for a project textloop pushed, run `textloop pull`")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not COCO JSON (no 'images' list)")

    def bad(message: str) -> None:
        if problems is None:
            raise ValueError(f"{path}: {message}")
        problems.append(f"{path}: {message}")

    cats = {c.get("id"): str(c.get("name", "")) for c in data.get("categories") or [] if isinstance(c, dict)}
    keep_cats = None
    if categories:
        wanted = set(categories)
        keep_cats = {cid for cid, name in cats.items() if name in wanted}
        unknown = wanted - set(cats.values())
        if unknown:
            raise ValueError(f"{path}: no categor{'y' if len(unknown) == 1 else 'ies'} named {', '.join(sorted(unknown))}")
    image_ids = {im.get("id") for im in data["images"] if isinstance(im, dict) and _hashable(im.get("id"))}
    # an id given to two images: their annotations cannot be told apart (one box became a box on
    # both images, silently), so every image holding it is skipped
    id_names: dict[Any, list[str]] = {}
    for im in data["images"]:
        if isinstance(im, dict) and _hashable(im.get("id")):
            id_names.setdefault(im["id"], []).append(str(im.get("file_name", "?")))
    shared = {i for i, names in id_names.items() if len(names) > 1}
    for i in shared:
        bad(f"image id {_short(i)} is given to {len(id_names[i])} images ({', '.join(id_names[i][:3])}): "
            "their annotations cannot be told apart; skipped")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    left_out: Counter = Counter()   # per image: its annotations not imported (another or an unknown category)
    for k, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict) or "image_id" not in ann or "bbox" not in ann:
            bad(f"annotations[{k}] lacks image_id or bbox")
            continue
        if not _hashable(ann["image_id"]) or ann["image_id"] not in image_ids:
            bad(f"annotation {ann.get('id', f'annotations[{k}]')}: image_id {_short(ann['image_id'])} is not in 'images'; skipped")
            continue
        if cats and ann.get("category_id") is not None and (not _hashable(ann["category_id"])
                                                             or ann["category_id"] not in cats):
            bad(f"annotation {ann.get('id', f'annotations[{k}]')}: category_id {_short(ann.get('category_id'))} is not in "
                f"'categories' ({', '.join(f'{i}: {n}' for i, n in list(cats.items())[:5])}); skipped")
            left_out[ann["image_id"]] += 1
            continue
        if keep_cats is not None and ann.get("category_id") not in keep_cats:
            left_out[ann["image_id"]] += 1
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for k, im in enumerate(data["images"]):
        if isinstance(im, dict) and _hashable(im.get("id")) and im["id"] in shared:
            continue
        try:
            name, w, h = str(im["file_name"]), int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            bad(f"images[{k}] lacks file_name, width or height")
            continue
        split = im.get("split")
        if split is not None and split not in SPLITS:
            bad(f"images[{k}] ({name}): split must be one of {', '.join(SPLITS)}; got {_short(split)}; skipped")
            continue
        xywh, ignore, labels, polys, texts = [], [], [], [], []
        dropped = left_out[im.get("id")] if _hashable(im.get("id")) else 0
        for ann in by_image.get(im.get("id"), []) if _hashable(im.get("id")) else []:
            bbox = _bbox(ann["bbox"])
            if bbox is None:
                bad(f"annotation {ann.get('id', '?')} ({name}): bbox must be [x, y, w, h], got {str(ann['bbox'])[:60]}")
                dropped += 1
                continue
            xywh.append(bbox)
            ignore.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
            cid = ann.get("category_id")
            labels.append(int(cid) - 1 if isinstance(cid, int) and cid >= 1 else 0)
            polys.append(_polygon(ann.get("segmentation")))
            text = ann.get("utf8_string")
            texts.append(text if isinstance(text, str) else "")
        if dropped and not xywh:   # it has annotations, none imported: no human said it holds no text
            if problems is not None:   # (strict, a bad one raised above; other categories are no error)
                problems.append(f"{path}: images[{k}] ({name}): none of its {dropped} annotation(s) is imported "
                                "(another or an unknown category, or skipped above); not imported as an image "
                                "without text")
            continue
        out.append(LabelledImage(image=name, width=w, height=h, boxes=xywh_to_xyxy(np.array(xywh).reshape(-1, 4)),
                                 ignore=ignore, source=path.stem, labels=tuple(labels) if any(labels) else (),
                                 polys=tuple(polys) if any(polys) else (), texts=tuple(texts) if any(texts) else (),
                                 split=split or "", **{key: str(im[key]) for key in _IMAGE_KEYS[1:] if im.get(key)}))
    return out


def _is_label_studio_export(data: Any) -> bool:
    """Label Studio's own JSON export: a list of tasks, each with `data` and `annotations`
    (or a single such task). Users reach for it first; "no 'images' list" did not say why."""
    tasks = data if isinstance(data, list) else [data]
    return bool(tasks) and all(isinstance(t, dict) for t in tasks[:5]) \
        and any("data" in t and ("annotations" in t or "predictions" in t) for t in tasks[:5])


def _hashable(value: Any) -> bool:
    """An id a dict can be looked up with (a list given as an id is a malformed reference)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not None else "missing"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bbox(raw: Any) -> list[float] | None:
    """[x, y, w, h] as 4 finite floats, or None when it is anything else."""
    try:
        box = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None
    return box if len(box) == 4 and all(math.isfinite(v) for v in box) else None


def _polygon(seg: Any) -> tuple[float, ...]:
    """A one-part polygon segmentation as x1, y1, ..., or () (none, RLE masks, several parts: the
    box stands for them)."""
    if not (isinstance(seg, list) and len(seg) == 1 and isinstance(seg[0], list)):
        return ()
    try:
        pts = tuple(float(v) for v in seg[0])
    except (TypeError, ValueError):
        return ()
    return pts if is_polygon(pts) else ()
