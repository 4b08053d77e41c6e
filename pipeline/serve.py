"""`textloop serve`: the Label Studio ML backend (HumanSignal's protocol, done the textloop way).

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /status.
- The detector is loaded once at start-up (not per request) and swapped atomically after a
  retrain promotes a new model, so `model_version` never drifts between requests.
- /predict reads images straight from the workspace (task data `image_id`, or a
  `/data/local-files/?d=` path under the workspace) and only falls back to HTTP for other URLs.
- START_TRAINING (and, with `retrain_every`, annotation webhooks) *queue* a retrain that runs in
  a background thread; the HTTP request returns at once. Progress is on /status and /health.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.detectors.base import detect_visible
from pipeline.io import describe_error
from pipeline.studio.client import StudioError
from pipeline.studio.convert import confidence, detections_to_results
from pipeline.studio.project import LabelConfig, parse_label_config, render_label_config
from pipeline.workspace import Workspace

log = logging.getLogger("textloop.serve")


@dataclass(frozen=True)
class ServeConfig:
    model: str = "current"          # load_detector spec
    retrain_every: int = 0          # annotation webhooks per queued retrain; 0 = START_TRAINING only
    pull_before_train: bool = True  # the retrain round talks to Label Studio (pull first, push the next batch)
    http_timeout_s: float = 30.0


class Backend:
    """The state behind the routes: one detector, one training worker."""

    def __init__(self, ws: Workspace, cfg: ServeConfig = ServeConfig(), detector: Any = None, trainer: Any = None) -> None:
        self.ws = ws
        self.cfg = cfg
        self._lock = threading.Lock()       # one detect() at a time (2 cores; backends are not all thread-safe)
        self._detector = detector if detector is not None else self._load()
        self._trainer = trainer             # callable(ws) -> dict; None = pipeline.train if it exists
        self.ls_hostname = ""
        self.ls_token = ""
        self._settings: Any = None          # LABEL_STUDIO_* from env/.env, read once (not per task)
        self.annotation_events = 0
        self.training: dict[str, Any] = {"state": "idle", "queued": 0, "runs": 0, "last_error": None,
                                         "started_at": None, "finished_at": None, "result": None}
        self._state_lock = threading.Lock()
        self._train_wake = threading.Event()
        self._worker = threading.Thread(target=self._train_loop, name="textloop-retrain", daemon=True)
        self._worker.start()

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from pipeline.studio.client import load_settings

            self._settings = load_settings()
        return self._settings

    # --- model ---------------------------------------------------------------------------------
    def _load(self) -> Any:
        from pipeline.bundle import resolve_detector
        from pipeline.detectors import load_detector

        return load_detector(resolve_detector(self.cfg.model, self.ws))

    def refresh_if_promoted(self, every_s: float = 10.0) -> None:
        """With model `current`, pick up a model promoted elsewhere (`textloop train --promote`),
        checked at most every `every_s` seconds, so predictions never lag the workspace's model."""
        now = time.monotonic()
        if self.cfg.model != "current" or now - getattr(self, "_checked", 0.0) < every_s:
            return
        self._checked = now
        with self.ws.catalog() as cat:
            cur = cat.current_model()
        if cur is not None and str(cur["version"]) != self.model_version and self.training["state"] != "running":
            log.info("model %s promoted; reloading", cur["version"])
            self._detector = self._load()

    @property
    def model_version(self) -> str:
        return str(self._detector.version)

    def predict_tasks(self, tasks: list[dict[str, Any]], config: LabelConfig) -> list[dict[str, Any]]:
        results = []
        detector = self._detector  # the same model for the whole request, even if a swap happens
        for task in tasks:
            try:
                views = self._load_task_image(task, config)
                with self._lock:
                    det = detect_visible(detector, [views])[0]
                h, w = views[0].shape[:2]
                results.append({"result": detections_to_results(det, w, h, config), "score": round(confidence(det), 4),
                                "model_version": str(detector.version)})
            except Exception as exc:  # noqa: BLE001 - one bad task must not sink the batch; LS needs one entry per task
                log.warning("task %s: no prediction (%s)", task.get("id"), exc)
                results.append({"result": [], "score": 0.0, "model_version": str(detector.version),
                                "error": describe_error(exc)})
        return results

    def _load_task_image(self, task: dict[str, Any], config: LabelConfig) -> list[np.ndarray]:
        """Every view a viewer may show of the task's image (one for opaque images)."""
        from pipeline.imaging import load_views, views_of
        data = task.get("data") or {}
        image_id = data.get("image_id")
        if image_id:
            with self.ws.catalog() as cat:
                row = cat.image(str(image_id))
            if row is not None:
                return load_views(self.ws.abspath(row["path"]))
        url = str(data.get(config.data_key) or "")
        if not url:
            raise ValueError(f"task has no ${config.data_key}")
        parsed = urllib.parse.urlparse(url)
        if parsed.path.startswith("/data/local-files"):
            rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            doc_root = self.settings.local_files_root
            for root in ([Path(doc_root)] if doc_root else []) + [self.ws.root]:
                path = (root / rel).resolve()
                if root.resolve() in path.parents and path.exists():
                    return load_views(path)
        import httpx
        from PIL import Image, ImageOps

        if not parsed.scheme:
            if not self.ls_hostname:
                raise ValueError(f"relative image URL {url} and no Label Studio hostname from /setup")
            url = self.ls_hostname.rstrip("/") + url
        allowed = {_origin(u) for u in (self.ls_hostname, self.settings.url) if u}   # /setup's hostname, configured URL
        if _origin(url) not in allowed:
            # a task may name any URL: fetching it would send the Label Studio token (and make
            # traffic the user never configured) to whatever host the task's author chose
            raise ValueError(f"image URL {url}: not on Label Studio ({', '.join(sorted(f'{s}://{h}:{p}' for s, h, p in allowed))}); "
                             "images are read only from the workspace or the Label Studio this backend serves")
        headers = {"Authorization": f"Token {self.ls_token}"} if self.ls_token else {}
        # httpx drops Authorization on a redirect to another origin
        r = httpx.get(url, headers=headers, timeout=self.cfg.http_timeout_s, follow_redirects=True)
        r.raise_for_status()
        with Image.open(io.BytesIO(r.content)) as im:
            return views_of(ImageOps.exif_transpose(im))

    # --- training --------------------------------------------------------------------------------
    def queue_training(self, reason: str) -> dict[str, Any]:
        with self._lock_state():
            if self.training["state"] in ("queued", "running"):
                self.training["queued"] = 1  # coalesce: one more run after the current one
            else:
                self.training.update(state="queued", queued=1, reason=reason)
        self._train_wake.set()
        return dict(self.training)

    def _lock_state(self) -> Any:
        return self._state_lock

    def _train_loop(self) -> None:
        while True:
            self._train_wake.wait()
            self._train_wake.clear()
            while True:
                with self._lock_state():
                    if not self.training["queued"]:
                        if self.training["state"] in ("queued", "running"):
                            self.training["state"] = "idle"
                        break
                    self.training.update(state="running", queued=0, started_at=time.time(), finished_at=None)
                try:
                    result = self._train_once()
                    with self._lock_state():
                        self.training.update(state="done", result=result, last_error=None, runs=self.training["runs"] + 1,
                                             finished_at=time.time())
                except Exception as exc:  # noqa: BLE001 - reported on /status, the server keeps serving
                    log.error("retrain failed: %s", traceback.format_exc())
                    with self._lock_state():
                        self.training.update(state="failed", last_error=describe_error(exc),
                                             finished_at=time.time())
                with self._lock_state():
                    if self.training["queued"]:
                        continue
                break

    def _studio(self) -> Any:
        try:
            from pipeline.studio.client import connect

            return connect(url=self.ls_hostname or None, api_key=self.ls_token or None)
        except Exception as exc:  # noqa: BLE001 - train on what the catalog has
            log.warning("Label Studio not reachable for the retrain (%s); using the catalog as it is", exc)
            return None

    def _train_once(self) -> dict[str, Any]:
        old = self.model_version
        if self._trainer is not None:
            result = self._trainer(self.ws)
        else:
            result = _default_trainer()(self.ws, self._studio() if self.cfg.pull_before_train else None)
        new_detector = self._load()
        self._detector = new_detector  # atomic swap; in-flight requests keep the old one
        return {"result": result if isinstance(result, (dict, str, int, float, type(None))) else str(result),
                "model_version_before": old, "model_version": self.model_version}

    def status(self) -> dict[str, Any]:
        with self._lock_state():
            training = dict(self.training)
        return {"status": "UP", "model_class": "textloop", "model_version": self.model_version,
                "model": self.cfg.model, "annotation_events": self.annotation_events, "training": training}


