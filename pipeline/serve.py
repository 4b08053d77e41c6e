"""`textloop serve`: the Label Studio ML backend (HumanSignal's protocol, done the textloop way).

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /status.
- The detector is loaded once at start-up (not per request) and swapped atomically after a
  retrain promotes a new model, so `model_version` never drifts between requests.
- /predict reads images straight from the workspace (task data `image_id`, or a
  `/data/local-files/?d=` path under the workspace) and only falls back to HTTP for other URLs.
- START_TRAINING (and, with `retrain_every`, annotation webhooks) *queue* a retrain that runs in
  a background thread; the HTTP request returns at once. Progress is on /status and /health.
- A task whose image cannot be read gets an entry without `result` (the error says why): Label
  Studio stores every entry that has a `result`, and would never ask again for that model version.
- Stopping the server (Ctrl-C, SIGTERM) stops a running retrain the Ctrl-C way before the process
  exits, so its catalog rows end `failed` instead of `running` for ever.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DEFAULT_MAX_PIXELS, HarvestConfig
from pipeline.detectors.base import detect_visible
from pipeline.imaging import ImageRejected
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
    max_bytes: int = HarvestConfig.max_bytes    # per downloaded image, harvest's default: a 400 MB URL is refused, not read
    max_pixels: int = DEFAULT_MAX_PIXELS        # per image, the limit of harvest/predict/redact
    stop_timeout_s: float = 8.0     # how long shutdown waits for an interrupted retrain (docker stop allows 10 s)

    def __post_init__(self) -> None:
        """Refuse limits that would silently refuse every image (or wait for ever)."""
        for name in ("max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.http_timeout_s > 0 and self.stop_timeout_s >= 0):
            raise ValueError(f"timeouts must be positive, got http {self.http_timeout_s}, stop {self.stop_timeout_s}")


class TaskImageError(Exception):
    """One task's image could not be used; the message is the whole line (task id, image, reason)."""


