"""Small file utilities every stage uses: content hashes (and a bounded memory keyed by them),
atomic writes, tables.

They live here (not in the stage that first needed them) so stages do not import each other
for utilities.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # pandas is imported where tables are written: it is not needed to start the CLI
    import numpy as np
    import pandas as pd


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines too) as one space: messages stay one line
    (urllib's redirect-loop error spans three)."""
    return " ".join(str(text).split())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def utf8_text(text: str) -> str:
    """`text` as text every UTF-8 writer takes: the bytes of a file name that are not UTF-8, which
    Python keeps as lone surrogates (and the log, the manifest and stdout refuse: one such name
    stopped a whole batch), shown as `\\xff`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:   # a surrogate no file name decodes to
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def visible(text: object) -> str:
    """`text` with control characters shown as escapes (`\\n`, `\\x1b`), and bytes that are not
    UTF-8 (`utf8_text`): a file name with a newline split a log entry in two, and one with an
    escape sequence could rewrite the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], utf8_text(str(text)))


CONSOLE_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """One log record, one line: control characters in the message (file names) made visible."""

    def __init__(self, fmt: str = CONSOLE_LOG_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_info or record.stack_info:   # a traceback keeps its lines
            return text
        return visible(text)


def describe_error(exc: BaseException) -> str:
    """One line for an unexpected exception in a summary or sidecar: `Type: message`, or the
    type alone when it carries no message (`ResizeImgError: ` told a user nothing)."""
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Exceptions no input file can cause: a per-image handler that logs and skips must re-raise
# these, or a bug (a half-edited module, a missing import) shows up as "9 of 10 images failed"
# with exit 0 instead of stopping the run.
BUG_ERRORS: tuple[type[BaseException], ...] = (NameError, ImportError, SyntaxError)


def is_bug(exc: BaseException) -> bool:
    """True for an error in textloop's own code (see BUG_ERRORS), not in the image."""
    return isinstance(exc, BUG_ERRORS)


# --- hashes ---------------------------------------------------------------------------------

def cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/textloop`: derived files that can always be rebuilt (the
    convertible and the folded copies of a detector's ONNX)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "textloop"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content id of a file (the workspace image id). A FIFO or device is NotRegularFile (an
    OSError), not read: a FIFO swapped in for a listed file blocked the hashing thread for ever."""
    from pipeline.listing import open_regular   # (listing imports this module)

    h = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class TooLarge(ValueError):
    """`copy_hashing` stopped at its byte limit."""


def copy_hashing(src: BinaryIO, dst: BinaryIO, max_bytes: int | None = None, chunk: int = 1 << 20) -> tuple[str, int]:
    """Copy `src` to `dst` in one read, hashing on the way: (sha256, bytes). TooLarge past
    `max_bytes` (a download or file that never ends is not read to its end)."""
    h = hashlib.sha256()
    n = 0
    while block := src.read(chunk):
        n += len(block)
        if max_bytes is not None and n > max_bytes:
            raise TooLarge(f"more than {max_bytes} bytes")
        h.update(block)
        dst.write(block)
    return h.hexdigest(), n


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_parts(parts: Iterable[bytes]) -> str:
    """One content id of several byte strings in order (each length-prefixed, so the cut between
    them counts): a decoded image's pages and channels."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def sha256_json(payload: object) -> str:
    """Content id of settings (keys sorted): what a version or a resume check compares."""
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def array_digest(a: "np.ndarray") -> bytes:
    """Identity of an array's pixels in memory (not a stored content id): a 128-bit BLAKE2
    digest of its bytes, its shape and dtype. What a cache of per-image work is keyed by."""
    import numpy as np

    h = hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16)
    h.update(repr((a.shape, a.dtype.str)).encode())
    return h.digest()


_MISSING = object()


class LRU:
    """The last `size` values put, by key; the least recently used is forgotten first. Not
    locked (callers that share one hold their own lock). `hits` / `misses` count lookups."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = int(size)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value put under `key` (now the most recently used), or `default`."""
        value = self._items.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return default
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value under `key`, made by `make()` and remembered if it is not there (None too)."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            value = make()
            self.put(key, value)
        return value


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_image_id(name: str) -> bool:
    """Whether `name` is an image id (the sha256 of its original bytes, lower-case hex): what
    export names its files, and how import knows them again."""
    return bool(_SHA256_HEX.fullmatch(name))


# --- atomic writes --------------------------------------------------------------------------

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


NAME_MAX = 255   # bytes in one file name (Linux, macOS)


def short_name(name: str, limit: int) -> str:
    """`name` cut to at most `limit` UTF-8 bytes (whole characters), for names built from it."""
    raw = name.encode("utf-8", "surrogateescape")
    return name if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def fitted_name(name: str, suffix: str) -> str:
    """`name + suffix`, or when that is longer than a file name may be, the name cut short with a
    hash of the whole of it (still unique): a 250-byte image name is valid, its sidecar's was not."""
    full = name + suffix
    if len(full.encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return full
    tag = "~" + sha256_bytes(name.encode("utf-8", "surrogateescape"))[:12]
    return short_name(name, NAME_MAX - len(tag) - len(suffix.encode("utf-8"))) + tag + suffix


def not_replaceable(path: Path) -> str | None:
    """Why an existing `path` must not be replaced by a file (a link, a device, a FIFO, a socket:
    renaming over them put a file where /dev/null or a pipe's reader was), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link; give the file it points at, or another name"
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
    return f"it is {kind}, not a regular file; it is never replaced"


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` complete or not at all (temp file + rename in the
    destination folder), with the permissions any tool's output gets (0666 minus the umask;
    mkstemp's 0600 made the cleaned images unreadable to everyone else). The one atomic writer.

    UnwritableError (naming the path) when the destination folder cannot be created or written,
    or the destination is a link, device, FIFO or socket."""
    path = Path(path)
    why_not = not_replaceable(path)
    if why_not:
        raise UnwritableError(errno.EEXIST, f"cannot write {path} ({why_not})", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temp name is cut so that a destination name of up to 255 bytes still gets one
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{short_name(path.name, NAME_MAX - 14)}.", suffix=".tmp")
    except (FileExistsError, NotADirectoryError) as exc:
        raise UnwritableError(exc.errno, f"cannot write {path} (a parent is not a folder)", str(path)) from None
    except OSError as exc:   # read-only, no such folder (/proc/x), no space...: the destination's problem
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise UnwritableError(exc.errno, f"cannot write {path} ({why})", str(path)) from None
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
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):   # the destination is full: name it
            raise UnwritableError(exc.errno, f"cannot write {path} ({exc.strerror or exc})", str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """UnwritableError (one line naming `path`) unless a file can be written there, checked
    *before* the work that produces it: `predict --out somefolder/` ran every detection and
    then failed. Creates the parent folders, as the writer would; leaves no file behind."""
    path = Path(path)
    if path.is_dir():
        raise UnwritableError(errno.EISDIR, f"cannot write {path} (it is a folder; give a file name)", str(path))
    why_not = not_replaceable(path)
    if why_not:
        raise UnwritableError(errno.EEXIST, f"cannot write {path} ({why_not})", str(path))
    probe = path.parent / f".{short_name(path.name, NAME_MAX - 8)}.check"
    try:
        with atomic_open(probe) as fh:
            fh.write(b"")
    except UnwritableError as exc:   # named as the file asked for, not the probe (".x.jsonl.check")
        raise UnwritableError(exc.errno, (exc.strerror or "").replace(str(probe), str(path)), str(path)) from None
    probe.unlink(missing_ok=True)


def prepare_folders(folders: Iterable[Path]) -> None:
    """Create output folders and check that they can be written: UnwritableError naming the
    folder and why (a file in the way, no permission) as one command-level error, rather than
    a failure per image or an `[Errno 20]` line (redact's output and audit, export's OUT). All or
    nothing: when one fails, the folders this call created are removed (an unwritable --audit
    left an empty OUTPUT behind)."""
    made: list[Path] = []
    for folder in folders:
        try:
            made += reversed([d for d in (folder, *folder.parents) if not d.exists()])   # parents first
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()           # only if still empty
            blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            why = (f"{blocked} is a file, not a folder" if blocked is not None else exc.strerror or str(exc))
            raise UnwritableError(exc.errno or errno.EACCES, f"{folder}: cannot create or write this folder ({why})",
                                  str(folder)) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes via temp file + rename in the destination folder (see `atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


SECRET_HEX = 64   # a secret key file holds this many hex digits (32 random bytes)


def secret_key(path: str | Path, create: bool = True) -> bytes | None:
    """The 32-byte key in `path` (hex), made on first use when `create` (else None when there is
    none). Made owner-only (0600, not the umask: it is a secret) and exclusively: the file is
    written whole under a temp name and linked into place, so two runs starting at once end up
    with one key, and a crash leaves none rather than a short one. ValueError naming the file
    when it holds anything else."""
    import secrets

    path = Path(path)
    for _ in range(2):
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            if not create:
                return None
        else:
            if len(text) != SECRET_HEX or not re.fullmatch(r"[0-9a-fA-F]+", text):
                raise ValueError(f"{path}: not a key ({SECRET_HEX} hex digits); restore it from a backup, "
                                 "or move it away to start a new one")
            return bytes.fromhex(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(SECRET_HEX // 2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):   # another run made it first: read theirs
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise ValueError(f"{path}: could not be read after it was made")


# --- tables ---------------------------------------------------------------------------------

def write_table(df: pd.DataFrame, folders: Sequence[Path], name: str) -> None:
    """`<name>.parquet` and `<name>.csv` in every folder (atomic writes)."""
    for folder in folders:
        atomic_write_bytes(folder / f"{name}.parquet", df.to_parquet(index=False))
        atomic_write_bytes(folder / f"{name}.csv", df.to_csv(index=False).encode())


def read_table(folder: Path, name: str) -> pd.DataFrame | None:
    """`<name>.parquet` from `folder`, or None when it was never written."""
    import pandas as pd

    p = Path(folder) / f"{name}.parquet"
    return pd.read_parquet(p) if p.exists() else None


def memory_mb(field: str = "VmHWM") -> float | None:
    """A memory figure of this process from /proc/self/status, in MB (VmHWM: peak RSS, VmRSS:
    now), or None where there is no such file. VmHWM, not ru_maxrss: a forked child's
    ru_maxrss starts at its parent's, and VmHWM can be reset (`/proc/self/clear_refs`)."""
    try:
        with open("/proc/self/status") as fh:
            kb = next((int(line.split()[1]) for line in fh if line.startswith(field + ":")), None)
    except OSError:
        return None
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    """This process's peak RSS (MB): VmHWM, else ru_maxrss where /proc is missing."""
    peak = memory_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
