"""Label Studio pieces that need no server: settings, label config, winner choice, ordering,
the ML backend app (FastAPI in-process), the launcher's PID-file discipline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from PIL import Image

from pipeline.boxes import Detections
from pipeline.cli.app import app
from pipeline.config import HarvestConfig
from pipeline.harvest import harvest
from pipeline.studio.client import StudioError, connect, load_settings
from pipeline.studio.launcher import down, pid_file, server_env, stop_pid
from pipeline.studio.project import parse_label_config, render_label_config
from pipeline.studio.pull import choose
from pipeline.studio.convert import confidence
from pipeline.studio.push import order_images
from tests.fakes import FakeDetector
from tests.imagegen import noise_image


def test_settings_from_env_beat_dotenv_and_never_show_secrets(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("LABEL_STUDIO_URL=http://127.0.0.1:1234/\nLABEL_STUDIO_API_KEY=dotenv-secret\nLABEL_STUDIO_PASSWORD=pw-secret\n")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    s = load_settings(env_file=env)
    assert s.url == "http://127.0.0.1:1234" and s.api_key == "dotenv-secret"
    assert "dotenv-secret" not in repr(s) and "pw-secret" not in str(s)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "env-secret")
    assert load_settings(env_file=env).api_key == "env-secret"


def test_connect_without_token_or_server_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_USER_TOKEN", raising=False)
    (tmp_path / ".env").write_text("")
    with pytest.raises(StudioError, match="no Label Studio API token"):
        connect("http://127.0.0.1:9", env_file=tmp_path / ".env")
    with pytest.raises(StudioError, match="not reachable at http://127.0.0.1:9") as err:
        connect("http://127.0.0.1:9", api_key="tok-secret", env_file=tmp_path / ".env")
    assert "\n" not in str(err.value) and "tok-secret" not in str(err.value)


def test_label_config_classes_round_trip_and_bad_configs():
    cfg = render_label_config(["text", "logo", "face"])
    again = parse_label_config(cfg.xml)
    assert again.classes == ("text", "logo", "face") and (again.from_name, again.to_name, again.data_key) == ("label", "image", "image")
    assert render_label_config().classes == ("text",)
    with pytest.raises(StudioError, match="duplicate"):
        render_label_config(["a", "a"])
    with pytest.raises(StudioError, match="not valid XML"):
        parse_label_config("<View><Image")
    with pytest.raises(StudioError, match="no <RectangleLabels>"):
        parse_label_config('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>')
    with pytest.raises(StudioError, match="not in the label config"):
        cfg.index_of("plate")


def _ann(aid, updated, cancelled=False, gt=False):
    return {"id": aid, "updated_at": updated, "was_cancelled": cancelled, "ground_truth": gt, "result": []}


def test_winning_annotation_policy():
    anns = [_ann(1, "2026-01-01T00:00:00Z"), _ann(2, "2026-01-03T00:00:00Z"), _ann(3, "2026-01-05T00:00:00Z", cancelled=True)]
    assert choose(anns)["id"] == 2                  # latest submitted; a later skip does not erase a label
    assert choose(anns, "first")["id"] == 1
    assert choose(anns + [_ann(4, "2025-01-01T00:00:00Z", gt=True)])["id"] == 4  # ground truth wins
    assert choose([_ann(5, "2026-01-01T00:00:00Z", cancelled=True)])["was_cancelled"]
    assert choose([]) is None
    # A created 6, B created 7, then A edited 6: "first" is still A's (it took the least recently edited)
    a = {**_ann(6, "2026-01-09T00:00:00Z"), "created_at": "2026-01-01T00:00:00Z"}
    b = {**_ann(7, "2026-01-02T00:00:00Z"), "created_at": "2026-01-02T00:00:00Z"}
    assert choose([a, b], "first")["id"] == 6 and choose([a, b])["id"] == 6


def test_push_order_lowest_confidence_first_or_by_ranking():
    preds = {"a": Detections([[0, 0, 1, 1]], [0.9]), "b": Detections([[0, 0, 1, 1], [1, 1, 2, 2]], [0.2, 0.4]),
             "c": Detections()}
    assert confidence(preds["b"]) == pytest.approx(0.3) and confidence(preds["c"]) == 0.5
    assert order_images(["a", "b", "c"], preds, None) == ["b", "c", "a"]   # nothing found: among the uncertain
    assert order_images(["a", "b", "c"], preds, {"c": 5.0, "a": 1.0}) == ["c", "a", "b"]  # unranked last


def test_ml_backend_protocol_in_process(ws_with_image):
    from pipeline.serve import create_app

    ws, row = ws_with_image
    ran = []
    client = TestClient(create_app(ws, detector=FakeDetector([[2, 3, 20, 10]], [0.6]), trainer=lambda w: ran.append(time.time()) or {"ok": True}))
    h = client.get("/health").json()
    assert h["status"] == "UP" and h["model_version"] == "fake-1"
    assert client.post("/setup", json={"project": "1.0", "schema": render_label_config().xml}).json() == {"model_version": "fake-1"}
    tasks = [{"id": 1, "data": {"image_id": row["id"], "image": "ignored"}},
             {"id": 2, "data": {"image": f"/data/local-files/?d={row['path']}"}},
             {"id": 3, "data": {"image": "/data/local-files/?d=../../etc/passwd"}}]
    out = client.post("/predict", json={"tasks": tasks, "label_config": render_label_config().xml}).json()
    assert len(out["results"]) == 3  # one entry per task, even for the bad one
    for r in out["results"][:2]:
        assert r["model_version"] == "fake-1" and r["score"] == pytest.approx(0.6)
        v = r["result"][0]["value"]
        assert v["x"] == pytest.approx(2 / 80 * 100) and r["result"][0]["original_height"] == 60
    assert "result" not in out["results"][2] and "error" in out["results"][2]  # no result: Label Studio asks again
    r = client.post("/webhook", json={"action": "START_TRAINING"})
    assert r.status_code == 201
    for _ in range(100):
        if client.get("/status").json()["training"]["state"] == "done":
            break
        time.sleep(0.05)
    st = client.get("/status").json()["training"]
    assert st["state"] == "done" and len(ran) == 1
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 201
    assert client.get("/health").json()["annotation_events"] == 1


def test_ml_backend_reports_a_failed_retrain_and_keeps_serving(ws_with_image, monkeypatch):
    import pipeline.serve as serve

    def failing_round(ws, studio):
        raise RuntimeError("training not available: no images")

    monkeypatch.setattr(serve, "_default_trainer", lambda: failing_round)
    ws, _ = ws_with_image
    client = TestClient(serve.create_app(ws, serve.ServeConfig(pull_before_train=False), detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    client.post("/webhook", json={"action": "START_TRAINING"})
    for _ in range(100):
        st = client.get("/status").json()["training"]
        if st["state"] == "failed":
            break
        time.sleep(0.05)
    assert st["state"] == "failed" and "training not available" in st["last_error"]
    assert client.get("/health").json()["status"] == "UP"  # still serving


def test_server_env_is_private_loopback_and_local_files(tmp_path):
    env = server_env(tmp_path / "root", tmp_path / "data", "u@x.io", "pw", "tok")
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "root")
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true" and env["LABEL_STUDIO_USER_TOKEN"] == "tok"
    assert "127.0.0.0/8" not in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert "10.0.0.0/8" in env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")


def test_down_only_stops_what_up_started(tmp_path):
    nothing = down(tmp_path)  # no PID file: nothing to stop
    assert nothing.stopped is False and set(nothing.as_dict()) == {"stopped", "reason"}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        pid_file(tmp_path).parent.mkdir(parents=True)
        pid_file(tmp_path).write_text(
            f'{{"url": "http://127.0.0.1:1", "port": 1, "pid": {other.pid}, "mode": "local", "data_dir": "", '
            f'"files_root": "", "log": "", "started_at": 0}}')
        res = down(tmp_path)  # the PID is not a label-studio process: leave it alone
        assert res.stopped is False and other.poll() is None
        assert res.as_dict() == {"stopped": False, "url": "http://127.0.0.1:1", "pid": other.pid, "mode": "local",
                                 "other_answering": False}
        assert not pid_file(tmp_path).exists()
    finally:
        assert stop_pid(other.pid)
        other.wait(5)


def test_export_formats_from_catalog_annotations(ws, tmp_path):
    import json as _json

    from pipeline.catalog import dumps
    from pipeline.formats import read_jsonl
    from pipeline.studio.export import export

    src = tmp_path / "src"
    src.mkdir()
    noise_image(1, (100, 50)).save(src / "a.png")
    noise_image(2, (40, 80)).save(src / "empty.png")
    noise_image(3, (30, 30)).save(src / "skipped.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image(4, (90, 60)).save(src / "rot.jpg", exif=exif.tobytes())
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        ids = {r["original_name"]: r["id"] for r in cat.images()}
        with cat.transaction() as tx:
            for name, boxes, state in (("a.png", [[10, 5, 30, 25]], "submitted"), ("empty.png", [], "empty"),
                                       ("skipped.png", [], "skipped"), ("rot.jpg", [[1, 2, 11, 12]], "submitted")):
                tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, state, updated_at, pulled_at) "
                           "VALUES (?, 'labelstudio', 1, ?, ?, ?, 1, 1)", (ids[name], dumps(boxes), dumps([0] * len(boxes)), state))
    res = export(ws, tmp_path / "j", "jsonl")
    recs = {r.image: r for r in read_jsonl(tmp_path / "j" / "boxes.jsonl")}
    assert res.images == 3 and res.empty_images == 1  # the skipped image is not a label
    assert res.as_dict() == {"format": "jsonl", "out": res.out, "images": 3, "boxes": 2, "empty_images": 1,
                             "ignored_boxes": 0, "removed": 0, "label_files_removed": 0, "problems": ()}
    rot = next(r for r in recs.values() if ids["rot.jpg"] in r.image)
    with Image.open(tmp_path / "j" / rot.image) as im:
        assert im.size == (60, 90) == (rot.width, rot.height)  # written upright: boxes stay valid
    mask = os.umask(0o022); os.umask(mask)
    assert (tmp_path / "j" / rot.image).stat().st_mode & 0o777 == 0o666 & ~mask  # readable by whoever gets the export
    assert not [p for p in (tmp_path / "j" / "images").iterdir() if p.name.startswith(".")]  # no temp left
    res = export(ws, tmp_path / "c", "coco")
    coco = _json.loads((tmp_path / "c" / "annotations.json").read_text())
    a = next(x for x in coco["annotations"] if coco["images"][x["image_id"] - 1]["file_name"].startswith(f"images/{ids['a.png']}"))
    assert a["bbox"] == [10, 5, 20, 20] and a["category_id"] == 1 and len(coco["images"]) == 3
    export(ws, tmp_path / "y", "yolo", classes=("text",))
    line = (tmp_path / "y" / "labels" / f"{ids['a.png']}.txt").read_text().split()
    assert line == ["0", "0.200000", "0.300000", "0.200000", "0.400000"]
    assert (tmp_path / "y" / "labels" / f"{ids['empty.png']}.txt").read_text() == ""
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"] == {0: "text"}
    # a re-export of one split into the same folder: the other images' files go (a YOLO trainer
    # reads all of images/), and a folder holding anything else is refused before any write
    with ws.catalog() as cat:
        cat.set_split(ids["a.png"], "test")
        cat.set_split(ids["rot.jpg"], "train")
    again = export(ws, tmp_path / "y", "yolo", split="test")
    assert again.images == 1 and again.removed == 4   # 2 images + 2 label files of empty.png and rot.jpg
    assert sorted(p.stem for p in (tmp_path / "y" / "images").iterdir()) == [ids["a.png"]]
    assert sorted(p.stem for p in (tmp_path / "y" / "labels").iterdir()) == [ids["a.png"]]
    # a killed export's temp file and a file manager's .DS_Store are no reason to refuse the folder
    (tmp_path / "y" / "images" / f".{ids['a.png']}.png.abcd1234.tmp").write_bytes(b"partial")
    (tmp_path / "y" / "images" / ".DS_Store").write_bytes(b"x")
    assert export(ws, tmp_path / "y", "yolo", split="test").removed == 0
    assert sorted(p.name for p in (tmp_path / "y" / "images").iterdir() if p.name.startswith(".")) == [".DS_Store"]
    (tmp_path / "mine" / "images").mkdir(parents=True)
    (tmp_path / "mine" / "images" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="images/holiday.jpg( .*)? was not written by textloop export"):
        export(ws, tmp_path / "mine", "yolo")
    assert not (tmp_path / "mine" / "labels").exists()


def test_stage_results_keep_the_json_keys():
    """The typed results' `as_dict()` is the `--json` payload the commands printed as dicts."""
    from pipeline.studio.launcher import ServerInfo, StatusResult, UpResult
    from pipeline.studio.project import ProjectSummary
    from pipeline.studio.pull import PullSummary
    from pipeline.studio.push import PushSummary

    pulled = PullSummary(new=1, updated=2, removed=0, unchanged=3, labelled=2, empty=1, skipped=0, tasks=4,
                         unknown_tasks=0, project_id=7)
    assert list(pulled.as_dict()) == ["new", "updated", "removed", "unchanged", "labelled", "empty", "skipped",
                                      "tasks", "unknown_tasks", "project_id", "excluded", "several_annotators",
                                      "several_annotator_tasks", "problems"]
    # integers (problems counted, task ids left out): the pull iteration's counts
    assert pulled.counts() == {**{k: v for k, v in pulled.as_dict().items() if k != "several_annotator_tasks"}, "problems": 0}
    pushed = PushSummary(project_id=7, model_version="v1", tasks_created=2, predictions_added=0, tasks_updated=0,
                         already_pushed=1, failed=0, order="o", url="u")
    assert list(pushed.as_dict()) == ["project_id", "model_version", "tasks_created", "predictions_added",
                                      "tasks_updated", "already_pushed", "failed", "order", "url", "sent_for_review",
                                      "tasks_withdrawn", "reopened_for_review", "failures"]
    assert pushed.counts() == {"project_id": 7, "tasks_created": 2, "predictions_added": 0, "tasks_updated": 0,
                               "already_pushed": 1, "failed": 0, "sent_for_review": 0, "tasks_withdrawn": 0,
                               "reopened_for_review": 0}
    project = ProjectSummary(project_id=7, title="t", created=True, classes=["text"], storage_id=3, ml_backend_id=None,
                             url="u")
    assert list(project.as_dict()) == ["project_id", "title", "created", "classes", "storage_id", "ml_backend_id", "url",
                                       "changed"]
    info = ServerInfo(url="http://x", port=1, pid=2, mode="local", data_dir="d", files_root="f", log="l", started_at=0.0)
    assert UpResult(info, already_running=True).as_dict() == {
        "url": "http://x", "port": 1, "pid": 2, "mode": "local", "data_dir": "d", "files_root": "f", "log": "l",
        "started_at": 0.0, "already_running": True, "token": None}
    assert list(StatusResult("u", True, False, None, None, None).as_dict()) == [
        "url", "healthy", "started_by_textloop", "pid", "mode", "log", "token", "problem"]


