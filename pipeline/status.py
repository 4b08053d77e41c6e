"""What a workspace holds: images by status and split, rejects, models, the last iteration."""

from __future__ import annotations

import json
from typing import Any

from pipeline.catalog import Catalog


def workspace_status(cat: Catalog) -> dict[str, Any]:
    by_status_split = cat.image_counts()
    by_split: dict[str, int] = {}
    for per_split in by_status_split.values():
        for split, n in per_split.items():
            by_split[split] = by_split.get(split, 0) + n
    models = [
        {"version": m["version"], "kind": m["kind"], "parent": m["parent"], "promoted": bool(m["promoted"]),
         "metrics": json.loads(m["metrics"] or "{}")}
        for m in cat.models()
    ]
    it = cat.last_iteration()
    last_it = None
    if it is not None:
        last_it = {"id": it["id"], "step": it["step"], "status": it["status"], "started_at": it["started_at"],
                   "finished_at": it["finished_at"], "counts": json.loads(it["counts"]), "metrics": json.loads(it["metrics"])}
    rows = cat.row_counts()
    return {
        "images": rows["images"],
        "sources": rows["image_sources"],
        "by_status": by_status_split,
        "by_split": dict(sorted(by_split.items())),
        "rejects": cat.reject_counts(),
        "annotations": rows["annotations"],
        "predictions": rows["predictions"],
        "tasks": rows["tasks"],
        "models": models,
        "current_model": next((m["version"] for m in models if m["promoted"]), None),
        "last_iteration": last_it,
        "schema_version": cat.schema_version(),
    }
