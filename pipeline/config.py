"""Typed configuration with defaults. Nothing here is read at import time: call the loaders."""

from __future__ import annotations

import math
import numbers

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


DEFAULT_WORKSPACE = Path("data")
DEFAULT_MAX_PIXELS = 178_956_970   # per page: Pillow's own decompression-bomb error level (2x its warning level)


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of images per split; the split of an image is derived from its sha256."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        # NaN compares false everywhere: "nan,0.5,0.5" passed and sent every image to test
        if not all(math.isfinite(v) for v in (self.train, self.val, self.test)) \
                or min(self.train, self.val, self.test) < 0 or abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {self.train}/{self.val}/{self.test}")

    @classmethod
    def parse(cls, text: str) -> "SplitRatios":
        """Parse "0.7,0.15,0.15" (train,val,test)."""
        try:
            parts = [float(p) for p in text.split(",")]
        except ValueError as exc:
            raise ValueError(f"split ratios must be three numbers like 0.7,0.15,0.15, got {text!r}") from exc
        if len(parts) != 3:
            raise ValueError(f"split ratios must be three numbers like 0.7,0.15,0.15, got {text!r}")
        return cls(*parts)


SPLITS = ("train", "val", "test")   # SplitRatios' fields: the splits harvest assigns


def check_number(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> None:
    """ValueError naming `name` unless `value` is a finite number in [lo, hi] (a whole number
    with `integer`). Why one helper: NaN passes every `<` check, and each config's own
    spelling of these tests let `distill=nan`, `seed=-1` or `epochs=2.5` through to the run."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (integer and not isinstance(value, numbers.Integral)) or not lo <= value <= hi:
        kind, fmt = ("a whole number", ",.0f") if integer else ("a number", "g")
        raise ValueError(f"{name} must be {kind} from {lo:{fmt}} to {hi:{fmt}}, got {value!r}")


def check_scale_range(name: str, value: Any) -> None:
    """A (low, high) scale-jitter range: 0.05 <= low <= high <= 10."""
    if len(value) != 2:
        raise ValueError(f"{name} must be (low, high), got {value!r}")
    for v in value:
        check_number(name, v, 0.05, 10)
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")


def check_split(split: str | None) -> None:
    """ValueError naming the splits when `split` is none of them: a typo matched no image and
    looked like an empty workspace (`predict`, `export`, `push` said "0 images")."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")


@dataclass(frozen=True)
class HarvestConfig:
    """Limits and behaviour of `textloop harvest`."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 2)  # processes: decoding is CPU-bound
    timeout_s: float = 20.0
    retries: int = 3
    backoff_s: float = 0.5
    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS  # Pillow's own decompression-bomb limit (2x its warning level)
    splits: SplitRatios = field(default_factory=SplitRatios)
    user_agent: str = "textloop-harvest/0.1"

    def __post_init__(self) -> None:
        """Refuse limits that would silently do something else (a zero timeout, no tries)."""
        for name in ("workers", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {self.retries} and {self.backoff_s}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):   # inf: a stalled server hangs the run
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {self.timeout_s}")


def workspace_from_env(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The workspace folder: explicit argument, else $TEXTLOOP_WORKSPACE, else ./data."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TEXTLOOP_WORKSPACE")
    return Path(env) if env else DEFAULT_WORKSPACE


def privacy_env() -> dict[str, str]:
    """Environment that keeps Label Studio and fastdup from phoning home (privacy: no traffic beyond what the user configured)."""
    return {
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "SENTRY_OPT_OUT": "1",
        "FASTDUP_PRODUCTION": "1",   # `import fastdup` asked pypi.org for its latest version otherwise
    }
