"""`--review` holds uncertain images back (harvested, predictions stored, pushed) and
`--from-review` finishes them with the reviewed boxes from the catalog's annotations."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.redact.run import RedactConfig
from pipeline.workspace import Workspace
from tests.fakes import BOXES, FakeDetector
from tests.test_redact import H, W, covered_mask, rgb_noise


class ScoreByImage(FakeDetector):
    """Sure of images whose top-left pixel is even, unsure (0.35) of one box elsewhere."""

    def detect(self, images):
        out = super().detect(images)
        for im, d in zip(images, out):
            if im[0, 0, 0] % 2:
                d.scores[1] = 0.35
        return out


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import pipeline.detectors as dets
    import pipeline.redact.review as rv

    det = ScoreByImage()
    import pipeline.redact.run as rr

    monkeypatch.setattr(dets, "load_detector", lambda spec="current", workspace=None, **kw: det)
    monkeypatch.setattr(rr, "build_ppocr", lambda **kw: det)
    pushed: list[tuple[list[str], str]] = []
    monkeypatch.setattr(rv, "push", lambda ws, ids, mv: pushed.append((list(ids), mv)) or {"tasks_created": len(ids)})
    src = tmp_path / "in"
    src.mkdir()
    arrays = {}
    for i, name in enumerate(["sure.png", "unsure.png"]):
        a = rgb_noise(70 + i)
        a[0, 0, 0] = 2 * (a[0, 0, 0] // 2) + (1 if name == "unsure.png" else 0)
        Image.fromarray(a).save(src / name)
        arrays[name] = a
    return tmp_path, src, arrays, pushed


def _cli(tmp_path, *args):
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", *args], catch_exceptions=False)
    return r.exit_code, json.loads(r.stdout)


def test_review_holds_uncertain_images_and_from_review_finishes_them(setup):
    tmp_path, src, arrays, pushed = setup
    out = tmp_path / "out"
    code, s = _cli(tmp_path, str(src), str(out), "--review")
    assert code == 0 and s["redacted"] == 1 and s["held_for_review"] == 1
    assert (out / "sure.png").exists() and not (out / "unsure.png").exists()       # held back
    sc = json.loads((tmp_path / "out.audit" / "sidecars" / "unsure.png.json").read_text())
    assert sc["status"] == "held" and sc["pages"][0]["scores"] == [0.9, 0.35]
    sha = hashlib.sha256((src / "unsure.png").read_bytes()).hexdigest()
    assert pushed == [([sha], "fake-1")]
    ws = Workspace.open(tmp_path / "ws")
    with ws.catalog() as cat:
        assert cat.image(sha) is not None                                          # harvested into the workspace
        pred = cat.query("SELECT boxes, scores, min_score FROM predictions WHERE image_id = ? AND model_version = 'fake-1'",
                         (sha,))
        assert json.loads(pred[0]["scores"]) == [0.9, 0.35]
        # stored with the floor the boxes were cut at, so `predict` at a lower threshold recomputes
        assert pred[0]["min_score"] == pytest.approx(RedactConfig(review=True).detection_floor)

    # not reviewed yet: still held, nothing written; the image redacted before is listed as skipped
    code, s = _cli(tmp_path, str(src), str(out), "--from-review")
    assert code == 0 and s["waiting_review"] == 1 and not (out / "unsure.png").exists()
    assert s["skipped"] == 1 and s["images"] == 2   # it vanished from the summary
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(out), "--from-review"])
    assert "1 image(s) wait for review" in " ".join(r.output.split()) and "rerun that `--review` command" in " ".join(r.output.split())   # what to do

    # the reviewer pressed Skip (as `pull` records it): still waiting, and the summary says so
    with ws.catalog() as cat:
        cat.set_status(sha, "skipped")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(out), "--from-review"])
    assert "1 of them the reviewer skipped" in " ".join(r.output.split()) and "unsure.png" in r.output, r.output
    with ws.catalog() as cat:
        cat.set_status(sha, "pushed")

    # a reviewer kept the first box, deleted the uncertain one and added another (as `pull` stores it)
    reviewed = [BOXES[0], [30.0, 2.0, 60.0, 8.0]]
    now = time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO annotations(image_id, source, ls_project_id, ls_task_id, ls_annotation_id, boxes, labels,"
                   " state, updated_at, pulled_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (sha, "labelstudio", 1, 1, 1, json.dumps(reviewed), json.dumps([0, 0]), "submitted", now, now))
    code, s = _cli(tmp_path, str(src), str(out), "--from-review")
    assert code == 0 and s["redacted"] == 1
    b = np.asarray(Image.open(out / "unsure.png"))
    a = arrays["unsure.png"]
    cov = covered_mask(reviewed, W, H, RedactConfig().pad)
    assert (b[cov] == 0).all() and (b[~cov] == a[~cov]).all()                     # exactly the reviewed boxes
    sc = json.loads((tmp_path / "out.audit" / "sidecars" / "unsure.png.json").read_text())
    assert sc["status"] == "redacted" and sc["boxes_from"] == "review"
    # a normal rerun now skips both, and so does --from-review (nothing is held any more)
    code, s = _cli(tmp_path, str(src), str(out))
    assert s["skipped"] == 2
    code, s = _cli(tmp_path, str(src), str(out), "--from-review")
    assert s["skipped"] == 2 and s["redacted"] == 0
    # held again (--force): held means not written, so the earlier output goes with the hold
    code, s = _cli(tmp_path, str(src), str(out), "--review", "--force")
    assert s["held_for_review"] == 1 and not (out / "unsure.png").exists()


def test_review_push_failure_keeps_the_hold(setup, monkeypatch):
    tmp_path, src, _, _ = setup
    import pipeline.redact.review as rv

    def down(*a, **k):
        raise ConnectionError("Label Studio is not running")

    monkeypatch.setattr(rv, "push", down)
    code, s = _cli(tmp_path, str(src), str(tmp_path / "out"), "--review")
    assert code == 0 and s["held_for_review"] == 1 and "not running" in s["review"]["push_error"]
    assert not (tmp_path / "out" / "unsure.png").exists()
    # the same command again, with the server up, pushes the held image as held (`textloop push`
    # would make it an ordinary task: no `held_by_redact`, the current model's boxes)
    pushed: list[list[str]] = []
    monkeypatch.setattr(rv, "push", lambda ws, ids, mv: pushed.append(list(ids)) or {"tasks_created": len(ids)})
    code, s = _cli(tmp_path, str(src), str(tmp_path / "out"), "--review")
    assert code == 0 and s["held_for_review"] == 1 and len(pushed) == 1 and len(pushed[0]) == 1, (s, pushed)
    assert s["review"]["pushed"] == 1 and "push_error" not in s["review"]


def test_review_with_verify_queues_what_the_audit_had_to_cover(setup, monkeypatch):
    """`--review --verify`: an image written after the audit covered a line the detector missed
    goes to Label Studio too, with the detector's own boxes as its predictions (the reviewer adds
    what it missed; the next training learns it)."""
    import pipeline.legibility as leg
    from pipeline.legibility import Reading
    from tests.test_redact import FakeReader

    tmp_path, src, arrays, pushed = setup
    line = (0.0, 30.0, 20.0, 40.0)
    monkeypatch.setattr(leg, "Reader", lambda *a, **k: FakeReader([Reading("Smith", 0.9, line)]))   # the real filter
    code, s = _cli(tmp_path, str(src), str(tmp_path / "out"), "--review", "--verify")
    assert code == 0 and s["redacted"] == 1 and s["held_for_review"] == 1 and s["audit_covered"] == 1, s["errors"]
    assert s["review"]["held"] == 1 and s["review"]["audit_covered"] == 1 and s["review"]["pushed"] == 2
    sure = hashlib.sha256((src / "sure.png").read_bytes()).hexdigest()
    unsure = hashlib.sha256((src / "unsure.png").read_bytes()).hexdigest()
    assert pushed == [(sorted([sure, unsure]), "fake-1")]
    with Workspace.open(tmp_path / "ws").catalog() as cat:
        rows = {r["image_id"]: json.loads(r["boxes"]) for r in cat.query("SELECT image_id, boxes FROM predictions")}
    assert rows[sure] == BOXES                                     # the detector's predictions stay its own
    assert (np.asarray(Image.open(tmp_path / "out" / "sure.png"))[30:40, 0:20] == 0).all()   # the line is covered
