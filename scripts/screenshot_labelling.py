#!/usr/bin/env python
"""Screenshot of Label Studio's labelling page for a pushed task, with its pre-annotated boxes.

Logs into the local Label Studio (started by `textloop studio up`, or the test fixture) as the
admin from the environment / `.env` (LABEL_STUDIO_URL, LABEL_STUDIO_USERNAME,
LABEL_STUDIO_PASSWORD), opens a task of the workspace's project in headless Chromium and saves
a small PNG (downscaled, 256 colours) for the README:

    .venv/bin/python scripts/screenshot_labelling.py --workspace data --out docs/img/labelling.png

Needs Debian's `chromium` (apt-get install chromium) and Playwright for Python (`pip install
playwright`); never `playwright install` (it downloads a browser). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """Debian's chromium (or $TEXTLOOP_CHROMIUM); None when there is none."""
    for cand in (os.environ.get("TEXTLOOP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and Path(cand).exists():
            return cand
    return None


def small_png(png: bytes, max_width: int = 1100, colours: int = 256) -> bytes:
    """Downscale and quantise a screenshot so it stays well under 200 KB in the repo."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    im = im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def pick_task(studio: Any, project_id: int, task_id: int | None) -> tuple[int, int, str, str, str]:
    """(task id, boxes in its newest prediction, file name, review note, the file its image URL
    names): the given task, else the first with boxes."""
    tasks = list(studio.sdk.tasks.list(project=project_id, fields="all", page_size=100))
    if task_id is not None:
        tasks = [t for t in tasks if int(t.id) == task_id]
        if not tasks:
            raise SystemExit(f"task {task_id} is not in project {project_id}")

    def boxes(t: Any) -> int:
        preds = [p if isinstance(p, dict) else p.dict() for p in (t.predictions or [])]
        return len(preds[-1]["result"]) if preds else 0

    tasks.sort(key=lambda t: (-min(boxes(t), 6), int(t.id)))
    if not tasks:
        raise SystemExit(f"project {project_id} has no tasks: run `textloop push` first")
    t = tasks[0]
    data = t.data or {}
    url = next((str(v) for v in data.values() if "local-files" in str(v)), "")
    return (int(t.id), boxes(t), str(data.get("file_name", "")), str(data.get("review_note") or ""),
            url.partition("?d=")[2])


REGION = "[class*='tree__node_type_rectangleregion']"   # one per box in the Regions panel (LS 1.23)


def screenshot(url: str, username: str, password: str, project_id: int, task_id: int, out: Path,
               width: int = 1280, height: int = 820, timeout_s: float = 90.0, boxes: int = 0,
               image: str = "") -> dict[str, Any]:
    """Log in, open the task in the labelling view, wait for the image and the boxes, save.
    `image`: the file the task's URL names (`d=`): its own <img> is measured, not the data
    manager's thumbnails of other tasks (a broken picture measures 0)."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise SystemExit("chromium not found: apt-get install chromium (or set TEXTLOOP_CHROMIUM)")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/user/login/")
            page.fill("input[name=email]", username)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            if "/user/login" in page.url:
                raise SystemExit(f"login to {url} as {username} failed: check LABEL_STUDIO_USERNAME/PASSWORD")
            page.goto(f"{url}/projects/{project_id}/data?task={task_id}")
            # the task's image in the labelling area, loaded (or failed: complete with no width)
            mine = f"i => i.src.includes('local-files') && i.src.includes({json.dumps(image)})"
            page.wait_for_function(f"() => [...document.querySelectorAll('img')].some(i => ({mine})(i) && i.complete)")
            if boxes:  # the pre-annotation's regions, listed once the canvas has them
                page.wait_for_function(f"() => document.querySelectorAll(\"{REGION}\").length >= {min(boxes, 5)}")
            page.wait_for_load_state("networkidle")
            time.sleep(1.5)  # let the canvas finish drawing
            natural = page.evaluate(
                f"() => Math.max(0, ...[...document.querySelectorAll('img')].filter({mine}).map(i => i.naturalWidth))")
            text = page.inner_text("body")
            regions = page.evaluate(f"() => document.querySelectorAll(\"{REGION}\").length")
            png = page.screenshot(full_page=False)
        finally:
            browser.close()
    data = small_png(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return {"out": str(out), "bytes": len(data), "task": task_id, "image_natural_width": natural,
            "regions_listed": regions, "page_errors": errors, "_text": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", "-w", type=Path, default=Path(os.environ.get("TEXTLOOP_WORKSPACE", "data")))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "labelling.png")
    ap.add_argument("--task", type=int, default=None, help="task id (default: a task with pre-annotated boxes)")
    ap.add_argument("--url", default=None, help="Label Studio URL (default: LABEL_STUDIO_URL)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=820)
    args = ap.parse_args(argv)

    from pipeline.studio.client import connect, load_settings
    from pipeline.studio.project import get_project
    from pipeline.workspace import Workspace

    settings = load_settings(args.url)
    if not settings.password:
        raise SystemExit("set LABEL_STUDIO_PASSWORD (environment or .env) to log into Label Studio")
    ws = Workspace.open(args.workspace)
    studio = connect(settings.url, local_files_root=os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None)
    project = get_project(ws, studio)
    task_id, n_boxes, file_name, note, image = pick_task(studio, project.id, args.task)
    res = screenshot(settings.url, settings.username, settings.password, project.id, task_id, args.out,
                     args.width, args.height, boxes=n_boxes, image=image)
    text = res.pop("_text")
    res.update(project=project.id, predicted_boxes=n_boxes, file_name=file_name,
               page_text_has_file_name=bool(file_name) and file_name in text, review_note=note,
               page_text_has_review_note=bool(note) and note in text,
               page_text_has_unfilled_field="$review_note" in text or "$file_name" in text)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
