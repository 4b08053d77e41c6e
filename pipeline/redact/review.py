"""Human check when unsure: hold uncertain images back, send them to Label Studio, finish them
later with the reviewed boxes.

`--review`: an image with a box scored inside the uncertain band is not written; its sidecar
says `held`. With `--verify`, an image whose audit had to cover text the detector missed is
written (covered) and also queued, with the audit's lines among its boxes, so reviewers
label what the detector did not see and the next trained model learns it. The originals are
harvested into the workspace (content-addressed by the same sha256 the sidecar records),
their boxes are stored as predictions, and the images are pushed to Label Studio as
pre-annotated tasks. After labelling, `textloop pull`
puts the reviewed boxes into the catalog's `annotations`, and `textloop redact --from-review`
redacts the held images with them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import Detections
from pipeline.catalog import load_quads
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


def held_quads(sidecar: str | Path | None, n_boxes: int) -> np.ndarray | None:
    """Page 0's DB quads from a held image's sidecar (one per box), or None. `Result` carries
    boxes only; the sidecar keeps the shapes, so the reviewer is shown the real ones."""
    sc = read_sidecar(sidecar) if sidecar else None
    quads = ((sc or {}).get("pages") or [{}])[0].get("quads")
    if not quads or len(quads) != n_boxes:
        return None
    return np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)


AUDIT_SUFFIX = "+audit"   # predictions of an image the audit had to finish: the detector's boxes + the audit's lines


def queue_for_review(ws: Workspace, held: Sequence[Result], model_version: str,
                     min_score: float | None = None, sidecars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Harvest the originals of `held`, store their boxes as predictions (`min_score`: the
    threshold they were filtered with, so `predict` knows whether the row is complete), push
    them to Label Studio. `held` holds images held back (their boxes: the detector's, under
    `model_version`) and, with `--verify`, redacted images whose audit covered text the
    detector missed, the examples the next model should learn from (their boxes include the
    audit's lines, so they are stored and pushed under `model_version + AUDIT_SUFFIX`: the
    detector's own predictions stay its own). `sidecars` (rel -> sidecar path) lets the stored
    predictions keep the quads, so the tasks show rotated rectangles."""
    groups = {model_version: [r for r in held if r.status != "redacted"],
              model_version + AUDIT_SUFFIX: [r for r in held if r.status == "redacted"]}
    out: dict[str, Any] = {"held": len(groups[model_version]), "audit_covered": len(groups[model_version + AUDIT_SUFFIX]),
                           "pushed": 0}
    if not held:
        return out
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.predict import store_predictions

    summary = harvest(ws, [r.src for r in held], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        known = {row["id"] for row in cat.images_by_ids(sorted({r.input_sha256 for r in held}))}
        for version, results in groups.items():
            store_predictions(cat, version,
                              [(r.input_sha256, Detections(r.boxes[0], r.scores[0], (),
                                                           held_quads((sidecars or {}).get(r.rel), len(r.boxes[0]))))
                               for r in results if r.input_sha256 in known and r.boxes],
                              min_score=min_score)
    out.update(in_workspace=len(known), harvest=summary.as_dict(), push={})
    for version, results in groups.items():
        ids = sorted({r.input_sha256 for r in results} & known)
        if not ids:
            continue
        try:
            out["push"][version] = push(ws, ids, version)
            out["pushed"] += len(ids)
        except Exception as exc:  # Label Studio down, no token, push not installed: the hold still stands
            out["push_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("review: %d image(s) queued but not pushed to Label Studio (%s); they are in the "
                        "workspace with predictions under %s, push them with `textloop push`",
                        len(ids), out["push_error"], version)
    return out


def push(ws: Workspace, image_ids: Sequence[str], model_version: str) -> dict[str, Any]:
    """Push the held images to Label Studio (imported here: `redact` without `--review` never
    loads the Label Studio client); the push summary as the review record stores it."""
    from pipeline.studio.push import push_images

    return push_images(ws, list(image_ids), model_version=model_version).as_dict()


def reviewed_boxes(ws: Workspace, image_ids: Sequence[str]) -> dict[str, Detections]:
    """The latest submitted (or verified-empty) annotation per image, as Detections (score 1),
    with the reviewed rectangles' corners as `quads` when the annotation has them (a rotated
    rectangle is then filled as drawn, not as its enclosing box)."""
    if not image_ids:
        return {}
    out: dict[str, Detections] = {}
    import json

    # Whatever the image's status: a redaction waiting on its review takes the reviewed boxes
    # even if curation has since excluded the image from the training set (e.g. as a duplicate).
    with ws.catalog() as cat:
        rows = cat.latest_annotations(include_excluded=True, image_ids=image_ids)
    for row in rows.values():
        boxes = json.loads(row["boxes"]) if row["state"] == "submitted" else []
        quads = load_quads(row["quads"], len(boxes)) if boxes else None
        out[row["image_id"]] = Detections(boxes, [1.0] * len(boxes), (), quads)
    return out


def reviewed_for_items(ws: Workspace, held: Sequence[tuple[Item, dict[str, Any]]]) -> dict[str, Detections]:
    """rel -> reviewed boxes for the held items that have been reviewed."""
    by_sha = reviewed_boxes(ws, sorted({sc["input_sha256"] for _, sc in held}))
    return {it.rel: by_sha[sc["input_sha256"]] for it, sc in held if sc["input_sha256"] in by_sha}


def waiting(item: Item, sc: dict[str, Any]) -> Result:
    return Result(item.rel, item.src, item.out, "waiting_review", input_sha256=sc.get("input_sha256", ""),
                  n_boxes=int(sc.get("n_boxes", 0)), detail="not reviewed yet (label it, then `textloop pull`)")

