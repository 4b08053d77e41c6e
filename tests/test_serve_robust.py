"""`textloop serve` when things go wrong: images that cannot be fetched or decoded (no `result`
key, so Label Studio asks again), one-line per-task errors naming the image, a byte cap on
downloads and the product's pixel limit, and a stop (Ctrl-C, SIGTERM) during a retrain that
leaves no `running` row in the catalog."""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pipeline.config import DEFAULT_MAX_PIXELS, HarvestConfig
from pipeline.serve import ServeConfig, create_app
from pipeline.studio.launcher import free_port
from pipeline.studio.project import render_label_config
from tests.fakes import FakeDetector
from tests.imagegen import noise_image

REPO = Path(__file__).resolve().parents[1]
BIG = 20 * 1024 * 1024   # what /big.png streams (no Content-Length)


def png_bytes(size: tuple[int, int] = (80, 60)) -> bytes:
    buf = io.BytesIO()
    noise_image(3, size).save(buf, "PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels (header only: nothing that large is ever allocated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


class LabelStudioFiles(http.server.BaseHTTPRequestHandler):
    """Stands in for Label Studio's /data/upload: good, missing, non-image, huge and bomb files."""

    sent_big = 0
    big_done = threading.Event()
    tokens: list = []

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        type(self).tokens.append((path, self.headers.get("Authorization")))
        if path == "/data/upload/big.png":   # streamed without Content-Length: only a running count stops it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                block = b"\0" * 65536
                for _ in range(BIG // len(block)):
                    self.wfile.write(block)
                    type(self).sent_big += len(block)
            except OSError:
                pass
            finally:
                type(self).big_done.set()
            return
        bodies = {"/data/upload/ok.png": png_bytes(), "/data/upload/text.png": b"<html>not an image</html>",
                  "/data/upload/bomb.png": png_header(20000, 10000)}
        if path == "/data/upload/huge.png":   # announces 400 MB: refused before a byte is read
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(400 * 1024 * 1024))
            self.end_headers()
            return
        if path not in bodies:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(bodies[path])))
        self.end_headers()
        self.wfile.write(bodies[path])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def ls_files():
    LabelStudioFiles.sent_big = 0
    LabelStudioFiles.big_done = threading.Event()
    LabelStudioFiles.tokens = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LabelStudioFiles)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_for(ws, ls_url: str, cfg: ServeConfig = ServeConfig()) -> TestClient:
    client = TestClient(create_app(ws, cfg, detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    assert client.post("/setup", json={"hostname": ls_url, "access_token": "tok"}).status_code == 200
    return client


def predict(client: TestClient, tasks: list) -> list[dict]:
    r = client.post("/predict", json={"tasks": tasks, "label_config": render_label_config().xml})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def label_studio_saves(tasks: list[dict], results: list[dict]) -> list[int]:
    """What Label Studio 1.23 (`ml/models.py`, `_get_predictions_from_ml_backend`) stores: results
    are paired with tasks by position, and an entry without `result` is logged and skipped, so the
    task keeps no prediction of this model version and is predicted again later."""
    assert len(results) == len(tasks)
    return [t["id"] for t, r in zip(tasks, results) if "result" in r]


# --- 1. a failed task carries no `result` -------------------------------------------------------

def test_a_task_whose_image_fails_gets_no_result_so_label_studio_asks_again(ws_with_image, ls_files, caplog):
    ws, row = ws_with_image
    client = client_for(ws, ls_files)
    tasks = [{"id": 1, "data": {"image_id": row["id"], "image": "ignored"}},
             {"id": 2, "data": {"image": "/data/upload/missing.png"}},
             {"id": 3, "data": {"image": f"{ls_files}/data/upload/text.png"}},
             {"id": 4, "data": {"image": "/data/upload/ok.png"}}]
    with caplog.at_level(logging.WARNING, logger="textloop.serve"):
        out = predict(client, tasks)
    assert label_studio_saves(tasks, out) == [1, 4]   # before: 2 and 3 saved as "no text"
    assert out[0]["result"] and out[3]["result"] and out[3]["score"] == pytest.approx(0.6)
    assert ("/data/upload/ok.png", "Token tok") in LabelStudioFiles.tokens   # streamed, still with the token
    for r in out[1:3]:
        assert "result" not in r and "score" not in r and r["model_version"] == "fake-1"
    assert out[1]["error"].startswith("task 2: image '/data/upload/missing.png': HTTP 404")
    assert out[2]["error"].startswith("task 3: image ")
    logged = [rec.getMessage() for rec in caplog.records]
    assert any("task 2" in m and "/data/upload/missing.png" in m for m in logged), logged
    assert any("task 3" in m and f"{ls_files}/data/upload/text.png" in m for m in logged), logged


# --- 4. one line per task, naming the image --------------------------------------------------

def test_each_error_is_one_line_naming_the_task_and_its_image(ws_with_image, ls_files, tmp_path):
    ws, _ = ws_with_image
    outside = tmp_path / "x.jpg"
    outside.write_bytes(png_bytes())
    inside = ws.root / "extra.png"
    inside.write_bytes(png_bytes())
    client = client_for(ws, ls_files)
    text_url = f"{ls_files}/data/upload/text.png"
    tasks = [{"id": 7, "data": {"image": text_url}},
             {"id": 8, "data": {"image": 5}},
             {"id": 9, "data": "x"},
             {"id": 10, "data": {"image": "http://127.0.0.1:99999/x.png"}},
             {"id": 11, "data": {"image": str(outside)}},
             {"id": 12, "data": {}},
             {"id": 13, "data": {"image": str(inside)}}]
    out = predict(client, tasks)
    errors = [r.get("error") for r in out]
    assert errors[0] == f"task 7: image '{text_url}': not an image (cannot identify image data)"
    assert errors[1] == "task 8: data.image must be a URL or path string, got 5"
    assert errors[2] == "task 9: data must be an object, got 'x'"
    assert errors[3].startswith("task 10: image 'http://127.0.0.1:99999/x.png': not a valid URL (Port out of range")
    assert errors[4].startswith(f"task 11: image '{outside}': a local file outside the workspace")
    assert errors[5].startswith("task 12: data.image is missing")
    assert errors[6] is None and out[6]["result"]   # a path inside the workspace is read from disk
    for e in errors[:6]:
        assert "\n" not in e and "0x" not in e and "Traceback" not in e, e


def test_an_unreachable_path_names_the_url_it_was_fetched_as(ws_with_image):
    ws, _ = ws_with_image
    closed = f"http://127.0.0.1:{free_port()}"
    client = client_for(ws, closed)
    out = predict(client, [{"id": 3, "data": {"image": "/nowhere/x.jpg"}}])
    err = out[0]["error"]
    assert err.startswith("task 3: image '/nowhere/x.jpg': cannot connect") and f"(fetched {closed}/nowhere/x.jpg)" in err


# --- 3. byte cap and pixel limit -------------------------------------------------------------

def test_downloads_are_streamed_and_capped_like_harvest(ws_with_image, ls_files):
    ws, _ = ws_with_image
    assert ServeConfig().max_bytes == HarvestConfig().max_bytes and ServeConfig().max_pixels == DEFAULT_MAX_PIXELS
    client = client_for(ws, ls_files, ServeConfig(max_bytes=100_000))
    out = predict(client, [{"id": 1, "data": {"image": "/data/upload/big.png"}},
                           {"id": 2, "data": {"image": "/data/upload/huge.png"}},
                           {"id": 3, "data": {"image": "/data/upload/ok.png"}}])
    assert out[0]["error"].startswith("task 1: image '/data/upload/big.png': too large (more than --max-bytes 100,000 bytes)")
    assert out[1]["error"].startswith("task 2: image '/data/upload/huge.png': too large (419,430,400 bytes (Content-Length)")
    assert out[2]["result"]
    assert LabelStudioFiles.big_done.wait(10)
    assert LabelStudioFiles.sent_big < BIG   # the download stopped: it was not read to the end first


def test_the_pixel_limit_is_the_products_not_twice_pillows(ws_with_image, ls_files):
    ws, row = ws_with_image
    client = client_for(ws, ls_files)
    err = predict(client, [{"id": 1, "data": {"image": "/data/upload/bomb.png"}}])[0]["error"]
    assert err.startswith("task 1: image '/data/upload/bomb.png': too many pixels (200,000,000 pixels exceeds the limit of 178,956,970")
    small = client_for(ws, ls_files, ServeConfig(max_pixels=1000))   # 80x60 = 4800 pixels
    out = predict(small, [{"id": 2, "data": {"image": "/data/upload/ok.png"}}, {"id": 3, "data": {"image_id": row["id"]}}])
    assert all("too many pixels" in r["error"] and "1,000" in r["error"] for r in out), out


def test_serve_cli_passes_its_limits(tmp_path, monkeypatch):
    import pipeline.serve as serve
    from pipeline.cli.app import app

    from types import SimpleNamespace

    seen = {}

    def fake_app(ws, cfg):
        seen["cfg"] = cfg
        return SimpleNamespace(state=SimpleNamespace(backend=SimpleNamespace(model_version="fake-1")))

    monkeypatch.setattr(serve, "create_app", fake_app)
    monkeypatch.setattr(serve, "run_server", lambda app, **kw: seen.setdefault("run", kw))
    port = free_port()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "serve", "--port", str(port), "--max-bytes", "1000",
                                 "--max-pixels", "5000"])
    assert r.exit_code == 0, r.output
    assert seen["cfg"].max_bytes == 1000 and seen["cfg"].max_pixels == 5000 and seen["run"]["port"] == port
    assert f"serving model fake-1 on http://127.0.0.1:{port}" in r.output   # it said nothing at all
    seen.clear()
    assert CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "serve", "--port", str(port)]).exit_code == 0
    assert seen["cfg"].max_bytes == HarvestConfig().max_bytes and seen["cfg"].max_pixels == DEFAULT_MAX_PIXELS
    # a port in use or a host that is not this machine's: one line, exit 2 (uvicorn's "ERROR:", exit 3)
    seen.clear()
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "serve", "--port", str(busy.getsockname()[1])])
    assert r.exit_code == 2 and "cannot listen on 127.0.0.1" in r.output and "run" not in seen, r.output
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "serve", "--host", "999.1.1.1"])
    assert r.exit_code == 2 and "cannot listen on 999.1.1.1:9090" in r.output, r.output


