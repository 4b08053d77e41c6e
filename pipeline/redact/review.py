"""Human check when unsure: hold uncertain images back, send them to Label Studio, finish them
later with the reviewed boxes.

`--review`: an image with a box scored inside the uncertain band is not written; its sidecar
says `held`. The held originals are harvested into the workspace (content-addressed by the
same sha256 the sidecar records), the detector's boxes are stored as its predictions, and the
images are pushed to Label Studio as pre-annotated tasks. After labelling, `textloop pull`
puts the reviewed boxes into the catalog's `annotations`, and `textloop redact --from-review`
redacts the held images with them.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.boxes import Detections
from pipeline.catalog import dumps
from pipeline.redact.run import Item, Result, read_sidecar
from pipeline.workspace import Workspace

log = logging.getLogger("textloop.redact")


def held_items(items: Sequence[Item]) -> list[tuple[Item, dict[str, Any]]]:
    """Items whose sidecar says they were held for review."""
    out = []
    for it in items:
        sc = read_sidecar(it.sidecar)
        if sc and sc.get("status") == "held":
            out.append((it, sc))
    return out


def queue_for_review(ws: Workspace, held: Sequence[Result], model_version: str) -> dict[str, Any]:
    """Harvest the held originals, store their detections as predictions, push them to Label Studio."""
    if not held:
        return {"held": 0, "pushed": 0}
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest

    summary = harvest(ws, [r.src for r in held], HarvestConfig(workers=1))
    ids = sorted({r.input_sha256 for r in held})
    now = time.time()
    with ws.catalog() as cat:
        known = {row["id"] for row in cat.query(
            f"SELECT id FROM images WHERE id IN ({','.join('?' * len(ids))})", ids)}
        with cat.transaction() as tx:
            for r in held:
                if r.input_sha256 not in known or not r.boxes:
                    continue
                page0 = Detections(r.boxes[0], r.scores[0])
                js = page0.to_json()
                tx.execute(
                    "INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT(image_id, model_version) DO UPDATE SET"
                    " boxes=excluded.boxes, scores=excluded.scores, labels=excluded.labels",
                    (r.input_sha256, model_version, dumps(js["boxes"]), dumps(js["scores"]),
                     dumps(js["labels"]), now),
                )
    out: dict[str, Any] = {"held": len(held), "in_workspace": len(known), "harvest": summary.as_dict()}
    try:
        out["push"] = push(ws, sorted(known), model_version)
        out["pushed"] = len(known)
    except Exception as exc:  # Label Studio down, no token, push not installed: the hold still stands
        out["pushed"] = 0
        out["push_error"] = f"{type(exc).__name__}: {exc}"
        log.warning("review: %d image(s) held but not pushed to Label Studio (%s); they are in the "
                    "workspace with predictions under %s, push them with `textloop push`",
                    len(known), out["push_error"], model_version)
    return out


def push(ws: Workspace, image_ids: Sequence[str], model_version: str) -> Any:
    """The Label Studio issue's push (looked up at call time so redact works without it)."""
    mod = importlib.import_module("pipeline.studio.push")
    return mod.push_images(ws, list(image_ids), model_version=model_version)


def reviewed_boxes(ws: Workspace, image_ids: Sequence[str]) -> dict[str, Detections]:
    """The latest submitted (or verified-empty) annotation per image, as Detections (score 1)."""
    if not image_ids:
        return {}
    out: dict[str, Detections] = {}
    import json

    with ws.catalog() as cat:
        rows = cat.query(
            f"SELECT image_id, boxes, labels, state, updated_at FROM annotations WHERE image_id IN"
            f" ({','.join('?' * len(image_ids))}) AND state IN ('submitted', 'empty') ORDER BY updated_at",
            list(image_ids),
        )
    for row in rows:  # ascending: the latest one wins
        boxes = json.loads(row["boxes"]) if row["state"] == "submitted" else []
        out[row["image_id"]] = Detections(boxes, [1.0] * len(boxes))
    return out


def reviewed_for_items(ws: Workspace, held: Sequence[tuple[Item, dict[str, Any]]]) -> dict[str, Detections]:
    """rel -> reviewed boxes for the held items that have been reviewed."""
    by_sha = reviewed_boxes(ws, sorted({sc["input_sha256"] for _, sc in held}))
    return {it.rel: by_sha[sc["input_sha256"]] for it, sc in held if sc["input_sha256"] in by_sha}


def waiting(item: Item, sc: dict[str, Any]) -> Result:
    return Result(item.rel, item.src, item.out, "waiting_review", input_sha256=sc.get("input_sha256", ""),
                  n_boxes=int(sc.get("n_boxes", 0)), detail="not reviewed yet (label it, then `textloop pull`)")


def src_exists(item: Item) -> bool:
    return Path(item.src).is_file()
