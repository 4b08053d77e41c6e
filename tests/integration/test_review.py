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
    # ... and in its data, which the label config shows above the image (in meta no labeller saw it)
    assert task.data["review_note"] == "suspected overlooked text" and task.data["image_id"] == flagged
    assert len(studio.sdk.annotations.list(id=tasks[flagged].id)) == 1      # nothing deleted
    others = [studio.sdk.tasks.get(id=str(tasks[i].id)) for i in tasks if i != flagged]
    assert all(t.is_labeled for t in others)

    # `push` sends what `curate --apply` flags too (its message said so; only iterate did): the
    # labelled task is reopened with the note, the one already open is left alone, and a second
    # push reopens nothing more
    second = sorted(tasks)[1]
    with ws.catalog() as cat:
        with cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'needs_review' WHERE id = ?", (second,))
    assert push_images(ws, None, client=studio, detector=OneBox()).reopened_for_review == 1
    task2 = studio.sdk.tasks.get(id=str(tasks[second].id))
    assert task2.is_labeled is False and "textloop" in (task2.meta or {}).get("textloop_review", "")
    assert push_images(ws, None, client=studio, detector=OneBox()).reopened_for_review == 0
    # iterate pushes its batch only: a flagged image outside it is reopened with its note shown too
    third = sorted(tasks)[2]
    with ws.catalog() as cat:
        with cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'needs_review' WHERE id = ?", (third,))
    assert push_images(ws, [flagged], client=studio, detector=OneBox()).reopened_for_review == 1
    assert "textloop" in studio.sdk.tasks.get(id=str(tasks[third].id)).data["review_note"]
    again = studio.sdk.tasks.get(id=str(tasks[flagged].id))
    assert (again.meta or {}).get("textloop_review") == "suspected overlooked text"
    assert again.data["review_note"] == "suspected overlooked text" and "textloop" in task2.data["review_note"]
    assert all(studio.sdk.tasks.get(id=str(tasks[i].id)).data["review_note"] == "" for i in tasks
               if i not in (flagged, second, third))

    ann = studio.sdk.annotations.list(id=tasks[flagged].id)[0]            # the reviewer fixes it
    studio.sdk.annotations.update(id=ann.id, result=_result([2, 2, 30, 12], 64, 48))
    assert pull(ws, studio).updated == 1
    with ws.catalog() as cat:
        assert cat.scalar("SELECT status FROM images WHERE id = ?", (flagged,)) == "labelled"
    push_images(ws, None, client=studio, detector=OneBox())               # reviewed: the note goes
    assert studio.sdk.tasks.get(id=str(tasks[flagged].id)).data["review_note"] == ""


def test_an_imported_label_flagged_for_review_is_pushed_as_the_label_with_a_note(live_studio, tmp_path_factory) -> None:
    """A label made outside Label Studio (`import`) has no task: when curation flags it, `push`
    creates the task with that label pre-drawn (not the model's boxes, which would have the
    reviewer label from scratch) and the suspected issue in the task's meta."""
    import json

    from pipeline.importer import import_labels

    src = tmp_path_factory.mktemp("imported_review")
    (src / "images").mkdir()
    for i in range(2):
        noise_image(720 + i, (64, 48)).save(src / "images" / f"i{i}.png")
    lines = [json.dumps({"image": f"images/i{i}.png", "width": 64, "height": 48, "boxes": [[30, 20, 50, 30]]})
             for i in range(2)]
    (src / "boxes.jsonl").write_text("\n".join(lines) + "\n")
    ws = Workspace.open(live_studio.root / "ws_imported_review")
    import_labels(ws, [src / "boxes.jsonl"])
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    project = init_project(ws, studio, title="imported review test")
    with ws.catalog() as cat:
        flagged = sorted(r["id"] for r in cat.images())[0]
        with cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'needs_review' WHERE id = ?", (flagged,))
    res = push_images(ws, None, client=studio, detector=OneBox())
    assert res.tasks_created == 1 and res.sent_for_review == 1        # the other label needs no task
    task = studio.sdk.tasks.list(project=project.project_id, fields="all")
    task = next(iter(task))
    assert task.data["image_id"] == flagged
    assert "may be wrong" in (task.meta or {}).get("textloop_review", "") and "may be wrong" in task.data["review_note"]
    preds = studio.sdk.predictions.list(task=task.id)
    values = [r["value"] for p in preds for r in p.result]
    assert len(values) == 1 and abs(values[0]["x"] - 30 / 64 * 100) < 0.5   # the imported box, not OneBox's (2, 2)
