"""The devset JSONL format and its record, `LabelledImage` (one place for reading/writing it).

A line: {"image": "images/NAME.jpg", "width": W, "height": H, "boxes": [[x0,y0,x1,y1], ...],
"texts": [...], "ignore": [...], "polys": [...], "labels": [...], "split": "train",
"original_name": "IMG_1.jpg", "original_source": "/photos/IMG_1.jpg"} -- `image` relative to the
JSONL's folder; `labels` (class index per box) only when some box is not class 0. `split`,
`original_name` and `original_source` are what `textloop export` knows of the image (its split,
so `import` of the export keeps test images out of training although an upright copy has a new
hash), each written only when known; readers that do not use them ignore them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import boxes_json
from pipeline.config import SPLITS
from pipeline.io import atomic_open, is_image_id


def is_polygon(flat: Sequence[float]) -> bool:
    """x1, y1, x2, y2, ... with at least four points (a triangle's minimum-area rectangle, what a
    polygon is stored as, reaches outside it and its box)."""
    return len(flat) >= 8 and len(flat) % 2 == 0


@dataclass(frozen=True)
class LabelledImage:
    """Ground truth for one image: pixel xyxy boxes, don't-care flags, optional texts/polygons."""

    image: str                     # as written in the file (relative to the JSONL folder)
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))
    texts: tuple[str, ...] = ()
    polys: tuple[tuple[float, ...], ...] = ()
    source: str = ""               # e.g. the devset sub-folder name
    labels: tuple[int, ...] = ()   # class index per box; () = every box is class 0 (text)
    split: str = ""                # train | val | test as the label file says; "" = not given
    original_name: str = ""        # the image's file name where it came from, when known
    original_source: str = ""      # the path or URL it was first harvested from, when known

    def __post_init__(self) -> None:
        if self.split and self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if len(ignore) == 0:
            ignore = np.zeros(len(boxes), dtype=bool)
        if len(ignore) != len(boxes):
            raise ValueError(f"{self.image}: {len(boxes)} boxes but {len(ignore)} ignore flags")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "ignore", ignore)
        if self.polys and len(self.polys) != len(boxes):
            raise ValueError(f"{self.image}: {len(boxes)} boxes but {len(self.polys)} polys (give [] for a box without one)")
        labels = tuple(int(x) for x in self.labels)
        if labels and len(labels) != len(boxes):
            raise ValueError(f"{self.image}: {len(boxes)} boxes but {len(labels)} labels")
        object.__setattr__(self, "labels", labels)

    def polygons(self) -> list[np.ndarray]:
        """One (k, 2) polygon per box: its `polys` entry when that is a polygon (rotated and
        quadrilateral text), else the box's rectangle. The one reading of `polys` that training,
        import and export share."""
        have = len(self.polys) == len(self.boxes)
        out = []
        for i, (x0, y0, x1, y1) in enumerate(self.boxes):
            poly = self.polys[i] if have else ()
            if is_polygon(poly):
                out.append(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
            else:
                out.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64))
        return out

    def kept(self, keep: np.ndarray, boxes: np.ndarray) -> "LabelledImage":
        """This record with only the boxes `keep` marks, as `boxes` (the kept ones, e.g. clipped):
        their flags, texts, polygons and classes go with them."""
        keep = np.asarray(keep, bool)

        def pick(seq: Sequence[Any]) -> tuple[Any, ...]:
            return tuple(v for v, k in zip(seq, keep) if k) if len(seq) == len(keep) else tuple(seq)

        return replace(self, boxes=np.asarray(boxes, np.float64).reshape(-1, 4), ignore=self.ignore[keep],
                       texts=pick(self.texts), polys=pick(self.polys), labels=pick(self.labels))

    def class_ids(self) -> list[int]:
        """The class index of every box (0 when the record carries none)."""
        return list(self.labels) or [0] * len(self.boxes)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "image": self.image, "width": self.width, "height": self.height,
            "boxes": boxes_json(self.boxes),
            "texts": list(self.texts) or [""] * len(self.boxes),
            "ignore": [bool(x) for x in self.ignore],
        }
        if self.polys:
            d["polys"] = [list(p) for p in self.polys]
        if any(self.labels):
            d["labels"] = list(self.labels)
        for key in ("split", "original_name", "original_source"):   # only when known: older files stay as they were
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "") -> "LabelledImage":
        """A record from one parsed JSONL line; ValueError saying what is wrong with it (a box
        with 3 numbers, a missing size), so a reader can name the line and skip it."""
        if not isinstance(d, dict):
            raise ValueError(f"not a JSON object but {type(d).__name__}")
        missing = [k for k in ("image", "width", "height") if k not in d]
        if missing:
            raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
        width, height = _size(d, "width"), _size(d, "height")
        if not isinstance(d["image"], str) or not d["image"].strip():   # null was read as a file "None"
            raise ValueError(f"'image' must be a file name, got {_short(d['image'])}")
        boxes = _box_list(d.get("boxes") or [])
        ignore = _flags(d.get("ignore"), len(boxes))
        split = _text(d, "split")
        if split and split not in SPLITS:   # said as such, not as a "bad record (...)"
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        try:
            return cls(
                image=str(d["image"]), width=width, height=height,
                boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), ignore=ignore,
                texts=tuple(d.get("texts") or ()), polys=_poly_list(d.get("polys")),
                source=source, labels=tuple(d.get("labels") or ()), split=split,
                original_name=_text(d, "original_name"), original_source=_text(d, "original_source"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad record ({exc})") from None


def _text(d: dict[str, Any], key: str) -> str:
    """An optional string field ("" when absent or null); ValueError for a number or list, which
    `str()` would turn into a value that looks given (a split of "1")."""
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {_short(value)}")
    return value


def is_export_image(name: str) -> bool:
    """Whether a label file's image path is one `textloop export` writes (`images/<image id>.<ext>`):
    how export knows a label file in its folder is its own, to replace or remove it."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == "images" and is_image_id(Path(parts[1]).stem)


def _flags(raw: Any, n: int) -> list[bool]:
    """`ignore` as booleans: JSON true/false (or 0/1). A string is refused: bool("false") is True,
    and "false", "no" and "yes" all made every box don't-care without a word."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)) or not all(isinstance(v, bool) or v in (0, 1) for v in raw) \
            or any(isinstance(v, float) for v in raw):
        raise ValueError(f"'ignore' must be a list of true/false, one per box, got {_short(raw)}")
    if raw and len(raw) != n:
        raise ValueError(f"{n} boxes but {len(raw)} ignore flags")
    return [bool(v) for v in raw]


def _size(d: dict[str, Any], key: str) -> int:
    """`width`/`height` as a positive whole number (boxes are checked against it; 200.7 was read as 200)."""
    raw = d[key]
    try:   # a number, not a string of one ("160" passed, as `true` did before)
        value = int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) and float(raw) == int(raw) else 0
    except (TypeError, ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise ValueError(f"{key!r} must be a positive whole number, got {d[key]!r}")
    return value


def _box_list(raw: Any) -> list[list[float]]:
    """`boxes` as [[x0, y0, x1, y1], ...]; ValueError naming the first malformed box (numpy's
    own messages, "setting an array element with a sequence", say nothing a user can act on)."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"'boxes' must be a list of [x0, y0, x1, y1], got {type(raw).__name__}")
    out = []
    for i, box in enumerate(raw):
        if not isinstance(box, (list, tuple)):
            raise ValueError(f"box {i} is not a list of 4 numbers: {_short(box)}")
        if len(box) != 4:
            n = len(box)
            raise ValueError(f"box {i} has {n} number{'' if n == 1 else 's'}, expected 4 (x0, y0, x1, y1)")
        try:
            if any(isinstance(v, bool) for v in box):   # JSON true is no coordinate (float(True) is 1.0)
                raise TypeError
            nums = [float(v) for v in box]
        except (TypeError, ValueError):
            raise ValueError(f"box {i} holds something that is not a number: {_short(box)}") from None
        if not all(math.isfinite(v) for v in nums):
            raise ValueError(f"box {i} holds a non-finite number: {_short(box)}")
        out.append(nums)
    return out


def _poly_list(raw: Any) -> tuple[tuple[float, ...], ...]:
    """`polys` as one tuple of x1, y1, x2, y2, ... per box (() for none); ValueError naming the
    first entry that is not [] or a polygon of at least 4 points (a 3-point one was stored as a
    rectangle reaching outside its box)."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"'polys' must be a list with one [x1, y1, x2, y2, ...] per box, got {type(raw).__name__}")
    out = []
    for i, poly in enumerate(raw):
        if not isinstance(poly, (list, tuple)) or any(isinstance(v, bool) for v in poly):
            raise ValueError(f"poly {i} is not a list of numbers: {_short(poly)}")
        try:
            nums = tuple(float(v) for v in poly)
        except (TypeError, ValueError):
            raise ValueError(f"poly {i} holds something that is not a number: {_short(poly)}") from None
        if nums and not (is_polygon(nums) and all(math.isfinite(v) for v in nums)):
            raise ValueError(f"poly {i} is not a polygon of at least 4 finite points (x1, y1, ..., x4, y4), "
                             f"or [] for a box without one: {_short(poly)}")
        out.append(nums)
    return tuple(out)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict, str, int, float)) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_jsonl_lines(path: str | Path, source: str = "") -> tuple[list[tuple[int, LabelledImage]], list[str]]:
    """(line number, record) for every good line of a boxes.jsonl, and one "file:line: problem"
    per malformed line, so `import` can skip a bad record and keep the rest. ValueError naming
    the file only when it is not JSONL at all (not UTF-8 text, or no line is a JSON object)."""
    path = Path(path)
    good: list[tuple[int, LabelledImage]] = []
    bad: list[tuple[int, str]] = []
    objects = 0
    try:
        with path.open(encoding="utf-8-sig") as fh:   # a BOM (Windows editors) rejected line 1
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append((lineno, f"not valid JSON ({exc.msg} at column {exc.colno})"))
                    continue
                except RecursionError:   # it stopped the whole import, naming neither file nor line
                    bad.append((lineno, "JSON nested too deeply"))
                    continue
                objects += isinstance(d, dict)
                try:
                    good.append((lineno, LabelledImage.from_json(d, source=source)))
                except ValueError as exc:
                    bad.append((lineno, str(exc)))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a devset JSONL file (not UTF-8 text)") from None
    if bad and not objects:
        lineno, why = bad[0]
        raise ValueError(f"{path}: not a devset JSONL file (one JSON object per line expected; line {lineno}: {why})")
    return good, [f"{path}:{lineno}: {why}" for lineno, why in bad]