# --- 2. stopping serve during a retrain ------------------------------------------------------

def running_rows(ws) -> list:
    with ws.catalog() as cat:
        return cat.iterations("running")


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stopping_the_server_interrupts_the_retrain_and_fails_its_rows(ws):
    def slow_round(w):   # a training loop: Python between steps, where Ctrl-C lands
        with w.catalog() as cat, cat.iteration("train"):
            while True:
                time.sleep(0.01)

    app = create_app(ws, ServeConfig(), detector=FakeDetector(), trainer=slow_round)
    with TestClient(app) as client:   # leaving the block is uvicorn's shutdown (the app's lifespan)
        assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 201
        wait_for(lambda: running_rows(ws))
    backend = app.state.backend
    assert not backend._worker.is_alive()
    assert running_rows(ws) == []
    with ws.catalog() as cat:
        row = cat.iterations()[-1]
    assert row["status"] == "failed" and "KeyboardInterrupt" in json.loads(row["metrics"])["error"]
    assert backend.status()["training"]["state"] == "failed"
    assert "interrupted" in backend.status()["training"]["last_error"]


def test_a_retrain_stuck_in_a_c_call_has_its_rows_failed_at_shutdown(ws):
    with ws.catalog() as cat:
        other = cat.start_iteration("predict")   # another command's row, running before the retrain: not ours
    release = threading.Event()
    state = {"blocking": False}

    def stuck_round(w):
        with w.catalog() as cat, cat.iteration("train"):
            state["blocking"] = True   # a plain store: no call between it and the loop below
            while True:   # a C call that never sees the interrupt: it is swallowed and waited on again
                try:
                    release.wait()
                    return
                except KeyboardInterrupt:
                    continue

    app = create_app(ws, ServeConfig(), detector=FakeDetector(), trainer=stuck_round)
    backend = app.state.backend
    TestClient(app).post("/webhook", json={"action": "START_TRAINING"})
    wait_for(lambda: state["blocking"])   # an interrupt before this would end the retrain: not the case tested
    assert len(running_rows(ws)) == 2
    t0 = time.monotonic()
    assert backend.shutdown(timeout_s=0.5) is False
    assert time.monotonic() - t0 < 5
    assert [r["id"] for r in running_rows(ws)] == [other]
    with ws.catalog() as cat:
        train = [r for r in cat.iterations() if r["step"] == "train"][0]
    assert train["status"] == "failed" and "serve stopped" in json.loads(train["metrics"])["error"]
    assert backend.shutdown(timeout_s=5) is False   # a second call does not wait again
    release.set()
    backend._worker.join(5)
    assert not backend._worker.is_alive()


