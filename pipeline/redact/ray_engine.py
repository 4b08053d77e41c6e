"""`--engine ray`: the same `Redactor.process` on Ray Data actors.

Each actor builds the detector once (from a spec, not a pickled model; `pipeline.engines`,
shared with `predict --engine ray`) and redacts whole items: it reads the input, detects, writes the output and the sidecar itself, and returns
only the small result row. The dataset of input paths is streamed in small batches, so the
driver never holds pixels. Works on the cluster `RAY_ADDRESS` points to, or a local one.
Ray is an optional extra: `pip install .[ray]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.engines import SpecFactory, init_ray, map_actors, ray_available
from pipeline.redact.run import Item, RedactConfig, Redactor, Result, log_result

DetectorFactory = Callable[[], Any]
__all__ = ["SpecFactory", "init_ray", "ray_available", "run_ray"]


class _RedactActor:
    """Holds the detector(s) for the actor's lifetime; redacts a batch of items."""

    def __init__(self, factory: DetectorFactory, cfg: RedactConfig, verifier_factory: DetectorFactory | None,
                 reviewed: dict[str, Any] | None) -> None:
        import logging

        from pipeline.boxes import Detections

        # nothing about the user's files goes to Ray's session logs (/tmp/ray, kept after the
        # run): each result comes back to the driver, which writes it to redact.log
        quiet = logging.getLogger("textloop")
        quiet.propagate = False
        quiet.handlers[:] = [logging.NullHandler()]
        self.redactor = Redactor(factory(), cfg, verifier_factory() if verifier_factory else None, log_results=False)
        self.reviewed = {k: Detections.from_json(v) for k, v in (reviewed or {}).items()}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for i in range(len(batch["rel"])):
            item = Item(str(batch["src"][i]), str(batch["rel"][i]), str(batch["out"][i]), str(batch["sidecar"][i]),
                        str(batch["root"][i]) if "root" in batch else "")
            res = self.redactor.process(item, self.reviewed.get(item.rel))
            rows.append(json.dumps(res.to_dict()))
        return {"result": rows}


def run_ray(factory: DetectorFactory, cfg: RedactConfig, items: Sequence[Item], workers: int = 2,
            batch_size: int = 4, verifier_factory: DetectorFactory | None = None,
            reviewed: dict[str, Any] | None = None) -> Iterator[Result]:
    """Results as Ray delivers them (order not guaranteed)."""
    reviewed_json = {k: v.to_json() for k, v in (reviewed or {}).items()}
    # absolute paths: an actor resolves a relative one from its own working directory (on a
    # cluster, the raylet's), which failed every image or wrote the outputs there
    rows = [dict(it.to_dict(), src=os.path.abspath(it.src), out=os.path.abspath(it.out),
                 sidecar=os.path.abspath(it.sidecar)) for it in items]
    rows = map_actors(_RedactActor, {"factory": factory, "cfg": cfg, "verifier_factory": verifier_factory,
                                     "reviewed": reviewed_json}, rows, workers, batch_size)
    typed = {it.rel: (it.src, it.out) for it in items}   # results name the paths as the user gave them

    def result(row: dict[str, Any]) -> Result:
        res = Result(**json.loads(row["result"]))
        if res.rel in typed:
            res.src, res.out = typed[res.rel]
        return log_result(res)

    return (result(row) for row in rows)