def read_jsonl(path: str | Path, source: str = "") -> list[LabelledImage]:
    """Read a boxes.jsonl; raises ValueError naming the file and line on a bad record."""
    good, bad = read_jsonl_lines(path, source)
    if bad:
        raise ValueError(bad[0])
    return [rec for _, rec in good]


def devset_files(root: str | Path) -> list[Path]:
    """A devset root's label files: `root/boxes.jsonl`, else every `<source>/boxes.jsonl`
    (sorted); FileNotFoundError naming the folder when there is none."""
    root = Path(root)
    files = [root / "boxes.jsonl"] if (root / "boxes.jsonl").exists() else sorted(root.glob("*/boxes.jsonl"))
    if not files:
        raise FileNotFoundError(f"{root}: no boxes.jsonl in this folder or its sub-folders (expected <source>/boxes.jsonl)")
    return files


def labelled_paths(path: Path, good: list[tuple[int, LabelledImage]], base: Path | None = None
                   ) -> tuple[list[tuple[Path, LabelledImage]], list[str]]:
    """(image path, record) of a file's good lines, one per image: an image listed again is
    named and its last record used, as `import` does (evaluate scored it once per record)."""
    base = path.parent if base is None else base
    last: dict[Path, tuple[int, LabelledImage]] = {}
    problems = []
    for lineno, rec in good:
        where = Path(os.path.normpath(base / rec.image))
        if where in last:   # named where the dropped record is (it named the line that is used)
            problems.append(f"{path}:{last[where][0]}: {rec.image} is listed again on line {lineno}; "
                            "this record is dropped, the last one is used")
        last[where] = (lineno, rec)
    return [(where, rec) for where, (_, rec) in sorted(last.items(), key=lambda kv: kv[1][0])], problems