SERVE_SCRIPT = """
import sys, time
import pipeline.bundle, pipeline.detectors, pipeline.serve as serve
from tests.fakes import FakeDetector

def slow_round(ws, studio):
    with ws.catalog() as cat, cat.iteration("train") as it:
        while True:
            time.sleep(0.01)

pipeline.bundle.resolve_detector = lambda spec, ws: spec
pipeline.detectors.load_detector = lambda spec, *a, **k: FakeDetector()
serve._default_trainer = lambda: slow_round
serve.Backend._studio = lambda self: None
sys.argv = ["textloop", "-w", sys.argv[1], "serve", "--port", sys.argv[2]]
from pipeline.cli.app import main
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_textloop_serve_during_a_retrain_leaves_no_running_row(tmp_path, sig):
    from pipeline.workspace import Workspace

    port = free_port()
    ws_dir = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(ws_dir), str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60)
        assert httpx.post(f"{base}/webhook", json={"action": "START_TRAINING"}).status_code == 201
        ws = Workspace.open(ws_dir)
        wait_for(lambda: running_rows(ws))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode not in (134, -signal.SIGABRT) and "terminate called" not in err, err
    assert running_rows(ws) == [], err
    with ws.catalog() as cat:
        assert [r["status"] for r in cat.iterations()] == ["failed"]


# --- 5. the Label Studio token goes only to the host it came with ----------------------------

def test_the_token_is_sent_only_to_the_host_it_came_with(ws_with_image, ls_files):
    """A /setup naming another host (no token) used to keep the token, and that host then
    counted as Label Studio: a task's image URL there received `Authorization: Token ...`."""
    ws, _ = ws_with_image
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LabelStudioFiles)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    other_url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        client = client_for(ws, ls_files)   # /setup with the real host and "tok"
        assert client.post("/setup", json={"hostname": other_url}).status_code == 200
        assert "result" in predict(client, [{"id": 1, "data": {"image": f"{other_url}/data/upload/ok.png"}}])[0]
        assert client.post("/setup", json={"hostname": ls_files}).status_code == 200
        assert "result" in predict(client, [{"id": 2, "data": {"image": "/data/upload/ok.png"}}])[0]
    finally:
        other.shutdown()
        other.server_close()
    assert LabelStudioFiles.tokens == [("/data/upload/ok.png", None), ("/data/upload/ok.png", "Token tok")]


