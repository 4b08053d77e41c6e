"""`textloop pull`: mirror human annotations from Label Studio into the catalog.

One catalog row per labelled image (source 'labelstudio', this project): the winning annotation
of its task -- a ground-truth-marked one, else the latest submitted one (policy "latest"), or the
first submitted one (policy "first"). A task with only cancelled annotations is recorded as
`skipped`; an empty submitted annotation means "verified: no text" (`empty`, image status
`verified_empty`). Annotations edited or deleted in Label Studio since the last pull update or
remove the row. Rotated rectangles keep their shape: the row's `quads` holds every box's four
corners (NULL when none is rotated), its `boxes` their enclosing rectangles. Idempotent: a second pull changes nothing and says so.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from pipeline.catalog import HUMAN_LABELLED, ImageStatus, dumps, quads_column
from pipeline.studio.client import Studio, StudioError
from pipeline.studio.launcher import connect_workspace
from pipeline.studio.convert import results_to_detections
from pipeline.studio.project import get_project
from pipeline.studio.push import reconcile_tasks
from pipeline.workspace import Workspace

log = logging.getLogger("textloop.studio.pull")

SOURCE = "labelstudio"
STATUS_BY_STATE = {"submitted": ImageStatus.LABELLED, "empty": ImageStatus.VERIFIED_EMPTY, "skipped": ImageStatus.SKIPPED}


def _ts(value: Any) -> float:
    if not value:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def choose(annotations: list[dict[str, Any]], policy: str = "latest") -> dict[str, Any] | None:
    """The annotation that stands for the task (see module doc)."""
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if submitted:
        gt = [a for a in submitted if a.get("ground_truth")]
        pool = gt or submitted
        if policy == "first" and not gt:   # first *submitted*: an edit later does not make it later
            return min(pool, key=lambda a: (_ts(a.get("created_at") or a.get("updated_at")), int(a.get("id", 0))))
        return max(pool, key=lambda a: (_ts(a.get("updated_at")), int(a.get("id", 0))))
    cancelled = [a for a in annotations if a.get("was_cancelled")]
    return max(cancelled, key=lambda a: (_ts(a.get("updated_at")), int(a.get("id", 0)))) if cancelled else None


def several_people(annotations: list[dict[str, Any]]) -> bool:
    """Whether more than one person submitted a label for the task (skips aside): one label
    stands for it (`choose`), and the others are not used."""
    return len({str(a.get("completed_by")) for a in annotations if not a.get("was_cancelled")}) > 1


def export_tasks(studio: Studio, project_id: int) -> list[dict[str, Any]]:
    """Every task that has at least one annotation (submitted or cancelled), with its annotations:
    one request (the JSON export). A task missing here has none, so its catalog row goes."""
    chunks = studio.call(lambda: b"".join(studio.sdk.projects.exports.download_sync(
        project_id, export_type="JSON", download_all_tasks=False)))
    return json.loads(chunks)


@dataclass(frozen=True)
class PullSummary:
    """What one pull changed in the catalog (`new` / `updated` / `removed` / `unchanged` rows)
    and what the winning annotations were; `as_dict()` is the `--json` payload, and its
    integers are the counts a `pull` iteration records."""

    new: int
    updated: int
    removed: int
    unchanged: int
    labelled: int
    empty: int
    skipped: int
    tasks: int                 # tasks with at least one annotation
    unknown_tasks: int         # ... whose image is not in this workspace's catalog
    project_id: int
    excluded: int = 0          # annotations of excluded images (curation): stored, not used for training
    several_annotators: int = 0   # tasks labelled by more than one person: the policy's one is used
    several_annotator_tasks: tuple[int, ...] = ()   # ... their Label Studio task ids, to look at
    problems: tuple[str, ...] = ()   # one line per annotation that could not be read (left as it was)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def counts(self) -> dict[str, int]:
        """The integers, as the iteration journal stores them."""
        return {**{k: v for k, v in self.as_dict().items() if isinstance(v, int)}, "problems": len(self.problems)}


def pull(ws: Workspace, client: Studio | None = None, policy: str = "latest") -> PullSummary:
    """Mirror the project's annotations into the catalog; returns what changed."""
    if policy not in ("latest", "first"):
        raise ValueError(f"policy must be latest or first, got {policy!r}")
    studio = client or connect_workspace(ws.root)  # the server `studio up` started
    project = get_project(ws, studio)
    tasks = export_tasks(studio, project.id)
    users = {}
    try:
        users = {int(u.id): (u.email or u.username or str(u.id)) for u in studio.sdk.users.list()}
    except Exception:  # noqa: BLE001 - annotator names are nice to have
        pass
    counts = {"new": 0, "updated": 0, "removed": 0, "unchanged": 0, "labelled": 0, "empty": 0, "skipped": 0,
              "tasks": len(tasks), "unknown_tasks": 0, "excluded": 0}
    now = time.time()
    with ws.catalog() as cat:
        task_image = {tid: image_id for image_id, tid in cat.tasks(project.id).items()}
        existing = cat.studio_annotations(SOURCE, project.id)
        sizes = {r["id"]: (int(r["width"]), int(r["height"]), r["status"]) for r in cat.images()}
        rows: dict[str, tuple] = {}
        problems: list[str] = []
        several: list[int] = []
        unreadable: set[str] = set()   # their catalog rows stay as they are (not "removed")
        for t in tasks:
            image_id = task_image.get(int(t["id"])) or (t.get("data") or {}).get("image_id")
            if not image_id or image_id not in sizes:
                counts["unknown_tasks"] += 1
                continue
            ann = choose(t.get("annotations") or [], policy)
            if ann is None:
                continue
            if several_people(t.get("annotations") or []):
                several.append(int(t["id"]))
            w, h, _ = sizes[image_id]
            if ann.get("was_cancelled"):
                state, det = "skipped", None
            else:
                try:
                    det = results_to_detections(ann.get("result") or [], w, h, project.config)
                except (StudioError, ValueError, TypeError) as exc:
                    # one bad annotation (a class the config no longer has, a box drawn on an image
                    # of another size) stopped every pull: this one is named and left, the rest pulled
                    problems.append(f"task {t['id']} (image {image_id}), annotation {ann.get('id')}: {exc}")
                    unreadable.add(image_id)
                    continue
                state = "submitted" if len(det) else "empty"
            j = det.to_json() if det is not None else {"boxes": [], "labels": []}
            who = ann.get("completed_by")
            who = who.get("email") if isinstance(who, dict) else users.get(int(who), str(who)) if who is not None else None
            rows[image_id] = (int(t["id"]), int(ann["id"]), dumps(j["boxes"]), dumps(j["labels"]),
                              dumps([False] * len(j["boxes"])), state, who, _ts(ann.get("updated_at")), quads_column(j))
        # an annotation gone from the export: is its task gone too? (one listing, only then)
        on_server = reconcile_tasks(studio, project.id, cat) if set(existing) - set(rows) - unreadable else {}
        with cat.transaction():  # the whole pull or nothing
            for image_id, (tid, aid, boxes, labels, ignore, state, who, updated, quads) in rows.items():
                counts["labelled" if state == "submitted" else state] += 1
                counts["excluded"] += sizes[image_id][2] == ImageStatus.EXCLUDED.value
                old = existing.get(image_id)
                # quads compared too: a row pulled before the quads column existed gets its shapes
                if old is not None and (old["ls_annotation_id"], old["boxes"], old["labels"], old["state"], old["updated_at"],
                                        old["quads"]) == (aid, boxes, labels, state, updated, quads):
                    counts["unchanged"] += 1
                    continue
                fields = dict(ls_task_id=tid, ls_annotation_id=aid, boxes=boxes, labels=labels, ignore=ignore,
                              state=state, annotator=who, updated_at=updated, pulled_at=now, quads=quads)
                if old is None:
                    cat.add_annotation(image_id, SOURCE, ls_project_id=project.id, **fields)
                    counts["new"] += 1
                else:
                    cat.update_annotation(old["id"], **fields)
                    counts["updated"] += 1
                cat.set_status(image_id, STATUS_BY_STATE[state], never_from=(ImageStatus.EXCLUDED,))
            for image_id, old in existing.items():
                if image_id not in rows and image_id not in unreadable:
                    cat.delete_annotation(old["id"])
                    cat.set_status(image_id, _status_after_removal(cat, image_id, image_id in on_server),
                                   only_from=(*HUMAN_LABELLED, ImageStatus.SKIPPED))
                    counts["removed"] += 1
    return PullSummary(**counts, project_id=project.id, several_annotators=len(several),
                       several_annotator_tasks=tuple(sorted(several)),
                       problems=tuple(problems))


def _status_after_removal(cat: Any, image_id: str, task_exists: bool) -> ImageStatus:
    """An image whose Label Studio annotation went away keeps a label another source gave it
    (an imported label file); otherwise it waits in its task again, or is new if the task went too."""
    other = cat.latest_annotations(include_excluded=True, image_ids=[image_id]).get(image_id)
    if other is not None:
        return STATUS_BY_STATE[other["state"]]
    return ImageStatus.PUSHED if task_exists else ImageStatus.NEW


def run_pull(ws: Workspace, client: Studio | None = None, policy: str = "latest") -> PullSummary:
    """`textloop pull` as one call: `pull`, recorded as a `pull` iteration with its counts
    (iterate calls `pull` inside its own round instead)."""
    res = pull(ws, client, policy=policy)
    with ws.catalog() as cat:
        it = cat.start_iteration("pull")
        cat.finish_iteration(it, counts=res.counts())
    return res
