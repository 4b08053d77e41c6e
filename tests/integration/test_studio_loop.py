"""The human-in-the-loop boundary against a real Label Studio: push, label (as a labeller would,
through the SDK), pull, export, re-push, the ML backend, and the failure modes."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.boxes import Detections
from pipeline.config import HarvestConfig
from pipeline.formats import read_jsonl
from pipeline.harvest import harvest
from pipeline.studio.client import StudioError, connect
from pipeline.studio.export import export
from pipeline.studio.project import init_project
from pipeline.studio.pull import pull
from pipeline.studio.push import push_images
from pipeline.workspace import Workspace
from tests import fakes
from tests.imagegen import noise_image, text_font

pytestmark = pytest.mark.integration

N_IMAGES = 50
REPO = Path(__file__).resolve().parents[2]


def _layout(shift: float):
    """2-3 boxes placed by the image size and content (shifted by `shift` px), and a weak box,
    as rank stores (down to 0.05): labellers must not get it."""
    def boxes_of(im):
        h, w = im.shape[:2]
        seed = int(im[..., 0].sum()) % 1000
        boxes = [[0.10 * w, 0.10 * h, 0.45 * w, 0.22 * h], [0.50 * w, 0.60 * h, 0.92 * w, 0.75 * h]]
        if seed % 3 == 0:
            boxes.append([0.05 * w, 0.80 * h, 0.30 * w, 0.95 * h])
        boxes = np.asarray(boxes) + shift
        scores = 0.30 + 0.65 * ((seed + np.arange(len(boxes)) * 37) % 100) / 100.0
        boxes = np.vstack([boxes, [[0.6 * w, 0.05 * h, 0.7 * w, 0.09 * h]]])
        scores = np.append(scores, 0.1)
        return Detections(boxes, scores, np.zeros(len(boxes), dtype=int))
    return boxes_of


def FakeDetector(version: str = "fake-v1", shift: float = 0.0) -> fakes.FakeDetector:
    """The shared fake, deterministic per image (`_layout`)."""
    return fakes.FakeDetector(_layout(shift), version=version)


def _pct(box, w, h):
    """Independent pixel -> percent arithmetic (what a labeller's browser would send)."""
    x0, y0, x1, y1 = box
    return {"x": x0 / w * 100, "y": y0 / h * 100, "width": (x1 - x0) / w * 100, "height": (y1 - y0) / h * 100, "rotation": 0}


def _rect(value, w, h, rid):
    return {"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": w,
            "original_height": h, "image_rotation": 0, "value": dict(value, rectanglelabels=["text"])}


@pytest.fixture(scope="module")
def loop(live_studio, tmp_path_factory):
    """A workspace under the served root with 50 harvested images (one EXIF-rotated), a project,
    and the first push done with the fake detector."""
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(7)
    for i in range(N_IMAGES - 1):
        size = (int(rng.integers(64, 200)), int(rng.integers(48, 160)))
        noise_image(1000 + i, size).save(src / f"im{i:02d}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90x60, shown 60x90
    noise_image(5000, (90, 60)).save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    ws = Workspace.open(live_studio.root / "ws_loop")
    summary = harvest(ws, [str(src)], HarvestConfig(workers=1))
    assert summary.ok == N_IMAGES if hasattr(summary, "ok") else True
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    init = init_project(ws, studio, title="loop test")
    det = FakeDetector()
    first = push_images(ws, None, client=studio, detector=det)
    return {"ws": ws, "studio": studio, "init": init, "detector": det, "first_push": first, "truth": {}}


def _tasks(studio, project_id):
    return list(studio.sdk.tasks.list(project=project_id, fields="all", page_size=1000))


def _image_sizes(ws):
    with ws.catalog() as cat:
        return {r["id"]: (r["width"], r["height"]) for r in cat.query("SELECT id, width, height FROM images")}


def test_studio_init_is_idempotent(loop):
    again = init_project(loop["ws"], loop["studio"], title="loop test")
    assert again.project_id == loop["init"].project_id and not again.created
    assert again.storage_id == loop["init"].storage_id
    p = loop["studio"].sdk.projects.get(id=again.project_id)
    assert p.sampling == "Uncertainty sampling" and "RectangleLabels" in p.label_config
    # a plain init (as `studio init --ml-backend URL` is) keeps the classes given before
    assert init_project(loop["ws"], loop["studio"], ["text", "logo"], title="loop test").changed == ["label_config"]
    kept = init_project(loop["ws"], loop["studio"], title="loop test")
    assert kept.classes == ["text", "logo"] and kept.changed == []
    assert 'value="logo"' in loop["studio"].sdk.projects.get(id=again.project_id).label_config
    assert init_project(loop["ws"], loop["studio"], ["text"], title="loop test").classes == ["text"]


def test_push_creates_one_task_per_image_with_scored_predictions(loop):
    ws, studio = loop["ws"], loop["studio"]
    assert loop["first_push"].tasks_created == N_IMAGES and loop["first_push"].failed == 0
    assert "lowest mean prediction confidence" in loop["first_push"].order
    tasks = sorted(_tasks(studio, loop["init"].project_id), key=lambda t: t.id)
    assert len(tasks) == N_IMAGES
    sizes = _image_sizes(ws)
    confidences = []
    for t in tasks:
        assert len(t.predictions) == 1
        pred = t.predictions[0]
        pred = pred if isinstance(pred, dict) else pred.dict()
        assert pred["model_version"] == "fake-v1"
        w, h = sizes[t.data["image_id"]]
        assert all(r["original_width"] == w and r["original_height"] == h for r in pred["result"])
        scores = [r["score"] for r in pred["result"]]
        assert scores and min(scores) >= 0.3                      # the weak 0.1 box is not sent
        assert pred["score"] == pytest.approx(np.mean(scores), abs=1e-3)
        confidences.append(pred["score"])
        # the image is really served by Label Studio from the workspace
    assert confidences == sorted(confidences), "least confident images should be imported first"
    r = studio.sdk._client_wrapper.httpx_client.httpx_client.get(
        studio.url + tasks[0].data["image"], headers={"Authorization": f"Token {studio.settings.api_key}"})
    assert r.status_code == 200 and r.content[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1")
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM tasks") == N_IMAGES
        assert cat.scalar("SELECT COUNT(*) FROM images WHERE status = 'pushed'") == N_IMAGES
        assert cat.scalar("SELECT COUNT(*) FROM predictions WHERE model_version = 'fake-v1'") == N_IMAGES


@pytest.fixture(scope="module")
def labelled(loop):
    """A labeller's session: accept, move, delete, add (incl. a rotated box), submit empty, skip."""
    ws, studio = loop["ws"], loop["studio"]
    sizes = _image_sizes(ws)
    tasks = sorted(_tasks(studio, loop["init"].project_id), key=lambda t: t.id)
    truth: dict[str, dict] = {}
    plan = ["accept", "move", "delete", "add", "add_rotated", "empty", "skip"] * 2
    for kind, t in zip(plan, tasks):
        image_id = t.data["image_id"]
        w, h = sizes[image_id]
        pred = t.predictions[0] if isinstance(t.predictions[0], dict) else t.predictions[0].dict()
        result = copy.deepcopy(pred["result"])
        px = [[r["value"]["x"] * w / 100, r["value"]["y"] * h / 100, (r["value"]["x"] + r["value"]["width"]) * w / 100,
               (r["value"]["y"] + r["value"]["height"]) * h / 100] for r in result]
        cancelled = False
        if kind == "move":
            px[0] = [px[0][0] + 5.25, px[0][1] + 3.5, px[0][2] + 5.25, px[0][3] + 3.5]
            result[0]["value"].update(_pct(px[0], w, h))
        elif kind == "delete":
            del result[1], px[1]
        elif kind == "add":
            new = [2.0, 3.0, 20.5, 11.25]
            result.append(_rect(_pct(new, w, h), w, h, "added"))
            px.append(new)
        elif kind == "add_rotated":  # 90 degrees clockwise about (20, 5): covers x 12..20, y 5..35
            v = {"x": 20 / w * 100, "y": 5 / h * 100, "width": 30 / w * 100, "height": 8 / h * 100, "rotation": 90}
            result.append(_rect(v, w, h, "rot"))
            px.append([12.0, 5.0, 20.0, 35.0])
        elif kind == "empty":
            result, px = [], []
        elif kind == "skip":
            result, px, cancelled = [], [], True
        for r in result:
            r.pop("score", None)
        ann = studio.sdk.annotations.create(id=t.id, result=result, was_cancelled=cancelled)
        truth[image_id] = {"kind": kind, "boxes": px, "task": t.id, "annotation": ann.id}
    loop["truth"] = truth
    first = pull(ws, studio)
    return {"truth": truth, "first": first}


def test_pull_stores_the_labellers_boxes_in_pixels(loop, labelled):
    ws, truth, first = loop["ws"], labelled["truth"], labelled["first"]
    assert first.new == len(truth) and first.updated == 0 and first.removed == 0
    assert first.skipped == 2 and first.empty == 2 and first.labelled == len(truth) - 4
    with ws.catalog() as cat:
        rows = {r["image_id"]: r for r in cat.query("SELECT * FROM annotations WHERE source = 'labelstudio'")}
        status = {r["id"]: r["status"] for r in cat.query("SELECT id, status FROM images")}
    assert set(rows) == set(truth)
    for image_id, t in truth.items():
        row = rows[image_id]
        boxes = np.asarray(json.loads(row["boxes"])).reshape(-1, 4)
        expected = np.asarray(t["boxes"]).reshape(-1, 4)
        assert boxes.shape == expected.shape, t["kind"]
        np.testing.assert_allclose(boxes, expected, atol=1.0, err_msg=t["kind"])
        assert row["ls_annotation_id"] == t["annotation"] and row["ls_task_id"] == t["task"]
        want_state = {"skip": "skipped", "empty": "empty"}.get(t["kind"], "submitted")
        assert row["state"] == want_state
        assert status[image_id] == {"skipped": "skipped", "empty": "verified_empty", "submitted": "labelled"}[want_state]
        assert row["annotator"] == "labeller@textloop.test"


def test_pull_again_changes_nothing(loop, labelled):
    again = pull(loop["ws"], loop["studio"])
    assert (again.new, again.updated, again.removed) == (0, 0, 0)
    assert again.unchanged == len(labelled["truth"]) and again.excluded == 0
    # a label on an image curation excluded is stored and said to be unused (it was just "labelled")
    image_id = next(k for k, v in labelled["truth"].items() if v["kind"] == "accept")
    with loop["ws"].catalog() as cat:
        cat.set_status(image_id, "excluded")
    try:
        res = pull(loop["ws"], loop["studio"])
        with loop["ws"].catalog() as cat:
            assert res.excluded == 1 and cat.image(image_id)["status"] == "excluded"
    finally:
        with loop["ws"].catalog() as cat:
            cat.set_status(image_id, "labelled")


def test_export_jsonl_matches_the_annotations(loop, labelled, tmp_path):
    res = export(loop["ws"], tmp_path / "out", "jsonl")
    recs = {Path(r.image).stem: r for r in read_jsonl(tmp_path / "out" / "boxes.jsonl")}
    truth = {k: v for k, v in labelled["truth"].items() if v["kind"] != "skip"}
    assert set(recs) == set(truth) and res.empty_images == 2
    sizes = _image_sizes(loop["ws"])
    for image_id, t in truth.items():
        rec = recs[image_id]
        np.testing.assert_allclose(rec.boxes, np.asarray(t["boxes"]).reshape(-1, 4), atol=1.0)
        with Image.open(tmp_path / "out" / rec.image) as im:
            assert im.size == sizes[image_id] == (rec.width, rec.height)  # upright, incl. the EXIF-rotated one


def test_edit_and_delete_in_label_studio_are_mirrored(loop, labelled):
    ws, studio, truth = loop["ws"], loop["studio"], labelled["truth"]
    sizes = _image_sizes(ws)
    edited_id = next(k for k, v in truth.items() if v["kind"] == "accept")
    w, h = sizes[edited_id]
    new_box = [1.0, 1.0, 30.0, 12.0]
    studio.sdk.annotations.update(id=truth[edited_id]["annotation"], result=[_rect(_pct(new_box, w, h), w, h, "e")])
    res = pull(ws, studio)
    assert (res.new, res.updated, res.removed) == (0, 1, 0)
    with ws.catalog() as cat:
        row = cat.query("SELECT boxes FROM annotations WHERE image_id = ?", (edited_id,))[0]
    np.testing.assert_allclose(json.loads(row["boxes"]), [new_box], atol=1.0)

    deleted_id = next(k for k, v in truth.items() if v["kind"] == "move")
    studio.sdk.annotations.delete(id=truth[deleted_id]["annotation"])
    res = pull(ws, studio)
    assert (res.new, res.updated, res.removed) == (0, 0, 1)
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM annotations WHERE image_id = ?", (deleted_id,)) == 0
        assert cat.scalar("SELECT status FROM images WHERE id = ?", (deleted_id,)) == "pushed"


def test_push_twice_creates_no_duplicate_tasks(loop):
    again = push_images(loop["ws"], None, client=loop["studio"], detector=loop["detector"])
    assert again.tasks_created == 0 and again.predictions_added == 0 and again.already_pushed == N_IMAGES
    assert len(_tasks(loop["studio"], loop["init"].project_id)) == N_IMAGES


def test_a_push_killed_after_the_import_is_finished_by_the_rerun(loop):
    """The catalog forgets three tasks, as when a push is killed between Label Studio's import
    and the catalog write. The rerun finds them on the server with the prediction they were
    created with (`pushed_with`): no new task, no second copy of that prediction, and the
    images that were `new` are marked pushed."""
    from pipeline.catalog import ImageStatus

    ws, studio, pid = loop["ws"], loop["studio"], loop["init"].project_id
    with ws.catalog() as cat:
        tasks = cat.tasks(pid)
        lost = sorted(tasks)[:3]
        for image_id in lost:
            cat.forget_task(image_id, pid, tasks[image_id])
            cat.set_status(image_id, ImageStatus.NEW, only_from=(ImageStatus.PUSHED,))
    for t in _tasks(studio, pid):
        assert t.data["pushed_with"] == "fake-v1" and isinstance(t.data["pushed_boxes"], int)
    again = push_images(ws, None, client=studio, detector=loop["detector"])
    assert again.tasks_created == 0 and again.predictions_added == 0
    assert len(_tasks(studio, pid)) == N_IMAGES
    assert all(len(t.predictions) == 1 for t in _tasks(studio, pid))
    with ws.catalog() as cat:
        assert cat.tasks(pid) == tasks
        assert all(cat.image(i)["status"] != ImageStatus.NEW for i in lost)


def test_new_model_version_adds_a_second_prediction_per_task(loop):
    v2 = FakeDetector("fake-v2", shift=1.0)
    res = push_images(loop["ws"], None, client=loop["studio"], detector=v2)
    assert res.tasks_created == 0 and res.predictions_added == N_IMAGES
    tasks = _tasks(loop["studio"], loop["init"].project_id)
    assert len(tasks) == N_IMAGES
    for t in tasks:
        versions = sorted((p if isinstance(p, dict) else p.dict())["model_version"] for p in t.predictions)
        assert versions == ["fake-v1", "fake-v2"]
    project = loop["studio"].sdk.projects.get(id=loop["init"].project_id)
    assert project.model_version == "fake-v2"  # uncertainty sampling follows the newest model
    again = push_images(loop["ws"], None, client=loop["studio"], detector=v2)
    assert again.predictions_added == 0


def _small_project(live_studio, tmp_path_factory, name: str, n: int, seed: int):
    """A workspace of its own under the served root: `n` harvested 64x48 images and a project."""
    ws = Workspace.open(live_studio.root / f"ws_{name}")
    src = tmp_path_factory.mktemp(f"src_{name}")
    for i in range(n):
        noise_image(seed + i, (64, 48)).save(src / f"{name}{i}.png")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    init_project(ws, studio, title=f"{name} test")
    return ws, studio


def test_iterates_batch_keeps_its_order_and_each_failed_image_is_named(live_studio, tmp_path_factory):
    """iterate pushed rank's batch re-sorted by confidence (and called that the order); push
    counted failed images ("2 images failed") without naming one, even in --json."""
    ws, studio = _small_project(live_studio, tmp_path_factory, "order", 5, 7300)
    with ws.catalog() as cat:
        rows = {r["id"]: r for r in cat.images()}
    batch = sorted(rows, reverse=True)
    gone = batch[2]
    ws.abspath(rows[gone]["path"]).unlink()
    res = push_images(ws, batch, client=studio, detector=FakeDetector(), keep_order=True)
    assert res.tasks_created == 4 and res.failed == 1 and "in the order given" in res.order, res
    assert len(res.failures) == 1 and rows[gone]["original_name"] in res.failures[0] and gone[:12] in res.failures[0]
    tasks = sorted(_tasks(studio, res.project_id), key=lambda t: t.id)
    assert [t.data["image_id"] for t in tasks] == [i for i in batch if i != gone]
    r = _cli(ws, {"LABEL_STUDIO_URL": live_studio.url, "LABEL_STUDIO_API_KEY": live_studio.token,
                  "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(live_studio.root)}, "push", "--model", "ppocr")
    assert r.returncode == 0 and f"not pushed: {rows[gone]['original_name']}" in r.stdout, r.stdout + r.stderr


def test_push_with_ranking_orders_by_strategy_and_honours_top(live_studio, tmp_path_factory):
    import pandas as pd

    ws, studio = _small_project(live_studio, tmp_path_factory, "rank", 6, 7000)
    with ws.catalog() as cat:
        ids = [r["id"] for r in cat.images()]
    scores = {i: float(k) for k, i in enumerate(ids)}  # the last id is the most useful
    pd.DataFrame({"image_id": ids, "score_uncertainty": [scores[i] for i in ids], "reason": "test"}).to_parquet(
        ws.reports_dir / "ranking.parquet")
    from pipeline.predict import predict_workspace

    predict_workspace(ws, FakeDetector(), threshold=0.05)  # what rank stores: weak boxes included
    res = push_images(ws, None, client=studio, detector=FakeDetector(), strategy="uncertainty", top=3)
    assert res.tasks_created == 3 and "score_uncertainty" in res.order
    tasks = sorted(_tasks(studio, res.project_id), key=lambda t: t.id)
    assert [t.data["image_id"] for t in tasks] == ids[::-1][:3]
    for t in tasks:  # labellers see the boxes a redaction would use, not rank's weak ones
        pred = t.predictions[0] if isinstance(t.predictions[0], dict) else t.predictions[0].dict()
        assert pred["result"] and min(r["score"] for r in pred["result"]) >= 0.3
    # the same push again is a no-op (it sent the next 3: a retried job doubled the batch)
    again = push_images(ws, None, client=studio, detector=FakeDetector(), strategy="uncertainty", top=3)
    assert again.tasks_created == 0 and len(_tasks(studio, res.project_id)) == 3
    with ws.catalog() as cat, cat.transaction() as tx:  # labelled elsewhere (e.g. `textloop import`)
        tx.execute("UPDATE images SET status = 'labelled' WHERE id = ?", (ids[0],))
    rest = push_images(ws, None, client=studio, detector=FakeDetector(), strategy="uncertainty")
    assert rest.tasks_created == 2  # 6 images - 3 pushed - 1 already labelled
    with pytest.raises(StudioError, match="no column score_nope"):
        push_images(ws, None, client=studio, detector=FakeDetector(), strategy="nope")


def test_removed_label_studio_work_leaves_other_labels_and_real_task_state(live_studio, tmp_path_factory):
    """An annotation deleted in Label Studio: the image waits in its task again (`pushed`). A
    task deleted with its annotation: the image is `new` (the next push makes a task), unless an
    imported label file labels it, which then decides its status."""
    ws, studio = _small_project(live_studio, tmp_path_factory, "removed", 3, 7100)
    pushed = push_images(ws, None, client=studio, detector=FakeDetector())
    tasks = {t.data["image_id"]: t for t in _tasks(studio, pushed.project_id)}
    kept_task, gone_imported, gone_plain = sorted(tasks)
    anns = {i: studio.sdk.annotations.create(id=tasks[i].id, result=[_rect(_pct([2, 2, 30, 12], 64, 48), 64, 48, "a")])
            for i in tasks}
    with ws.catalog() as cat:  # as `textloop import` stores a label file's boxes
        cat.add_annotation(gone_imported, "import:labels/boxes.jsonl", boxes="[[1, 1, 9, 9]]", labels='["text"]',
                           ignore="[false]", state="submitted", annotator="import", updated_at=1.0, pulled_at=1.0)
    assert pull(ws, studio).new == 3
    studio.sdk.annotations.delete(id=anns[kept_task].id)
    studio.sdk.tasks.delete(id=tasks[gone_imported].id)
    studio.sdk.tasks.delete(id=tasks[gone_plain].id)
    assert pull(ws, studio).removed == 3
    with ws.catalog() as cat:
        status = {r["id"]: r["status"] for r in cat.images()}
    assert status == {kept_task: "pushed", gone_imported: "labelled", gone_plain: "new"}


def test_an_annotation_pull_cannot_read_is_named_and_the_rest_are_pulled(live_studio, tmp_path_factory):
    """One bad annotation stopped every pull (a class the config lost: "label 'logo' is not in the
    label config classes"); a box drawn on an image of another size was stored at wrong pixels
    without a word. Now each is named, its catalog row left as it was, the others pulled; and a
    class boxes still carry cannot be dropped from the config."""
    ws, studio = _small_project(live_studio, tmp_path_factory, "badann", 5, 7200)
    init_project(ws, studio, classes=["text", "logo"], title="badann test")
    pushed = push_images(ws, None, client=studio, detector=FakeDetector())
    tasks = {t.data["image_id"]: t for t in _tasks(studio, pushed.project_id)}
    good, logo, sized, flat, turned = sorted(tasks)
    box = _pct([2, 2, 30, 12], 64, 48)
    studio.sdk.annotations.create(id=tasks[good].id, result=[_rect(box, 64, 48, "g")])
    studio.sdk.annotations.create(id=tasks[logo].id, result=[dict(_rect(box, 64, 48, "l"),
                                                                 value=dict(box, rectanglelabels=["logo"]))])
    studio.sdk.annotations.create(id=tasks[sized].id, result=[_rect(box, 128, 96, "s")])   # another frame
    # a zero-size and an inverted box (API clients send them) were stored and exported with
    # negative sizes; a box drawn on the image turned in the browser landed elsewhere
    studio.sdk.annotations.create(id=tasks[flat].id, result=[_rect(box, 64, 48, "f1"),
                                                             _rect(dict(box, width=0, height=0), 64, 48, "f2"),
                                                             _rect(dict(box, width=-20, height=-10), 64, 48, "f3")])
    studio.sdk.annotations.create(id=tasks[turned].id, result=[dict(_rect(box, 64, 48, "t"), image_rotation=90)])
    with pytest.raises(StudioError, match=r"annotations still use 'logo' \(1 box\)"):
        init_project(ws, studio, classes=["text"], title="badann test")
    res = pull(ws, studio)
    assert res.new == 2 and len(res.problems) == 3, res
    problems = {iid: next(p for p in res.problems if f"image {iid}" in p) for iid in (sized, flat, turned)}
    assert "drawn on a 128x96 image, but the image is 64x48" in problems[sized]
    assert "a box of size 0% x 0% of the image" in problems[flat]
    assert "turned by 90 degrees" in problems[turned]
    with ws.catalog() as cat:
        stored = set(cat.latest_annotations(include_excluded=True))
    assert stored == {good, logo}
    r = _cli(ws, {"LABEL_STUDIO_URL": live_studio.url, "LABEL_STUDIO_API_KEY": live_studio.token,
                  "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(live_studio.root)}, "pull")
    assert r.returncode == 0 and "not pulled" in r.stdout and "128x96" in r.stdout, r.stdout + r.stderr


def test_push_withdraws_unlabelled_tasks_of_excluded_images(live_studio, tmp_path_factory):
    """Images `curate --apply` excluded after they were pushed: their open tasks are deleted on
    the next push (labellers stop working on them), a task someone already labelled stays."""
    ws, studio = _small_project(live_studio, tmp_path_factory, "withdraw", 4, 7200)
    first = push_images(ws, None, client=studio, detector=FakeDetector())
    tasks = {t.data["image_id"]: t for t in _tasks(studio, first.project_id)}
    open_one, labelled_one, *kept = sorted(tasks)
    studio.sdk.annotations.create(id=tasks[labelled_one].id, result=[_rect(_pct([2, 2, 30, 12], 64, 48), 64, 48, "a")])
    with ws.catalog() as cat:
        for image_id in (open_one, labelled_one):
            cat.set_status(image_id, "excluded")
    res = push_images(ws, None, client=studio, detector=FakeDetector())
    assert res.tasks_withdrawn == 1 and res.tasks_created == 0
    left = {t.data["image_id"] for t in _tasks(studio, first.project_id)}
    assert left == {labelled_one, *kept}
    with ws.catalog() as cat:
        assert open_one not in cat.tasks(first.project_id) and labelled_one in cat.tasks(first.project_id)
    assert push_images(ws, None, client=studio, detector=FakeDetector()).tasks_withdrawn == 0   # idempotent


def test_ml_backend_predictions_are_stored_by_label_studio(loop, live_studio, tmp_path_factory):
    from pipeline.serve import create_app, serving

    ws, studio = loop["ws"], loop["studio"]
    trained = threading.Event()

    def trainer(_ws):
        time.sleep(2.0)
        trained.set()
        return {"trained": True}

    app = create_app(ws, detector=FakeDetector("fake-ml"), trainer=trainer)
    with serving(app) as url:
        res = init_project(ws, studio, title="loop test", ml_backend=url)
        assert res.ml_backend_id and "ml_backend" in res.changed   # it said "up to date"
        assert init_project(ws, studio, title="another title", ml_backend=url).changed == []
        assert init_project(ws, studio).title == "loop test"   # the project keeps its title
        backend = studio.sdk.ml.get(id=res.ml_backend_id)
        assert str(backend.state) in ("CO", "MLBackendState.CO", "Connected") or "CO" in str(backend.state)
        # a task without predictions: Label Studio asks the backend when the task is opened
        src = tmp_path_factory.mktemp("src_ml")
        noise_image(9001, (120, 90)).save(src / "new.png")
        harvest(ws, [str(src)], HarvestConfig(workers=1))
        with ws.catalog() as cat:
            new_id = cat.query("SELECT id, path FROM images WHERE original_name = 'new.png'")[0]
        from pipeline.studio.push import local_files_url

        imp = studio.sdk.projects.import_tasks(id=res.project_id, request=[
            {"data": {"image": local_files_url(ws, studio, new_id["path"]), "image_id": new_id["id"]}}], return_task_ids=True)
        task = studio.sdk.tasks.get(id=str(imp.task_ids[0]))
        preds = [p if isinstance(p, dict) else p.dict() for p in (task.predictions or [])]
        assert len(preds) == 1 and preds[0]["model_version"] == "fake-ml"
        assert len(preds[0]["result"]) >= 2 and preds[0]["result"][0]["original_width"] == 120
        # training is queued by the webhook and runs in the background, not in the request
        import httpx

        studio.sdk.ml.train(id=res.ml_backend_id)  # "Start Training": LS sends START_TRAINING
        assert not trained.is_set(), "training must not run inside the request"
        assert httpx.get(f"{url}/status").json()["training"]["state"] in ("queued", "running")
        assert trained.wait(15)
        for _ in range(50):
            st = httpx.get(f"{url}/health").json()
            if st["training"]["state"] == "done":
                break
            time.sleep(0.1)
        assert st["training"]["state"] == "done" and st["training"]["runs"] == 1
        # the backend removed on the server (or the project made again): `studio init` said "up to
        # date: ML backend 1" while the project had none; it now connects the remembered URL again
        studio.sdk.ml.delete(id=res.ml_backend_id)
        again = init_project(ws, studio)
        live = [int(b.id) for b in studio.sdk.ml.list(project=res.project_id)]
        assert again.ml_backend_id in live and again.ml_backend_id != res.ml_backend_id and "ml_backend" in again.changed
        assert init_project(ws, studio).changed == []


def _catalog_digest(ws: Workspace) -> str:
    with ws.catalog() as cat:
        rows = [cat.query(f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("images", "tasks", "annotations", "predictions", "task_predictions")]
    return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()


def _cli(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "pipeline.cli.app", "--workspace", str(ws.root), *args],
                          capture_output=True, text=True, env=full_env, timeout=120, cwd=str(ws.root))


@pytest.mark.parametrize("case", ["server_down", "bad_token"])
def test_server_down_or_bad_token_is_one_clear_line_and_changes_nothing(loop, live_studio, case):
    ws = loop["ws"]
    before = _catalog_digest(ws)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {"LABEL_STUDIO_URL": dead if case == "server_down" else live_studio.url,
           "LABEL_STUDIO_API_KEY": live_studio.token if case == "server_down" else "wrong-token-123",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(live_studio.root)}
    for cmd in (["push", "--model", "ppocr"], ["pull"]):
        r = _cli(ws, env, *cmd)
        assert r.returncode != 0
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1, r.stderr
        assert ("not reachable" if case == "server_down" else "rejected the API token") in lines[0]
        assert "wrong-token-123" not in r.stderr + r.stdout and live_studio.token not in r.stderr + r.stdout
    assert _catalog_digest(ws) == before


def test_cli_push_pull_export_against_the_server(loop, live_studio, tmp_path):
    env = {"LABEL_STUDIO_URL": live_studio.url, "LABEL_STUDIO_API_KEY": live_studio.token,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(live_studio.root), "TEXTLOOP_LS_PROJECT": "loop test"}
    r = _cli(loop["ws"], env, "--json", "push", "--model-version", "fake-v2", "--no-update-existing")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tasks_created"] == 0
    r = _cli(loop["ws"], env, "--json", "pull")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["new"] == 0
    r = _cli(loop["ws"], env, "--json", "export", "--format", "coco", str(tmp_path / "coco"))
    assert r.returncode == 0, r.stderr
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == json.loads(r.stdout)["images"] > 0


def test_project_missing_label_config_mismatch_and_outside_root(loop, live_studio, tmp_path):
    studio = loop["studio"]
    other = Workspace.open(live_studio.root / "ws_other")
    with pytest.raises(StudioError, match="run `textloop studio init`"):
        pull(other, studio)
    init = init_project(other, studio, title="doomed")
    studio.sdk.projects.update(id=init.project_id, label_config=(
        '<View><Image name="img" value="$image"/><RectangleLabels name="lab" toName="img">'
        '<Label value="face"/></RectangleLabels></View>'))
    with pytest.raises(StudioError, match="label config mismatch"):
        pull(other, studio)
    studio.sdk.projects.delete(id=init.project_id)
    with pytest.raises(StudioError, match="no longer exists"):
        pull(other, studio)
    outside = Workspace.open(tmp_path / "elsewhere")
    with pytest.raises(StudioError, match="outside the served root"):
        init_project(outside, studio, title="outside")
    # the project it made for that workspace is not left behind empty
    assert not [p for p in studio.sdk.projects.list(title="outside") if p.title == "outside"]


def test_real_ppocr_pre_annotations(live_studio, tmp_path_factory):
    """One push with the real PP-OCR detector on an image with rendered text."""
    from PIL import ImageDraw
    src = tmp_path_factory.mktemp("src_ocr")
    im = Image.new("RGB", (480, 200), "white")
    font = text_font(40)
    ImageDraw.Draw(im).text((30, 70), "SAMPLE 2024-06", fill="black", font=font)
    im.save(src / "text.png")
    ws = Workspace.open(live_studio.root / "ws_ocr")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    init_project(ws, studio, title="ocr test")
    res = push_images(ws, None, client=studio, model="ppocr")
    assert res.tasks_created == 1 and res.model_version.startswith("ppocr")
    task = _tasks(studio, res.project_id)[0]
    pred = task.predictions[0] if isinstance(task.predictions[0], dict) else task.predictions[0].dict()
    assert pred["result"], "PP-OCR found no text in a clear rendered line"
    v = pred["result"][0]["value"]
    x0, y0 = v["x"] * 4.8, v["y"] * 2.0
    assert 0 <= x0 < 100 and 40 < y0 < 130  # around the rendered line


def test_studio_up_status_reuse_the_running_server(live_studio, monkeypatch):
    """`studio up` with a live server in its PID file does not start another; `status` sees it,
    and checks the token. A server that only LABEL_STUDIO_URL names (no PID file) is used as it
    is: `up` said "port in use" for it."""
    from dataclasses import asdict

    from pipeline.studio.launcher import down, pid_file, status, up

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", live_studio.token)
    ws_root = live_studio.root / "ws_up"
    pid_file(ws_root).parent.mkdir(parents=True)
    pid_file(ws_root).write_text(json.dumps(dict(asdict(live_studio.info), files_root=str(ws_root))))
    st = status(ws_root)
    assert st.healthy and st.started_by_textloop and st.pid == live_studio.pid and st.token == "accepted"
    again = up(ws_root)
    assert again.already_running and again.server.url == live_studio.url and again.server.pid == live_studio.pid
    assert again.token == "accepted"
    # a copy of the workspace (its server.json names the original's files root) does not take the
    # original's server for its own: its `down` stopped it
    copy = live_studio.root / "ws_up_copy"
    pid_file(copy).parent.mkdir(parents=True)
    pid_file(copy).write_text(pid_file(ws_root).read_text())
    monkeypatch.setenv("LABEL_STUDIO_URL", live_studio.url)
    assert not status(copy).started_by_textloop and down(copy).stopped is False
    monkeypatch.delenv("LABEL_STUDIO_URL")
    assert status(ws_root).healthy
    # a key changed since the server first started: `up` said "started", then every push got 401
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token")
    assert "rejected the API token" in status(ws_root).token
    assert "rejected the API token" in up(ws_root).token
    other = live_studio.root / "ws_external"
    monkeypatch.setenv("LABEL_STUDIO_URL", live_studio.url)
    ext = up(other)
    assert ext.already_running and ext.server.mode == "external" and ext.server.port == live_studio.info.port
    assert not pid_file(other).exists() and down(other).stopped is False and status(ws_root).healthy
    # status looks at the server push and pull use: LABEL_STUDIO_URL first (it said "healthy
    # (started by textloop)" about `up`'s server while every pull failed on the URL in use)
    monkeypatch.setenv("LABEL_STUDIO_URL", live_studio.url + "/foo")
    st = status(ws_root)
    assert st.url == live_studio.url + "/foo" and not st.started_by_textloop
    assert not (st.healthy and st.token == "accepted")
    for bad in ("ftp://127.0.0.1:8080", "127.0.0.1:8080", "http://127.0.0.1:abc"):
        monkeypatch.setenv("LABEL_STUDIO_URL", bad)
        with pytest.raises(StudioError, match="LABEL_STUDIO_URL looks like http://"):
            status(ws_root)


# --- issue 14: a task says which file it is ----------------------------------------------------

RANK_FIELDS = ("rank_strategy", "rank_score", "rank_batch", "rank_reason", "duplicate_group")


@pytest.fixture(scope="module")
def named(live_studio, tmp_path_factory):
    """Four images, one harvested from two folders (two sources), a ranking table, a project."""
    import pandas as pd

    src = tmp_path_factory.mktemp("src_named")
    (src / "a").mkdir()
    (src / "b").mkdir()
    for i, name in enumerate(["slide_001.png", "slide_002.png", "scan 3.png"]):
        noise_image(8000 + i, (80, 60)).save(src / "a" / name)
    (src / "b" / "copy_of_slide_001.png").write_bytes((src / "a" / "slide_001.png").read_bytes())
    noise_image(8100, (70, 50)).save(src / "b" / "other.png")
    ws = Workspace.open(live_studio.root / "ws_named")
    harvest(ws, [str(src / "a"), str(src / "b")], HarvestConfig(workers=1))
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    init = init_project(ws, studio, title="named test")
    with ws.catalog() as cat:
        ids = sorted(r["id"] for r in cat.images())
    ranking = pd.DataFrame({"image_id": ids, "score_uncertainty": [0.9, 0.5, 0.1, 0.3],
                            "score_random": [0.2, 0.4, 0.6, 0.8],
                            "reason": ["nothing detected: may be missed text", "2 boxes with scores in 0.2-0.8",
                                       "confident prediction", "confident prediction"],
                            "duplicate_group": ["g1", "g1", "", ""], "batch_strategy": "uncertainty",
                            "batch_rank": [1.0, 2.0, None, None]})
    ranking.to_parquet(ws.reports_dir / "ranking.parquet")
    first = push_images(ws, None, client=studio, detector=FakeDetector(), strategy="ranked")
    return {"ws": ws, "studio": studio, "project_id": init.project_id, "src": src, "ids": ids, "first": first,
            "ranking": ranking}


def _data_by_image(studio, project_id):
    tasks = _tasks(studio, project_id)
    out = {}
    for t in tasks:
        assert t.data["image_id"] not in out, "two tasks for one image"
        out[t.data["image_id"]] = dict(t.data)
    return out


def test_task_data_names_the_file_its_sources_and_the_ranking_facts(named):
    ws, studio = named["ws"], named["studio"]
    assert named["first"].tasks_created == 4
    data = _data_by_image(studio, named["project_id"])
    assert len(data) == 4
    with ws.catalog() as cat:
        rows = {r["id"]: r for r in cat.images()}
    a, b = named["src"] / "a", named["src"] / "b"
    multi = [d for d in data.values() if d["n_sources"] == 2]
    assert len(multi) == 1 and sorted(multi[0]["file_sources"]) == sorted([str(a / "slide_001.png"),
                                                                     str(b / "copy_of_slide_001.png")])
    for iid, d in data.items():
        assert d["file_name"] == rows[iid]["original_name"]
        assert d["file_source"] == d["file_sources"][0] and Path(d["file_source"]).name in (d["file_name"], "copy_of_slide_001.png")
        assert d["file_name"] in {"slide_001.png", "slide_002.png", "scan 3.png", "other.png"}
        assert set(RANK_FIELDS) <= set(d)
    r = named["ranking"].set_index("image_id")
    for iid, d in data.items():
        assert d["rank_strategy"] == "uncertainty"
        assert d["rank_score"] == pytest.approx(r.loc[iid, "score_uncertainty"])
        assert d["rank_reason"] == r.loc[iid, "reason"]
        assert d["duplicate_group"] == (r.loc[iid, "duplicate_group"] or None)
        assert d["rank_batch"] == (None if pd_isna(r.loc[iid, "batch_rank"]) else int(r.loc[iid, "batch_rank"]))


def pd_isna(v) -> bool:
    return v is None or v != v


def test_data_manager_sorts_tasks_by_the_new_columns(named):
    """The fields are data-manager columns, and ordering by one works on the server."""
    studio, pid = named["studio"], named["project_id"]
    http = studio.sdk._client_wrapper.httpx_client.httpx_client
    headers = {"Authorization": f"Token {studio.settings.api_key}"}
    cols = http.get(f"{studio.url}/api/dm/columns", params={"project": pid}, headers=headers).json()
    ids = {c["id"] for c in cols["columns"]}
    for field in ("file_name", "file_source", "file_sources", "n_sources", *RANK_FIELDS):
        assert field in ids, f"{field} is not a data manager column ({sorted(ids)})"
    for key, expect in (("rank_score", [0.1, 0.3, 0.5, 0.9]), ("file_name", sorted(["slide_001.png", "slide_002.png",
                                                                                      "scan 3.png", "other.png"]))):
        query = json.dumps({"ordering": [f"tasks:data.{key}"]})
        r = http.get(f"{studio.url}/api/tasks", params={"project": pid, "query": query, "fields": "all"}, headers=headers)
        got = [t["data"][key] for t in r.json()["tasks"]]
        assert got == expect


def test_label_config_shows_the_file_name_above_the_image(named):
    p = named["studio"].sdk.projects.get(id=named["project_id"])
    assert '"$file_name"' in p.label_config
    assert p.label_config.index("$file_name") < p.label_config.index('name="image"')


def test_push_again_updates_nothing_and_duplicates_nothing(named):
    ws, studio = named["ws"], named["studio"]
    before = _data_by_image(studio, named["project_id"])
    again = push_images(ws, None, client=studio, detector=FakeDetector(), strategy="ranked")
    assert again.tasks_created == 0 and again.tasks_updated == 0 and again.predictions_added == 0
    assert _data_by_image(studio, named["project_id"]) == before


def test_tasks_pushed_before_the_change_get_the_fields_on_the_next_push(named):
    """Old tasks (data as textloop wrote it before: url, image_id, split, size) and a new ranking."""
    ws, studio, pid = named["ws"], named["studio"], named["project_id"]
    legacy = ("image", "image_id", "split", "width", "height")
    tasks = _tasks(studio, pid)
    for t in tasks[:3]:
        studio.sdk.tasks.update(id=t.id, data={k: t.data[k] for k in legacy})
    stripped = _data_by_image(studio, pid)
    assert sum("file_name" not in d for d in stripped.values()) == 3
    ranking = named["ranking"].copy()
    ranking["score_random"] = [0.8, 0.6, 0.4, 0.2]
    ranking["batch_strategy"] = "random"
    ranking.to_parquet(ws.reports_dir / "ranking.parquet")
    res = push_images(ws, None, client=studio, detector=FakeDetector())  # what `iterate` does: no --strategy
    assert res.tasks_created == 0 and res.tasks_updated == 4
    data = _data_by_image(studio, pid)
    assert len(data) == 4 and len(_tasks(studio, pid)) == 4
    r = ranking.set_index("image_id")
    for iid, d in data.items():
        assert d["file_name"] and d["file_sources"] and d["rank_strategy"] == "random"
        assert d["rank_score"] == pytest.approx(r.loc[iid, "score_random"])
        assert d["image"] == stripped[iid]["image"]
    third = push_images(ws, None, client=studio, detector=FakeDetector())
    assert third.tasks_updated == 0 and third.tasks_created == 0