def read_devset_lines(root: str | Path) -> tuple[list[tuple[Path, LabelledImage]], list[str]]:
    """Every good record of every `<source>/boxes.jsonl` under `root` (or `root/boxes.jsonl`),
    with absolute image paths, and one "file:line: problem" per malformed line (skipped) or
    image listed again (its last record used)."""
    out: list[tuple[Path, LabelledImage]] = []
    problems: list[str] = []
    for f in devset_files(root):
        good, bad = read_jsonl_lines(f, source=f.parent.name)
        items, again = labelled_paths(f, good)
        out += items
        problems += bad + again
    return out, problems


def read_devset(root: str | Path) -> list[tuple[Path, LabelledImage]]:
    """`read_devset_lines`, strict: ValueError naming the file and line of a malformed record
    (benchmarks must not measure on part of a set without noticing)."""
    out, problems = read_devset_lines(root)
    if problems:
        raise ValueError(problems[0])
    return out


def write_jsonl(path: str | Path, records: Iterable[LabelledImage | dict[str, Any]]) -> None:
    """Atomic write: temp file in the same folder, then rename."""
    with atomic_open(path) as fh:
        for r in records:
            line = json.dumps(r.to_json() if isinstance(r, LabelledImage) else r, ensure_ascii=False) + "\n"
            fh.write(line.encode("utf-8"))


