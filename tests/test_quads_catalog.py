"""Quads in the catalog: the schema migration keeps old workspaces, predictions and annotations
keep rotated shapes, and the Label Studio conversion gives the quad back within half a pixel."""

from __future__ import annotations

import json
import math
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

import pipeline.catalog as catalog
from pipeline.boxes import Detections, ls_value_to_quad, oriented_rects, quad_to_ls_value
from pipeline.catalog import Catalog
from pipeline.config import HarvestConfig
from pipeline.harvest import harvest
from pipeline.predict import load_predictions, store_predictions
from pipeline.studio.convert import detections_to_results, results_to_detections
from pipeline.studio.project import LabelConfig, ProjectRef
from tests.imagegen import noise_image

W, H = 640, 480
CONFIG = LabelConfig(xml="<View/>")


def rotated_quad(cx: float, cy: float, w: float, h: float, degrees: float) -> np.ndarray:
    """Corners (top-left, top-right, bottom-right, bottom-left of the text) of a w x h rectangle
    centred at (cx, cy), its long side turned `degrees` clockwise on screen."""
    t = math.radians(degrees)
    u, v = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    c = np.array([cx, cy])
    return np.array([c - u * w / 2 - v * h / 2, c + u * w / 2 - v * h / 2, c + u * w / 2 + v * h / 2,
                     c - u * w / 2 + v * h / 2])


