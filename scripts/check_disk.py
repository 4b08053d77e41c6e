#!/usr/bin/env python3
"""Stop `make` before it builds virtualenvs the disk cannot hold.

pip fills a disk in the middle of unpacking torch and leaves a broken venv behind with
"OSError: [Errno 28] No space left on device" among hundreds of lines of warnings (a CI run
of this project ended that way). This says it in one line first: how much the venvs still to
be built need, how much is free, where.

Standard library only: it runs before any venv exists.

    python3 scripts/check_disk.py [--path DIR] VENV=GB [VENV=GB ...]

Each VENV=GB is a venv directory and the space its build needs (its size plus pip's
unpacking); venvs whose `.installed` marker exists are already built and need nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

GB = 1024 ** 3


def needed(venvs: list[tuple[Path, float]]) -> tuple[float, list[str]]:
    """GB the unbuilt venvs need, and their names."""
    todo = [(p, gb) for p, gb in venvs if not (p / ".installed").exists()]
    return sum(gb for _, gb in todo), [p.name for p, _ in todo]


def existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (what `statvfs` and `stat` can look at)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return p


def free_gb(path: Path) -> float:
    """Free GB for an unprivileged writer on the file system holding `path` (or its nearest existing parent)."""
    return shutil.disk_usage(existing(path)).free / GB


def parse_venv(text: str) -> tuple[Path, float]:
    name, sep, gb = text.partition("=")
    try:
        value = float(gb)
    except ValueError:
        value = -1.0
    if not sep or not name or not 0 <= value < float("inf"):   # nan fails both comparisons
        raise argparse.ArgumentTypeError(f"expected VENV=GB (GB a finite number >= 0), got {text!r}")
    return Path(name), value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("venvs", nargs="+", type=parse_venv, metavar="VENV=GB")
    ap.add_argument("--path", type=Path, default=Path("."), help="where the venvs go (default: here)")
    args = ap.parse_args(argv)
    if os.environ.get("TEXTLOOP_SKIP_DISK_CHECK") == "1":
        return 0
    need, names = needed([(args.path / p, gb) for p, gb in args.venvs])
    if not names:
        return 0
    # pip unpacks wheels under TMPDIR: when that is another file system it needs its own room
    # (the largest wheel, torch's, unpacks to about 2.5 GB there)
    checks = [(args.path, need)]
    tmp = Path(tempfile.gettempdir())
    if os.stat(tmp).st_dev != os.stat(existing(args.path)).st_dev:
        checks.append((tmp, min(need, 3.0)))
    for where, gb in checks:
        have = free_gb(where)
        if have < gb:
            print(f"{where.resolve()}: {have:.1f} GB free, building {', '.join(names)} needs about {gb:.0f} GB "
                  f"(free some space, or TEXTLOOP_SKIP_DISK_CHECK=1 to try anyway)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
