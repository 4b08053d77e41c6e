#!/usr/bin/env python
"""Benchmark `textloop redact`: throughput + peak RSS per detector (and the decode+encode floor)
on generated sets, and redaction quality on the devset measured from the output pixels.

Throughput: N JPEGs of 1024x768 and M 2048x2048 16-bit grayscale TIFFs with rendered text,
generated once under --work. Each (detector, set) runs in its own process through the same
code path as the CLI (`Redactor` + `run_local`), reporting images/s, peak RSS (VmHWM) and the
RSS after 25 % and 100 % of the images (flat = streaming). `floor` is a detector that finds
nothing: read + hash + decode + encode + write + sidecar, i.e. what redact costs without detection.

Quality: every devset image is copied losslessly (PNG, same pixels), redacted with a fill colour
that does not occur naturally (magenta), and the covered pixels are read back from the output:
text coverage = GT text pixels that came out magenta; over-redaction = magenta pixels outside
every GT box (don't-care boxes included), over all pixels. Detections are computed once per
detector and reused for the padding sweep, so the sweep is cheap; every number is still
measured on written files.

    .venv/bin/python scripts/bench_redact.py --json /tmp/bench_redact.json
    .venv/bin/python scripts/bench_redact.py --scale 0.2          # fewer images on a busy machine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS_COVERAGE = {"sroie": 0.98, "funsd": 0.98, "icdar2015": 0.92, "msra_td500": 0.92}
GOAL_OVER = 0.06
GOAL_OVER_NEG = 0.01
MAGENTA = (255, 0, 255)


# --- generated throughput sets --------------------------------------------------------------

def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def make_sets(work: Path, n_jpeg: int, n_tiff: int) -> dict[str, Path]:
    """jpeg/: n_jpeg 1024x768 JPEGs (q90); tiff/: n_tiff 2048x2048 uint16 gray TIFFs (deflate)."""
    import tifffile
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    jdir, tdir = work / "jpeg", work / "tiff"
    jdir.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    fonts = [_font(s) for s in (14, 20, 28, 40)]
    words = ["SAMPLE", "ID", "4711", "Patient", "Jane", "Roe", "2024-05-17", "lot", "B-12", "CONFIDENTIAL", "Dr.", "Smith"]
    base = np.linspace(60, 200, 1024)[None, :, None] * np.ones((768, 1, 3))
    for i in range(n_jpeg):
        p = jdir / f"img_{i:04d}.jpg"
        if p.exists():
            continue
        noise = rng.normal(0, 18, (768, 1024, 3))
        im = Image.fromarray(np.clip(base + noise + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 9))):
            text = " ".join(rng.choice(words, int(rng.integers(1, 4))))
            d.text((int(rng.integers(0, 800)), int(rng.integers(0, 720))), text, font=fonts[int(rng.integers(0, 4))],
                   fill=tuple(int(v) for v in rng.integers(0, 60, 3)) if rng.random() < 0.7 else (250, 250, 250))
        im.save(p, quality=90)
    yy, xx = np.mgrid[0:2048, 0:2048]
    for i in range(n_tiff):
        p = tdir / f"stack_{i:03d}.tif"
        if p.exists():
            continue
        img = rng.normal(2000, 300, (2048, 2048))
        for _ in range(12):  # cells
            cx, cy, r = rng.integers(100, 1948, 2), None, int(rng.integers(30, 120))
            cy = cx[1]
            cx = cx[0]
            img += 20000 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        label = Image.new("L", (2048, 2048), 0)
        d = ImageDraw.Draw(label)
        d.text((40, 40), f"S{i:04d} 40x 2024-05-17", font=_font(56), fill=255)
        d.text((1300, 1950), "scale 50 um", font=_font(40), fill=255)
        img = np.where(np.asarray(label) > 0, 60000, img)
        tifffile.imwrite(p, np.clip(img, 0, 65535).astype(np.uint16), photometric="minisblack", compression="zlib")
    return {"jpeg": jdir, "tiff": tdir}


# --- throughput child --------------------------------------------------------------------------

class NullDetector:
    name, version = "floor", "floor"

    def detect(self, images):
        from pipeline.boxes import Detections

        return [Detections() for _ in images]


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def build_detector(spec: str, threads: int = 2):
    if spec == "floor":
        return NullDetector()
    if spec == "fasterrcnn-untrained":  # throughput only: same network, random weights
        import torch

        from pipeline.detectors.fasterrcnn import FasterRCNNConfig, FasterRCNNDetector, build_model

        torch.manual_seed(0)
        return FasterRCNNDetector(build_model(FasterRCNNConfig()), FasterRCNNConfig(), threads=threads)
    from pipeline.detectors import load_detector

    if spec == "ppocr-ms":
        return load_detector("ppocr", scales=(1.0, 2.0))
    return load_detector(spec)


def child_throughput(spec: str, src: Path, out: Path, workers: int) -> dict[str, Any]:
    import shutil

    from pipeline.redact.run import RedactConfig, Redactor, plan, run_local

    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f"{out.name}.audit", ignore_errors=True)
    det = build_detector(spec)
    items, _, _ = plan(str(src), out)
    n = len(items)
    rss_quarter = math.nan
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    failed = boxes = 0
    for i, res in enumerate(run_local(Redactor(det, RedactConfig(force=True)), items, workers=workers), 1):
        failed += res.status == "failed"
        boxes += res.n_boxes
        if i == max(1, n // 4):
            rss_quarter = _rss_mb("VmRSS")
    dt = time.perf_counter() - t0
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    return {"cpu_s_per_image": round(cpu / n, 3), "detector": spec, "images": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 2),
            "peak_rss_mb": round(_rss_mb("VmHWM"), 1), "rss_25pct_mb": round(rss_quarter, 1),
            "rss_end_mb": round(_rss_mb("VmRSS"), 1), "failed": failed, "boxes": boxes}


def throughput(sets: dict[str, Path], detectors: list[str], work: Path, workers: int) -> list[dict[str, Any]]:
    rows = []
    for set_name, src in sets.items():
        for spec in ["floor", *detectors]:
            cmd = [sys.executable, __file__, "--child", spec, "--child-src", str(src),
                   "--child-out", str(work / "out" / f"{set_name}_{Path(spec).stem}"), "--workers", str(workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                rows.append({"set": set_name, "detector": spec, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            row = {"set": set_name, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"  {set_name:5s} {spec:22s} {row['images_per_s']:7.2f} img/s  peak RSS {row['peak_rss_mb']:7.1f} MB"
                  f"  (RSS at 25% {row['rss_25pct_mb']:.0f} MB, at end {row['rss_end_mb']:.0f} MB)"
                  f"  CPU {row['cpu_s_per_image']:.3f} s/image", flush=True)
    return rows


# --- quality on the devset -----------------------------------------------------------------------

class CachedDetector:
    """Wraps a detector; detections are computed once per distinct image (padding sweep)."""

    def __init__(self, det) -> None:
        self.det, self.name, self.version = det, det.name, det.version
        self.cache: dict[str, Any] = {}

    def detect(self, images):
        out = []
        for im in images:
            key = hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()
            if key not in self.cache:
                self.cache[key] = self.det.detect([im])[0]
            out.append(self.cache[key])
        return out


class ReplayDetector:
    """Detections recorded in the sidecars of an earlier quality run (`--replay NAME=AUDIT_DIR`),
    keyed by the detector's input pixels; redaction and the pixel measurement still run for real."""

    def __init__(self, audit: Path, src_root: Path, name: str) -> None:
        from pipeline.boxes import Detections
        from pipeline.redact import codec

        self.name, self.table = name, {}
        versions = set()
        for sc_path in sorted((audit / "sidecars").rglob("*.json")):
            sc = json.loads(sc_path.read_text())
            versions.add(sc["detector"]["version"])
            rel = sc_path.relative_to(audit / "sidecars").as_posix()[: -len(".json")]
            doc = codec.decode((src_root / rel).read_bytes())
            key = hashlib.sha1(codec.detector_rgb(doc.pages[0]).tobytes()).hexdigest()
            page = sc["pages"][0]
            self.table[key] = Detections(page["boxes"], page["scores"])
        self.version = "replay:" + ",".join(sorted(versions))

    def detect(self, images):
        return [self.table[hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()] for im in images]


