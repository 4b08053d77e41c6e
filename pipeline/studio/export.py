"""`textloop export`: the human-labelled dataset for use elsewhere (jsonl | coco | yolo).

Labelled and verified-empty images (the latter with no boxes) from the catalog's annotations.
Images are copied into `OUT/images/` (not hard-linked: editing an exported image in place
edited the workspace's original, the bytes its id names); an image with an EXIF
orientation is written upright instead, because every box is in the upright frame. Rotated
shapes (`quads`: Label Studio's rotated rectangles, imported polygons) are written as `polys`
(jsonl) or one-part `segmentation` polygons (coco); YOLO boxes have no shape and YOLO has no
don't-care flag, so don't-care boxes are left out of its labels (counted).

Every record carries what the catalog knows of its image: its split (so importing the export
elsewhere keeps test images out of training, although an upright copy has a new hash), its
original file name (not its folder or URL: those stay on this machine), and the boxes' transcriptions where they were imported.

OUT is the dataset's folder and a re-export refreshes it: every file textloop writes under
`images/` and `labels/` is named after an image id, so files of images no longer in the set
(another `--split`, relabelled, excluded) are removed, and a folder holding files of any other
name is refused before anything is written (a YOLO trainer reads all of `images/`). The label
files at OUT's top (`boxes.jsonl`, `annotations.json`, `data.yaml` and YOLO's split lists) are
the same: an earlier export's that this one does not write (another format's, a split no longer
exported) are removed, so no stale labels sit beside the new ones, and one textloop did not
write (it names other images) is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.catalog import quads_as_polys
from pipeline.config import check_split
from pipeline.formats import FORMATS as _REGISTRY
from pipeline.formats import LabelledImage, get_format
from pipeline.io import atomic_open, is_atomic_temp, is_image_id, prepare_folders
from pipeline.listing import is_hidden_name
from pipeline.workspace import Workspace

FORMATS = tuple(_REGISTRY)
_OWN_DIRS = ("images", "labels")


def _files_in(out: Path) -> list[Path]:
    """The entries of OUT's `images/` and `labels/`; hidden ones (`.DS_Store`, a killed export's
    temp files) are no dataset file and no reason to refuse the folder."""
    return [p for d in _OWN_DIRS if (out / d).is_dir() for p in sorted((out / d).iterdir())
            if not is_hidden_name(p.name)]


def _label_files(out: Path) -> list[tuple[Path, bool]]:
    """(path, written by an export) for every label file of any format at OUT's top."""
    return [(out / name, fmt.is_export(out / name)) for fmt in _REGISTRY.values() for name in fmt.files
            if (out / name).exists() or (out / name).is_symlink()]


def _check_out(out: Path) -> None:
    """ValueError unless OUT is new, empty, or an earlier export (files named after image ids,
    label files naming only such files)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (OUT is the dataset's folder)")
    foreign = [p for p in _files_in(out) if not (p.is_file() and is_image_id(p.stem))]
    foreign += [p for p, ours in _label_files(out) if not (ours and p.is_file() and not p.is_symlink())]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ValueError(f"{out}: {foreign[0].relative_to(out)}{more} was not written by "
                         "textloop export; export into a new or empty folder")


def _prune(out: Path, keep: set[str], fmt: str) -> tuple[int, int]:
    """Remove files an earlier export wrote for images not in this one (and temp files a killed
    export left); how many of those, and how many of YOLO's `labels/` files went because this
    export is another format's."""
    stale = [p for p in _files_in(out) if is_image_id(p.stem) and p.stem not in keep]
    for p in stale:
        p.unlink()
    other = 0
    if fmt != "yolo":
        for p in _files_in(out):
            if p.parent.name == "labels":
                p.unlink()
                other += 1
    for d in _OWN_DIRS:
        for p in (out / d).glob(".*"):
            if is_atomic_temp(p.name):
                p.unlink()
    if (out / "labels").is_dir() and not any((out / "labels").iterdir()):
        (out / "labels").rmdir()
    return len(stale), other


def _remove_other_label_files(out: Path, written: set[str]) -> int:
    """Remove the label files at OUT's top that an earlier export wrote and this one did not
    (another format's, the list of a split no longer exported): `_check_out` refused any that is
    not an export's, so only textloop's own files are removed."""
    gone = 0
    for path, ours in _label_files(out):
        if ours and path.name not in written:
            path.unlink()
            gone += 1
    return gone


def check_options(fmt: str, split: str | None, classes: Sequence[str] = ("text",)) -> None:
    """ValueError naming the allowed values for a format, split or class list that cannot be
    exported, so a typo is refused before OUT is created (an unknown split used to export 0
    images; `--classes ''` wrote a data.yaml naming no class for labels of class 0)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    check_split(split)
    if not classes or any(not c.strip() for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"--classes must name at least one class, comma-separated, none blank or repeated; "
                         f"got {','.join(classes)!r}")


def labelled_rows(ws: Workspace, split: str | None = None, sources: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per image: its latest human annotation (state submitted or empty); excluded
    images are not part of the dataset."""
    with ws.catalog() as cat:
        return list(cat.latest_annotations(include_excluded=False, split=split, sources=sources).values())


