"""Send labelled images back to Label Studio for another look, with a note.

Used when curation suspects a label error (`textloop curate --apply` sets status
`needs_review`; `textloop iterate` then calls this). The task keeps its annotation (nothing a
human did is deleted): it is marked unlabelled again, so Label Studio serves it to labellers
once more, the note goes into the task's data (`review_note`, which the label config shows
above the image) and `meta`, and, where the server supports comments, onto the annotation as a
comment. The next `pull` stores whatever the
reviewer submits; until the annotation changes, the image stays `needs_review`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.studio.client import Studio
from pipeline.studio.launcher import connect_workspace
from pipeline.studio.project import get_project
from pipeline.workspace import Workspace

DEFAULT_NOTE = "textloop: this label may be wrong (curation flagged it); please check every box"


def review_notes(ws: Workspace, image_ids: Sequence[str]) -> dict[str, str]:
    """A note per image from the latest label-issue report (`reports/label_issues.parquet`)."""
    import pandas as pd

    path = ws.reports_dir / "label_issues.parquet"
    notes = {i: DEFAULT_NOTE for i in image_ids}
    if path.exists():
        df = pd.read_parquet(path)
        if {"image_id", "issues"} <= set(df.columns):
            for i, issues in zip(df["image_id"], df["issues"]):
                if i in notes and isinstance(issues, str) and issues:
                    notes[i] = f"textloop: suspected {issues}; please check every box"
    return notes


def request_review(ws: Workspace, image_ids: Sequence[str], notes: dict[str, str] | None = None,
                   client: Studio | None = None, note_in_data: bool = False) -> dict[str, Any]:
    """Reopen the tasks of `image_ids` with a note; returns counts. Idempotent. `note_in_data`:
    the caller (push) has written the note into the tasks' data already, so they are not read
    and written again."""
    studio = client or connect_workspace(ws.root)  # the server `studio up` started
    project = get_project(ws, studio)
    notes = notes or review_notes(ws, image_ids)
    with ws.catalog() as cat:
        tasks = cat.tasks(project.id)
        latest = cat.latest_studio_annotation_ids()
    counts = {"reopened": 0, "without_task": 0, "comments": 0}
    for image_id in dict.fromkeys(image_ids):
        task_id = tasks.get(image_id)
        if task_id is None:
            counts["without_task"] += 1
            continue
        note = notes.get(image_id, DEFAULT_NOTE)
        # the note in the task's data too, which the label config shows above the image: in
        # `meta` alone no labeller saw it, and comments are not in every edition
        update: dict[str, Any] = {"is_labeled": False, "meta": {"textloop_review": note}}
        if not note_in_data:   # Label Studio replaces the whole data: read it first
            update["data"] = {**(studio.call(studio.sdk.tasks.get, id=str(task_id)).data or {}), "review_note": note}
        studio.call(studio.sdk.tasks.update, id=str(task_id), **update)
        counts["reopened"] += 1
        if image_id in latest:
            try:  # comments are not in every Label Studio edition; the meta note is the fallback
                studio.sdk.comments.create(annotation=int(latest[image_id]), text=note)
                counts["comments"] += 1
            except Exception:  # noqa: BLE001
                pass
    return counts