@pytest.mark.parametrize("args, message", [
    (["--format", "jsonl", "--split", "bogus"], "--split must be one of train, val, test; got 'bogus'"),
    (["--format", "csv"], "--format must be one of jsonl, coco, yolo; got 'csv'"),
])
def test_export_refuses_an_unknown_split_or_format_before_creating_out(tmp_path, args, message):
    """`export --split bogus OUT` used to export 0 images, exit 0, and leave an empty OUT: one
    line naming the allowed values, exit 2, and no OUT (nor workspace) folder."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "export", *args, str(out)])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert not out.exists() and not (tmp_path / "ws").exists()


def test_export_library_call_refuses_an_unknown_split(ws, tmp_path):
    from pipeline.studio.export import export

    with pytest.raises(ValueError, match="train, val, test"):
        export(ws, tmp_path / "out", "jsonl", split="tset")
    assert not (tmp_path / "out").exists()


def test_library_stages_talk_to_the_server_studio_up_started(ws, monkeypatch):
    """`studio up --port 8765` records its URL in the workspace; push/pull/iterate/`redact
    --review` called without a client used the default (127.0.0.1:8080) and failed, while the
    CLI's push/pull found the server. Every stage's default client is the workspace's server."""
    import dataclasses
    import json as _json

    import pipeline.studio.launcher as launcher
    from pipeline.studio.pull import pull
    from pipeline.studio.push import push_images
    from pipeline.studio.review import request_review

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    info = launcher.ServerInfo(url="http://127.0.0.1:8765", port=8765, pid=None, mode="local", data_dir="d",
                               files_root=str(ws.root), log="l", started_at=0.0)
    launcher.pid_file(ws.root).parent.mkdir(parents=True, exist_ok=True)
    launcher.pid_file(ws.root).write_text(_json.dumps(dataclasses.asdict(info)))
    seen = []

    def fake_connect(url=None, **kw):
        seen.append(url)
        raise StudioError("stop here")

    monkeypatch.setattr(launcher, "connect", fake_connect)
    for call in (lambda: pull(ws), lambda: push_images(ws, None), lambda: request_review(ws, ["x"])):
        with pytest.raises(StudioError):
            call()
    assert seen == ["http://127.0.0.1:8765"] * 3


