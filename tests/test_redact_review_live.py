"""`redact --review` against a real Label Studio: the uncertain image is pushed as a task with
the detector's boxes, a labeller fixes it, `pull` stores the annotation, and `--from-review`
writes the output with exactly the reviewed boxes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.boxes import xyxy_to_ls_value
from pipeline.cli.app import app
from pipeline.redact.run import RedactConfig
from tests.fakes import BOXES
from tests.test_redact import H, W, covered_mask, rgb_noise
from tests.test_redact_review import ScoreByImage
from tests.conftest import live_review_setup

pytestmark = pytest.mark.integration


def unsure_input(tmp_path):
    """in/unsure.png, an image ScoreByImage is unsure of (odd top-left pixel); (folder, pixels)."""
    src = tmp_path / "in"
    src.mkdir()
    a = rgb_noise(71)
    a[0, 0, 0] |= 1
    Image.fromarray(a).save(src / "unsure.png")
    return src, a


def test_review_round_trip_through_label_studio(live_studio, tmp_path, monkeypatch):
    from pipeline.studio.pull import pull

    det = ScoreByImage()
    ws, studio, project_id = live_review_setup(live_studio, monkeypatch, det, "ws_redact_review", "redact review")
    ws_root = ws.root

    src, a = unsure_input(tmp_path)
    out = tmp_path / "out"

    def run(*args):
        r = CliRunner().invoke(app, ["-w", str(ws_root), "--json", "redact", str(src), str(out), *args],
                               catch_exceptions=False)
        return r.exit_code, json.loads(r.stdout)

    code, s = run("--review")
    assert code == 0 and s["held_for_review"] == 1 and s["review"]["pushed"] == 1, s.get("review")
    assert not (out / "unsure.png").exists()
    tasks = list(studio.sdk.tasks.list(project=project_id, fields="all", page_size=100))
    assert len(tasks) == 1
    task = tasks[0]
    pred = task.predictions[0] if isinstance(task.predictions[0], dict) else task.predictions[0].dict()
    assert len(pred["result"]) == 2                             # both detector boxes pre-annotated

    # the labeller keeps the sure box, deletes the uncertain one and adds a missed one
    reviewed = [BOXES[0], [30.0, 2.0, 60.0, 8.0]]
    result = []
    for i, box in enumerate(reviewed):
        value = xyxy_to_ls_value(box, W, H)
        value["rectanglelabels"] = ["text"]
        result.append({"id": f"r{i}", "type": "rectanglelabels", "from_name": pred["result"][0]["from_name"],
                       "to_name": pred["result"][0]["to_name"], "original_width": W, "original_height": H,
                       "image_rotation": 0, "value": value})
    studio.sdk.annotations.create(id=task.id, result=result, was_cancelled=False)
    pull(ws, studio)

    code, s = run("--from-review")
    assert code == 0 and s["redacted"] == 1
    b = np.asarray(Image.open(out / "unsure.png"))
    cov = covered_mask(reviewed, W, H, RedactConfig().pad)
    assert (b[cov] == 0).all() and (b[~cov] == a[~cov]).all()
    # held again: no second task, and the summary says so (it said "1 pushed"); its label is known
    code, s = run("--review", "--force")
    review = s["review"]
    assert review["pushed"] == 0 and review["already_in_label_studio"] == 1 and review["already_labelled"] == 1
    assert len(list(studio.sdk.tasks.list(project=project_id, page_size=100))) == 1


def test_audit_covered_image_reaches_label_studio_and_its_labels_come_back(live_studio, tmp_path, monkeypatch):
    """`--review --verify` against a real Label Studio and the real OCR audit: the detector finds
    one of two lines, the audit reads and covers the other, and the image (written) is pushed
    as a task with the detector's box; the labeller adds the missed line and `pull` stores it
    as training data."""
    from pipeline.studio.pull import pull
    from tests.test_transparency_and_audit import OneWordDetector, SIZE, text_mask

    ws, studio, project_id = live_review_setup(live_studio, monkeypatch, OneWordDetector(), "ws_audit_review",
                                               "audit review")
    src = tmp_path / "in"
    src.mkdir()
    a = np.where(text_mask()[..., None], 10, 250).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(a).save(src / "form.png")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["-w", str(ws.root), "--json", "redact", str(src), str(out), "--review", "--verify",
                                 "--strict"], catch_exceptions=False)
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["redacted"] == 1 and s["audit_covered"] >= 1, s
    assert s["review"]["audit_covered"] == 1 and s["review"]["pushed"] == 1, s["review"]
    tasks = list(studio.sdk.tasks.list(project=project_id, fields="all", page_size=100))
    assert len(tasks) == 1
    pred = tasks[0].predictions[0] if isinstance(tasks[0].predictions[0], dict) else tasks[0].predictions[0].dict()
    assert len(pred["result"]) == 1                             # the detector's own box
    w, h = SIZE
    missed = [15.0, 75.0, 200.0, 125.0]                          # the second line, drawn by the labeller
    result = []
    for i, box in enumerate([[10.0, 10.0, 400.0, 62.0], missed]):
        value = xyxy_to_ls_value(box, w, h)
        value["rectanglelabels"] = ["text"]
        result.append({"id": f"r{i}", "type": "rectanglelabels", "from_name": pred["result"][0]["from_name"],
                       "to_name": pred["result"][0]["to_name"], "original_width": w, "original_height": h,
                       "image_rotation": 0, "value": value})
    studio.sdk.annotations.create(id=tasks[0].id, result=result, was_cancelled=False)
    pull(ws, studio)
    with ws.catalog() as cat:
        rows = cat.latest_annotations(include_excluded=False)
    (row,) = rows.values()
    assert np.allclose(json.loads(row["boxes"])[1], missed, atol=0.5)


def test_held_redaction_stays_in_view_when_other_models_are_pushed(live_studio, tmp_path, monkeypatch):
    """Label Studio shows a task only the predictions of the project's model_version. A held
    redaction goes under the project's version (the other tasks keep their boxes), and a later
    push of another model shows the held boxes beside its own (it showed the new model's only,
    so a reviewer could accept fewer boxes than the redaction had found)."""
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.studio.push import push_images
    from tests.fakes import FakeDetector

    det = ScoreByImage()
    ws, studio, project_id = live_review_setup(live_studio, monkeypatch, det, "ws_held_versions", "held versions")
    other = tmp_path / "other"
    other.mkdir()
    plain_pixels = rgb_noise(5)
    plain_pixels[0, 0, 0] |= 1                                   # ScoreByImage is unsure of it too (later)
    Image.fromarray(plain_pixels).save(other / "plain.png")
    harvest(ws, [str(other)], HarvestConfig(workers=1))
    push_images(ws, None, client=studio, detector=FakeDetector(BOXES[:1], version="one-box-v1"))

    src, _ = unsure_input(tmp_path)
    out = tmp_path / "out"

    def review() -> dict:
        r = CliRunner().invoke(app, ["-w", str(ws.root), "--json", "redact", str(src), str(out), "--review", "--force"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    def predictions(task_id: int) -> list[dict]:
        return [p.dict() for p in studio.sdk.predictions.list(task=task_id)]

    s = review()
    assert s["held_for_review"] == 1 and s["review"]["pushed"] == 1, s["review"]
    assert studio.sdk.projects.get(id=project_id).model_version == "one-box-v1"   # the plain task keeps its boxes
    tasks = {t.data["file_name"]: t for t in studio.sdk.tasks.list(project=project_id, fields="all", page_size=100)}
    held = tasks["unsure.png"]
    assert held.data["held_by_redact"] != "one-box-v1"            # the detector that drew the boxes is named
    [p] = predictions(held.id)
    assert p["model_version"] == "one-box-v1" and len(p["result"]) == 2   # both of the redaction's boxes, in view

    push_images(ws, None, client=studio, detector=FakeDetector(BOXES[:1], version="one-box-v2"))
    assert studio.sdk.projects.get(id=project_id).model_version == "one-box-v2"
    new = [p for p in predictions(held.id) if p["model_version"] == "one-box-v2"]
    assert len(new) == 1 and len(new[0]["result"]) == 2          # the held boxes beside the new model's one
    [plain] = [p for p in predictions(tasks["plain.png"].id) if p["model_version"] == "one-box-v2"]
    assert len(plain["result"]) == 1                             # other tasks: the new model's boxes only

    before = len(predictions(held.id))
    s = review()                                                 # held again: nothing added twice
    assert s["review"]["pushed"] == 0 and len(predictions(held.id)) == before

    # an image whose unlabelled task exists (the new model's one box) is held now: its task shows
    # the redaction's two boxes instead, once, under the project's version
    shutil.copyfile(other / "plain.png", src / "plain.png")
    s = review()
    assert s["held_for_review"] == 2 and s["review"]["pushed"] == 0, s["review"]
    task = studio.sdk.tasks.get(id=tasks["plain.png"].id)
    assert task.data["held_by_redact"] == held.data["held_by_redact"]
    current = [p for p in predictions(task.id) if p["model_version"] == "one-box-v2"]
    assert len(current) == 1 and len(current[0]["result"]) == 2, current
    assert studio.sdk.projects.get(id=project_id).model_version == "one-box-v2"
