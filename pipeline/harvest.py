"""`harvest`: gather images from folders, URL lists, CSVs and URLs into the workspace.

Every item is streamed to a temp file in the workspace while hashed, fully decoded
(`imaging.probe`), then renamed to its content address `images/ab/<sha256>.<ext>`; the
bytes are never re-encoded. Catalog rows are written by the calling thread in batched
transactions after the file is in place, so an interrupted run leaves at worst an orphan
file that the rerun adopts. Bad items become `rejects` rows with a reason; the rest finish.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import http.client
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import HarvestConfig, SplitRatios
from pipeline.imaging import ImageInfo, ImageRejected, probe
from pipeline.io import TooLarge, copy_hashing, one_line, utf8_text
from pipeline.listing import MAX_LISTED_IGNORED, NotRegularFile, file_problem, iter_image_files, open_regular, triage
from pipeline.workspace import Workspace

CHUNK = 1 << 20
URL_LIST_SUFFIXES = (".txt", ".urls", ".lst")


@dataclass(frozen=True)
class Item:
    """One thing to harvest: an absolute local path or an http(s) URL. `shown` is the path as
    the user gave it (the folder as typed joined with the file's path inside it), for messages."""

    source: str
    original_name: str
    is_url: bool
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    shown: str = field(default="", hash=False, compare=False)


@dataclass(frozen=True)
class Reject:
    """A rejected item: `source` is its catalog key (absolute for files), `shown` the path as the
    user typed it, so the summary does not mix `src/x.jpg` with `/home/me/src/y.png`."""

    source: str
    reason: str
    detail: str
    shown: str = ""

    def line(self) -> str:
        return f"{self.shown or self.source}: {self.reason} ({one_line(self.detail)})"


@dataclass
class Fetched:
    item: Item
    sha256: str
    tmp_path: Path
    size: int
    info: ImageInfo
    mtime: float | None = None


@dataclass
class HarvestSummary:
    new: int = 0
    duplicates: int = 0      # new source of an image already in the workspace
    skipped: int = 0         # source already harvested (resume)
    rejected: Counter = field(default_factory=Counter)
    reject_lines: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)   # in the folders, not named as images
    # files that now hold other content than when harvested: "path: was <id>, now <id>"
    replaced: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.new + self.duplicates + self.skipped

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "duplicates": self.duplicates, "skipped": self.skipped,
                "rejected": dict(self.rejected), "rejects": self.reject_lines,
                "ignored_non_images": len(self.ignored_files), "ignored_files": self.ignored_files[:MAX_LISTED_IGNORED],
                "replaced": self.replaced, "seconds": round(self.seconds, 3)}


def split_for(sha256: str, ratios: SplitRatios) -> str:
    """Deterministic split from the content hash: never changes between runs or machines."""
    u = int(sha256[:12], 16) / float(1 << 48)
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.val:
        return "val"
    return "test"


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def url_problem(url: str) -> str | None:
    """Why an http(s) URL cannot be fetched (`bad_url`), or None: checked up front so one
    malformed entry (`http://127.0.0.1:abc/x.png`, `http://[::1`) is a reject, not a crash."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "URL contains spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a non-numeric or out-of-range port
        host = parts.hostname
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "only http:// and https:// URLs are supported"
    if not host:
        return "URL has no host"
    return None


def _url_name(url: str) -> str:
    """The file name a URL names, decoded (`with%20space.jpg` is `with space.jpg`)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or "download"


# --- expanding sources into items --------------------------------------------------------

def expand_sources(sources: Iterable[str], ignored: list[str] | None = None) -> tuple[list[Item], list[Reject]]:
    """Folders (recursive), single images, URL lists, CSVs and URLs -> items and source errors;
    files in the folders that are not named as images are appended to `ignored`."""
    items: list[Item] = []
    errors: list[Reject] = []
    ignored = [] if ignored is None else ignored
    for raw in sources:
        if is_url(raw):
            bad = url_problem(raw)
            if bad:
                errors.append(Reject(raw, "bad_url", bad))
            else:
                items.append(Item(raw, _url_name(raw), True))
            continue
        if "://" in raw:
            errors.append(Reject(raw, "bad_url", "only http:// and https:// URLs are supported"))
            continue
        path = Path(raw).expanduser()
        try:
            problem = None if path.is_dir() else file_problem(path)
            if problem is not None:  # missing, dangling, FIFO/device: never opened
                errors.append(Reject(_entry_key(path), *problem, shown=str(path)))
            elif path.is_dir():
                items.extend(_walk_folder(path, errors, ignored))
            elif path.suffix.lower() == ".csv":
                items.extend(_read_csv(path, errors))
            elif path.suffix.lower() in URL_LIST_SUFFIXES:
                items.extend(_read_url_list(path, errors))
            else:
                items.append(Item(str(path.resolve()), path.name, False, shown=str(path)))
        except PermissionError as exc:
            errors.append(Reject(str(path), "unreadable", exc.strerror or "permission denied"))
    return items, errors


