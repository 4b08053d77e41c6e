"""Detector backends behind one protocol, and `load_detector(spec)` to get one by name.

spec: "ppocr" (the frozen PP-OCR detector in the rapidocr wheel) or a path to a bundle.zip (a
`db` bundle -- PP-OCR's network fine-tuned, run through ppocr's own pre/post-processing -- or
an older `fasterrcnn` one). Detectors know no storage: a model *name* ("current", the
workspace's promoted model) is resolved by the model registry, `pipeline.bundle.resolve_detector`,
before loading: `load_detector(resolve_detector("current", ws))`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.detectors.base import Detector

__all__ = ["Detector", "check_spec", "load_detector"]


def check_spec(spec: str) -> None:
    """ValueError / FileNotFoundError for a spec no detector answers to, without loading
    anything: commands check their detector options before an hour of work."""
    if spec in ("ppocr", "current"):
        return
    path = Path(spec)
    if path.suffix != ".zip":
        raise ValueError(f"unknown detector {spec!r}: use ppocr, current, or a path to a bundle.zip")
    if not path.exists():
        raise FileNotFoundError(f"{path}: model bundle not found")


def load_detector(spec: str = "current", workspace: "object | None" = None, **options: object) -> Detector:
    """Build a detector from a spec; heavy imports happen only for the backend asked for."""
    if spec == "ppocr":
        from pipeline.detectors.ppocr import PPOCRDetector

        return PPOCRDetector(**options)  # type: ignore[arg-type]
    if spec == "current":
        # kept for callers that pass a workspace: the registry resolves the name, not this package
        from pipeline.bundle import resolve_detector

        return load_detector(resolve_detector(spec, workspace), **options)
    check_spec(spec)
    from pipeline.bundle import load_bundle

    return load_bundle(Path(spec), **options)