class Backend:
    """The state behind the routes: one detector, one training worker."""

    def __init__(self, ws: Workspace, cfg: ServeConfig = ServeConfig(), detector: Any = None, trainer: Any = None) -> None:
        self.ws = ws
        self.cfg = cfg
        self._lock = threading.Lock()       # one detect() at a time (2 cores; backends are not all thread-safe)
        # the workspace's current model when the detector was loaded (or given): a change either
        # way, a promotion or `models promote ppocr`, is what `refresh_if_promoted` reloads on
        self._loaded_current = self._current_version()
        self._detector = detector if detector is not None else self._load()
        self._trainer = trainer             # callable(ws) -> dict; None = pipeline.train if it exists
        self.ls_hostname = ""
        self._tokens: dict[tuple[str, str, int | None], str] = {}   # origin -> the token /setup sent with it
        self._settings: Any = None          # LABEL_STUDIO_* from env/.env, read once (not per task)
        self.annotation_events = 0
        self.training: dict[str, Any] = {"state": "idle", "queued": 0, "runs": 0, "last_error": None,
                                         "started_at": None, "finished_at": None, "result": None}
        self._state_lock = threading.Lock()
        self._train_wake = threading.Event()
        self._stopping = threading.Event()  # shutdown(): start no retrain, leave the worker loop
        self._in_retrain = False            # the worker is inside a retrain (what shutdown interrupts)
        self._retrain_floor = 0             # last `iterations` id before the running retrain began
        self._shutdown_lock = threading.Lock()
        self._worker = threading.Thread(target=self._train_loop, name="textloop-retrain", daemon=True)
        self._worker.start()

    def setup_studio(self, hostname: Any, token: Any) -> None:
        """Label Studio's /setup: its address and token. The token is kept for the address it came
        with and sent only there: a later /setup naming another host (no token) used to inherit it,
        and a task's image URL on that host then received the Label Studio token."""
        # everything is checked before anything changes: a refused /setup used to leave its
        # hostname in place, and the next task's image URL on that host got the token
        host = self.ls_hostname
        if hostname not in (None, ""):
            from pipeline.studio.client import StudioError, check_url

            if not isinstance(hostname, str):
                raise ValueError(f"'hostname' {_short(hostname)} is not an http(s) URL")
            try:
                check_url(hostname, "'hostname'")   # the one check of a Label Studio address
            except StudioError as exc:
                raise ValueError(str(exc)) from None
            host = hostname
        where = ""
        if token not in (None, ""):
            if not isinstance(token, str):
                raise ValueError(f"'access_token' must be a string, got {_short(token)}")
            where = host or self.settings.url
            if not where:
                raise ValueError("'access_token' without a 'hostname' (and no LABEL_STUDIO_URL): whose token is it?")
        self.ls_hostname = host
        if where:
            self._tokens[_origin(where)] = token

    def token_for(self, url: str) -> str:
        """The token /setup gave for `url`'s origin, else none."""
        return self._tokens.get(_origin(url), "") if url else ""

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

        current = self._current_version()
        detector = load_detector(resolve_detector(self.cfg.model, self.ws))
        self._loaded_current = current   # after the load: a model that failed to load is tried again
        return detector

    def _current_version(self) -> str | None:
        """The workspace's current model (None: none promoted, so `current` is stock ppocr)."""
        with self.ws.catalog() as cat:
            cur = cat.current_model()
        return str(cur["version"]) if cur is not None else None

    def refresh_if_promoted(self, every_s: float = 10.0) -> None:
        """With model `current`, pick up a model promoted elsewhere (`textloop train --promote`),
        checked at most every `every_s` seconds, so predictions never lag the workspace's model."""
        now = time.monotonic()
        if self.cfg.model != "current" or now - getattr(self, "_checked", 0.0) < every_s:
            return
        self._checked = now
        cur = self._current_version()
        # a change either way: a new model promoted, or `models promote ppocr` back to stock (the
        # demoted model went on pre-annotating)
        if cur != self._loaded_current and self.training["state"] != "running":
            log.info("current model now %s; reloading", cur or "stock ppocr")
            self._detector = self._load()

    @property
    def model_version(self) -> str:
        return str(self._detector.version)

    def predict_tasks(self, tasks: list[dict[str, Any]], config: LabelConfig) -> list[dict[str, Any]]:
        """One entry per task, in order (Label Studio pairs them by position). A task that fails
        gets no `result` key: Label Studio 1.23 saves every entry with a `result` as that model
        version's prediction and never asks again, so `"result": []` showed the labeller an image
        "without text". Without it, Label Studio logs the entry, saves nothing, and asks again."""
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
                error = str(exc) if isinstance(exc, TaskImageError) else f"task {task.get('id')}: {describe_error(exc)}"
                log.warning("no prediction: %s", error)
                results.append({"model_version": str(detector.version), "error": error})
        return results

    def _load_task_image(self, task: dict[str, Any], config: LabelConfig) -> list[np.ndarray]:
        """Every view a viewer may show of the task's image (one for opaque images). Any failure
        is a TaskImageError naming the task and the image, in one line."""
        from pipeline.imaging import load_views

        tid = task.get("id")
        data = task.get("data")
        if not isinstance(data, dict):
            raise TaskImageError(f"task {tid}: data must be an object, got {_short(data)}")
        image_id = data.get("image_id")
        if image_id and isinstance(image_id, str):
            with self.ws.catalog() as cat:
                row = cat.image(image_id)
            if row is not None:
                path = self.ws.abspath(row["path"])
                try:
                    return load_views(path, self.cfg.max_pixels)
                except Exception as exc:  # noqa: BLE001 - named with the file below
                    raise TaskImageError(f"task {tid}: image {str(path)!r} (image_id {image_id}): {_reason(exc)}") from None
        url = data.get(config.data_key)
        if url is None or url == "":
            raise TaskImageError(f"task {tid}: data.{config.data_key} is missing (no image_id in the catalog either)")
        if not isinstance(url, str):
            raise TaskImageError(f"task {tid}: data.{config.data_key} must be a URL or path string, got {_short(url)}")
        try:
            return self._read_url(url)
        except TaskImageError as exc:
            raise TaskImageError(f"task {tid}: image {url!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every failure is this task's one line
            raise TaskImageError(f"task {tid}: image {url!r}: {_reason(exc, self.cfg)}") from None

    def _read_url(self, url: str) -> list[np.ndarray]:
        """The views of the image at `url`: a workspace or document-root file, else a download from
        the Label Studio this backend serves (streamed, at most `max_bytes`)."""
        from pipeline.imaging import load_views, load_views_bytes

        try:
            parsed = urllib.parse.urlparse(url)
            parsed.port  # noqa: B018 - raises on a port out of range: say so here, not deep in httpx
        except ValueError as exc:
            raise TaskImageError(f"not a valid URL ({exc})") from None
        roots = self._local_roots()
        if parsed.path.startswith("/data/local-files"):
            rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            if ".." in Path(rel).parts or rel.startswith("/"):   # it was sent on to Label Studio, with the token
                raise TaskImageError("a local-files path that leaves the document root")
            for root in roots:
                path = (root / rel).resolve()
                if root in path.parents and path.exists():
                    return load_views(path, self.cfg.max_pixels)
        if not parsed.scheme and url.startswith("/"):
            path = Path(url).resolve()
            inside = any(root in path.parents for root in roots)
            if inside and not path.is_file():
                # a workspace path, not a Label Studio one: it was fetched from Label Studio
                # (with the token) and reported as that server's HTTP 404
                raise TaskImageError("not a regular file" if path.exists() else "file not found")
            if path.is_file():
                if inside:
                    return load_views(path, self.cfg.max_pixels)
                # a path on this machine is no Label Studio URL: joined to its host it failed as
                # "Connection refused" without saying which file
                raise TaskImageError("a local file outside the workspace and Label Studio's document root "
                                     f"({', '.join(str(r) for r in roots)}); serve reads local files only there")
        fetched = url
        if not parsed.scheme:
            base = self.ls_hostname or self.settings.url
            if not base:
                raise TaskImageError("a relative URL, and no Label Studio hostname from /setup or LABEL_STUDIO_URL")
            fetched = base.rstrip("/") + "/" + url.lstrip("/")
        allowed = {_origin(u) for u in (self.ls_hostname, self.settings.url) if u}   # /setup's hostname, configured URL
        if _origin(fetched) not in allowed:
            # a task may name any URL: fetching it would send the Label Studio token (and make
            # traffic the user never configured) to whatever host the task's author chose
            raise TaskImageError(f"not on Label Studio ({', '.join(sorted(f'{s}://{h}:{p}' for s, h, p in allowed))}); "
                                 "images are read only from the workspace or the Label Studio this backend serves")
        token = self.token_for(fetched)
        headers = {"Authorization": f"Token {token}"} if token else {}
        try:
            content = _download(fetched, headers, self.cfg.http_timeout_s, self.cfg.max_bytes)
            return load_views_bytes(content, self.cfg.max_pixels)
        except TaskImageError as exc:
            raise TaskImageError(f"{exc} (fetched {fetched})" if fetched != url else str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - named with the URL actually fetched
            reason = _reason(exc, self.cfg)
            raise TaskImageError(f"{reason} (fetched {fetched})" if fetched != url else reason) from None

    def _local_roots(self) -> list[Path]:
        """Folders a task's local path may point into: Label Studio's document root, the workspace."""
        doc_root = self.settings.local_files_root
        return [r.resolve() for r in ([Path(doc_root)] if doc_root else []) + [self.ws.root]]

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
        try:
            while not self._stopping.is_set():
                self._train_wake.wait()
                self._train_wake.clear()
                while not self._stopping.is_set():
                    with self._lock_state():
                        if not self.training["queued"]:
                            if self.training["state"] in ("queued", "running"):
                                self.training["state"] = "idle"
                            break
                        self.training.update(state="running", queued=0, started_at=time.time(), finished_at=None)
                        self._in_retrain = True
                    try:
                        result = self._train_once()
                        with self._lock_state():
                            self._in_retrain = False
                            self.training.update(state="done", result=result, last_error=None, runs=self.training["runs"] + 1,
                                                 finished_at=time.time())
                    except Exception as exc:  # noqa: BLE001 - reported on /status, the server keeps serving
                        # one line, as /status says it; the traceback for -v (it filled the console)
                        log.error("retrain failed: %s", describe_error(exc))
                        log.debug("retrain failed: %s", traceback.format_exc())
                        with self._lock_state():
                            self._in_retrain = False
                            self.training.update(state="failed", last_error=describe_error(exc),
                                                 finished_at=time.time())
                    with self._lock_state():
                        if self.training["queued"]:
                            continue
                    break
        except KeyboardInterrupt:
            # shutdown() interrupted the retrain the way Ctrl-C interrupts `textloop iterate`: its
            # stages logged themselves `failed` and training kept its checkpoint on the way out
            log.warning("retrain interrupted: serve is stopping")
            with self._lock_state():
                self._in_retrain = False
                if self.training["state"] == "running":
                    self.training.update(state="failed", last_error="interrupted: serve stopped", finished_at=time.time())

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Stop the retrain worker before the process exits; True once it has stopped.

        A retrain left running in a daemon thread was killed mid-step at interpreter exit: its
        `iterations` rows stayed `running` for ever and torch aborted the process ("terminate
        called without an active exception"). A running retrain gets a KeyboardInterrupt (what
        Ctrl-C does to `textloop iterate`: stages end `failed`, training keeps its checkpoint).
        If it does not stop within `timeout_s` (stuck in a C call), the rows it opened are marked
        `failed` here and False is returned: the caller must then exit without finalising."""
        timeout = self.cfg.stop_timeout_s if timeout_s is None else timeout_s
        with self._shutdown_lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            self._train_wake.set()
            with self._lock_state():
                if first and self._in_retrain:
                    _interrupt_thread(self._worker)
            self._worker.join(timeout if first else 0.0)
            if not self._worker.is_alive():
                return True
            if first:
                self._fail_open_rows("interrupted: serve stopped while this retrain ran")
            return False

    def _fail_open_rows(self, error: str) -> None:
        """Mark `failed` the `iterations` rows the running retrain opened (ids above the last one
        before it began) that are still `running`; the counts so far are kept."""
        with self.ws.catalog() as cat:
            for row in cat.iterations("running"):
                if int(row["id"]) <= self._retrain_floor:
                    continue
                counts = json.loads(row["counts"] or "{}")
                metrics = {**json.loads(row["metrics"] or "{}"), "error": error}
                cat.finish_iteration(int(row["id"]), "failed", counts=counts, metrics=metrics)
                log.warning("catalog: %s #%s marked failed (%s)", row["step"], row["id"], error)

    def _studio(self) -> Any:
        try:
            from pipeline.studio.client import connect

            return connect(url=self.ls_hostname or None, api_key=self.token_for(self.ls_hostname) or None)
        except Exception as exc:  # noqa: BLE001 - train on what the catalog has
            log.warning("Label Studio not reachable for the retrain (%s); using the catalog as it is", exc)
            return None

    def _train_once(self) -> dict[str, Any]:
        old = self.model_version
        with self.ws.catalog() as cat:
            last = cat.last_iteration()
        self._retrain_floor = int(last["id"]) if last is not None else 0
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
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    backend = Backend(ws, cfg, detector, trainer)

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        """On server shutdown, stop a running retrain before the process goes (see Backend.shutdown)."""
        yield
        await asyncio.to_thread(backend.shutdown)

    app = FastAPI(title="textloop ML backend", version="1", lifespan=lifespan)
    app.state.backend = backend

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Any, exc: RequestValidationError) -> JSONResponse:
        """A body that is not a JSON object: the protocol's 400 with a reason (FastAPI's own
        answer was a 422 with its validation dump)."""
        invalid = any(e.get("type") == "json_invalid" for e in exc.errors())
        return JSONResponse(status_code=400, content={"detail": "the request body is not valid JSON" if invalid
                                                      else "the request body must be a JSON object"})
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
        if "tasks" not in payload:   # an empty body was answered 200 with no results
            raise HTTPException(status_code=400, detail="the request has no 'tasks' (a list of task objects)")
        tasks = payload["tasks"]
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
        if payload.get("schema"):
            config_of(payload["schema"])  # fail early on a config without RectangleLabels, changing nothing
        try:
            backend.setup_studio(payload.get("hostname"), payload.get("access_token"))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        backend.refresh_if_promoted(every_s=0.0)
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


def check_listen(host: str, port: int) -> None:
    """OSError (a port in use, an address not on this machine) before the server starts."""
    import socket

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        s.bind(addr)


def run_server(app: Any, host: str, port: int, log_level: str = "warning") -> None:
    """`textloop serve` in the foreground until Ctrl-C or SIGTERM. Uvicorn's shutdown stops the
    retrain worker (the app's lifespan); should it still run (stuck in a C call), its catalog rows
    are already marked `failed` and the process leaves with `os._exit`: finalising the
    interpreter under a live torch thread aborted it ("terminate called without an active exception")."""
    import uvicorn

    backend: Backend = app.state.backend
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        if not backend.shutdown():
            log.error("the retrain did not stop within %ss; its stages are marked failed, exiting now",
                      backend.cfg.stop_timeout_s)
            logging.shutdown()
            os._exit(130)


def _interrupt_thread(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt in `thread` at its next Python instruction (how Ctrl-C reaches a
    worker). A thread blocked inside a C call sees it only when the call returns."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


def _download(url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> bytes:
    """GET `url` streamed, refusing more than `max_bytes` (Content-Length first, then as it
    arrives) and a whole download longer than 4x `timeout_s` (the timeout bounds each read only).
    Reading the whole body first held a 400 MB URL in memory before "cannot identify image"."""
    import httpx

    deadline = time.monotonic() + 4 * timeout_s
    # httpx drops Authorization on a redirect to another origin
    with httpx.stream("GET", url, headers=headers, timeout=timeout_s, follow_redirects=True) as r:
        r.raise_for_status()
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise ImageRejected("too_large", f"{int(length):,} bytes (Content-Length) exceeds --max-bytes {max_bytes:,}")
        buf = bytearray()
        for chunk in r.iter_bytes():
            buf += chunk
            if len(buf) > max_bytes:
                raise ImageRejected("too_large", f"more than --max-bytes {max_bytes:,} bytes")
            if time.monotonic() > deadline:
                raise ImageRejected("timeout", f"download not complete within {4 * timeout_s:g}s")
    return bytes(buf)


_REASONS = {"not_an_image": "not an image", "too_many_pixels": "too many pixels", "too_large": "too large",
            "empty": "empty", "corrupt": "corrupt image", "timeout": "timed out"}


def _reason(exc: BaseException, cfg: ServeConfig | None = None) -> str:
    """Why an image could not be used, in words (no object reprs, no tracebacks)."""
    import httpx

    if isinstance(exc, ImageRejected):
        return f"{_REASONS.get(exc.reason, exc.reason.replace('_', ' '))} ({exc.detail})"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".rstrip()
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out{f' after {cfg.http_timeout_s:g}s' if cfg else ''} ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({' '.join(str(exc).split()) or 'connection failed'})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return describe_error(exc)


def _short(value: Any, limit: int = 60) -> str:
    """A value quoted in an error line, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit."""
    p = urllib.parse.urlparse(url)
    scheme = (p.scheme or "http").lower()
    return scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(scheme)