class UnionDetector:
    """Union of several detectors' boxes (a committee for recall)."""

    def __init__(self, dets) -> None:
        self.dets = dets
        self.name = "+".join(d.name for d in dets)
        self.version = "+".join(d.version for d in dets)

    def detect(self, images):
        from pipeline.boxes import Detections

        per = [d.detect(images) for d in self.dets]
        return [Detections.concat([p[i] for p in per]) for i in range(len(images))]


def lossless_copies(devset: Path, work: Path) -> tuple[Path, list[tuple[str, Any]]]:
    """PNG copies of every devset image (same pixels as decoded), mirrored by source."""
    from PIL import Image

    from pipeline.formats import read_devset

    root = work / "devset_png"
    recs = []
    for path, rec in read_devset(devset):
        rel = f"{rec.source}/{Path(rec.image).with_suffix('.png').as_posix()}"
        dst = root / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                im.convert("RGB").save(dst)
        recs.append((rel, rec))
    return root, recs


def _poly_mask(polys, w: int, h: int):
    from PIL import Image, ImageDraw

    m = Image.new("1", (w, h), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        if len(p) >= 6:
            d.polygon([(float(p[i]), float(p[i + 1])) for i in range(0, len(p) - 1, 2)], fill=1)
    return np.asarray(m, dtype=bool)


def measure(out_root: Path, recs) -> dict[str, dict[str, float]]:
    """Per source: coverage vs boxes and vs polygons, fully covered boxes, over-redaction."""
    from PIL import Image

    from pipeline.boxes import to_int_pixels, union_mask

    acc: dict[str, dict[str, float]] = {}
    for rel, rec in recs:
        out = out_root / rel
        a = acc.setdefault(rec.source, {k: 0.0 for k in ("text", "cov", "ptext", "pcov", "nb", "nfull", "outside", "px", "missing")})
        if not out.exists():
            a["missing"] += 1
            continue
        arr = np.asarray(Image.open(out).convert("RGB"))
        h, w = arr.shape[:2]
        red = (arr == np.array(MAGENTA, np.uint8)).all(axis=2)
        care = rec.boxes[~rec.ignore]
        text = union_mask(care, w, h)
        any_gt = union_mask(rec.boxes, w, h)
        a["text"] += text.sum()
        a["cov"] += (text & red).sum()
        if rec.polys and len(rec.polys) == len(rec.boxes):
            pm = _poly_mask([p for p, ig in zip(rec.polys, rec.ignore) if not ig], w, h)
        else:
            pm = text
        a["ptext"] += pm.sum()
        a["pcov"] += (pm & red).sum()
        for x0, y0, x1, y1 in to_int_pixels(care, w, h):
            px = (x1 - x0) * (y1 - y0)
            a["nb"] += 1
            a["nfull"] += px <= 0 or red[y0:y1, x0:x1].sum() >= 0.95 * px
        a["outside"] += (red & ~any_gt).sum()
        a["px"] += w * h
    res = {}
    for src, a in sorted(acc.items()):
        res[src] = {
            "text_coverage": a["cov"] / a["text"] if a["text"] else math.nan,
            "text_coverage_poly": a["pcov"] / a["ptext"] if a["ptext"] else math.nan,
            "fully_covered": a["nfull"] / a["nb"] if a["nb"] else math.nan,
            "over_redaction": a["outside"] / a["px"] if a["px"] else math.nan,
            "missing": int(a["missing"]),
        }
    return res


def quality(devset: Path, work: Path, detectors: dict[str, Any], pads: list[str], threshold: float,
            default_pad: str) -> list[dict[str, Any]]:
    import shutil

    from pipeline.redact.core import Pad
    from pipeline.redact.run import RedactConfig, Redactor, plan, run_local

    src_root, recs = lossless_copies(devset, work)
    rows = []
    for det_name, det in detectors.items():
        cached = CachedDetector(det)
        for pad in pads:
            out = work / "quality" / f"{det_name}_{pad.replace('%', 'pc').replace('+', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.parent / f"{out.name}.audit", ignore_errors=True)
            items, _, _ = plan(str(src_root), out)
            cfg = RedactConfig(threshold=threshold, pad=Pad.parse(pad), color=MAGENTA, force=True)
            t0 = time.perf_counter()
            results = list(run_local(Redactor(cached, cfg), items, workers=1))
            dt = time.perf_counter() - t0
            failed = [r for r in results if r.status == "failed"]
            per = measure(out, recs)
            row = {"detector": det_name, "pad": pad, "threshold": threshold, "default": pad == default_pad,
                   "seconds": round(dt, 1), "failed": len(failed), "by_source": per}
            row["meets_goals"] = meets(per)
            rows.append(row)
            print("  " + fmt_quality_row(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)  # keep /tmp small; numbers are in the JSON
    return rows


def meets(per: dict[str, dict[str, float]]) -> bool:
    ok = True
    for src, m in per.items():
        if src in GOALS_COVERAGE:
            cov = m["text_coverage_poly"] if src == "msra_td500" else m["text_coverage"]
            ok &= cov >= GOALS_COVERAGE[src] and m["over_redaction"] <= GOAL_OVER
        elif src.startswith("negatives"):
            ok &= m["over_redaction"] <= GOAL_OVER_NEG
    return bool(ok)


def fmt_quality_row(row: dict[str, Any]) -> str:
    parts = [f"{row['detector']:12s} pad {row['pad']:9s}"]
    for src, m in row["by_source"].items():
        short = src.split("_")[0][:6]
        cov = m["text_coverage_poly"] if src == "msra_td500" else m["text_coverage"]
        parts.append(f"{short} {cov:.3f}/{m['over_redaction']:.3f}" if not math.isnan(cov)
                     else f"{short} -/{m['over_redaction']:.3f}")
    return "  ".join(parts) + ("  MEETS GOALS" if row["meets_goals"] else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=ROOT.parent / "shared" / "data" / "devset", help="devset folder")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--work", type=Path, default=Path("/tmp/textloop_bench_redact"))
    ap.add_argument("--detectors", default="ppocr,fasterrcnn-untrained",
                    help="throughput detectors: ppocr, ppocr-ms (scales 1,2: redact's default), fasterrcnn-untrained (random weights), or bundle.zip paths")
    ap.add_argument("--n-jpeg", type=int, default=500)
    ap.add_argument("--n-tiff", type=int, default=100)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply both counts (e.g. 0.2 on a busy machine)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pads", default="0px,2px,10%,2px+10%,2px+15%,4px+30%",
                    help="padding sweep for the quality part")
    ap.add_argument("--quality-detectors", default="ppocr,ppocr-ms",
                    help="ppocr, ppocr-ms (scales 1 and 2), ppocr+ms (union), or bundle.zip paths")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--replay", action="append", default=[],
                    help="NAME=AUDIT_DIR: reuse detections from an earlier run's sidecars (redaction and pixels measured anew)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child_throughput(args.child, args.child_src, args.child_out, args.workers)))
        return 0

    from pipeline.redact.run import DEFAULT_PAD, DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "default_pad": str(DEFAULT_PAD),
                              "default_threshold": threshold}
    if not args.skip_throughput:
        n_jpeg, n_tiff = max(1, round(args.n_jpeg * args.scale)), max(1, round(args.n_tiff * args.scale))
        print(f"generating {n_jpeg} JPEG 1024x768 and {n_tiff} TIFF 2048x2048 16-bit under {args.work} ...", flush=True)
        sets = make_sets(args.work / f"gen_{n_jpeg}_{n_tiff}", n_jpeg, n_tiff)
        result["throughput_counts"] = {"jpeg": n_jpeg, "tiff": n_tiff, "scale": args.scale}
        print("throughput (images/s, whole redact path, workers=%d):" % args.workers, flush=True)
        result["throughput"] = throughput(sets, [d for d in args.detectors.split(",") if d], args.work, args.workers)
    if not args.skip_quality:
        from pipeline.detectors import load_detector

        dets: dict[str, Any] = {}
        for name in [d for d in args.quality_detectors.split(",") if d]:
            if name == "ppocr":
                dets[name] = load_detector("ppocr")
            elif name == "ppocr-ms":
                dets[name] = load_detector("ppocr", scales=(1.0, 2.0))
            elif name == "ppocr+ms":
                dets[name] = UnionDetector([load_detector("ppocr"), load_detector("ppocr", scales=(1.0, 2.0))])
            else:
                dets[Path(name).stem] = load_detector(name)
        for spec in args.replay:
            name, _, audit = spec.partition("=")
            dets[name] = ReplayDetector(Path(audit), lossless_copies(args.set, args.work)[0], name)
        print(f"quality on {args.set} (coverage/over-redaction per source; msra against polygons; threshold {threshold}):",
              flush=True)
        result["quality"] = quality(args.set, args.work, dets, [p for p in args.pads.split(",") if p], threshold,
                                    str(DEFAULT_PAD))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
