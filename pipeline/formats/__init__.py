"""Label formats: one module per format, each with a `save(records, out)` / `load(path)` pair
over `LabelledImage` records, and a registry of them by name.

`devset` (boxes.jsonl, the format the devsets and `textloop import` use), `coco` (COCO
detection JSON) and `yolo` (labels/*.txt + data.yaml). Label Studio tasks are not a file
format here: `pipeline.studio.convert` builds them with the percent conversion in `boxes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.formats import coco, devset, yolo
from pipeline.formats.devset import LabelledImage, devset_files, read_devset, read_jsonl, split_every, split_halves, write_jsonl


@dataclass(frozen=True)
class LabelFormat:
    """A format's name, its save/load pair, and the files it writes at the top of a folder, so
    `textloop export` can tell its own label files from a user's and replace another format's."""

    name: str
    save: Callable[..., Path]               # (records, out folder, **options) -> the file written
    load: Callable[..., list[LabelledImage]]  # (path, **options) -> records
    suffix: str                             # what a label file of this format ends with
    files: tuple[str, ...] = ()             # every file name `save` may write at the folder's top
    outputs: Callable[[Sequence[LabelledImage]], set[str]] = lambda records: set()  # those save(records) writes
    is_export: Callable[[Path], bool] = lambda path: False  # whether such a file is an export's own


FORMATS: dict[str, LabelFormat] = {
    "jsonl": LabelFormat("jsonl", devset.save, devset.load, ".jsonl", devset.FILES, devset.outputs, devset.is_export),
    "coco": LabelFormat("coco", coco.save, coco.load, ".json", coco.FILES, coco.outputs, coco.is_export),
    "yolo": LabelFormat("yolo", yolo.save, yolo.load, ".yaml", yolo.FILES, yolo.outputs, yolo.is_export),
}


def get_format(name: str) -> LabelFormat:
    """The registered format `name`; ValueError naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}: use one of {', '.join(FORMATS)}") from None


def save(name: str, records: Sequence[LabelledImage], out: str | Path, **options: Any) -> Path:
    return get_format(name).save(records, out, **options)


def load(name: str, path: str | Path, **options: Any) -> list[LabelledImage]:
    return get_format(name).load(path, **options)


__all__ = ["FORMATS", "LabelFormat", "LabelledImage", "devset_files", "get_format", "save", "load", "read_devset", "read_jsonl",
           "split_every", "split_halves", "write_jsonl"]