def test_push_and_pull_refuse_bad_options_before_connecting(tmp_path):
    for args, msg in ((["push", "--split", "foo"], "--split must be one of train, val, test"),
                      (["pull", "--policy", "foo"], "--policy must be latest or first"),
                      (["studio", "init", "--ml-backend", "ftp://x"], "--ml-backend 'ftp://x' is not an http(s) URL")):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), *args])
        assert r.exit_code == 2 and msg in r.stderr, (args, r.output)


def test_ml_backend_fetches_only_from_label_studio_and_refuses_bad_requests(ws_with_image, monkeypatch):
    """A task may name any image URL; fetching it sent the Label Studio token to that host.
    Only URLs on the Label Studio the backend serves are fetched (with the token); others are
    that task's error. Malformed requests are 400 with the reason, not 500."""
    import httpx

    from pipeline.serve import create_app

    ws, _ = ws_with_image
    fetched = []

    def fake_download(url, headers, timeout_s, max_bytes):
        fetched.append((url, dict(headers or {})))
        raise httpx.ConnectError("no network in tests")

    import pipeline.serve as serve

    monkeypatch.setattr(serve, "_download", fake_download)
    client = TestClient(create_app(ws, detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    client.post("/setup", json={"hostname": "http://127.0.0.1:8765", "access_token": "tok-SECRET"})
    tasks = [{"id": 1, "data": {"image": "http://localhost:9392/x.png"}},
             {"id": 2, "data": {"image": "https://evil.example/x.png"}},
             {"id": 3, "data": {"image": "/data/upload/1/x.png"}}]
    out = client.post("/predict", json={"tasks": tasks}).json()["results"]
    assert "not on Label Studio" in out[0]["error"] and "not on Label Studio" in out[1]["error"]
    assert fetched == [("http://127.0.0.1:8765/data/upload/1/x.png", {"Authorization": "Token tok-SECRET"})]
    for body in ({"tasks": "abc"}, {"tasks": [1, 2]}):
        assert client.post("/predict", json=body).status_code == 400
    r = client.post("/predict", json={"tasks": [], "label_config": "<View><Image name='i' value='$image'/></View>"})
    assert r.status_code == 400 and "RectangleLabels" in r.json()["detail"]


def test_serve_with_a_model_that_does_not_load_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "serve", "--model", "nosuch"])
    assert r.exit_code == 2 and "--model nosuch" in r.stderr and "Traceback" not in r.output