def _entry_key(path: Path) -> str:
    """The catalog key of an entry that is not opened (a FIFO, a dangling or outside link): its
    real folder joined with its own name (the link itself, not what it points to), so one entry
    typed as `src/x`, `/abs/src/x` or through a linked folder is one reject, not three."""
    path = Path(path).expanduser()
    try:
        return str(path.parent.resolve() / path.name)
    except OSError:
        return str(path.absolute())


def _walk_folder(folder: Path, errors: list[Reject], ignored: list[str]) -> list[Item]:
    """Image files under `folder` by the shared listing rule (`pipeline.listing`, sorted as
    `redact` sorts them); images it skips (FIFOs, links out of the tree, dangling links,
    unreadable folders) become rejects, and files not named as images go to `ignored`."""
    found = triage(iter_image_files(folder, None, text_names=True))
    # a name that is not UTF-8 is kept as the catalog can store it (`\\xff`)
    errors += [Reject(utf8_text(_entry_key(e.path)), e.reason, e.detail, shown=utf8_text(str(e.path))) for e in found.problems]
    ignored += [utf8_text(str(p)) for p in found.ignored]
    # a link to a file of the same folder is the same source: named by the real file, not the
    # link (the image was stored as `link_inside.png` and its own name appeared nowhere)
    items: dict[str, Item] = {}
    for e in found.images:
        src = str(e.path.resolve())
        if src not in items or (Path(items[src].shown).is_symlink() and not e.path.is_symlink()):
            items[src] = Item(src, e.path.name, False, shown=str(e.path))
    return list(items.values())


def list_key(path: Path) -> str:
    """The catalog key of a URL list or CSV: its real path, so its line rejects are one row each
    however the file was typed (`urls.txt`, `/abs/urls.txt`), and are forgotten when it is
    harvested again without them (they piled up: 20 rows for 10 bad lines)."""
    return str(Path(path).expanduser().resolve())


def _read_url_list(path: Path, errors: list[Reject]) -> Iterator[Item]:
    key = list_key(path)
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_url(entry):
            bad = url_problem(entry)
            if bad:
                errors.append(Reject(f"{key}:{lineno}", "bad_url", f"{bad}: {entry[:80]!r}", f"{path}:{lineno}"))
            else:
                yield Item(entry, _url_name(entry), True)
        else:
            errors.append(Reject(f"{key}:{lineno}", "bad_url", f"not an http(s) URL: {entry[:80]!r}", f"{path}:{lineno}"))


