"""Label Studio throughput: push N tasks with ~B predicted boxes each, pull N annotations, and
the ML backend's /predict latency for a 1024x768 image -- against a real local server.

    .venv/bin/python scripts/bench_studio.py --tasks 2000 --boxes 10 --json bench-results/studio.json

Starts `label-studio` from .venv-ls on a free loopback port in a temp dir (or uses --url/--token).
Catalog rows and predictions are synthetic (push does not read pixels); /predict runs the real
default detector (`current`, i.e. PP-OCR until a model is promoted) on a devset image if --set
has one of 1024x768 or larger (resized), else on a generated image with rendered text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.catalog import dumps  # noqa: E402
from pipeline.studio.client import connect  # noqa: E402
from pipeline.studio.launcher import start_local, stop_pid  # noqa: E402
from pipeline.studio.project import init_project  # noqa: E402
from pipeline.studio.pull import pull  # noqa: E402
from pipeline.studio.push import push_images  # noqa: E402
from pipeline.workspace import Workspace  # noqa: E402


def synthetic_catalog(ws: Workspace, n: int, boxes: int, version: str) -> None:
    rng = np.random.default_rng(0)
    now = time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        for i in range(n):
            iid = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
            tx.execute("INSERT INTO images(id, path, source, original_name, bytes, width, height, format, mode, bit_depth, "
                       "split, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (iid, ws.image_relpath(iid, "jpg"), "bench", f"b{i}.jpg", 1, 1024, 768, "JPEG", "RGB", 8, "train", "new", now))
            x0 = rng.uniform(0, 900, boxes)
            y0 = rng.uniform(0, 700, boxes)
            b = np.stack([x0, y0, x0 + rng.uniform(20, 120, boxes), y0 + rng.uniform(10, 60, boxes)], 1).round(2).tolist()
            tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at) VALUES (?,?,?,?,?,?)",
                       (iid, version, dumps(b), dumps(rng.uniform(0.3, 1, boxes).round(3).tolist()), dumps([0] * boxes), now))


def annotated_project(ws_root: Path, studio, n: int, boxes: int) -> tuple[Workspace, float]:
    """A second workspace whose project holds n tasks with one submitted annotation each, made
    by bulk import (creating annotations one request at a time runs at ~5-10/s here and would
    dominate the benchmark). Returns the workspace and the import time."""
    ws = Workspace.open(ws_root)
    init = init_project(ws, studio, title="bench pull")
    synthetic_catalog(ws, n, boxes, "bench-v1")
    from pipeline.studio.convert import detections_to_results
    from pipeline.studio.project import render_label_config
    from pipeline.predict import load_predictions

    cfg = render_label_config()
    with ws.catalog() as cat:
        ids = [r["id"] for r in cat.images()]
        preds = load_predictions(cat, "bench-v1", ids)
    t0 = time.perf_counter()
    for i in range(0, n, 250):
        payload = [{"data": {"image": "/data/local-files/?d=x", "image_id": iid},
                    "annotations": [{"result": detections_to_results(preds[iid], 1024, 768, cfg)}]} for iid in ids[i:i + 250]]
        studio.sdk.projects.import_tasks(id=init.project_id, request=payload)
    return ws, time.perf_counter() - t0


def predict_latency(ws: Workspace, devset: Path, n: int = 15) -> dict:
    import httpx
    from PIL import Image, ImageDraw, ImageFont

    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.serve import create_app, serving

    src = Path(tempfile.mkdtemp(prefix="bench-img-"))
    img = None
    try:
        from pipeline.formats import read_devset

        for path, rec in read_devset(devset):
            if rec.width >= 1024 and rec.height >= 768:
                img = Image.open(path).convert("RGB").resize((1024, 768))
                origin = f"devset {path.parent.parent.name}/{path.name} resized to 1024x768"
                break
    except (FileNotFoundError, ValueError, OSError):
        pass
    if img is None:
        from matplotlib import font_manager

        img = Image.new("RGB", (1024, 768), (90, 110, 130))
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 28)
        d = ImageDraw.Draw(img)
        for k in range(6):
            d.text((40 + 60 * k, 60 + 110 * k), f"SAMPLE-{k:03d} 2024-06-0{k}", fill="white", font=font)
        origin = "generated 1024x768 with 6 text lines"
    img.save(src / "bench.jpg", quality=92)
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    with ws.catalog() as cat:
        image_id = cat.query("SELECT id FROM images WHERE original_name = 'bench.jpg'")[0]["id"]
    app = create_app(ws)
    with serving(app) as url:
        body = {"tasks": [{"id": 1, "data": {"image_id": image_id, "image": "x"}}]}
        lat = []
        with httpx.Client(timeout=60) as c:
            c.post(f"{url}/predict", json=body)  # warm-up
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(f"{url}/predict", json=body)
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
            boxes = len(r.json()["results"][0]["result"])
    from pipeline.imaging import load_rgb

    rgb = load_rgb(src / "bench.jpg")
    alone = []
    for _ in range(n):
        t0 = time.perf_counter()
        app.state.backend._detector.detect([rgb])
        alone.append(time.perf_counter() - t0)
    return {"p50_ms": 1000 * statistics.median(lat), "p90_ms": 1000 * float(np.percentile(lat, 90)),
            "detector_p50_ms": 1000 * statistics.median(alone),
            "model_version": app.state.backend.model_version, "boxes": boxes, "image": origin, "requests": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=REPO.parent / "shared" / "data" / "devset")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--url", help="use this server instead of starting one (needs --token; served root = workspace)")
    ap.add_argument("--token")
    ap.add_argument("--predict-only", action="store_true", help="only the /predict latency (no Label Studio)")
    args = ap.parse_args()
    if args.predict_only:
        tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
        lat = predict_latency(Workspace.open(tmp / "ws"), args.set)
        print(f"| ML backend /predict | {lat['image']} | p50 {lat['p50_ms']:.0f} ms | p90 {lat['p90_ms']:.0f} ms "
              f"| detector alone p50 {lat['detector_p50_ms']:.0f} ms | load {os.getloadavg()[0]:.1f} |")
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    root = tmp / "files"
    root.mkdir()
    proc = None
    t0 = time.perf_counter()
    if args.url:
        url, token = args.url, args.token
    else:
        token = hashlib.sha1(str(time.time()).encode()).hexdigest()[:32]
        info, proc = start_local(root, tmp / "data", username="bench@textloop.local", password="bench-pass-123",
                                 token=token, timeout=400)
        url = info.url
    start_s = time.perf_counter() - t0
    try:
        ws = Workspace.open(root / "ws")
        studio = connect(url, token, local_files_root=root)
        init_project(ws, studio, title="bench")
        synthetic_catalog(ws, args.tasks, args.boxes, "bench-v1")
        t0, c0 = time.perf_counter(), time.process_time()
        res = push_images(ws, None, client=studio, model_version="bench-v1")
        push_s, push_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert res.tasks_created == args.tasks, res
        t0 = time.perf_counter()
        res2 = push_images(ws, None, client=studio, model_version="bench-v1")
        repush_s = time.perf_counter() - t0
        assert res2.tasks_created == 0
        ws2, annotate_s = annotated_project(root / "ws_pull", studio, args.tasks, args.boxes)
        annotate_how = "bulk import of annotated tasks"
        t0, c0 = time.perf_counter(), time.process_time()
        counts = pull(ws2, studio)
        pull_s, pull_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert counts.new == args.tasks, counts
        t0 = time.perf_counter()
        again = pull(ws2, studio)
        repull_s = time.perf_counter() - t0
        assert again.unchanged == args.tasks
        latency = predict_latency(ws, args.set)
    finally:
        if proc is not None:
            stop_pid(proc.pid)
    out = {
        "tasks": args.tasks, "boxes_per_task": args.boxes, "server_start_s": round(start_s, 1),
        "push_s": round(push_s, 2), "push_client_cpu_s": round(push_cpu, 2), "push_tasks_per_s": round(args.tasks / push_s, 1),
        "repush_noop_s": round(repush_s, 2),
        "annotate_s": round(annotate_s, 1), "annotate_how": annotate_how,
        "pull_s": round(pull_s, 2), "pull_client_cpu_s": round(pull_cpu, 2), "pull_annotations_per_s": round(args.tasks / pull_s, 1),
        "repull_noop_s": round(repull_s, 2),
        "predict_p50_ms": round(latency["p50_ms"], 1), "detector_alone_p50_ms": round(latency["detector_p50_ms"], 1), "predict_p90_ms": round(latency["p90_ms"], 1),
        "load_average": round(os.getloadavg()[0], 1), "predict_model": latency["model_version"], "predict_boxes": latency["boxes"], "predict_image": latency["image"],
    }
    rows = [("push", f"{args.tasks} tasks x {args.boxes} boxes", f"{push_s:.2f} s", f"{out['push_tasks_per_s']} tasks/s", ">= 200 tasks/s"),
            ("push again (no-op)", f"{args.tasks} tasks", f"{repush_s:.2f} s", "", ""),
            ("pull", f"{args.tasks} annotations", f"{pull_s:.2f} s", f"{out['pull_annotations_per_s']} annotations/s", ">= 500 annotations/s"),
            ("pull again (no-op)", f"{args.tasks} annotations", f"{repull_s:.2f} s", "", ""),
            ("ML backend /predict", latency["image"], f"p50 {latency['p50_ms']:.0f} ms", f"p90 {latency['p90_ms']:.0f} ms", "p50 < 500 ms"),
            ("detector alone", "same image, in-process", f"p50 {latency['detector_p50_ms']:.0f} ms", "", "")]
    print("| step | work | time | rate | goal |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"(textloop's own CPU: push {push_cpu:.1f} s, pull {pull_cpu:.1f} s -- the rest is Label Studio; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"(server start {start_s:.0f} s; labelling {args.tasks} tasks by SDK ({annotate_how}) took {annotate_s:.0f} s; "
          f"/predict model {latency['model_version']}, {latency['boxes']} boxes)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