def test_a_push_killed_after_its_import_is_recorded_by_the_rerun(ws_with_image):
    """A push killed between Label Studio's import and the catalog write left a task the
    catalog did not know: the rerun recorded the task only, so it added the same prediction
    again and the image stayed `new`. The task's data says which prediction it was created
    with; reconciling records that prediction and marks the image pushed."""
    from types import SimpleNamespace

    from pipeline.catalog import ImageStatus
    from pipeline.studio.push import reconcile_tasks

    ws, row = ws_with_image
    task = SimpleNamespace(id=7, data={"image_id": row["id"], "pushed_with": "ppocr-v4-det", "pushed_boxes": 3})
    studio = SimpleNamespace(call=lambda fn, *a, **k: fn(*a, **k),
                             sdk=SimpleNamespace(tasks=SimpleNamespace(list=lambda **kw: [task])))
    with ws.catalog() as cat:
        assert cat.tasks(1) == {} and cat.image(row["id"])["status"] == ImageStatus.NEW
        assert reconcile_tasks(studio, 1, cat) == {row["id"]: 7}
        assert cat.tasks(1) == {row["id"]: 7}
        assert 7 in cat.tasks_with_prediction(1, "ppocr-v4-det")
        assert cat.image(row["id"])["status"] == ImageStatus.PUSHED


