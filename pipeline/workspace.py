"""The workspace folder: layout, content-addressed image paths and the catalog handle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import Catalog


@dataclass(frozen=True)
class Workspace:
    """A workspace root. `Workspace.open(root)` creates the layout (catalog, images/, models/, runs/, reports/, ...) if missing."""

    root: Path

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
        with Catalog(self.catalog_path):
            pass

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_path)

    def image_relpath(self, sha256: str, ext: str) -> str:
        """Content-addressed location, relative to the workspace: images/ab/<sha256>.<ext>."""
        return f"images/{sha256[:2]}/{sha256}.{ext}"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def run_dir(self, iteration: int | str) -> Path:
        d = self.runs_dir / str(iteration)
        d.mkdir(parents=True, exist_ok=True)
        return d
