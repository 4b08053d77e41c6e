#!/usr/bin/env python
"""One DB network pass, as shipped vs folded (`pipeline/detectors/graph.py`): CPU-s and wall
seconds per pass on a 1024x768 input, 1 and 2 onnxruntime threads, the models interleaved so
the machine's drift hits them alike; and the largest difference of their probability maps on a
rendered text image.

    .venv/bin/python scripts/bench_graph.py --rounds 25 --json bench-results/graph.json

`--tuned` adds a torch export of the stock weights (what a tuned bundle holds; needs the
`train` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def session(data: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()      # as PPOCRDetector makes it
    opts.log_severity_level = 4
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def text_input() -> np.ndarray:
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    from pipeline.detectors.ppocr import preprocess

    im = Image.new("RGB", (640, 320), (228, 226, 220))
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 26)
    for i, line in enumerate(["SAMPLE 2024-117", "Dr. A. Example / 37.5 C", "scale 10 um", "ID 0042-B"]):
        draw.text((30, 30 + 70 * i), line, font=font, fill=(20, 20, 20))
    return preprocess(np.asarray(im)[..., ::-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=25, help="passes per model and thread count (1-1000)")
    ap.add_argument("--tuned", action="store_true", help="also a torch export of the stock weights")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.rounds <= 1000:
        ap.error(f"--rounds {args.rounds}: give 1-1000")

    from pipeline.detectors.graph import folded_bytes
    from pipeline.detectors.ppocr import default_model_path

    models = {"stock": default_model_path().read_bytes()}
    if args.tuned:
        from pipeline.detectors.dbnet import build_net, export_onnx_bytes

        models["tuned export"] = export_onnx_bytes(build_net())
    variants = {}
    for name, data in models.items():
        t0 = time.perf_counter()
        variants[(name, "as shipped")] = data
        variants[(name, "folded")] = folded_bytes(data)
        print(f"{name}: folded in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    probe = text_input()
    diffs = {}
    for name in models:
        a = session(variants[(name, "as shipped")], 1).run(None, {"x": probe})[0]
        b = session(variants[(name, "folded")], 1).run(None, {"x": probe})[0]
        diffs[name] = float(np.abs(a - b).max())

    x = np.random.default_rng(0).standard_normal((1, 3, 768, 1024)).astype(np.float32)
    rows = []
    for threads in (1, 2):
        sessions = {k: session(v, threads) for k, v in variants.items()}
        for s in sessions.values():
            s.run(None, {"x": x})
        cpu = {k: [] for k in sessions}
        wall = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, s in sessions.items():
                c0, w0 = time.process_time(), time.perf_counter()
                s.run(None, {"x": x})
                cpu[k].append(time.process_time() - c0)
                wall[k].append(time.perf_counter() - w0)
        for (name, form) in sessions:
            rows.append({"model": name, "graph": form, "threads": threads,
                         "cpu_s_median": float(np.median(cpu[(name, form)])),
                         "wall_s_median": float(np.median(wall[(name, form)])),
                         "max_map_difference": diffs[name] if form == "folded" else 0.0})

    print(f"\nDB pass on 1024x768, median of {args.rounds} (cpus: {os.cpu_count()})\n")
    print("| model | graph | threads | CPU-s / pass | wall s / pass | vs as shipped | max map difference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = {(r["model"], r["threads"]): r["cpu_s_median"] for r in rows if r["graph"] == "as shipped"}
    for r in rows:
        ratio = r["cpu_s_median"] / base[(r["model"], r["threads"])]
        print(f"| {r['model']} | {r['graph']} | {r['threads']} | {r['cpu_s_median']:.3f} | {r['wall_s_median']:.3f} "
              f"| {ratio:.2f}x | {r['max_map_difference']:.1e} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": args.rounds, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