def test_up_uses_a_server_already_answering_at_label_studio_url(tmp_path, monkeypatch):
    """`studio up` with a healthy server at LABEL_STUDIO_URL failed "port in use" (and without
    --port it would have started a second one on 8080): it is used as it is, and `down` leaves it."""
    from pipeline.studio.launcher import loopback_port, up

    def answer(path):   # healthy, and every API call refused: a wrong token
        return (200, b'{"status": "UP"}') if path == "/health" else (401, b'{"detail": "Invalid token."}')

    srv = _serve(answer)
    try:
        port = srv.server_address[1]
        monkeypatch.setenv("LABEL_STUDIO_URL", f"http://localhost:{port}")
        res = up(tmp_path)
        assert res.already_running and res.server.mode == "external" and res.server.port == port
        assert not pid_file(tmp_path).exists()                     # not ours: `down` will not stop it
        assert down(tmp_path).stopped is False
        assert loopback_port("http://10.0.0.5:8080") is None and loopback_port("http://127.0.0.1") == 80
        # `studio status` said "healthy" (exit 0) with a token every push and pull then failed on
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
        ws = str(tmp_path / "ws")
        assert CliRunner().invoke(app, ["-w", ws, "init"]).exit_code == 0
        r = CliRunner().invoke(app, ["-w", ws, "studio", "status"])
        assert r.exit_code == 1 and "healthy; token:" in r.output and "rejected the API token (HTTP 401)" in r.output
    finally:
        srv.shutdown()


