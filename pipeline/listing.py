"""Listing input trees and opening input files: one rule for symlinks, special files and names.

Every image-folder listing goes through here (`harvest`, `redact`, `predict`, `synth`), so a
tree means the same to each:

- Images are the files named with one of `IMAGE_EXTENSIONS` (any case); `redact` lists every
  file and reports the others as ignored, the rest list images only.
- Glob patterns (`redact "in/**/*.png"`) get the same checks (`iter_glob`).

- Regular files are listed (depth first, names sorted). Names starting with "." (hidden files
  and folders, our own temp files) are not listed. In a full listing (`extensions=None`) a
  hidden folder, or a hidden file named as an image, is reported as `Skipped` (`hidden`) and
  `triage` names it among the ignored files: `.scan.jpg` left out of a redacted copy must not
  go unmentioned. Other hidden files (`.DS_Store`) stay silent.
- A symlink (to a file or a folder) is followed when it resolves inside the tree being listed.
  Each real folder is listed once, under its real path when it is in the tree (so a link cycle
  ends, and a link to a sibling folder does not list its files twice); a linked file is listed
  under the link's name too.
- A symlink that resolves outside the tree (`outside_tree`) or dangles (`dangling_symlink`),
  anything that is not a regular file (`not_a_regular_file`: FIFO, socket, device) and a folder
  that cannot be read (`unreadable`) are reported as `Skipped` and never opened: reading a FIFO
  blocks forever, a device never ends.
- With `text_names=True` (stages that keep names in the catalog or in tables: `harvest`,
  `predict`), a name that is not valid UTF-8 (`name_not_utf8`) is reported as `Skipped` too:
  SQLite and Parquet refuse it, and one such name stopped a whole harvest. `redact` keeps such
  files under their own bytes and shows the names as `\\xff` in its log and manifest.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.io import utf8_text


# What every stage takes as an image (the redact codec writes exactly these: see codec.EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
MAX_LISTED_IGNORED = 1000   # JSON summaries name this many files left out as non-images (logs name all)


@dataclass(frozen=True)
class Listed:
    """A regular file to process. `rel`: posix path relative to the root, as walked."""

    path: Path
    rel: str


@dataclass(frozen=True)
class Skipped:
    """An entry that is reported and not processed, with a short stable reason."""

    path: Path
    rel: str
    reason: str      # not_a_regular_file | outside_tree | dangling_symlink | unreadable | hidden | name_not_utf8
    detail: str


class NotRegularFile(OSError):
    """Raised by `open_regular` for a path that must not be read (FIFO, device, folder...)."""

    reason = "not_a_regular_file"


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for messages."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def file_problem(path: str | Path) -> tuple[str, str] | None:
    """(reason, detail) when `path` (a file named on the command line) must not be opened:
    `not_found`, `dangling_symlink`, `not_a_regular_file`; None for a regular file (or a link to one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return "dangling_symlink", f"symlink to {os.readlink(path)!r}, which does not exist"
        return "not_found", "no such file or folder"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "dangling_symlink", "symlink loop"
        return "unreadable", exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not_a_regular_file", f"is {describe_mode(st.st_mode)}"
    return None


class OutsideTree(OSError):
    """Raised by `open_regular(path, inside=root)` when the file opened lies outside `root`."""

    reason = "outside_tree"


def open_regular(path: str | Path, inside: str | None = None) -> BinaryIO:
    """Open a regular file for reading; NotRegularFile for anything else, without blocking.

    Checked with stat before opening, and again on the descriptor (opened O_NONBLOCK, which
    cannot hang even if the path was swapped for a FIFO in between). `inside` (a tree's real
    path): the file opened must lie in it, checked on the descriptor too; a listed entry
    swapped for a link out of the tree after the listing was read and redacted."""
    problem = file_problem(path)
    if problem is not None and problem[0] == "not_a_regular_file":
        raise NotRegularFile(errno.EINVAL, problem[1], str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"is {describe_mode(st.st_mode)}", str(path))
        if inside:
            try:   # where the descriptor really points (Linux); else the path as it resolves now
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                real = os.path.realpath(path)
            if not _inside(real, inside):
                raise OutsideTree(errno.EXDEV, _outside(real, inside), str(path))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _outside(real: str, root_real: str) -> str:
    """The detail of an `outside_tree` entry (the listing's and the open's)."""
    return f"symlink to {real}, outside {root_real}; not followed"


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def iter_image_files(root: str | Path, extensions: Collection[str] | None = None,
                     exclude: Iterable[str | Path] = (), text_names: bool = False) -> Iterator[Listed | Skipped]:
    """Regular files under `root` (see the module docstring for the rule), and skipped entries.

    `extensions` (lower case, with the dot): only files with these suffixes are listed, and
    special files or outside links with other names are not reported either (they would not
    have been taken). `exclude`: folders (e.g. the output inside the input) left out silently.
    `text_names`: names that are not UTF-8 are skipped (`name_not_utf8`), folders with them whole."""
    root = Path(root)
    root_real = os.path.realpath(root)
    excluded = [os.path.realpath(e) for e in exclude]
    exts = None if extensions is None else {e.lower() for e in extensions}
    visited: set[tuple[int, int]] = set()
    linked_dirs: list[tuple[Path, str]] = []   # in-tree folder links, walked after the real tree
    hidden_dirs: list[tuple[Path, str]] = []

    def wanted(name: str) -> bool:
        return exts is None or os.path.splitext(name)[1].lower() in exts

    def is_excluded(real: str) -> bool:
        return any(_inside(real, e) for e in excluded)

    def walk(folder: Path, rel: str) -> Iterator[Listed | Skipped]:
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                return
            visited.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(folder, rel or ".", "unreadable", exc.strerror or str(exc))
            return
        for e in entries:
            path = Path(e.path)
            erel = f"{rel}/{e.name}" if rel else e.name
            if is_hidden_name(e.name):
                if exts is not None:
                    continue
                if _is_dir(e, follow_symlinks=False):   # named at the end unless a link in the tree lists it
                    hidden_dirs.append((path, erel))
                elif is_image_name(e.name):
                    yield Skipped(path, erel, "hidden", "hidden name (starts with '.'); not listed")
                continue
            if text_names and utf8_text(e.name) != e.name:   # not UTF-8: Python holds lone surrogates
                folder = _is_dir(e)
                if folder or is_image_name(e.name):   # other files stay what they were: ignored
                    if folder or wanted(e.name):
                        yield Skipped(path, erel, "name_not_utf8", "the name is not valid UTF-8; rename it to take it in")
                    continue
            try:
                if e.is_symlink():
                    try:
                        st = os.stat(path)
                    except OSError as exc:
                        if not (wanted(e.name) or not os.path.splitext(e.name)[1]):
                            continue  # e.g. a dangling notes.txt: would not have been taken
                        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                            yield Skipped(path, erel, "dangling_symlink",
                                          f"symlink to {os.readlink(path)!r}, which does not resolve")
                        else:
                            yield Skipped(path, erel, "unreadable", exc.strerror or str(exc))
                        continue
                    real = os.path.realpath(path)
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if is_excluded(real) or not (is_dir or wanted(e.name)):
                        continue
                    if not _inside(real, root_real):
                        yield Skipped(path, erel, "outside_tree",
                                      _outside(real, root_real))
                        continue
                    if is_dir:
                        linked_dirs.append((path, erel))
                        continue
                else:
                    st = e.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if is_dir:
                        if not is_excluded(os.path.realpath(path)):
                            yield from walk(path, erel)
                        continue
                    if not wanted(e.name) or is_excluded(os.path.realpath(path)):
                        continue
                if stat.S_ISREG(st.st_mode):
                    yield Listed(path, erel)
                else:
                    yield Skipped(path, erel, "not_a_regular_file", f"is {describe_mode(st.st_mode)}; not opened")
            except OSError as exc:
                yield Skipped(path, erel, "unreadable", exc.strerror or str(exc))

    yield from walk(root, "")
    while linked_dirs:  # folders reached only through links (e.g. to a hidden folder): once each
        path, rel = linked_dirs.pop(0)
        yield from walk(path, rel)
    for path, rel in hidden_dirs:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in visited and not is_excluded(os.path.realpath(path)):
            yield Skipped(path, rel, "hidden", "hidden folder (name starts with '.'); not listed")


def is_hidden_name(name: str) -> bool:
    """The listing's rule for hidden entries (files and folders): the name starts with '.'."""
    return name.startswith(".")


def _is_dir(e: os.DirEntry, follow_symlinks: bool = True) -> bool:
    """A folder (or, following links, a link to one); False when it cannot be told."""
    try:
        return e.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False


def is_image_name(name: str) -> bool:
    """Named as an image (`IMAGE_EXTENSIONS`, any case): what every stage takes."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Triage:
    """A listing split by what a stage does with each entry."""

    images: list[Listed]       # to process
    problems: list[Skipped]    # images (or folders) that could not be taken: reported as errors
    ignored: list[Path]        # files not named as images, hidden images and folders: left out, and named


def triage(entries: Iterable[Listed | Skipped]) -> Triage:
    """The one rule `harvest` and `redact` apply to a full listing (`iter_image_files(root,
    None)` or `iter_glob`): images are processed, a skipped image or folder is a problem, and
    anything else (notes.txt, a dangling link named .csv, a hidden image or folder) is ignored and
    named, not silently lost."""
    images: list[Listed] = []
    problems: list[Skipped] = []
    ignored: list[Path] = []
    for e in entries:
        image = is_image_name(e.rel)
        if isinstance(e, Skipped) and e.reason == "hidden":
            ignored.append(e.path)
        elif isinstance(e, Skipped) and (image or not os.path.splitext(e.rel)[1]):
            problems.append(e)
        elif not image:
            ignored.append(e.path)
        elif isinstance(e, Listed):
            images.append(e)
    return Triage(images, problems, ignored)


def iter_glob(pattern: str, root: str | Path, exclude: Iterable[str | Path] = ()) -> Iterator[Listed | Skipped]:
    """Glob matches (sorted) with the listing rule's checks: regular files only, links resolving
    under `root` (the glob's fixed prefix) only; folders and `exclude` left out silently (glob
    already leaves hidden names out)."""
    import glob as globmod

    root_real = os.path.realpath(root)
    excluded = [os.path.realpath(e) for e in exclude]
    for m in sorted(globmod.glob(pattern, recursive=True)):
        path = Path(m)
        real = os.path.realpath(path)
        if os.path.isdir(path) or any(_inside(real, e) for e in excluded):
            continue
        rel = Path(os.path.relpath(path, root)).as_posix()
        problem = file_problem(path)
        if problem is None and not _inside(real, root_real):
            problem = ("outside_tree", _outside(real, root_real))
        yield Skipped(path, rel, *problem) if problem is not None else Listed(path, rel)
