"""The workspace folder: layout, content-addressed image paths and the catalog handle."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import Catalog


class WorkspaceBusy(RuntimeError):
    """Another process (or thread) runs the same job in this workspace; str() says which."""


_LOCKED_HERE: set[tuple[str, str]] = set()   # (workspace, job) locks this process holds (POSIX
_LOCKED_HERE_GUARD = threading.Lock()        # locks do not exclude threads of one process)


@dataclass(frozen=True)
class Workspace:
    """A workspace root. `Workspace.open(root)` creates the layout (catalog, images/, models/, runs/, reports/, ...) if missing."""

    root: Path
    read_only: bool = False   # the catalog could not be opened for writing: reading commands still work

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def tmp_dir(self) -> Path:
        """Partial downloads/copies; same filesystem as images/ so renames are atomic."""
        return self.root / "images" / ".tmp"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @classmethod
    def open(cls, root: str | Path, create: bool = True) -> "Workspace":
        ws = cls(Path(root).resolve())
        if create:
            ws.init()
        elif not ws.catalog_path.exists():
            raise FileNotFoundError(f"{ws.root}: not a textloop workspace (no catalog.sqlite); run `textloop init`")
        return ws

    def init(self) -> None:
        """Create folders and migrate the catalog; safe to call any number of times."""
        for d in (self.root, self.images_dir, self.tmp_dir, self.models_dir, self.runs_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._check_not_emptied()
        with Catalog(self.catalog_path):
            pass

    def _check_not_emptied(self) -> None:
        """CatalogDamaged when catalog.sqlite is 0 bytes while images/ holds stored images: SQLite
        takes an empty file for a new database, so `status` said "0 images" and wrote a fresh
        schema over what was left of the old one (a fresh catalog is empty only before any image)."""
        try:
            if self.catalog_path.stat().st_size:
                return
        except OSError:
            return
        stored = (f for d in self.images_dir.glob("??") if d.is_dir() for f in d.iterdir())
        if next(stored, None) is not None:
            from pipeline.catalog import CatalogDamaged

            raise CatalogDamaged(self.catalog_path, "it is empty, 0 bytes, while images/ holds stored images")

    @contextmanager
    def lock(self, job: str) -> Iterator[None]:
        """One `job` (harvest, push) per workspace at a time; WorkspaceBusy if another holds it.

        A POSIX record lock (`lockf`), not `flock`: an flock belongs to the open file, which forked
        workers inherit, so orphaned workers kept holding it after a harvest was killed and the
        rerun refused to start. A POSIX lock belongs to this process alone and dies with it;
        threads of one process are kept apart by a set of the locks it holds."""
        key = (str(self.root), job)
        busy = f"{self.root}: another {job} is running in this workspace"
        with _LOCKED_HERE_GUARD:
            if key in _LOCKED_HERE:
                raise WorkspaceBusy(busy)
            _LOCKED_HERE.add(key)
        try:
            with open(self.root / f".{job}.lock", "a") as fh:
                try:
                    fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EAGAIN):
                        raise WorkspaceBusy(busy) from None
                    raise
                yield
        finally:
            with _LOCKED_HERE_GUARD:
                _LOCKED_HERE.discard(key)

    def catalog(self) -> Catalog:
        self._check_not_emptied()
        return Catalog(self.catalog_path, read_only=self.read_only)

    def image_relpath(self, sha256: str, ext: str) -> str:
        """Content-addressed location, relative to the workspace: images/ab/<sha256>.<ext>."""
        return f"images/{sha256[:2]}/{sha256}.{ext}"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def stored_problem(self, relpath: str, size: int) -> str | None:
        """Why an image's stored copy cannot be used (deleted, or cut short since it was
        harvested: a size check, no hashing), else None."""
        try:
            actual = self.abspath(relpath).stat().st_size
        except OSError:
            return f"{relpath}: the stored copy is missing (harvest its source again to put it back)"
        if actual != size:
            return (f"{relpath}: the stored copy is {actual} bytes, harvested as {size} (damaged since; "
                    "harvest its source again to put it back)")
        return None

    def synth_dir(self, name: str) -> Path:
        """`synth/<name>/`: a synthetic set (`synth --name`; training's held-out sets)."""
        check_run_name(name, "--name")
        return self.root / "synth" / name

    def run_dir(self, iteration: int | str) -> Path:
        check_run_name(iteration)
        d = self.runs_dir / str(iteration)
        d.mkdir(parents=True, exist_ok=True)
        return d


def check_run_name(iteration: int | str | None, option: str = "--iteration") -> None:
    """ValueError unless `iteration` names one folder inside the workspace (None: not given): a
    name with a separator, `..` or an absolute path would put files outside it (`curate
    --iteration ../../x`, `synth --name ../x` did). The one rule for every folder a user names."""
    if iteration is None or isinstance(iteration, int):
        return
    name = str(iteration)
    seps = [c for c in ("/", "\\", os.sep, os.altsep) if c]
    if name in ("", ".", "..") or "\0" in name or any(c in name for c in seps) or os.path.isabs(name):
        raise ValueError(f"{option} must be a simple folder name (no path separators, not '.' or '..'); got {name!r}")
