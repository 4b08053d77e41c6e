"""Labelled-image records and the devset JSONL format (one place for reading/writing it).

A line: {"image": "images/NAME.jpg", "width": W, "height": H, "boxes": [[x0,y0,x1,y1], ...],
"texts": [...], "ignore": [...], "polys": [...]} -- `image` relative to the JSONL's folder.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


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

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if len(ignore) == 0:
            ignore = np.zeros(len(boxes), dtype=bool)
        if len(ignore) != len(boxes):
            raise ValueError(f"{self.image}: {len(boxes)} boxes but {len(ignore)} ignore flags")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "ignore", ignore)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "image": self.image, "width": self.width, "height": self.height,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
            "texts": list(self.texts) or [""] * len(self.boxes),
            "ignore": [bool(x) for x in self.ignore],
        }
        if self.polys:
            d["polys"] = [list(p) for p in self.polys]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "") -> "LabelledImage":
        try:
            return cls(
                image=str(d["image"]), width=int(d["width"]), height=int(d["height"]),
                boxes=d.get("boxes") or [], ignore=d.get("ignore") or [],
                texts=tuple(d.get("texts") or ()), polys=tuple(tuple(p) for p in d.get("polys") or ()),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad record ({exc})") from None


def read_jsonl(path: str | Path, source: str = "") -> list[LabelledImage]:
    """Read a boxes.jsonl; raises ValueError naming the file and line on a bad record."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(LabelledImage.from_json(json.loads(line), source=source))
            except (json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
    return out


def read_devset(root: str | Path) -> list[tuple[Path, LabelledImage]]:
    """Every `<source>/boxes.jsonl` under `root` (or `root/boxes.jsonl`), with absolute image paths."""
    root = Path(root)
    files = [root / "boxes.jsonl"] if (root / "boxes.jsonl").exists() else sorted(root.glob("*/boxes.jsonl"))
    if not files:
        raise FileNotFoundError(f"{root}: no boxes.jsonl found (expected <source>/boxes.jsonl)")
    out = []
    for f in files:
        source = f.parent.name
        for rec in read_jsonl(f, source=source):
            out.append((f.parent / rec.image, rec))
    return out


def write_jsonl(path: str | Path, records: Iterable[LabelledImage | dict[str, Any]]) -> None:
    """Atomic write: temp file in the same folder, then rename."""
    with atomic_open(path) as fh:
        for r in records:
            line = json.dumps(r.to_json() if isinstance(r, LabelledImage) else r, ensure_ascii=False) + "\n"
            fh.write(line.encode("utf-8"))


# Temp files of atomic writes: `.{name}.XXXXXXXX.tmp` beside the destination (mkstemp's random
# part is 8 characters of [a-z0-9_]). A kill between write and rename leaves one behind;
# `is_atomic_temp` lets a rerun recognise (only) its own leftovers.
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_atomic_temp(name: str) -> bool:
    """True for a file name `atomic_write_bytes` uses for its temp files."""
    return bool(_TEMP_RE.match(name))


class UnwritableError(PermissionError):
    """The destination (not the input) cannot be written: its folder is read-only, not a folder,
    or not ours. str() is one line naming the path."""

    def __str__(self) -> str:
        return str(self.strerror)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once. /proc/self/status on Linux; elsewhere the set-and-restore
    dance, which briefly changes it for every thread, hence only once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` complete or not at all (temp file + rename in the
    destination folder), with the permissions any tool's output gets (0666 minus the umask;
    mkstemp's 0600 made the cleaned images unreadable to everyone else). The one atomic writer.

    UnwritableError (naming the path) when the destination folder cannot be created or written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (FileExistsError, NotADirectoryError) as exc:
        raise UnwritableError(exc.errno, f"cannot write {path} (a parent is not a folder)", str(path)) from None
    except PermissionError as exc:
        raise UnwritableError(exc.errno, f"cannot write {path} ({exc.strerror or exc})", str(path)) from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        raise UnwritableError(exc.errno, f"cannot write {path} (read-only file system)", str(path)) from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        except OSError:  # e.g. FAT/SMB mounts without modes: their own defaults apply
            pass
        with os.fdopen(fd, "wb") as fh:
            yield fh
        try:
            os.replace(tmp, path)
        except (PermissionError, IsADirectoryError) as exc:
            raise UnwritableError(exc.errno, f"cannot write {path} ({exc.strerror or exc})", str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes via temp file + rename in the destination folder (see `atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def split_halves(records: list[tuple[Path, LabelledImage]]) -> tuple[list, list]:
    """The fixed benchmark split of a devset: per source, images sorted by name, alternating.

    Benchmarks train/select on the first half and report on the second."""
    by_source: dict[str, list[tuple[Path, LabelledImage]]] = {}
    for p, r in records:
        by_source.setdefault(r.source, []).append((p, r))
    first: list[tuple[Path, LabelledImage]] = []
    second: list[tuple[Path, LabelledImage]] = []
    for src in sorted(by_source):
        for i, item in enumerate(sorted(by_source[src], key=lambda x: x[1].image)):
            (first if i % 2 == 0 else second).append(item)
    return first, second