def test_status_says_what_answered_when_label_studio_did_not(tmp_path, monkeypatch):
    """Another web server on the port was "not reachable", as if nothing were there (and `up`
    then failed on the port it holds): status names it, and says when nothing answers."""
    srv = _serve(lambda path: (404, b"<html>Not Found</html>"))
    try:
        ws = str(tmp_path / "ws")
        assert CliRunner().invoke(app, ["-w", ws, "init"]).exit_code == 0
        monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{srv.server_address[1]}")
        r = CliRunner().invoke(app, ["-w", ws, "studio", "status"])
        assert r.exit_code == 1 and "a server answers, but it is not Label Studio (GET /health: HTTP 404)" in r.output
    finally:
        srv.shutdown()
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")    # discard port: nothing listens
    r = CliRunner().invoke(app, ["-w", ws, "--json", "studio", "status"])
    assert r.exit_code == 1 and json.loads(r.stdout)["problem"] == "not reachable (server down?)"


def test_studio_errors_name_the_timeout_and_never_paste_a_web_page():
    """A hung server said "did not answer in time" after 2 minutes of silence, naming no limit; a
    LABEL_STUDIO_URL with a path pasted the server's HTML page into the error."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from pipeline.studio.client import explain

    slow = str(explain(httpx.ReadTimeout("timed out"), "http://127.0.0.1:8391"))
    assert "did not answer in time (120 s per request, 600 s for a task import)" in slow
    page = "<!doctype html> <html lang='en'> <head> <meta charset='utf-8'> " + "x" * 500
    wrong = str(explain(ApiError(status_code=404, body=page), "http://127.0.0.1:8391/foo"))
    assert "HTTP 404" in wrong and "<" not in wrong and "LABEL_STUDIO_URL the server's root" in wrong


def test_a_slow_server_is_said_while_it_is_awaited(monkeypatch, caplog):
    """Waiting on a hung Label Studio was minutes of silence: a request still unanswered after
    SLOW_CALL seconds logs one line naming the server and the limit; a quick one logs nothing."""
    import logging
    import time

    from pipeline.studio import client as cl

    def answer(path):
        time.sleep(0.6 if "slow" in path else 0.0)
        return 200, b'{"id": 1, "email": "a@b.c"}'

    srv = _serve(answer)
    monkeypatch.setattr(cl, "SLOW_CALL", 0.3)
    try:
        studio = cl.connect(f"http://127.0.0.1:{srv.server_port}", "tok", check=False, timeout=5)
        http_get = studio.sdk._client_wrapper.httpx_client.httpx_client.get
        with caplog.at_level(logging.WARNING, logger="textloop.studio"):
            studio.call(http_get, f"{studio.url}/api/quick")
            assert not caplog.records
            studio.call(http_get, f"{studio.url}/api/slow")
        assert [r.getMessage() for r in caplog.records] == [
            f"still waiting for Label Studio at {studio.url} (gives up after 5 s)"]
    finally:
        srv.shutdown()


def _serve(answer):
    """A local HTTP server answering every GET with `answer(path) -> (status, JSON bytes)`."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code, body = answer(self.path)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_second_push_in_the_same_workspace_waits_its_turn(ws):
    """Two pushes at once both created the same tasks (Label Studio then held 20 tasks for 18
    images, and one of two labels on a duplicated image was never pulled)."""
    from pipeline.studio.push import push_images
    from pipeline.workspace import WorkspaceBusy

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from pipeline.workspace import Workspace\n"
        f"with Workspace(Path({str(ws.root)!r})).lock('push'):\n"
        "    print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusy, match="another push is running in this workspace"):
            push_images(ws, None, client=object())   # refused before it talks to any server
        with ws.lock("harvest"):   # other jobs are not blocked
            pass
    finally:
        holder.kill()
        holder.wait()
    with ws.lock("push"), pytest.raises(WorkspaceBusy):   # threads of one process too
        with ws.lock("push"):
            pass