def _read_csv(path: Path, errors: list[Reject]) -> Iterator[Item]:
    key = list_key(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(65536)
            fh.seek(0)
            reader = csv.DictReader(fh, strict=True)   # an unclosed quote is an error, not a URL
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if not sample.strip():
                errors.append(Reject(key, "malformed_csv", "empty file", str(path)))
                return
            cols = [c for c in ("url", "path") if c in fields]   # both: a row's url, else its path
            col = "/".join(cols) if cols else None
            if col is None:
                errors.append(Reject(key, "missing_column", f"needs a 'url' or 'path' column, has {fields}", str(path)))
                return
            names = [reader.fieldnames[fields.index(c)] for c in cols]  # type: ignore[index]
            for rowno, row in enumerate(reader, 2):
                if None in row:
                    errors.append(Reject(f"{key}:{rowno}", "malformed_csv", "more fields than the header", f"{path}:{rowno}"))
                    continue
                value = next((v.strip() for v in (row.get(n) or "" for n in names) if v.strip()), "")
                meta = {k: v for k, v in row.items() if k not in names and k is not None}
                if not value:
                    errors.append(Reject(f"{key}:{rowno}", "malformed_csv", f"empty '{col}'", f"{path}:{rowno}"))
                elif "\n" in value or "\r" in value:   # an unclosed quote ran the rest of the file into it
                    errors.append(Reject(f"{key}:{rowno}", "malformed_csv", "a quote is not closed", f"{path}:{rowno}"))
                elif is_url(value):
                    bad = url_problem(value)
                    if bad:
                        errors.append(Reject(f"{key}:{rowno}", "bad_url", f"{bad}: {value[:80]!r}", f"{path}:{rowno}"))
                    else:
                        yield Item(value, _url_name(value), True, meta)
                else:
                    p = Path(value).expanduser()
                    p = (path.parent / p) if not p.is_absolute() else p
                    problem = file_problem(p)   # a dangling link named so, not `not_found`
                    if problem is not None and problem[0] != "not_found":
                        errors.append(Reject(_entry_key(p), *problem, shown=str(p)))
                    else:
                        yield Item(str(p.resolve()), p.name, False, meta, shown=str(p))
    except (UnicodeDecodeError, csv.Error) as exc:
        errors.append(Reject(key, "malformed_csv", str(exc), str(path)))


# --- fetching one item (runs in worker threads) -------------------------------------------

# Set by Ctrl-C / SIGTERM during a harvest (`_stop_on_signals`), seen by every worker (a forked
# process inherits it through the pool's initializer): a download stops its retries, backoff and
# the request under way, instead of waiting them out (85 s after Ctrl-C with the defaults).
_STOP: Any = None


class Stopped(Exception):
    """A download cut short by Ctrl-C / SIGTERM: not a reject (it is fetched again on the rerun)."""


def worker_pool(workers: int, stop: Any = None) -> Any:
    """Forked worker processes: cheap to start, and decoding uses every core (Pillow holds the
    GIL). But forking a process whose native thread pools run (onnxruntime after ppocr, torch)
    can deadlock the child: `harvest` hung when called after a detector was loaded in the same
    process (`redact --review`, tests). Then threads (slower, safe; spawn/forkserver would
    re-run the caller's `__main__`, which breaks scripts without a main guard)."""
    from concurrent.futures import ThreadPoolExecutor

    if any(m in sys.modules for m in ("onnxruntime", "torch")):
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(), stop))


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, stop: Any = None) -> None:
    """Pool initializer: a worker must not outlive harvest. Killed with SIGKILL, the parent
    cannot shut its pool down, and orphaned workers went on for minutes. Linux: the kernel
    sends SIGKILL when the thread that forked us exits (harvest submits from its own thread,
    which lives as long as the pool); elsewhere a thread polls the parent pid."""
    # Ctrl-C and SIGTERM are the parent's to handle (a terminal, `timeout` and `docker stop`
    # signal the whole process group): a worker that raised KeyboardInterrupt inside the pool's
    # machinery printed a traceback and could leave the parent waiting for ever, and one that
    # died broke the pool under it; the parent shuts the pool down, and SIGKILL still works
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="harvest-parent-watch", daemon=True).start()


class _Retryable(Exception):
    pass


def _copy_hashing(src, dst: Path, max_bytes: int) -> tuple[str, int]:
    try:
        with dst.open("wb") as out:
            return copy_hashing(src, out, max_bytes, CHUNK)
    except TooLarge as exc:
        raise ImageRejected("too_large", str(exc)) from None


