from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.studio.launcher import label_studio_bin, start_local, stop_pid
from pipeline.workspace import Workspace

os.environ.setdefault("SENTRY_OPT_OUT", "1")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    """Every detector the CLI loads is one `tests.fakes.FakeDetector` (shared so tests can count calls)."""
    import pipeline.detectors as dets
    import pipeline.redact.run as rr
    from tests.fakes import FakeDetector

    det = FakeDetector()
    monkeypatch.setattr(dets, "load_detector", lambda spec="current", workspace=None, **kw: det)
    monkeypatch.setattr(rr, "build_ppocr", lambda **kw: det)
    return det


# A real Label Studio for the integration tests: started once per session from .venv-ls on a
# free loopback port with a temporary data dir (the same launcher `textloop studio up` uses).
@dataclass(frozen=True)
class LiveStudio:
    url: str
    token: str
    root: Path        # the server's local-files document root; test workspaces live under it
    log: Path
    pid: int
    info: object      # the launcher's ServerInfo (what `studio up` writes to its PID file)
    username: str = ""  # the admin, for tests that log in through the browser
    password: str = ""


@pytest.fixture(scope="session")
def live_studio(tmp_path_factory: pytest.TempPathFactory):
    ls_bin = label_studio_bin()
    if ls_bin is None:
        reason = "Label Studio is not installed (.venv-ls missing): run `make install-ls`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " -- CI must run the integration tests")
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("labelstudio")
    root = base / "files"
    root.mkdir()
    token = secrets.token_hex(16)
    username, password = "labeller@textloop.test", secrets.token_hex(12)
    info, proc = start_local(root, base / "data", username=username,
                             password=password, token=token, timeout=240, ls_bin=ls_bin)
    try:
        yield LiveStudio(url=info.url, token=token, root=root, log=Path(info.log), pid=proc.pid, info=info,
                         username=username, password=password)
    finally:
        stop_pid(proc.pid)
        proc.wait(timeout=30)


def live_review_setup(live_studio: LiveStudio, monkeypatch: pytest.MonkeyPatch, detector: object, name: str,
                      title: str) -> tuple[Workspace, object, int]:
    """A workspace under the live server's document root with a project, and every detector the
    CLI builds replaced by `detector`: the start of each redact-review round-trip test."""
    import pipeline.detectors as dets
    import pipeline.redact.run as rr
    from pipeline.studio.client import connect
    from pipeline.studio.project import init_project

    monkeypatch.setattr(dets, "load_detector", lambda spec="current", workspace=None, **kw: detector)
    monkeypatch.setattr(rr, "build_ppocr", lambda **kw: detector)
    monkeypatch.setenv("LABEL_STUDIO_URL", live_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", live_studio.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(live_studio.root))
    ws = Workspace.open(live_studio.root / name)
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    return ws, studio, init_project(ws, studio, title=title).project_id


@pytest.fixture
def ws_with_image(ws, tmp_path):
    """A workspace with one harvested 80x60 image, and its catalog row (the ML backend's tests)."""
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from tests.imagegen import noise_image

    src = tmp_path / "src"
    src.mkdir()
    noise_image(1, (80, 60)).save(src / "a.png")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        row = cat.images()[0]
    return ws, row