def _place_image(ws: Workspace, row: dict[str, Any], dest_dir: Path) -> str:
    """The image under `dest_dir`: copied, or (EXIF-rotated) written upright as PNG; both appear
    complete or not at all (`io.atomic_open`). OSError when the workspace's file cannot be read,
    or its bytes are no longer the image's (its id is their sha256: a damaged file was exported
    as if it were fine, while predict, evaluate and curate called it broken)."""
    from pipeline.io import copy_hashing, sha256_bytes
    from pipeline.listing import open_regular

    src = ws.abspath(row["path"])
    upright = int(row.get("orientation") or 1) != 1
    name = f"{row['image_id']}{'.png' if upright else src.suffix}"
    dest = dest_dir / name
    if dest.exists():
        if not (src.exists() and os.path.samefile(src, dest)):
            return name
        dest.unlink()   # an earlier export's hard link to the original: a copy now
    with open_regular(src) as fin:   # read once: checked while it is copied (or decoded)
        if upright:
            import io

            from PIL import Image, ImageOps

            data = fin.read()
            _check_bytes(sha256_bytes(data), row["image_id"])
            with Image.open(io.BytesIO(data)) as im, atomic_open(dest) as fh:
                ImageOps.exif_transpose(im).save(fh, format="PNG")
            return name
        with atomic_open(dest) as fh:   # a damaged copy raises inside: the temp file goes, nothing lands
            _check_bytes(copy_hashing(fin, fh)[0], row["image_id"])
    return name


def _check_bytes(digest: str, image_id: str) -> None:
    """OSError when a stored image's bytes no longer hash to its id. Only ids that are sha256s
    (harvest's all are; a catalog filled by hand may use others)."""
    if is_image_id(image_id) and digest != image_id:
        raise OSError("the stored file is damaged (its bytes no longer match the image's sha256)")


def _texts(column: str | None, n_boxes: int) -> tuple[str, ...]:
    """An annotation's `texts` column as a record's texts, or () when it has none (or not one
    per box: a hand-edited row must not put words on the wrong boxes)."""
    texts = json.loads(column) if column else None
    if not isinstance(texts, list) or len(texts) != n_boxes:
        return ()
    return tuple(str(t) for t in texts)


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote; `as_dict()` is the `--json` payload."""

    format: str
    out: str                   # the label file (or folder) the format wrote
    images: int
    boxes: int                 # text boxes (don't-care boxes not counted)
    empty_images: int          # verified text-free images (no boxes)
    ignored_boxes: int = 0     # don't-care boxes: written with their flag (jsonl, coco) or left out (yolo)
    removed: int = 0           # files of an earlier export into OUT whose images are not in this one
    label_files_removed: int = 0   # an earlier export's label files this one does not write (another format's)
    problems: tuple[str, ...] = ()   # labelled images left out: their file in the workspace is missing or unreadable

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def export(ws: Workspace, out: Path, fmt: str = "jsonl", split: str | None = None,
           classes: tuple[str, ...] = ("text",)) -> ExportSummary:
    """The labelled (and verified-empty) images of `split` (None: all) written to `out` in `fmt`;
    ValueError before anything is written for an unknown format or split (`check_options`) and
    when there is no labelled image to export."""
    check_options(fmt, split, classes)
    label_format = get_format(fmt)
    out = Path(out)
    _check_out(out)
    rows = labelled_rows(ws, split)
    if not rows:   # an empty boxes.jsonl and "exported 0 images", exit 0
        raise ValueError(f"{ws.root}: no labelled images{f' in the {split} split' if split else ''} to export "
                         "(label images in Label Studio and `textloop pull`, or `textloop import` labels); nothing written")
    used = max((max(json.loads(r["labels"]) or [0]) for r in rows), default=0)
    if used >= len(classes):   # COCO named no category for them (invalid), YOLO's names missed them
        raise ValueError(f"labels use {used + 1} classes but --classes names {len(classes)} ({','.join(classes)}): "
                         "give all their names in the project's order (`textloop studio init` lists them, e.g. "
                         "--classes text,logo); nothing written")
    images_dir = out / "images"
    prepare_folders([out, images_dir])   # under a file, or where nothing may be written: one line, not [Errno 20]
    with ws.catalog() as cat:
        origins = {im["id"]: im for im in cat.images_by_ids([r["image_id"] for r in rows])}
    records: list[LabelledImage] = []
    problems: list[str] = []
    kept_rows = []
    for r in rows:
        try:
            name = _place_image(ws, r, images_dir)
        except OSError as exc:   # a missing original stopped the whole export, with images/ empty
            problems.append(f"{ws.abspath(r['path'])}: {exc.strerror or exc}; image {r['image_id']} left out "
                            "(restore it by harvesting its source again)")
            continue
        kept_rows.append(r)
        boxes = json.loads(r["boxes"])
        labels = json.loads(r["labels"]) or [0] * len(boxes)
        origin = origins.get(r["image_id"], {})
        records.append(LabelledImage(image=f"images/{name}", width=int(r["width"]), height=int(r["height"]), boxes=boxes,
                                     ignore=json.loads(r["ignore"]) or [], source=r["source"],
                                     labels=tuple(int(x) for x in labels), polys=quads_as_polys(r["quads"], len(boxes)),
                                     texts=_texts(r.get("texts"), len(boxes)), split=str(r["split"]),
                                     # not the harvested path or URL: a shared dataset would carry
                                     # the user's folders (names, sample IDs) with it
                                     original_name=str(origin.get("original_name") or "")))
    n_ignored = sum(int(rec.ignore.sum()) for rec in records)
    n_boxes = sum(len(rec.boxes) for rec in records) - n_ignored
    target = label_format.save(records, out, classes=classes)
    other = _remove_other_label_files(out, label_format.outputs(records))
    removed, other_labels = _prune(out, {str(r["image_id"]) for r in kept_rows}, fmt)
    return ExportSummary(format=fmt, out=str(target), images=len(records), boxes=n_boxes,
                         empty_images=sum(1 for rec in records if len(rec.boxes) == 0), ignored_boxes=n_ignored,
                         removed=removed, label_files_removed=other + other_labels, problems=tuple(problems))