class _Deadline:
    """A deadline for one whole request (connect, headers, body, redirects). A socket timeout
    bounds each read only: a server sending a byte a second held a download for minutes. When
    the time is up, the request's sockets are shut down, which wakes the blocked read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.stopped = False      # expired early: Ctrl-C / SIGTERM (`_STOP`)
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._timer = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stopped by Ctrl-C / SIGTERM: Stopped, whatever the shut-down socket made the request
        raise inside (the opener's `open` runs inside this block too)."""
        self._done.set()
        if self.stopped:
            raise Stopped("harvest stopped")

    def _watch(self) -> None:
        """Expire at the deadline, or at once when the harvest is stopped."""
        end = time.monotonic() + self.seconds
        while not self._done.wait(min(0.1, max(0.0, end - time.monotonic()))):
            if _STOP is not None and _STOP.is_set():
                self.stopped = True
                break
            if time.monotonic() >= end:
                break
        if not self._done.is_set():
            self._expire()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:  # the plain socket's shutdown: SSLSocket.shutdown would tear down TLS state under the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose HTTP(S) connections register their sockets with this deadline."""
        deadline = self

        class Tracked:
            def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
                class Conn(http_class):  # type: ignore[misc, valid-type]
                    def connect(self) -> None:
                        super().connect()
                        deadline.attach(self.sock)

                return super().do_open(Conn, req, **kw)  # type: ignore[misc]

        class HTTP(Tracked, urllib.request.HTTPHandler):
            pass

        class HTTPS(Tracked, urllib.request.HTTPSHandler):
            pass

        return urllib.request.build_opener(HTTP(), HTTPS())


def _backoff(seconds: float) -> None:
    """The pause before a retry; Stopped at once when the harvest is stopped during it."""
    if _STOP is None:
        time.sleep(seconds)
    elif _STOP.wait(seconds):
        raise Stopped("harvest stopped")


def _download(item: Item, tmp: Path, cfg: HarvestConfig) -> tuple[str, int]:
    """Download with retries; `cfg.timeout_s` is the deadline of each attempt (whole request).
    Stopped when the harvest is (Ctrl-C / SIGTERM): in the backoff, or during an attempt."""
    req = urllib.request.Request(item.source, headers={"User-Agent": cfg.user_agent})
    last: ImageRejected | None = None
    timed_out = ImageRejected("timeout", f"not complete within {cfg.timeout_s}s")
    for attempt in range(cfg.retries + 1):
        if attempt:
            _backoff(cfg.backoff_s * (2 ** (attempt - 1)))
        deadline = _Deadline(cfg.timeout_s)
        try:
            with deadline, deadline.opener().open(req, timeout=cfg.timeout_s) as resp:
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if ctype and not (ctype.startswith("image/") or ctype in ("application/octet-stream", "binary/octet-stream")):
                    raise ImageRejected("bad_content_type", f"server sent {ctype}")
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > cfg.max_bytes:
                    raise ImageRejected("too_large", f"Content-Length {length} > {cfg.max_bytes} bytes")
                result = _copy_hashing(resp, tmp, cfg.max_bytes)
            if deadline.expired:  # the shut-down socket may end a body early without an error
                last = timed_out
                continue
            return result
        except (ImageRejected, Stopped):
            raise
        except urllib.error.HTTPError as exc:
            if deadline.expired:
                last = timed_out
            elif exc.code in (429, 500, 502, 503, 504):
                last = ImageRejected(f"http_{exc.code}", exc.reason if isinstance(exc.reason, str) else str(exc))
            else:
                raise ImageRejected(f"http_{exc.code}", str(exc.reason)) from None
        except ValueError as exc:  # http.client.InvalidURL (e.g. a redirect to a malformed URL)
            if not deadline.expired:
                raise ImageRejected("bad_url", str(exc)) from None
            last = timed_out
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                last = timed_out  # whatever the shut-down socket made the reader raise
            elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise
            elif isinstance(exc, TimeoutError):
                last = timed_out
            elif isinstance(exc, urllib.error.URLError):
                reason = exc.reason
                timeout = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = timed_out if timeout else ImageRejected("network", str(reason))
            else:
                last = ImageRejected("network", str(exc) or type(exc).__name__)
    if last is None:
        raise ImageRejected("network", "no attempt made (retries < 0)")
    if last.reason == "timeout":
        last = ImageRejected("timeout", f"not complete within {cfg.timeout_s}s, {cfg.retries + 1} tries")
    raise last


