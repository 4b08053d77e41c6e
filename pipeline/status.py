"""What a workspace holds: images by status and split, rejects, models, the last iteration."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog


@dataclass(frozen=True)
class WorkspaceStatus:
    """What `textloop status` shows; `as_dict()` is the `--json` payload."""

    images: int
    sources: int
    by_status: dict[str, dict[str, int]]        # status -> split -> images
    by_split: dict[str, int]
    rejects: dict[str, int]                     # rejected sources by reason
    annotations: int
    predictions: int
    tasks: int
    tasks_by_project: dict[int, int]            # Label Studio project id -> tasks (one per project pushed to)
    models: list[dict[str, Any]]                # version, kind, parent, promoted, metrics
    current_model: str | None
    last_iteration: dict[str, Any] | None       # id, step, status, started_at, finished_at, counts, metrics
    schema_version: int

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def workspace_status(cat: Catalog, root: Path | None = None) -> WorkspaceStatus:
    """Counts and the model list from the catalog, in one read (after closing the rows of stages
    whose process was killed, so the last iteration is not shown `running` for ever). With the
    workspace's `root`, each model says whether its bundle file is there (`bundle_missing`: a
    current model without one stops predict, rank and redact)."""
    cat.close_abandoned_iterations()
    by_status_split = cat.image_counts()
    by_split: dict[str, int] = {}
    for per_split in by_status_split.values():
        for split, n in per_split.items():
            by_split[split] = by_split.get(split, 0) + n
    models = [
        {"version": m["version"], "kind": m["kind"], "parent": m["parent"], "promoted": bool(m["promoted"]),
         "metrics": json.loads(m["metrics"] or "{}"),
         "bundle_missing": None if root is None else not (root / m["path"]).is_file()}
        for m in cat.models()
    ]
    it = cat.last_iteration()
    last_it = None
    if it is not None:
        last_it = {"id": it["id"], "step": it["step"], "status": it["status"], "started_at": it["started_at"],
                   "finished_at": it["finished_at"], "counts": json.loads(it["counts"]), "metrics": json.loads(it["metrics"])}
    rows = cat.row_counts()
    return WorkspaceStatus(
        images=rows["images"],
        sources=rows["image_sources"],
        by_status=by_status_split,
        by_split=dict(sorted(by_split.items())),
        rejects=cat.reject_counts(),
        annotations=rows["annotations"],
        predictions=rows["predictions"],
        tasks=rows["tasks"],
        tasks_by_project=cat.tasks_by_project(),
        models=models,
        current_model=next((m["version"] for m in models if m["promoted"]), None),
        last_iteration=last_it,
        schema_version=cat.schema_version(),
    )
