"""Detector backends behind one protocol, and `load_detector(spec)` to get one by name.

spec: "ppocr" (the frozen PP-OCR detector in the rapidocr wheel), "current" (the workspace's
promoted model, falling back to ppocr when none is promoted), or a path to a bundle.zip (a
`db` bundle -- PP-OCR's network fine-tuned, run through ppocr's own pre/post-processing -- or
an older `fasterrcnn` one).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.detectors.base import Detector

__all__ = ["Detector", "load_detector"]


def load_detector(spec: str = "current", workspace: "object | None" = None, **options: object) -> Detector:
    """Build a detector from a spec; heavy imports happen only for the backend asked for."""
    if spec == "ppocr":
        from pipeline.detectors.ppocr import PPOCRDetector

        return PPOCRDetector(**options)  # type: ignore[arg-type]
    if spec == "current":
        if workspace is not None:
            from pipeline.workspace import Workspace

            assert isinstance(workspace, Workspace)
            with workspace.catalog() as cat:
                model = cat.current_model()
            if model is not None:
                return load_detector(str(workspace.abspath(model["path"])), **options)
        return load_detector("ppocr", **options)
    path = Path(spec)
    if path.suffix == ".zip":
        if not path.exists():
            raise FileNotFoundError(f"{path}: model bundle not found")
        from pipeline.bundle import load_bundle

        return load_bundle(path, **options)
    raise ValueError(f"unknown detector {spec!r}: use ppocr, current, or a path to a bundle.zip")