def test_push_refuses_a_min_score_that_is_not_a_number_in_0_1(ws):
    from pipeline.studio.push import push_images

    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="min_score must be a number from 0 to 1"):
            push_images(ws, None, client=object(), min_score=bad)


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:9090", "ftp://h/x", "http://h:abc"])
def test_an_ml_backend_that_is_not_a_url_is_named_before_anything_changes(ws, url):
    from types import SimpleNamespace

    from pipeline.studio.project import init_project

    with pytest.raises(StudioError, match=r"--ml-backend .* (is not an http\(s\) URL|is not a valid URL)"):
        init_project(ws, SimpleNamespace(url="http://127.0.0.1:1"), ml_backend=url)


def test_label_studio_errors_are_one_readable_line():
    """A non-Label-Studio server's bare 404 read "answered HTTP 404: " with nothing after it, and
    an ML backend's refusal pasted its HTML cut mid-word."""
    from label_studio_sdk.core.api_error import ApiError

    from pipeline.studio.client import explain

    assert explain(ApiError(status_code=404, body=None), "http://h").args[0].endswith(
        "answered HTTP 404: no explanation (is LABEL_STUDIO_URL a Label Studio server?)")
    long = {"detail": "Can't connect to ML backend <a href='http://127.0.0.1:9999'>http://127.0.0.1:9999</a>, "
                      + "please check it " * 40}
    msg = explain(ApiError(status_code=400, body=long), "http://h").args[0]
    assert "<a" not in msg and "Can't connect to ML backend http://127.0.0.1:9999, please" in msg and msg.endswith(" ...")


def test_a_second_studio_up_in_the_same_workspace_is_refused_while_the_first_runs(tmp_path):
    """Two `studio up` at once on a fresh workspace started two servers on one data folder, and
    one died migrating ("table auth_permission already exists")."""
    from pipeline.studio.launcher import up
    from pipeline.workspace import Workspace, WorkspaceBusy

    ws = Workspace.open(tmp_path / "ws")
    with ws.lock("studio-up"), pytest.raises(WorkspaceBusy, match="another studio-up is running"):
        up(ws.root, port=1, mode="local", timeout=1)


def test_down_names_another_label_studio_at_a_stale_pid_files_url(tmp_path, monkeypatch):
    """A stale PID file (its server gone) whose URL another Label Studio now serves: `down` said
    "was not running" about a server that answered there. It leaves that one running, saying so."""
    import json as _json

    import pipeline.studio.launcher as launcher
    from pipeline.cli.app import app
    from pipeline.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    launcher.pid_file(ws.root).parent.mkdir(parents=True, exist_ok=True)
    launcher.pid_file(ws.root).write_text(_json.dumps({
        "url": "http://127.0.0.1:8391", "port": 8391, "pid": gone.pid, "mode": "local", "data_dir": "",
        "files_root": str(ws.root), "log": "", "started_at": 0}))
    monkeypatch.setattr(launcher, "is_healthy", lambda url, timeout=3.0: True)
    r = CliRunner().invoke(app, ["-w", str(ws.root), "studio", "down"])
    assert r.exit_code == 0 and "is left running" in " ".join(r.output.split()), r.output
    assert not launcher.pid_file(ws.root).exists()


