"""`import`: bring existing labelled images into the workspace as human labels.

Reads the devset JSONL format (`pipeline.formats`) and COCO JSON. The images are harvested
like any other (`pipeline.harvest.harvest`: content-addressed, validated, deduplicated), and
each image's boxes become one `annotations` row per label file with
`source='import:<folder>/<file name>'` (`source_key`: `import:<source>/boxes.jsonl` for a devset
root's files, as before), `state='submitted'` (or `'empty'` for an image labelled as having no
text), ignore flags kept, and the record's polygons (`polys`) as the row's `quads`.
The image status becomes `labelled` / `verified_empty`.

Boxes are stored in the upright (EXIF-applied) frame. A label file's frame is detected per
image from its width/height: the upright size means upright; the stored (unrotated) size of
an EXIF-rotated image means the raw frame and the boxes are rotated. Any other size is an
error for that image (labels for a resized copy would be misplaced).

A record's `split` (what `textloop export` writes) decides the split of an image this import
adds: an export's EXIF-rotated images are upright copies with a new hash, and the hash's split
would move some test images into training. An image already in the workspace keeps its split
(splits never move on import); a label file that disagrees gets a problem line. The record's
`original_name` becomes the added image's name. Box transcriptions (`texts`, COCO-Text's
`utf8_string`) are kept in the annotation's `texts`.

Rerunning an import gives the same catalog: unchanged rows are left as they are.

A malformed record (a box with 3 numbers, a missing size) or a bad box (inverted: dropped;
running off the image: clipped) is reported in `problems` with its file and line, and the rest
of the file is imported.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import boxes_json, clip, quads_json
from pipeline.catalog import ImageStatus, dumps
from pipeline.config import HarvestConfig
from pipeline.formats import LabelledImage, coco, devset_files
from pipeline.formats.devset import read_jsonl_lines
from pipeline.formats.frames import ambiguous_frame, to_upright
from pipeline.harvest import harvest
from pipeline.io import is_image_id
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

FRAMES = ("auto", "upright", "raw")


@dataclass(frozen=True)
class LabelRecord:
    """One labelled image from a label file, with the absolute path of its image."""

    path: Path
    label: LabelledImage
    origin: str  # the label file's source key, `source='import:<origin>'` (see `source_key`)
    where: str = ""  # the label file and line ("lab/boxes.jsonl:3"), for problem messages


@dataclass
class ImportSummary:
    files: list[str] = field(default_factory=list)
    records: int = 0
    images: int = 0
    with_boxes: int = 0
    empty: int = 0
    boxes: int = 0
    ignored_boxes: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rotated: int = 0          # images whose labels were in the raw (pre-EXIF) frame
    splits_from_labels: int = 0  # images added here whose split the label file gave (not the hash's)
    texts: int = 0            # boxes imported with a transcription
    excluded: int = 0         # images labelled here that curate had excluded (labels stored, not used)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


# --- reading label files -----------------------------------------------------------------

YOLO_UNSUPPORTED = "YOLO import is not supported: use --format jsonl or coco exports"


def detect_format(path: Path) -> str:
    """'jsonl' or 'coco', from the extension; a YOLO data.yaml is named as such (its labels have
    no don't-care flags and no shapes, so `export --format jsonl|coco` is the way back in)."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if path.suffix.lower() == ".json":
        return "coco"
    if path.suffix.lower() in (".yaml", ".yml"):
        raise ValueError(f"{path}: {YOLO_UNSUPPORTED}")
    raise ValueError(f"{path}: unknown label format (expected a devset .jsonl or a COCO .json)")


def source_key(path: Path) -> str:
    """A label file's annotation source key: `<folder name>/<file name>`.

    Two label files in different folders (`lab/boxes.jsonl`, `bad/boxes.jsonl`) get different
    keys, so one never replaces the other's boxes, while re-importing a file finds its own rows.
    A devset root's `<source>/boxes.jsonl` keeps the key it always had, and the key is the same
    whether the file is named directly or found under its root. Not the absolute path: the key
    shows in reports (`evaluate` by source) and survives moving the whole tree."""
    p = Path(os.path.abspath(path))
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _image_path(path: Path) -> Path:
    """A label file's image as harvest records it (links resolved), except a link whose target
    is missing: that stays the link, so the problem names the file the label file names
    ("b.png: dangling_symlink"), not a target the user never wrote down."""
    return path.resolve() if path.exists() else Path(os.path.abspath(path))


def read_devset_jsonl(path: Path, images_dir: Path | None = None,
                      problems: list[str] | None = None) -> tuple[list[LabelRecord], int]:
    """A devset-style boxes.jsonl; image paths relative to `images_dir` (default: the file's
    folder). Returns the records and how many malformed ones were skipped (each with a line in
    `problems`; without `problems` the first one raises)."""
    base = images_dir or path.parent
    good, bad = read_jsonl_lines(path, source=path.parent.name)
    if bad and problems is None:
        raise ValueError(bad[0])
    if problems is not None:
        problems += bad
    origin = source_key(path)
    return [LabelRecord(_image_path(base / rec.image), rec, origin, f"{path}:{lineno}")
            for lineno, rec in good], len(bad)


def read_coco(path: Path, images_dir: Path | None = None, categories: Sequence[str] | None = None,
              problems: list[str] | None = None) -> list[LabelRecord]:
    """COCO detection JSON through the COCO adapter (`pipeline.formats.coco`). Image files are
    looked up under `images_dir`, else the JSON's folder, its `images/` sub-folder, or the
    sibling `../images/`. Malformed entries: as in `read_devset_jsonl`."""
    roots = [images_dir] if images_dir else [path.parent, path.parent / "images", path.parent.parent / "images"]
    out = []
    origin = source_key(path)
    for rec in coco.load(path, categories, problems):
        file = next((r / rec.image for r in roots if (r / rec.image).exists()), roots[0] / rec.image)
        out.append(LabelRecord(_image_path(file), rec, origin, str(path)))
    return out


def read_label_files(files: Iterable[str | Path], fmt: str = "auto", images_dir: Path | None = None,
                     categories: Sequence[str] | None = None,
                     problems: list[str] | None = None) -> tuple[list[LabelRecord], int]:
    """Every record of the label files and devset roots, and how many devset lines were skipped
    as malformed (with `problems`, one line each; without it the first raises). A file named
    twice is read once; a second file with the same source key as another (`a/x/boxes.jsonl`,
    `b/x/boxes.jsonl`) is skipped with a problem, since its labels would replace the other's."""
    if fmt == "yolo":
        raise ValueError(YOLO_UNSUPPORTED)
    if fmt not in ("auto", "jsonl", "coco"):
        raise ValueError(f"unknown label format {fmt!r}: use auto, jsonl or coco")
    records: list[LabelRecord] = []
    skipped = 0
    seen: set[Path] = set()
    keys: dict[str, Path] = {}

    def claim(path: Path) -> bool:
        """True the first time a file is seen and its source key is its own."""
        real = Path(os.path.realpath(path))
        if real in seen:
            return False
        key = source_key(path)
        other = keys.setdefault(key, real)
        if other != real:
            line = (f"{path}: same annotation source import:{key} as {other}, so its labels would replace "
                    f"that file's; skipped (rename its folder to import both)")
            if problems is None:
                raise ValueError(line)
            problems.append(line)
            return False
        seen.add(real)
        return True

    for f in files:
        path = Path(f).expanduser()
        if path.is_dir():  # a devset root: every <source>/boxes.jsonl
            try:
                found = devset_files(path)
            except FileNotFoundError as exc:
                if (path / "data.yaml").is_file():   # a YOLO export's folder
                    raise ValueError(f"{path}: {YOLO_UNSUPPORTED}") from None
                raise ValueError(str(exc)) from None
            for j in found:  # named <source>/boxes.jsonl: every source gets its own annotation source
                if claim(j):
                    got, bad = read_devset_jsonl(j, images_dir, problems)
                    records += got
                    skipped += bad
            continue
        if not path.exists():
            raise ValueError(f"{path}: no such label file")
        from pipeline.listing import file_problem

        problem = file_problem(path)   # a FIFO would block the read for ever
        if problem is not None:
            raise ValueError(f"{path}: not a label file ({problem[1]})")
        kind = detect_format(path) if fmt == "auto" else fmt
        if not claim(path):
            continue
        if kind == "jsonl":
            got, bad = read_devset_jsonl(path, images_dir, problems)
            records += got
            skipped += bad
        else:
            records += read_coco(path, images_dir, categories, problems)
    return records, skipped


# --- the import -----------------------------------------------------------------------------

def _upright_exports(ws: Workspace, cat: Any, paths: Sequence[str]) -> dict[str, str]:
    """path -> image id for files that are `textloop export`'s upright copies of this workspace's
    EXIF-rotated images (named `<image id>.png`, the same pixels upright). Their bytes differ from
    the original's, so harvesting them would add each image a second time, perhaps in another
    split; every other exported file is the original's bytes, which harvest already knows."""
    from pipeline.imaging import load_rgb

    out: dict[str, str] = {}
    for p in paths:
        stem = Path(p).stem
        if not is_image_id(stem) or not Path(p).suffix.lower() == ".png":
            continue
        row = cat.image(stem)
        if row is None or int(row["orientation"] or 1) == 1:
            continue
        try:
            if np.array_equal(load_rgb(p), load_rgb(ws.abspath(row["path"]))):
                out[p] = stem
        except Exception:  # noqa: BLE001 - not a readable copy: harvest decides what it is
            continue
    return out

def import_labels(
    ws: Workspace,
    files: Sequence[str | Path],
    fmt: str = "auto",
    images_dir: str | Path | None = None,
    frame: str = "auto",
    categories: Sequence[str] | None = None,
    harvest_cfg: HarvestConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Harvest the labelled images and store their boxes as annotations (see module doc)."""
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}: use {', '.join(FRAMES)}")
    t0 = time.perf_counter()
    summary = ImportSummary(files=[str(f) for f in files])
    records, malformed = read_label_files(files, fmt, Path(images_dir) if images_dir else None, categories,
                                          problems=summary.problems)
    summary.records = len(records) + malformed  # so a file of nothing but bad lines imports nothing: exit 1
    paths = list(dict.fromkeys(str(r.path) for r in records))
    with ws.catalog() as cat:
        exported = _upright_exports(ws, cat, paths)
        known = {r["id"] for r in cat.images()}   # images this import does not add keep their split
    to_harvest = [p for p in paths if p not in exported]
    if to_harvest:
        harvest(ws, to_harvest, harvest_cfg, progress=progress)
    now = time.time()
    with ws.catalog() as cat:
        resolved = {**cat.image_ids_by_source(to_harvest), **exported}
        # one annotation per (image, label file): the last record wins
        chosen: dict[tuple[str, str], LabelRecord] = {}
        for r in records:
            image_id = resolved.get(str(r.path))
            if image_id is None:
                rej = cat.reject(str(r.path))
                why = f"{rej['reason']} ({rej['detail']})" if rej else "not harvested"
                summary.problems.append(f"{r.path}: {why}")
                continue
            key = (image_id, r.origin)
            if key in chosen:
                # named at the dropped record, with where the one used is (a COCO file has no lines)
                dropped = chosen[key]
                again = f" ({r.where})" if r.where != dropped.where else ""
                # two names with the same bytes are one image: the dropped record's name, then the other's
                what = ("is listed again" if dropped.label.image == r.label.image
                        else f"is the same image as {r.label.image}")
                summary.problems.append(f"{dropped.where}: {dropped.label.image} {what}{again}; "
                                        "this record is dropped, the last one is used")
            chosen[key] = r
        with cat.transaction():  # the whole import or nothing
            _apply_splits(cat, chosen, known, summary)
            for (image_id, origin), r in chosen.items():
                img = cat.image(image_id)
                # an upright copy `export` wrote is upright by construction: no frame to guess
                # (a square EXIF-6 image's labels were reported as ambiguous on the way back)
                frame_r = "upright" if str(r.path) in exported else frame
                try:
                    boxes, quads, rotated = to_upright(r.label, img["width"], img["height"], img["orientation"], frame_r)
                except ValueError as exc:   # the image stays in the workspace, unlabelled (status new)
                    summary.problems.append(f"{r.where or r.path}: {r.label.image}: {exc}; the image was added "
                                            "without these labels")
                    continue
                if frame_r == "auto" and ambiguous_frame(img["width"], img["height"], int(img["orientation"] or 1)):
                    summary.problems.append(
                        f"{r.path}: EXIF orientation {img['orientation']} keeps the size {img['width']}x{img['height']} "
                        "in both frames, so the labels were taken as drawn on the upright image; if they were drawn "
                        "on the stored pixels, import again with --frame raw")
                keep, boxes, bad = clean_boxes(r, boxes, img["width"], img["height"])
                summary.problems += bad
                if len(r.label.boxes) and not keep.any():
                    # every box dropped: storing it as "verified: no text" turned a broken label
                    # into a human's word that the image is text-free (training, export)
                    summary.problems.append(f"{r.where or r.path}: {r.label.image}: none of its "
                                            f"{len(r.label.boxes)} box(es) is usable; the image was added "
                                            "without these labels")
                    continue
                ignore = np.asarray(r.label.ignore, bool)[keep]
                state = "submitted" if len(boxes) else "empty"
                quads_col = dumps(quads_json(quads[keep])) if quads is not None and keep.any() else None
                texts = _kept_texts(r, keep, summary.problems)
                row = (dumps(boxes_json(boxes)), dumps([0] * len(boxes)),
                       dumps([bool(x) for x in ignore]), state, quads_col, dumps(texts) if texts else None)
                source = f"import:{origin}"
                old = cat.imported_annotation(image_id, source)
                if old is None and "/" in origin:  # stored before keys named the folder
                    old = cat.rekey_imported_annotation(image_id, f"import:{origin.rsplit('/', 1)[1]}", source)
                fields = dict(zip(("boxes", "labels", "ignore", "state", "quads", "texts"), row))
                unchanged = False
                if old is None:
                    cat.add_annotation(image_id, source, **fields, annotator="import", updated_at=now, pulled_at=now)
                    summary.inserted += 1
                elif (old["boxes"], old["labels"], old["ignore"], old["state"], old["quads"], old["texts"]) != row:
                    cat.update_annotation(old["id"], **fields, updated_at=now, pulled_at=now)
                    summary.updated += 1
                else:
                    summary.unchanged += 1
                    unchanged = True
                # `curate --apply` sent the label back for review: the same label imported again
                # does not settle that (a rerun of a pipeline script undid it); a changed one does
                keep_review = (ImageStatus.NEEDS_REVIEW,) if unchanged else ()
                others_have_boxes = any(st == "submitted" for src, st in cat.annotation_states(image_id).items()
                                        if src != source)     # another label source's boxes stay visible
                new_status = ImageStatus.LABELLED if len(boxes) or others_have_boxes else ImageStatus.VERIFIED_EMPTY
                cat.set_status(image_id, new_status, never_from=(ImageStatus.EXCLUDED, *keep_review))
                summary.excluded += int(img["status"] == ImageStatus.EXCLUDED)
                summary.images += 1
                summary.rotated += int(rotated)
                summary.with_boxes += int(len(boxes) > 0)
                summary.empty += int(len(boxes) == 0)
                summary.boxes += int((~ignore).sum())
                summary.ignored_boxes += int(ignore.sum())
                summary.texts += sum(1 for t in texts if t)
    if summary.excluded:
        summary.problems.append(f"{summary.excluded} of these images are excluded (curate set them aside): their labels "
                                "are stored, but training, evaluation and export leave them out")
    summary.seconds = time.perf_counter() - t0
    return summary


def _apply_splits(cat: Any, chosen: dict[tuple[str, str], LabelRecord], known: set[str],
                  summary: ImportSummary) -> None:
    """Give each image this import added the split its label record names (the first record
    that names one; a later one that disagrees is a problem line) and the record's original
    file name. An image that was already in the workspace keeps its split: moving it could put an
    image a model was trained on into the test set. A label file that disagrees is said."""
    decided: dict[str, tuple[str, LabelRecord]] = {}
    named: dict[str, str] = {}
    for (image_id, _), r in chosen.items():
        if image_id not in known and r.label.original_name:
            named.setdefault(image_id, r.label.original_name)
        split = r.label.split
        if not split:
            continue
        where = r.where or str(r.path)
        if image_id in known:
            img = cat.image(image_id)
            if img["split"] != split:
                summary.problems.append(f"{where}: {r.label.image}: the label file says split {split!r}, but the image "
                                        f"was already in the workspace in {img['split']!r} and keeps it")
            continue
        first = decided.setdefault(image_id, (split, r))
        if first[0] != split:
            summary.problems.append(f"{where}: {r.label.image}: split {split!r} disagrees with {first[0]!r} given by "
                                    f"{first[1].where or first[1].path}; the image is in {first[0]!r}")
    for image_id, (split, _) in decided.items():
        if cat.image(image_id)["split"] != split:
            cat.set_split(image_id, split)
        summary.splits_from_labels += 1
    for image_id, name in named.items():
        img = cat.image(image_id)
        if img["original_name"] != name:
            cat.set_first_source(image_id, img["source"], name)


def _kept_texts(r: LabelRecord, keep: np.ndarray, problems: list[str]) -> list[str]:
    """The record's transcriptions of the kept boxes, or [] when it has none; a list that is not
    one per box is said and not kept (the words could not be matched to their boxes)."""
    texts = r.label.texts
    if not any(texts):
        return []
    if len(texts) != len(keep):
        problems.append(f"{r.where or r.path}: {r.label.image}: {len(texts)} texts for {len(keep)} boxes; "
                        "the texts were not kept")
        return []
    return [str(t) for t, k in zip(texts, keep) if k]


def clean_boxes(r: LabelRecord, boxes: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(kept, boxes, problems): the upright `boxes` clipped to the image, without the empty or
    inverted ones (x1 <= x0 or y1 <= y0 as labelled) and those with no area left inside it. A
    changed label is never silent: one problem line per kind names the boxes as the file gives
    them (index and numbers), so the user can find and fix them. Quads are not clipped (cutting a
    rotated shape's corners one by one would bend it; covering clips when it rasterises)."""
    raw, lw, lh = r.label.boxes, r.label.width, r.label.height  # the label's own frame (to_upright checked it)
    inverted = (raw[:, 2] <= raw[:, 0]) | (raw[:, 3] <= raw[:, 1])
    outside = ~inverted & ((raw[:, 0] < 0) | (raw[:, 1] < 0) | (raw[:, 2] > lw) | (raw[:, 3] > lh))
    b = clip(boxes, width, height)
    keep = ~inverted & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    problems = []
    for mask, what in ((inverted, "empty or inverted (x1 <= x0 or y1 <= y0): dropped"),
                       (outside & ~keep, f"outside the {lw}x{lh} image: dropped"),
                       (outside & keep, f"over the edge of the {lw}x{lh} image: clipped to it")):
        if mask.any():
            problems.append(f"{r.where}: {r.label.image}: {_which(raw, mask)} {what}")
    return keep, b[keep], problems


def _which(raw: np.ndarray, mask: np.ndarray, show: int = 3) -> str:
    """'box 1 [10, 10, 5, 5]' or 'boxes 0 [...], 2 [...] and 4 more', as labelled."""
    idx = np.flatnonzero(mask)
    listed = ", ".join(f"{i} [{', '.join(f'{v:g}' for v in raw[i])}]" for i in idx[:show])
    more = f" and {len(idx) - show} more" if len(idx) > show else ""
    return f"{'box' if len(idx) == 1 else 'boxes'} {listed}{more} {'is' if len(idx) == 1 else 'are'}"