@pytest.mark.parametrize("payload", [{"hostname": 12345}, {"hostname": "notaurl"}, {"hostname": "ftp://h/x"},
                                     {"hostname": "http://h:abc"}, {"hostname": "http://h", "access_token": 5}])
def test_a_setup_with_a_bad_hostname_or_token_is_a_400(ws_with_image, payload):
    ws, _ = ws_with_image
    client = TestClient(create_app(ws, ServeConfig(), detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    r = client.post("/setup", json=payload)
    assert r.status_code == 400 and ("hostname" in r.text or "access_token" in r.text), r.text


@pytest.mark.parametrize("tasks", [{}, None, "x"])
def test_tasks_that_are_not_a_list_are_a_400(ws_with_image, tasks):
    ws, _ = ws_with_image
    client = TestClient(create_app(ws, ServeConfig(), detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    assert client.post("/predict", json={"tasks": tasks}).status_code == 400
    r = client.post("/predict", json={})   # no tasks at all was a 200 with no results
    assert r.status_code == 400 and "no 'tasks'" in r.text


def test_a_local_files_path_leaving_the_document_root_is_not_sent_to_label_studio(ws_with_image, ls_files):
    ws, _ = ws_with_image
    client = client_for(ws, ls_files)
    out = predict(client, [{"id": 1, "data": {"image": "/data/local-files/?d=../../../etc/passwd"}}])
    assert out[0]["error"].endswith("a local-files path that leaves the document root"), out
    assert LabelStudioFiles.tokens == []   # nothing asked of Label Studio


def test_a_missing_workspace_file_is_named_not_fetched_from_label_studio(ws_with_image, ls_files):
    ws, _ = ws_with_image
    client = client_for(ws, ls_files)
    (ws.root / "adir.png").mkdir()
    out = predict(client, [{"id": 1, "data": {"image": str(ws.root / "images" / "nope.png")}},
                           {"id": 2, "data": {"image": str(ws.root / "adir.png")}}])
    assert out[0]["error"].endswith(": file not found") and out[1]["error"].endswith(": not a regular file"), out
    assert LabelStudioFiles.tokens == []   # nothing asked of Label Studio


def test_a_refused_setup_changes_nothing(ws_with_image, ls_files):
    """A /setup answered 400 (a broken schema, a token that is no string) used to keep its
    hostname and token anyway: the next task's image URL on that host got `Token SECRET`."""
    ws, _ = ws_with_image
    client = TestClient(create_app(ws, ServeConfig(), detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    for bad in ({"hostname": ls_files, "access_token": "SECRET", "schema": "<View><broken"},
                {"hostname": ls_files, "access_token": 5}):
        assert client.post("/setup", json=bad).status_code == 400
    out = predict(client, [{"id": 1, "data": {"image": f"{ls_files}/data/upload/ok.png"}}])
    assert "result" not in out[0] and not LabelStudioFiles.tokens, (out, LabelStudioFiles.tokens)


@pytest.mark.parametrize("body", [b"{", b"null", b"[]", b'"x"'])
@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook", "/train"])
def test_a_body_that_is_no_json_object_is_a_400_with_the_reason(ws_with_image, body, route):
    """FastAPI answered 422 with its validation dump; the protocol's errors are 400s with a reason."""
    ws, _ = ws_with_image
    client = TestClient(create_app(ws, ServeConfig(), detector=FakeDetector([[2, 3, 20, 10]], [0.6])))
    r = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("the request body is not valid JSON" if body == b"{" else
                                  "the request body must be a JSON object")


def test_demoting_to_stock_is_picked_up_like_a_promotion(ws_with_image, monkeypatch):
    """`models promote ppocr` (the way back from a forced, bad model) left the backend
    pre-annotating with the demoted model: only a newly promoted one was reloaded."""
    import pipeline.bundle as bundle
    import pipeline.detectors as detectors
    from pipeline.catalog import dumps

    ws, _ = ws_with_image
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO models(version, kind, path, metrics, created_at, promoted) VALUES (?,?,?,?,?,1)",
                   ("db-bad", "db", "models/db-bad/bundle.zip", dumps({}), time.time()))
    monkeypatch.setattr(bundle, "resolve_detector", lambda spec, ws=None: "db-bad" if _current(ws) else "ppocr")
    monkeypatch.setattr(detectors, "load_detector", lambda spec, **kw: FakeDetector([], name=spec, version=spec))
    client = TestClient(create_app(ws, ServeConfig()))
    assert client.post("/setup", json={}).json()["model_version"] == "db-bad"
    bundle.use_stock(ws)
    assert client.post("/setup", json={}).json()["model_version"] == "ppocr"   # /setup checks at once


def _current(ws) -> bool:
    with ws.catalog() as cat:
        return cat.current_model() is not None


def test_a_retrain_on_a_workspace_without_images_fails_at_once_with_the_reason(ws, caplog):
    """START_TRAINING on a blank workspace generated synthetic images and trained (`iterate`
    refused it from the CLI only); it now fails before any step, one line on /status and in
    the log (the log had the whole traceback)."""
    client = TestClient(create_app(ws, ServeConfig(pull_before_train=False), detector=FakeDetector([], [])))
    with caplog.at_level(logging.INFO, logger="textloop.serve"):
        assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 201
        deadline = time.monotonic() + 30
        while client.get("/status").json()["training"]["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    training = client.get("/status").json()["training"]
    assert training["state"] == "failed" and "no images in" in training["last_error"], training
    assert not (ws.root / "synth").exists() or not any((ws.root / "synth").rglob("*.png"))
    with ws.catalog() as cat:
        assert not cat.iterations()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all("Traceback" not in m and "\n" not in m for m in errors), errors
