#!/usr/bin/env python
"""How visible each synthetic microscopy overlay is, and whether stock PP-OCR (one 1x pass) finds it.

For every overlay of bench_detect's MICRO set (rendered again from its seed, so the clean
background is known): its ink contrast (mean |luma(out) - luma(background)| over its ink pixels),
the background's noise there (std of the luma's high-pass inside its box), their ratio (CNR), and
the share of its ink inside the detector's boxes. Prints a table per kind and CNR band and
writes JSON. What it answers: how much of the microscopy gap is text a viewer can hardly see.

    .venv/bin/python scripts/micro_contrast.py [--json OUT] [--detector ppocr|BUNDLE.zip] [--scales 1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

LOW_CNR = 2.5   # below this the ink barely stands out of the background's own texture


def main() -> int:
    from scipy import ndimage

    from bench_detect import MICRO
    from pipeline.detectors import load_detector
    from pipeline.synth import synth_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--detector", default="ppocr")
    ap.add_argument("--scales", default=None,
                    help="DB detectors' passes, e.g. 1,2 (single glyphs need the 2x pass); default one 1x pass")
    args = ap.parse_args()
    try:
        det = load_detector(args.detector, **({"scales": tuple(args.scales.split(","))} if args.scales else {}))
    except ValueError as exc:
        ap.error(f"--scales {args.scales}: {exc}")
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    rows = []
    for i in range(MICRO.n_images):
        r = synth_image(i, MICRO)
        out = r.image[..., :3].astype(np.float32) @ luma
        bg = np.clip(np.rint(r.background), 0, 255)[..., :3].astype(np.float32) @ luma
        high = bg - ndimage.uniform_filter(bg, 5)
        found = np.zeros(out.shape, bool)
        for x0, y0, x1, y1 in det.detect([r.image])[0].boxes.astype(int):
            found[y0:y1, x0:x1] = True
        for k, ((x0, y0, x1, y1), kind) in enumerate(zip(r.boxes.astype(int), r.kinds)):
            ink = r.ink == k + 1
            if not ink.any():
                continue
            contrast = float(np.abs(out[ink] - bg[ink]).mean())
            noise = float(high[y0:y1, x0:x1].std()) + 1e-3
            rows.append({"image": i, "kind": kind, "text": r.texts[k], "ink": int(ink.sum()), "contrast": contrast,
                         "noise": noise, "cnr": contrast / noise, "found": float(found[ink].mean())})
    total = sum(x["ink"] for x in rows)

    def line(name: str, sel: list[dict]) -> dict:
        ink = sum(x["ink"] for x in sel)
        return {"group": name, "overlays": len(sel), "ink_share": ink / total if total else 0.0,
                "ink_found": sum(x["found"] * x["ink"] for x in sel) / ink if ink else float("nan")}

    table = [line("all", rows)]
    for kind in sorted({x["kind"] for x in rows}):
        sel = [x for x in rows if x["kind"] == kind]
        table.append(line(kind, sel))
        if kind == "watermark":
            table.append(line(f"watermark, CNR < {LOW_CNR}", [x for x in sel if x["cnr"] < LOW_CNR]))
            table.append(line(f"watermark, CNR >= {LOW_CNR}", [x for x in sel if x["cnr"] >= LOW_CNR]))
    table.append(line(f"all but watermarks with CNR < {LOW_CNR}",
                      [x for x in rows if not (x["kind"] == "watermark" and x["cnr"] < LOW_CNR)]))
    print(f"| overlays ({det.version}, passes {args.scales or 1}, box fill) | n | share of ink | ink found |")
    print("| --- | --- | --- | --- |")
    for t in table:
        print(f"| {t['group']} | {t['overlays']} | {t['ink_share']:.3f} | {t['ink_found']:.3f} |")
    if args.json:
        from pipeline.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"detector": det.version, "table": table, "overlays": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
