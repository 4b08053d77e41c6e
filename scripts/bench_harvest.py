"""Harvest throughput and memory: folder and loopback-HTTP harvest vs the floor
"read + sha256 + full decode" in a plain loop, all in one run.

    .venv/bin/python scripts/bench_harvest.py --n 2000 --json bench-results/harvest.json

Each measurement runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 255 // (w + h))], -1).astype(np.int16)
    for i in range(n):
        p = folder / f"img_{i:05d}.jpg"
        if p.exists():
            continue
        noise = rng.integers(-20, 20, (h // 8, w // 8, 3), dtype=np.int16).repeat(8, 0).repeat(8, 1)
        arr = np.clip(base + noise + (i % 50), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(p, quality=90)


def floor_loop(folder: Path) -> dict:
    t0 = time.perf_counter()
    n = 0
    for p in sorted(folder.glob("*.jpg")):
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        n += 1
    return {"images": n, "seconds": time.perf_counter() - t0}


def harvest_run(source: str, workspace: Path, workers: int) -> dict:
    from pipeline.config import HarvestConfig
    from pipeline.harvest import harvest
    from pipeline.workspace import Workspace

    ws = Workspace.open(workspace)
    t0 = time.perf_counter()
    sources = [source] if not source.startswith("http") else [
        l.strip() for l in Path(source.split("|", 1)[1]).read_text().splitlines() if l.strip()]
    s = harvest(ws, sources, HarvestConfig(workers=workers))
    return {"images": s.new + s.duplicates, "rejected": sum(s.rejected.values()), "seconds": time.perf_counter() - t0}


def child(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print JSON with its peak RSS."""
    if args.child == "floor":
        out = floor_loop(Path(args.folder))
    else:
        out = harvest_run(args.source, Path(args.workspace), args.workers)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Worker processes: the largest one (RUSAGE_CHILDREN reports the max over children).
    out["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(*extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--dir", type=Path, default=None, help="where to generate images (default: a temp dir)")
    ap.add_argument("--set", default=None, help="unused (harvest is measured on generated images)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", choices=["floor", "harvest"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    w, h = (int(v) for v in args.size.split("x"))
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_harvest_"))
    folder = root / "images"
    t0 = time.perf_counter()
    make_images(folder, args.n, (w, h))
    print(f"generated {args.n} {w}x{h} JPEGs in {time.perf_counter() - t0:.1f}s under {folder}", file=sys.stderr)

    rows = []
    floor = run_child("--child", "floor", "--folder", str(folder))
    rows.append(("floor: read+sha256+decode (1 thread)", floor))
    folder_ws = root / "ws_folder"
    res = run_child("--child", "harvest", "--source", str(folder), "--workspace", str(folder_ws), "--workers", str(args.workers))
    rows.append((f"harvest folder ({args.workers} workers)", res))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = root / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{server.server_address[1]}/{p.name}\n" for p in sorted(folder.glob("*.jpg"))))
    res = run_child("--child", "harvest", "--source", f"http|{urls}", "--workspace", str(root / "ws_http"), "--workers", str(args.workers))
    server.shutdown()
    rows.append((f"harvest loopback HTTP ({args.workers} workers)", res))

    floor_ips = floor["images"] / floor["seconds"]
    table = []
    print(f"\n{'run':45} {'images':>7} {'img/s':>8} {'x floor':>8} {'peak RSS MB':>12} {'worker RSS MB':>14}")
    for name, r in rows:
        ips = r["images"] / r["seconds"]
        table.append({"run": name, "images": r["images"], "images_per_s": round(ips, 1),
                      "ratio_to_floor": round(ips / floor_ips, 2), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                      "peak_rss_worker_mb": round(r.get("peak_rss_worker_mb", 0.0), 1)})
        print(f"{name:45} {r['images']:>7} {ips:>8.1f} {ips / floor_ips:>8.2f} {r['peak_rss_mb']:>12.1f}"
              f" {r.get('peak_rss_worker_mb', 0.0):>14.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n": args.n, "size": args.size, "cpus": os.cpu_count(), "rows": table}, indent=2))


if __name__ == "__main__":
    main()
