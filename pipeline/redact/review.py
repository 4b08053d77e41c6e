"""Human check when unsure: hold uncertain images back, send them to Label Studio, finish them
later with the reviewed boxes.

`--review`: an image with a box scored inside the uncertain band is not written; its sidecar
says `held`. With `--verify`, an image whose audit had to cover text the detector missed is
written (covered) and also queued, so reviewers label what the detector did not see and the
next trained model learns it. The originals are harvested into the workspace
(content-addressed by the same sha256 the sidecar records), the detector's boxes are stored
as its predictions, and the images are pushed to Label Studio as pre-annotated tasks. After
labelling, `textloop pull` puts the reviewed boxes into the catalog's `annotations` (training
data), and `textloop redact --from-review` redacts the held images with them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import Detections
from pipeline.catalog import load_quads
from pipeline.io import describe_error
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


def queue_for_review(ws: Workspace, queued: Sequence[Result], model_version: str,
                     min_score: float | None = None, sidecars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Harvest the originals of `queued` (images held back and, with `--verify`, redacted ones
    whose audit covered text the detector missed: what the next model should learn), store the
    detector's boxes as its predictions (`min_score`: the threshold they were filtered with, so
    `predict` knows whether the row is complete), push them to Label Studio. `sidecars` (rel ->
    sidecar path) lets the stored predictions keep the detector's quads, so the tasks show
    rotated rectangles; without it they are plain boxes."""
    n_audit = sum(1 for r in queued if r.status == "redacted")
    out: dict[str, Any] = {"held": len(queued) - n_audit, "audit_covered": n_audit, "pushed": 0}
    if not queued:
        return out
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.predict import store_predictions

    summary = harvest(ws, [r.src for r in queued], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        known = {row["id"] for row in cat.images_by_ids(sorted({r.input_sha256 for r in queued}))}
        store_predictions(cat, model_version,
                          [(r.input_sha256, Detections(r.boxes[0], r.scores[0], (),
                                                       held_quads((sidecars or {}).get(r.rel), len(r.boxes[0]))))
                           for r in queued if r.input_sha256 in known and r.boxes],
                          min_score=min_score)
    out.update(in_workspace=len(known), harvest=summary.as_dict())
    with ws.catalog() as cat:   # labelled before (an earlier round): no one is asked again
        labelled = set(cat.latest_annotations(include_excluded=True, image_ids=sorted(known)))
    out["already_labelled"] = len(labelled)
    try:
        out["push"] = push(ws, sorted(known), model_version)
        # new tasks only: a rerun said "1 pushed" when the task was there from the first run
        out["pushed"] = int(out["push"].get("tasks_created", 0))
        out["already_in_label_studio"] = len(known) - out["pushed"]
    except Exception as exc:  # Label Studio down, no token, push not installed: the hold still stands
        out["push_error"] = describe_error(exc)
        log.warning("review: %d image(s) queued but not pushed to Label Studio (%s); they are in the "
                    "workspace with predictions under %s: rerun the same command once Label Studio is up "
                    "(it pushes them as held; `textloop push` would make them ordinary tasks)",
                    len(known), out["push_error"], model_version)
    return out


def push(ws: Workspace, image_ids: Sequence[str], model_version: str) -> dict[str, Any]:
    """Push the held images to Label Studio (imported here: `redact` without `--review` never
    loads the Label Studio client); the push summary as the review record stores it."""
    from pipeline.studio.push import push_images

    return push_images(ws, list(image_ids), model_version=model_version, held=True).as_dict()


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


def not_held(item: Item) -> Result:
    """`--from-review` finishes held images only; every other input is listed as skipped (they
    vanished from its summary, so "3 images" seemed to be lost)."""
    sc = read_sidecar(item.sidecar)
    detail = (f"not held for review ({sc.get('status')} earlier)" if sc else
              "never redacted: run redact without --from-review")
    return Result(item.rel, item.src, item.out, "skipped", detail=detail,
                  input_sha256=(sc or {}).get("input_sha256", ""), output_sha256=(sc or {}).get("output_sha256") or "")


def skipped_by_reviewer(ws: Workspace, held: Sequence[tuple[Item, dict[str, Any]]]) -> set[str]:
    """sha256s of held images whose reviewer pressed Skip (status `skipped` after `pull`)."""
    from pipeline.catalog import ImageStatus

    with ws.catalog() as cat:
        rows = cat.images_by_ids(sorted({sc["input_sha256"] for _, sc in held}))
    return {r["id"] for r in rows if r["status"] == ImageStatus.SKIPPED}


def waiting(item: Item, sc: dict[str, Any], skipped: bool = False) -> Result:
    detail = ("the reviewer skipped it: label it in Label Studio (or redact it without --review)" if skipped
              else "not reviewed yet (label it, then `textloop pull`)")
    return Result(item.rel, item.src, item.out, "waiting_review", input_sha256=sc.get("input_sha256", ""),
                  n_boxes=int(sc.get("n_boxes", 0)), detail=detail)