def fetch(item: Item, ws: Workspace, cfg: HarvestConfig) -> Fetched:
    """Copy or download `item` into a temp file, hash it and fully decode it."""
    tmp = ws.tmp_dir / f"{uuid.uuid4().hex}.part"
    try:
        mtime = None
        if item.is_url:
            sha, size = _download(item, tmp, cfg)
        else:
            try:
                with open_regular(item.source) as fh:  # never blocks on a FIFO, never reads a device
                    mtime = os.fstat(fh.fileno()).st_mtime
                    sha, size = _copy_hashing(fh, tmp, cfg.max_bytes)
            except NotRegularFile as exc:
                raise ImageRejected(exc.reason, exc.strerror or "not a regular file") from None
            except FileNotFoundError:
                raise ImageRejected("not_found", "no such file") from None
            except PermissionError as exc:
                raise ImageRejected("unreadable", exc.strerror or "permission denied") from None
        if size == 0:
            raise ImageRejected("empty", "zero-byte file")
        info = probe(tmp, max_pixels=cfg.max_pixels)
        return Fetched(item, sha, tmp, size, info, mtime)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- the harvest run -------------------------------------------------------------------------

class HarvestInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped harvest between items; str() says how far it got."""


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while harvest runs (main thread only; a second signal
    interrupts at once). Harvest stops between items, so what the workers finished is recorded
    and no fetched file is left unrecorded: a KeyboardInterrupt raised anywhere in the loop lost
    the item being collected and left its .part file behind."""
    # a process-shared event: forked workers see it too (`_STOP`), and stop their downloads
    global _STOP
    stop = multiprocessing.get_context("fork").Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    _STOP = stop   # this process's download threads (a thread pool) read it here

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(f"interrupted again (signal {signum})")
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        _STOP = None
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _already_harvested(cat: Catalog, ws: Workspace, item: Item) -> bool:
    rows = cat.source_records(item.source)
    # a stored copy deleted or cut short since is fetched again and put back (harvest said
    # "already harvested" and curate kept flagging it)
    if not rows or not all(ws.stored_problem(r["path"], r["bytes"]) is None for r in rows):
        return False
    if item.is_url:
        return True
    try:
        st = os.stat(item.source)
    except OSError:
        return False
    return (rows[0]["size"], rows[0]["mtime"]) == (st.st_size, st.st_mtime)


