"""Curation's "send back for review" against a real Label Studio: the task is reopened with a
note, nothing the labeller did is deleted, and the reviewer's change comes back with `pull`."""

from __future__ import annotations

import pytest

from pipeline.boxes import xyxy_to_ls_value
from pipeline.harvest import harvest
from pipeline.studio.client import connect
from pipeline.studio.project import init_project
from pipeline.studio.pull import pull
from pipeline.studio.push import push_images
from pipeline.studio.review import request_review
from pipeline.workspace import Workspace
from tests.fakes import FakeDetector
from tests.imagegen import noise_image

pytestmark = pytest.mark.integration


def OneBox() -> FakeDetector:
    return FakeDetector([[2.0, 2.0, 20.0, 10.0]], [0.5], name="onebox", version="onebox-v1")


def _result(box, w, h):
    return [{"id": "r0", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": w,
             "original_height": h, "image_rotation": 0, "value": {**xyxy_to_ls_value(box, w, h), "rectanglelabels": ["text"]}}]


def test_request_review_reopens_the_task_with_a_note(live_studio, tmp_path_factory) -> None:
    src = tmp_path_factory.mktemp("review_src")
    for i in range(3):
        noise_image(700 + i, (64, 48)).save(src / f"r{i}.png")
    ws = Workspace.open(live_studio.root / "ws_review")
    harvest(ws, [str(src)])
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    project = init_project(ws, studio, title="review test")
    push_images(ws, None, client=studio, detector=OneBox())
    tasks = {t.data["image_id"]: t for t in studio.sdk.tasks.list(project=project.project_id, fields="all")}
    for t in tasks.values():
        studio.sdk.annotations.create(id=t.id, result=_result([2, 2, 20, 10], 64, 48))
    pull(ws, studio)
    flagged = sorted(tasks)[0]
    with ws.catalog() as cat:
        with cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'needs_review' WHERE id = ?", (flagged,))

    counts = request_review(ws, [flagged], {flagged: "suspected overlooked text"}, client=studio)
    assert counts["reopened"] == 1
    task = studio.sdk.tasks.get(id=str(tasks[flagged].id))
    assert task.is_labeled is False
    assert (task.meta or {}).get("textloop_review") == "suspected overlooked text"
    assert len(studio.sdk.annotations.list(id=tasks[flagged].id)) == 1      # nothing deleted
    others = [studio.sdk.tasks.get(id=str(tasks[i].id)) for i in tasks if i != flagged]
    assert all(t.is_labeled for t in others)

    ann = studio.sdk.annotations.list(id=tasks[flagged].id)[0]            # the reviewer fixes it
    studio.sdk.annotations.update(id=ann.id, result=_result([2, 2, 30, 12], 64, 48))
    assert pull(ws, studio).updated == 1
    with ws.catalog() as cat:
        assert cat.scalar("SELECT status FROM images WHERE id = ?", (flagged,)) == "labelled"