def test_label_studio_gets_a_picture_a_browser_can_draw(tmp_path) -> None:
    """No browser but Safari draws TIFF, and a 16-bit PNG is drawn by its high byte (12-bit data:
    a black page): such images are shown as a PNG of what textloop sees (stretched, upright),
    made once; an 8-bit PNG or JPEG is served as stored."""
    import numpy as np
    import tifffile

    from pipeline.studio.push import browser_image, needs_view
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    page = np.full((30, 40), 900, np.uint16)
    page[10:20, 5:35] = 4000                                 # a 12-bit label
    tifffile.imwrite(src / "a.tif", page)
    Image.fromarray(page).save(src / "b.png")               # 16-bit PNG
    noise_image(3, (40, 30)).save(src / "c.png")
    noise_image(4, (40, 30)).save(src / "d.jpg")
    # stored sideways with the orientation where a browser reads it (a JPEG's EXIF), or not (WebP)
    sideways, exif = noise_image(5, (30, 40)), Image.Exif()
    exif[0x0112] = 6
    sideways.save(src / "e.jpg", exif=exif.tobytes())
    sideways.save(src / "f.webp", exif=exif.tobytes(), lossless=True)
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(src / "g.png")    # transparent (dark themes hid black text)
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        rows = {r["original_name"]: r for r in cat.images()}
    for name in ("c.png", "d.jpg", "e.jpg"):
        assert not needs_view(ws, rows[name]) and browser_image(ws, rows[name]) == rows[name]["path"], name
    for name in ("a.tif", "b.png", "f.webp", "g.png"):
        row = rows[name]
        rel = browser_image(ws, row)
        assert needs_view(ws, row) and rel == f"images/view/{row['id'][:2]}/{row['id']}.png"
        with Image.open(ws.abspath(rel)) as shown:
            assert shown.size == (40, 30) and not shown.getexif().get(0x0112), name   # upright, as its boxes
    for name in ("a.tif", "b.png"):
        row = rows[name]
        rel = browser_image(ws, row)
        with Image.open(ws.abspath(rel)) as shown:
            assert shown.format == "PNG" and shown.mode == "RGB" and shown.size == (40, 30)
            grey = np.asarray(shown)[..., 0]
        assert grey[15, 20] >= 250 and grey[2, 2] <= 5      # the label white on black, as Fiji shows it
        before = ws.abspath(rel).stat().st_mtime_ns
        assert browser_image(ws, row) == rel and ws.abspath(rel).stat().st_mtime_ns == before   # made once
    # a stored copy damaged since harvest: the error push catches (the image gets no task, named)
    from pipeline.imaging import ImageRejected

    ws.abspath(rows["a.tif"]["path"]).write_bytes(b"II*\x00 cut")
    with pytest.raises(ImageRejected):
        browser_image(ws, {**rows["a.tif"], "id": "f" * 64})


def test_classes_keep_their_positions() -> None:
    """`studio init --classes logo,text` on a `text,logo` project was accepted: every detector box
    (class 0) went to labellers as `logo`, and pull renumbered the stored labels. Appending a
    class is fine; moving one (or removing one before others) is refused with the list to give."""
    from pipeline.studio.project import _check_class_positions

    _check_class_positions(1, ["text"], ["text", "logo"])
    _check_class_positions(1, ["text", "logo"], ["text"])            # the last one dropped: nothing moves
    for new, suggested in ((["logo", "text"], "text,logo"), (["text", "stamp"], "text,logo,stamp"),
                           (["logo", "text", "id"], "text,logo,id")):
        with pytest.raises(StudioError, match=f"detector boxes are class 0, 'text'.*--classes {suggested}$"):
            _check_class_positions(1, ["text", "logo", "stamp"] if "stamp" in new else ["text", "logo"], new)


def test_a_task_labelled_by_several_people_is_counted() -> None:
    """Two annotators on one task: pull kept the latest and said nothing of the other. It still
    keeps one (the policy's), and counts such tasks so the summary says so."""
    from pipeline.studio.pull import PullSummary, several_people

    alice, bob = {**_ann(1, "2026-01-01T00:00:00Z"), "completed_by": 1}, {**_ann(2, "2026-01-02T00:00:00Z"), "completed_by": 2}
    alice_again = {**_ann(3, "2026-01-03T00:00:00Z"), "completed_by": 1}
    assert several_people([alice, bob]) and not several_people([alice, alice_again])
    assert not several_people([alice, {**bob, "was_cancelled": True}])        # a skip is no second label
    assert PullSummary(0, 0, 0, 0, 0, 0, 0, 1, 0, 1, several_annotators=1).counts()["several_annotators"] == 1