FILE_NAME = "boxes.jsonl"
FILES = (FILE_NAME,)   # what `save` may write at the top of its folder


def save(records: Sequence[LabelledImage], out: str | Path, classes: Sequence[str] = ("text",)) -> Path:
    """The format adapter's writer: `out/boxes.jsonl` (image paths as the records give them;
    `classes` is not stored: a record's labels are class indices)."""
    target = Path(out) / FILE_NAME
    write_jsonl(target, records)
    return target


def outputs(records: Sequence[LabelledImage]) -> set[str]:
    """The files of `FILES` that `save(records)` writes."""
    return {FILE_NAME}


def is_export(path: Path) -> bool:
    """Whether `path` (a boxes.jsonl) is a `textloop export`'s: every line names an exported image."""
    try:
        with path.open(encoding="utf-8-sig") as fh:   # a BOM (Windows editors) rejected line 1
            for line in fh:
                if line.strip():
                    d = json.loads(line)
                    if not (isinstance(d, dict) and is_export_image(str(d.get("image", "")))):
                        return False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def load(path: str | Path, images_dir: str | Path | None = None) -> list[LabelledImage]:
    """The format adapter's reader: a boxes.jsonl, or a folder holding one (`images_dir` unused:
    devset image paths are relative to the JSONL's folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "boxes.jsonl"
    return read_jsonl(path, source=path.parent.name)


def split_every(records: list[tuple[Path, LabelledImage]], every: int) -> tuple[list, list]:
    """(rest, every `every`-th): per source, images sorted by name, the k-th, 2k-th... go to
    the second list. Per source, so each source is judged on a share of its own images; fixed,
    so runs on one devset compare."""
    if every < 2:
        raise ValueError(f"every must be at least 2, got {every}")
    by_source: dict[str, list[tuple[Path, LabelledImage]]] = {}
    for p, r in records:
        by_source.setdefault(r.source, []).append((p, r))
    rest: list[tuple[Path, LabelledImage]] = []
    picked: list[tuple[Path, LabelledImage]] = []
    for src in sorted(by_source):
        for i, item in enumerate(sorted(by_source[src], key=lambda x: x[1].image)):
            (picked if i % every == every - 1 else rest).append(item)
    return rest, picked


def split_halves(records: list[tuple[Path, LabelledImage]]) -> tuple[list, list]:
    """The fixed benchmark split of a devset: per source, images sorted by name, alternating.

    Benchmarks train/select on the first half and report on the second."""
    return split_every(records, 2)