def _record(cat: Catalog, ws: Workspace, f: Fetched, cfg: HarvestConfig, summary: HarvestSummary,
            order: dict[str, int]) -> None:
    now = time.time()
    exists = cat.image(f.sha256)
    if exists:
        if ws.stored_problem(exists["path"], exists["bytes"]) is None:
            f.tmp_path.unlink(missing_ok=True)
        else:   # the stored copy is gone or damaged: these are its bytes (same content address)
            os.replace(f.tmp_path, ws.abspath(exists["path"]))
        if cat.has_source(f.sha256, f.item.source):   # read again (touched, copied back): nothing new
            summary.skipped += 1
        else:
            summary.duplicates += 1
        # Workers finish in any order: the image's first source is the earliest in the input order.
        first = exists["source"]
        if first in order and order[f.item.source] < order[first]:
            cat.set_first_source(f.sha256, f.item.source, f.item.original_name)
    else:
        rel = ws.image_relpath(f.sha256, f.info.ext)
        final = ws.abspath(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # orphan from an interrupted run: same bytes by construction
            f.tmp_path.unlink(missing_ok=True)
        else:
            os.replace(f.tmp_path, final)
        i = f.info
        cat.add_image(f.sha256, rel, f.item.source, f.item.original_name, f.size, i.width, i.height, i.format,
                      i.mode, i.bit_depth, i.pages, i.orientation, split_for(f.sha256, cfg.splits), now)
        summary.new += 1
    if not f.item.is_url:
        # A file rewritten in place: the image it held before stays in the workspace (with its
        # labels), but no longer names this path as a source, which now holds other content.
        for old in cat.images_of_source(f.item.source):
            if old != f.sha256:
                cat.forget_source(old, f.item.source)
                summary.replaced.append(f"{f.item.source}: holds other content than when harvested "
                                        f"(was image {old[:12]}, now {f.sha256[:12]}); the earlier image stays")
    cat.record_source(f.sha256, f.item.source, f.item.original_name, f.size, f.mtime, f.item.metadata, now)


def _record_reject(cat: Catalog, r: Reject, summary: HarvestSummary) -> None:
    cat.record_reject(r.source, r.reason, one_line(r.detail))
    summary.rejected[r.reason] += 1
    summary.reject_lines.append(r.line())


def harvest(
    ws: Workspace,
    sources: Iterable[str],
    cfg: HarvestConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 200,
) -> HarvestSummary:
    """Harvest `sources` into `ws`. `progress(done, total)` is called as items finish."""
    cfg = cfg or HarvestConfig()
    t0 = time.perf_counter()
    summary = HarvestSummary()
    sources = list(sources)
    items, source_errors = expand_sources(sources, summary.ignored_files)
    with ws.lock("harvest"), ws.catalog() as cat:
        for stale in ws.tmp_dir.glob("*.part"):
            stale.unlink(missing_ok=True)
        with cat.transaction():
            # a list or CSV harvested again: its earlier line rejects go, the ones still there
            # come back just below (an edited list kept counting its removed bad lines)
            for x in sources:
                p = Path(x).expanduser()
                if not is_url(x) and p.suffix.lower() in (".csv", *URL_LIST_SUFFIXES) and p.is_file():
                    cat.forget_rejects([list_key(p), *cat.rejects_starting(list_key(p) + ":")])
            for r in source_errors:
                _record_reject(cat, r, summary)
            # a reject whose entry is gone from a folder harvested again (a deleted dangling link)
            # is no longer a problem of the sources: `status` counted it for ever
            for folder in {Path(x).expanduser().resolve() for x in sources if not is_url(x) and Path(x).expanduser().is_dir()}:
                cat.forget_rejects([src for src in cat.rejects_under(str(folder)) if not os.path.lexists(src)])
        seen: set[str] = set()
        todo: list[Item] = []
        for it in items:
            if it.source in seen:
                continue
            seen.add(it.source)
            if _already_harvested(cat, ws, it):
                summary.skipped += 1
            else:
                todo.append(it)
        order = {it.source: k for k, it in enumerate(todo)}
        total = len(todo) + summary.skipped
        done = summary.skipped
        if progress:
            progress(done, total)
        pending: list[Fetched | Reject] = []

        def flush() -> None:
            if not pending:
                return
            with cat.transaction():  # the batch is one atomic write
                for res in pending:
                    if isinstance(res, Reject):
                        _record_reject(cat, res, summary)
                    else:
                        _record(cat, ws, res, cfg, summary, order)
            pending.clear()

        disk_full: OSError | None = None
        queue = iter(todo)
        in_flight: dict[Future, Item] = {}
        # Processes, not threads: Pillow holds the GIL while decoding, and decoding is the cost.
        # workers only fetch/decode, they never touch the catalog
        with _stop_on_signals() as stop, worker_pool(max(1, min(cfg.workers, len(todo) or 1)), stop) as pool:
            def submit_next() -> bool:
                it = next(queue, None) if not stop.is_set() else None
                if it is None or disk_full is not None:
                    return False
                in_flight[pool.submit(fetch, it, ws, cfg)] = it
                return True

            def collect(fut: Future) -> bool:
                """Record what the worker made of its item; False for a download the stop cut short."""
                nonlocal disk_full
                it = in_flight.pop(fut)
                try:
                    pending.append(fut.result())
                except Stopped:
                    return False     # not a reject: the rerun fetches it again
                except ImageRejected as exc:
                    pending.append(Reject(it.source, exc.reason, exc.detail, it.shown))
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        disk_full = exc
                    pending.append(Reject(it.source, "disk_full" if exc.errno == errno.ENOSPC else "io_error",
                                          exc.strerror or str(exc), it.shown))
                return True

            for _ in range(max(1, cfg.workers) * 4):  # bounded window: memory flat in the number of items
                if not submit_next():
                    break
            while in_flight:
                finished, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                if stop.is_set():   # Ctrl-C / SIGTERM: nothing new starts, what is running finishes
                    for fut in [f for f in in_flight if not f.done() and f.cancel()]:
                        in_flight.pop(fut)
                for fut in finished:
                    if not collect(fut):
                        continue
                    done += 1
                    if progress:
                        progress(done, total)
                    submit_next()
                if len(pending) >= batch_size:
                    flush()
        flush()
        if stop.is_set():
            raise HarvestInterrupted(f"harvest interrupted after {done} of {total} sources (finished ones are "
                                     "kept); rerun the same command to resume")
        if disk_full is not None:
            raise OSError(errno.ENOSPC, f"{ws.root}: disk full; harvest stopped, rerun to resume")
    summary.seconds = time.perf_counter() - t0
    return summary


