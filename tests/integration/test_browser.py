"""What people see, checked in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright for Python through `executable_path`; Playwright's own browser download is never used).

- `report.html` and the curate galleries: every image loads (naturalWidth > 0), the console has
  no errors, a screenshot is saved.
- Label Studio's labelling page for a pushed task (`scripts/screenshot_labelling.py`): the image
  loads, the pre-annotated boxes are there, the file name is shown.

Skipped with a reason when chromium or playwright is missing (a developer's machine); CI
(`CI=true`, see .ci/run, which installs chromium) fails instead. Set TEXTLOOP_UPDATE_DOCS=1 to
write the README's screenshots (docs/img/*.png) from these runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from screenshot_labelling import CHROMIUM_ARGS, chromium_path, small_png  # noqa: E402
from tests.imagegen import text_font

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
UPDATE_DOCS = os.environ.get("TEXTLOOP_UPDATE_DOCS") == "1"


def _need_browser() -> str:
    reason = None
    exe = chromium_path()
    if exe is None:
        reason = "chromium is not installed (apt-get install chromium; .ci/run does this in CI)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install playwright; never `playwright install`)"
    if reason:
        if IN_CI:
            pytest.fail(reason + " -- CI must run the browser tests")
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, width: int = 1200, height: int = 900):
    """The page, loaded, with every console error and uncaught exception collected."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def image_states(page) -> list[dict]:
    return page.evaluate("() => [...document.images].map(i => ({src: i.src.slice(0, 80), complete: i.complete,"
                         " w: i.naturalWidth, h: i.naturalHeight}))")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A curated workspace with labels, predictions, duplicates and a model: every report has content."""
    from pipeline.catalog import dumps
    from tests.test_curate_cli import build_workspace

    root = tmp_path_factory.mktemp("browser_ws")
    ws, _ = build_workspace(root)
    t = time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        for k, (version, cov, promoted) in enumerate((("db-a", 0.52, 0), ("db-b", 0.61, 1))):
            tx.execute("INSERT INTO models(version, kind, path, metrics, created_at, promoted) VALUES (?,?,?,?,?,?)",
                       (version, "db", f"models/{version}/bundle.zip",
                        dumps({"coverage_at_budget": cov, "stock_coverage_at_budget": 0.58, "text_coverage": cov,
                               "over_redaction_budget": 0.03, "f1": 0.4, "n_labelled": 6 * k}), t + k, promoted))
    runner = CliRunner()
    for args in (["curate"], ["report"]):
        res = runner.invoke(app, ["--workspace", str(ws.root), *args])
        assert res.exit_code == 0, res.output
    return ws


@pytest.mark.parametrize("name", ["report.html", "duplicates.html", "label_issues.html"])
def test_report_pages_load_every_image_without_console_errors(browser, reported, name, tmp_path):
    path = reported.reports_dir / name
    page, errors = open_page(browser, path.as_uri())
    try:
        images = image_states(page)
        assert images, f"{name} shows no image"
        broken = [i for i in images if not (i["complete"] and i["w"] > 0)]
        assert not broken, f"{name}: images that did not load: {broken}"
        assert not errors, f"{name}: {errors}"
        shot = page.screenshot(full_page=name == "report.html")
    finally:
        page.close()
    out = tmp_path / f"{name}.png"
    out.write_bytes(shot)
    assert out.stat().st_size > 10_000
    if name == "report.html" and UPDATE_DOCS:
        data = small_png(shot, max_width=900)
        (REPO / "docs" / "img" / "report.png").write_bytes(data)


def test_run_copy_of_the_report_is_self_contained(browser, reported):
    """runs/<iteration>/report/report.html has its PNGs next to it."""
    copies = sorted(reported.root.glob("runs/*/report/report.html"))
    assert copies
    page, errors = open_page(browser, copies[-1].as_uri())
    try:
        assert all(i["w"] > 0 for i in image_states(page)) and not errors, errors
    finally:
        page.close()


def test_labelling_page_shows_the_image_its_boxes_and_file_name(live_studio, tmp_path_factory, tmp_path):
    """scripts/screenshot_labelling.py against the real server: login, the task, its boxes."""
    _need_browser()
    from PIL import Image, ImageDraw
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.studio.client import connect
    from pipeline.studio.project import init_project
    from pipeline.studio.push import push_images
    from pipeline.workspace import Workspace

    src = tmp_path_factory.mktemp("src_browser")
    im = Image.new("RGB", (640, 360), (228, 232, 236))
    font = text_font(30)
    d = ImageDraw.Draw(im)
    d.text((30, 30), "Specimen ID 2024-0613-A", fill=(20, 20, 20), font=font)
    d.text((330, 300), "50 µm", fill=(250, 250, 250), font=font)
    d.rectangle([330, 285, 470, 292], fill=(250, 250, 250))
    im.save(src / "micrograph_0613.png")
    ws = Workspace.open(live_studio.root / "ws_browser")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    init_project(ws, studio, title="browser test")
    res = push_images(ws, None, client=studio, model="ppocr")
    assert res.tasks_created == 1
    out = tmp_path / "labelling.png"
    env = dict(os.environ, LABEL_STUDIO_URL=live_studio.url, LABEL_STUDIO_API_KEY=live_studio.token,
               LABEL_STUDIO_USERNAME=live_studio.username, LABEL_STUDIO_PASSWORD=live_studio.password,
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(live_studio.root), TEXTLOOP_LS_PROJECT="browser test")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_labelling.py"), "--workspace", str(ws.root),
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["image_natural_width"] == 640
    assert info["predicted_boxes"] >= 1 and info["page_text_has_file_name"]
    assert info["regions_listed"] == info["predicted_boxes"], info
    assert not info["page_errors"], info["page_errors"]
    assert out.exists() and 10_000 < out.stat().st_size < 200_000
    assert not info["review_note"] and not info["page_text_has_unfilled_field"], info
    # a label curation sent back says why above the image (the note was only in the task's meta,
    # which the labelling page does not show)
    from pipeline.studio.review import request_review

    with ws.catalog() as cat:
        image_id = cat.images()[0]["id"]
    request_review(ws, [image_id], {image_id: "textloop: suspected missed text; please check every box"},
                   client=studio)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_labelling.py"), "--workspace", str(ws.root),
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["page_text_has_review_note"] and not info["page_text_has_unfilled_field"], info
    # a task pushed before the label config showed review notes has no such field: nothing is shown
    old = dict(studio.sdk.tasks.get(id=str(info["task"])).data)
    old.pop("review_note")
    made = studio.sdk.projects.import_tasks(id=info["project"], request=[{"data": dict(old, image_id="x" * 64)}],
                                            return_task_ids=True)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_labelling.py"), "--workspace", str(ws.root),
                        "--out", str(out), "--task", str(made.task_ids[0])],
                       capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert not info["page_text_has_unfilled_field"] and not info["page_errors"], info
    # a 12-bit micrograph in a TIFF: no browser but Safari draws TIFF (the labeller got a broken
    # image); the task shows a PNG of what textloop sees, its label as light on dark as in Fiji
    import numpy as np
    import tifffile

    page = np.full((300, 400), 900, np.uint16)
    page[40:70, 30:330] = 4000
    tifffile.imwrite(src / "stack_0007.tif", page)
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    res = push_images(ws, None, client=studio, model="ppocr")
    assert res.tasks_created == 1 and not res.failures, res
    with ws.catalog() as cat:
        tiff = next(r for r in cat.images() if r["original_name"] == "stack_0007.tif")
        task = cat.tasks(info["project"])[tiff["id"]]
    assert studio.sdk.tasks.get(id=str(task)).data["image"].endswith(f"images/view/{tiff['id'][:2]}/{tiff['id']}.png")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_labelling.py"), "--workspace", str(ws.root),
                        "--out", str(out), "--task", str(task)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["image_natural_width"] == 400 and not info["page_errors"], info
