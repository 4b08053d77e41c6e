"""`--engine ray`: the same `Redactor.process` on Ray Data actors.

Each actor builds the detector once (from a spec, not a pickled model) and redacts whole
items: it reads the input, detects, writes the output and the sidecar itself, and returns
only the small result row. The dataset of input paths is streamed in small batches, so the
driver never holds pixels. Works on the cluster `RAY_ADDRESS` points to, or a local one.
Ray is an optional extra: `pip install .[ray]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.redact.run import Item, RedactConfig, Redactor, Result

DetectorFactory = Callable[[], Any]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


class SpecFactory:
    """Picklable recipe for a detector: `load_detector(spec, workspace, **options)` in the actor."""

    def __init__(self, spec: str, workspace: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.spec, self.workspace, self.options = spec, workspace, dict(options or {})

    def __call__(self) -> Any:
        from pipeline.detectors import load_detector

        if self.spec == "ppocr" and "scales" in self.options:
            from pipeline.redact.run import build_ppocr

            return build_ppocr(**self.options)
        ws = None
        if self.workspace:
            from pipeline.workspace import Workspace

            ws = Workspace.open(self.workspace)
        return load_detector(self.spec, ws, **self.options)


class _RedactActor:
    """Holds the detector(s) for the actor's lifetime; redacts a batch of items."""

    def __init__(self, factory: DetectorFactory, cfg: RedactConfig, verifier_factory: DetectorFactory | None,
                 reviewed: dict[str, Any] | None) -> None:
        from pipeline.boxes import Detections

        self.redactor = Redactor(factory(), cfg, verifier_factory() if verifier_factory else None)
        self.reviewed = {k: Detections.from_json(v) for k, v in (reviewed or {}).items()}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for i in range(len(batch["rel"])):
            item = Item(str(batch["src"][i]), str(batch["rel"][i]), str(batch["out"][i]), str(batch["sidecar"][i]))
            res = self.redactor.process(item, self.reviewed.get(item.rel))
            rows.append(json.dumps(res.to_dict()))
        return {"result": rows}


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS if set, else start a small local instance (no dashboard, no usage stats)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def run_ray(factory: DetectorFactory, cfg: RedactConfig, items: Sequence[Item], workers: int = 2,
            batch_size: int = 4, verifier_factory: DetectorFactory | None = None,
            reviewed: dict[str, Any] | None = None) -> Iterator[Result]:
    """Results as Ray delivers them (order not guaranteed)."""
    if not items:
        return iter(())
    import ray.data

    init_ray(num_cpus=None)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([it.to_dict() for it in items], override_num_blocks=max(1, min(len(items), 64)))
    reviewed_json = {k: v.to_json() for k, v in (reviewed or {}).items()}
    out = ds.map_batches(
        _RedactActor,
        fn_constructor_kwargs={"factory": factory, "cfg": cfg, "verifier_factory": verifier_factory,
                               "reviewed": reviewed_json},
        batch_size=batch_size,
        concurrency=max(1, workers),
        num_cpus=1,
        batch_format="numpy",
    )

    def gen() -> Iterator[Result]:
        for row in out.iter_rows():
            yield Result(**json.loads(row["result"]))

    return gen()
