"""`redact --review` against a real Label Studio: the uncertain image is pushed as a task with
the detector's boxes, a labeller fixes it, `pull` stores the annotation, and `--from-review`
writes the output with exactly the reviewed boxes."""

from __future__ import annotations

import json

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


def test_review_round_trip_through_label_studio(live_studio, tmp_path, monkeypatch):
    from pipeline.studio.pull import pull

    det = ScoreByImage()
    ws, studio, project_id = live_review_setup(live_studio, monkeypatch, det, "ws_redact_review", "redact review")
    ws_root = ws.root

    src = tmp_path / "in"
    src.mkdir()
    a = rgb_noise(71)
    a[0, 0, 0] |= 1                                              # ScoreByImage: unsure of this one
    Image.fromarray(a).save(src / "unsure.png")
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