def _default_trainer() -> Any:
    """`trainer(ws, studio)`: one textloop round (`pipeline.loop.iterate`: pull, curate, train,
    promote only if not worse on the test split, rank, push the next batch)."""
    from pipeline.loop import IterateConfig, iterate

    def run_round(ws: Workspace, studio: Any) -> Any:
        import importlib.util

        try:
            missing = importlib.util.find_spec("torch") is None
        except (ImportError, ValueError):
            missing = True
        if missing:  # a light install serves, but cannot retrain
            raise RuntimeError("retraining needs torch, which is not installed: pip install 'textloop[train]'")
        res = iterate(ws, IterateConfig(push=studio is not None), client=studio)
        return {"promoted": res.promoted, "candidate": res.candidate, "current": res.current}

    return run_round


def create_app(ws: Workspace, cfg: ServeConfig = ServeConfig(), detector: Any = None, trainer: Any = None) -> Any:
    """The FastAPI app; `detector`/`trainer` may be injected (tests, benchmarks)."""
    from fastapi import Body, FastAPI, HTTPException

    backend = Backend(ws, cfg, detector, trainer)
    app = FastAPI(title="textloop ML backend", version="1")
    app.state.backend = backend
    default_config = render_label_config()

    def config_of(xml: Any) -> LabelConfig:
        """The labelling config, or 400 with the reason (a config without RectangleLabels was a 500)."""
        if not xml:
            return default_config
        try:
            return parse_label_config(str(xml))
        except (StudioError, ValueError) as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    def tasks_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
        tasks = payload.get("tasks") or []
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise HTTPException(status_code=400, detail="'tasks' must be a list of task objects")
        return tasks

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        return backend.status()

    @app.get("/status")
    def status() -> dict[str, Any]:
        return backend.status()

    @app.post("/setup")
    def setup(payload: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        backend.ls_hostname = str(payload.get("hostname") or backend.ls_hostname)
        backend.ls_token = str(payload.get("access_token") or backend.ls_token)
        backend.refresh_if_promoted(every_s=0.0)
        if payload.get("schema"):
            config_of(payload["schema"])  # fail early on a config without RectangleLabels
        return {"model_version": backend.model_version}

    @app.post("/predict")
    def predict(payload: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        backend.refresh_if_promoted()
        tasks = tasks_of(payload)
        config = config_of(payload.get("label_config"))
        return {"results": backend.predict_tasks(tasks, config), "model_version": backend.model_version}

    @app.post("/train", status_code=201)
    def train(payload: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        """Older Label Studio versions POST /train instead of the START_TRAINING webhook."""
        return {"training": backend.queue_training("POST /train")}

    @app.post("/webhook", status_code=201)
    def webhook(payload: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        action = str(payload.get("action") or "")
        queued = None
        if action == "START_TRAINING":
            queued = backend.queue_training("START_TRAINING")
        elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            backend.annotation_events += 1
            if cfg.retrain_every and backend.annotation_events % cfg.retrain_every == 0:
                queued = backend.queue_training(f"{cfg.retrain_every} annotation events")
        return {"action": action, "training": queued or backend.status()["training"]}

    return app


@contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread until the block ends; yields its base URL.

    `textloop serve` runs in the foreground; this is for embedding the backend in another
    process (the benchmark, the integration tests)."""
    import uvicorn

    from pipeline.studio.launcher import free_port

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"ML backend did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit."""
    p = urllib.parse.urlparse(url)
    scheme = (p.scheme or "http").lower()
    return scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(scheme)