def same_corners(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """The same four points, in any order (the canonical order may start at another corner)."""
    d = np.linalg.norm(np.asarray(a)[:, None] - np.asarray(b)[None], axis=-1)
    return bool((d.min(axis=1) <= tol).all() and (d.min(axis=0) <= tol).all())


# --- quad -> Label Studio value -> quad -----------------------------------------------------

@pytest.mark.parametrize("degrees", [0, 30, -80, 90, 180])
def test_quad_to_ls_value_and_back_within_half_a_pixel(degrees):
    quad = rotated_quad(320, 240, 200, 40, degrees)
    value = quad_to_ls_value(oriented_rects(quad[None])[0], W, H)
    assert 0 <= value["rotation"] < 360
    assert same_corners(ls_value_to_quad(value, W, H), quad, 0.5)


@pytest.mark.parametrize("degrees", [0, 30, -80, 90, 180])
def test_push_result_and_pull_give_the_quad_back(degrees):
    """The path push and pull take: Detections with quads -> rectanglelabels -> Detections."""
    quad = rotated_quad(320, 240, 200, 40, degrees)
    results = detections_to_results(Detections.from_quads(quad[None], [0.9]), W, H, CONFIG)
    assert len(results) == 1
    rotated = degrees % 90 != 0
    assert (abs(results[0]["value"]["rotation"]) > 1e-6) == rotated
    back = results_to_detections(results, W, H, CONFIG)
    assert (back.quads is not None) == rotated     # axis-aligned shapes travel as plain boxes
    assert same_corners(back.quads_or_rects()[0], quad, 0.5)


# --- the migration --------------------------------------------------------------------------

def test_old_workspace_migrates_and_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "catalog.sqlite"
    with monkeypatch.context() as m:     # a catalog written by the release before quads
        m.setattr(catalog, "MIGRATIONS", [mig for mig in catalog.MIGRATIONS if mig[0] <= 3])
        with Catalog(path) as old:
            assert old.schema_version() == 3
            with old.transaction() as tx:
                tx.execute("INSERT INTO images(id, path, source, original_name, bytes, width, height, format, mode,"
                           " bit_depth, split, created_at) VALUES ('img1', 'images/a.png', 's', 'a.png', 1, 64, 48,"
                           " 'PNG', 'RGB', 8, 'train', 0)")
                tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at, min_score)"
                           " VALUES ('img1', 'm1', '[[1,2,3,4]]', '[0.5]', '[0]', 0, 0.3)")
                tx.execute("INSERT INTO annotations(image_id, source, boxes, labels, state, updated_at, pulled_at)"
                           " VALUES ('img1', 'labelstudio', '[[5,6,7,8]]', '[0]', 'submitted', 1, 1)")
    with Catalog(path) as cat:
        assert cat.schema_version() == catalog.SCHEMA_VERSION >= 4
        for table in ("predictions", "annotations"):
            cols = {r["name"] for r in cat.query(f"PRAGMA table_info({table})")}
            assert "quads" in cols
        pred = cat.query("SELECT * FROM predictions")[0]
        assert (pred["boxes"], pred["scores"], pred["min_score"], pred["quads"]) == ("[[1,2,3,4]]", "[0.5]", 0.3, None)
        ann = cat.query("SELECT * FROM annotations")[0]
        assert (ann["boxes"], ann["state"], ann["quads"]) == ("[[5,6,7,8]]", "submitted", None)
        old = load_predictions(cat, "m1")["img1"]     # an old row loads as plain boxes
        assert old.quads is None and old.boxes.tolist() == [[1, 2, 3, 4]]
    with sqlite3.connect(path) as raw:   # applied once, recorded once
        assert [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")] == \
            list(range(1, catalog.SCHEMA_VERSION + 1))


def test_load_quads_ignores_rows_that_do_not_match_their_boxes():
    assert catalog.load_quads(None, 1) is None
    assert catalog.load_quads("[[[0,0],[1,0],[1,1],[0,1]]]", 2) is None
    assert catalog.load_quads("[[[0,0],[1,0],[1,1],[0,1]]]", 1) == [[[0, 0], [1, 0], [1, 1], [0, 1]]]


# --- predictions and annotations through the catalog ----------------------------------------

@pytest.fixture
def ws_image(ws, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise_image(3, (W, H)).save(src / "a.png")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        return ws, cat.images()[0]["id"]


def test_predictions_keep_quads(ws_image):
    ws, image_id = ws_image
    quads = np.stack([rotated_quad(200, 200, 150, 30, 30), rotated_quad(400, 100, 80, 20, 0)])
    with ws.catalog() as cat:
        store_predictions(cat, "m1", [(image_id, Detections.from_quads(quads, [0.9, 0.4]))], min_score=0.3)
        store_predictions(cat, "m2", [(image_id, Detections(np.array([[1.0, 2.0, 30.0, 40.0]]), [0.8]))])
        got = load_predictions(cat, "m1")[image_id]
        plain = load_predictions(cat, "m2")[image_id]
        assert cat.scalar("SELECT quads FROM predictions WHERE model_version = 'm2'") is None
    np.testing.assert_allclose(got.quads, quads, atol=0.01)
    np.testing.assert_allclose(got.boxes, Detections.from_quads(quads).boxes, atol=0.01)
    assert got.filter(0.5).quads.shape == (1, 4, 2)
    assert plain.quads is None


def test_pull_stores_quads_and_review_and_training_read_them(ws_image, monkeypatch):
    """pull (fake server) -> annotations.quads -> redact --from-review's Detections and the
    training ground truth's polys; a row pulled before the column existed gets its quads."""
    import pipeline.studio.pull as pull_mod
    from pipeline.evaluate import workspace_ground_truth
    from pipeline.redact.review import reviewed_boxes

    ws, image_id = ws_image
    with ws.catalog() as cat:
        with cat.transaction() as tx:
            tx.execute("INSERT INTO tasks(image_id, ls_project_id, ls_task_id, created_at) VALUES (?, 7, 70, 0)", (image_id,))
    quad = rotated_quad(300, 200, 220, 40, 30)
    result = detections_to_results(Detections.from_quads(quad[None]), W, H, CONFIG)
    task = {"id": 70, "data": {"image_id": image_id},
            "annotations": [{"id": 700, "result": result, "updated_at": "2025-01-01T00:00:00Z", "completed_by": None}]}
    monkeypatch.setattr(pull_mod, "get_project", lambda ws, studio: ProjectRef(7, "t", CONFIG))
    monkeypatch.setattr(pull_mod, "export_tasks", lambda studio, pid: [task])
    client = SimpleNamespace(sdk=None)     # users.list fails: annotator names are optional

    assert pull_mod.pull(ws, client).new == 1
    with ws.catalog() as cat:
        stored = np.array(json.loads(cat.scalar("SELECT quads FROM annotations WHERE image_id = ?", (image_id,))))
    assert same_corners(stored[0], quad, 0.5)
    assert pull_mod.pull(ws, client).unchanged == 1

    with ws.catalog() as cat:     # as pulled by the release before quads: the next pull fills them
        with cat.transaction() as tx:
            tx.execute("UPDATE annotations SET quads = NULL")
    assert pull_mod.pull(ws, client).updated == 1

    reviewed = reviewed_boxes(ws, [image_id])[image_id]
    assert same_corners(reviewed.quads[0], quad, 0.5)
    [(_, gt)] = workspace_ground_truth(ws, None)
    assert len(gt.polys) == 1 and len(gt.polys[0]) == 8
    assert same_corners(gt.polygons()[0], quad, 0.5)


def test_review_queue_keeps_the_held_sidecars_quads(tmp_path, monkeypatch):
    """`redact --review` stores a held image's detections from its Result (boxes only); with the
    held sidecar it keeps the quads, so the pushed task shows the rotated rectangle."""
    import hashlib

    import pipeline.redact.review as rv
    from pipeline.redact.run import Result
    from pipeline.workspace import Workspace

    monkeypatch.setattr(rv, "push", lambda ws, ids, mv: {"tasks_created": len(ids)})
    src = tmp_path / "a.png"
    noise_image(4, (W, H)).save(src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    det = Detections.from_quads(rotated_quad(300, 200, 220, 40, 30)[None], [0.35])
    sidecar = tmp_path / "a.png.json"
    sidecar.write_text(json.dumps({"status": "held", "input_sha256": sha, "pages": [{"page": 0, **det.to_json()}]}))
    held = Result("a.png", str(src), str(tmp_path / "out.png"), "held", input_sha256=sha,
                  boxes=[det.to_json()["boxes"]], scores=[det.to_json()["scores"]])
    ws = Workspace.open(tmp_path / "ws")
    assert rv.queue_for_review(ws, [held], "m1", 0.3, sidecars={"a.png": str(sidecar)})["pushed"] == 1
    with ws.catalog() as cat:
        got = load_predictions(cat, "m1")[sha]
    np.testing.assert_allclose(got.quads, det.quads, atol=0.01)
    assert rv.queue_for_review(ws, [held], "m2", 0.3)["pushed"] == 1      # no sidecar: boxes only
    with ws.catalog() as cat:
        assert load_predictions(cat, "m2")[sha].quads is None
