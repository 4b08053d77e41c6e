"""What a workspace holds: images by status and split, rejects, models, the last iteration."""

from __future__ import annotations

import json
from typing import Any

from pipeline.catalog import Catalog


def workspace_status(cat: Catalog) -> dict[str, Any]:
    by_status_split: dict[str, dict[str, int]] = {}
    for r in cat.query("SELECT status, split, COUNT(*) AS n FROM images GROUP BY status, split"):
        by_status_split.setdefault(r["status"], {})[r["split"]] = r["n"]
    rejects = {r["reason"]: r["n"] for r in cat.query("SELECT reason, COUNT(*) AS n FROM rejects GROUP BY reason ORDER BY reason")}
    models = [
        {"version": m["version"], "kind": m["kind"], "parent": m["parent"], "promoted": bool(m["promoted"]),
         "metrics": json.loads(m["metrics"] or "{}")}
        for m in cat.query("SELECT * FROM models ORDER BY created_at")
    ]
    last = cat.query("SELECT * FROM iterations ORDER BY id DESC LIMIT 1")
    last_it = None
    if last:
        it = last[0]
        last_it = {"id": it["id"], "step": it["step"], "status": it["status"], "started_at": it["started_at"],
                   "finished_at": it["finished_at"], "counts": json.loads(it["counts"]), "metrics": json.loads(it["metrics"])}
    return {
        "images": int(cat.scalar("SELECT COUNT(*) FROM images") or 0),
        "sources": int(cat.scalar("SELECT COUNT(*) FROM image_sources") or 0),
        "by_status": by_status_split,
        "by_split": {r["split"]: r["n"] for r in cat.query("SELECT split, COUNT(*) AS n FROM images GROUP BY split")},
        "rejects": rejects,
        "annotations": int(cat.scalar("SELECT COUNT(*) FROM annotations") or 0),
        "predictions": int(cat.scalar("SELECT COUNT(*) FROM predictions") or 0),
        "tasks": int(cat.scalar("SELECT COUNT(*) FROM tasks") or 0),
        "models": models,
        "current_model": next((m["version"] for m in models if m["promoted"]), None),
        "last_iteration": last_it,
        "schema_version": cat.schema_version(),
    }
