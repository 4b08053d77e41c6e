#!/usr/bin/env python
"""Curation benchmarks: duplicate/outlier engine speed, and label-noise detection AUROC.

1. Speed: both engines (`permissive`, `fastdup`) on N generated document-like images
   (default 5,000, 640x480 JPEG) with planted exact copies (lossless re-encodes), near copies
   (resized 50-90 %, JPEG quality 40-85) and outliers. Each engine runs in a fresh child process;
   reported: seconds, images/s, peak RSS (VmHWM of the textloop process and of the fastdup worker),
   and recall/precision of the planted duplicate pairs.
2. Label noise: on `--set` (devset format), with out-of-sample predictions of the frozen
   `ppocr` detector (it never saw these labels), inject errors into 10 % of the images (one of:
   drop a box, shift a box by 40-70 % of its size, add a box on background), score every image
   and measure the AUROC of the per-image score for "has an error", over several seeds.
   ppocr predictions are cached in `--cache` (keyed by image and detector version).
   `--detector BUNDLE.zip` uses a trained model instead (e.g. bench_detect's db-synth+devA); it
   must be out-of-sample, so pair it with `--half b` when it was trained on half A.

    .venv/bin/python scripts/bench_curate.py [--set DIR] [--json OUT] [--n-images 5000]
        [--engines permissive,fastdup] [--seeds 10] [--skip-speed] [--skip-noise]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SET = (REPO / ".." / "shared" / "data" / "devset").resolve()


# --- 1. speed ------------------------------------------------------------------------------------

def make_speed_pool(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> dict:
    """n images: ~95 % distinct pages (paper, screenshots), 2 % exact copies, 3 % near copies and
    n/500 outliers of mixed kinds (colour noise, photo-like, microscopy-like), cached by (n, seed)."""
    from PIL import Image

    from pipeline.curate.testdata import jpeg, outlier_image, png, text_page

    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("n") == n and m.get("seed") == seed and m.get("version") == 2:
            return m
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_exact, n_near, n_out = n // 50, n * 3 // 100, max(3, n // 500)
    n_base = n - n_exact - n_near - n_out
    files, pairs, outliers = [], [], []
    t0 = time.time()
    for i in range(n_base):
        im, _ = text_page(seed * 1_000_003 + i, size, kinds=("paper", "screenshot"))
        p = folder / f"base_{i:05d}.jpg"
        p.write_bytes(jpeg(im, quality=int(rng.integers(80, 95))))
        files.append(p.name)
        if i % 500 == 0:
            print(f"  generating {i}/{n_base} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    for j in range(n_exact):
        src = files[int(rng.integers(n_base))]
        with Image.open(folder / src) as im:
            p = folder / f"exact_{j:05d}.png"
            p.write_bytes(png(im.convert("RGB")))
        pairs.append((src, p.name, "exact"))
    for j in range(n_near):
        src = files[int(rng.integers(n_base))]
        scale, q = float(rng.uniform(0.5, 0.9)), int(rng.integers(40, 86))
        with Image.open(folder / src) as im:
            small = im.convert("RGB").resize((int(im.width * scale), int(im.height * scale)))
        p = folder / f"near_{j:05d}.jpg"
        p.write_bytes(jpeg(small, quality=q))
        pairs.append((src, p.name, "near"))
    for j in range(n_out):
        p = folder / f"outlier_{j:05d}.jpg"
        kind = ("noise", "photo", "micro")[j % 3]
        im = outlier_image(seed * 7919 + j, size) if kind == "noise" else text_page(seed * 7919 + j, size, kind=kind)[0]
        p.write_bytes(jpeg(im))
        outliers.append(p.name)
    all_files = files + [b for _, b, _ in pairs] + outliers
    m = {"n": n, "seed": seed, "version": 2, "files": all_files, "pairs": pairs, "outliers": outliers}
    manifest_path.write_text(json.dumps(m))
    return m


def run_engine_child(engine: str, folder: Path, out: Path) -> None:
    """Runs in the child process: one engine over the pool; writes timings and findings."""
    from pipeline.curate.duplicates import DuplicateConfig, ImageRef, find_duplicates
    from pipeline.io import peak_rss_mb

    m = json.loads((folder / "manifest.json").read_text())
    refs = [ImageRef(f, folder / f) for f in m["files"]]
    t0 = time.perf_counter()
    rep = find_duplicates(refs, DuplicateConfig(engine=engine))
    seconds = time.perf_counter() - t0
    self_kb = round(peak_rss_mb() * 1024)   # VmHWM: ru_maxrss would include the parent's RSS at fork time
    child_kb = rep.extra.get("fastdup_worker_peak_rss_kb") or 0
    # planted groups: a source and its copies (a source may have been copied more than once)
    group: dict[str, str] = {}
    for a, b, _ in m["pairs"]:
        g = group.get(a) or group.get(b) or a
        group[a] = group[b] = g
    dup = rep.pairs[rep.pairs["kind"] != "content_differs"]   # same layout, other content: not duplicates
    found = list(zip(dup["image_a"], dup["image_b"]))
    false_pairs = [(a, b) for a, b in found if group.get(a) is None or group.get(a) != group.get(b)]
    differs = rep.pairs[rep.pairs["kind"] == "content_differs"]
    planted_differs = sum(1 for a, b in zip(differs["image_a"], differs["image_b"])
                          if group.get(a) is not None and group.get(a) == group.get(b))
    # a planted copy counts as found when it lands in its source's duplicate group
    cluster = dict(zip(rep.images["image_id"], rep.images["cluster_id"]))
    hit = {kind: [bool(cluster.get(a)) and cluster.get(a) == cluster.get(b) for a, b, k in m["pairs"] if k == kind]
           for kind in ("exact", "near")}
    order = rep.images.sort_values("outlier_score", kind="mergesort")["image_id"].tolist()
    pos = {iid: k + 1 for k, iid in enumerate(order)}
    out_ranks = sorted(pos[o] for o in m["outliers"] if o in pos)
    flagged_out = set(rep.images.loc[rep.images["is_outlier_issue"], "image_id"])
    res = {
        "engine": engine, "images": len(refs), "seconds": round(seconds, 2),
        "images_per_s": round(len(refs) / seconds, 1),
        "peak_rss_mb": round(max(self_kb, child_kb) / 1024, 1),
        "peak_rss_textloop_mb": round(self_kb / 1024, 1), "peak_rss_fastdup_worker_mb": round(child_kb / 1024, 1),
        "exact_recall": round(float(np.mean(hit["exact"])), 3) if hit["exact"] else None,
        "near_recall": round(float(np.mean(hit["near"])), 3) if hit["near"] else None,
        "reported_pairs": len(found), "unplanted_pairs": len(false_pairs),
        "content_differs_pairs": len(differs), "planted_pairs_called_content_differs": planted_differs,
        "unplanted_examples": [[a, b] for a, b in false_pairs[:10]],
        "outlier_recall": round(len(flagged_out & set(m["outliers"])) / max(1, len(m["outliers"])), 3),
        "outliers_flagged": len(flagged_out),
        "outlier_ranks": out_ranks,  # rank of each planted outlier by outlier_score (1 = most outlying)
        "outliers_in_top_1pct": sum(r <= max(1, len(refs) // 100) for r in out_ranks),
        "broken": int(rep.images["is_broken_issue"].sum()),
    }
    out.write_text(json.dumps(res))


def bench_speed(n: int, engines: list[str], cache: Path) -> list[dict]:
    folder = cache / f"curate_pool_{n}"
    t0 = time.time()
    make_speed_pool(folder, n)
    print(f"pool: {n} images in {folder} ({time.time() - t0:.0f}s incl. generation if any)", file=sys.stderr)
    results = []
    for engine in engines:
        out = cache / f"curate_speed_{engine}_{n}.json"
        out.unlink(missing_ok=True)
        env = dict(os.environ, SENTRY_OPT_OUT="1")
        cmd = [sys.executable, __file__, "--_child-engine", engine, "--_child-folder", str(folder), "--_child-out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            results.append({"engine": engine, "error": tail[0][:300]})
        else:
            results.append(json.loads(out.read_text()))
        print(f"  {engine}: {results[-1]}", file=sys.stderr, flush=True)
    return results


# --- 2. label noise ------------------------------------------------------------------------------

def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (rank form, ties get half credit); higher s = more likely positive."""
    y = np.asarray(y, bool)
    s = np.asarray(s, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ppocr_predictions(set_dir: Path, cache: Path, scales: tuple[float, ...] = (1.0,), threads: int = 2,
                      detector: str = "ppocr") -> tuple[str, dict[str, dict]]:
    from pipeline.detectors import load_detector
    from pipeline.formats import read_devset
    from pipeline.imaging import load_rgb

    det = load_detector(detector, threads=threads, scales=scales)
    import hashlib

    key = str(set_dir.resolve()) if scales == (1.0,) else f"{set_dir.resolve()}|scales={scales}"
    if detector != "ppocr":
        key += f"|{det.version}"
    path = cache / f"ppocr_preds_{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("version") != det.version:
        data = {"version": det.version, "set": str(set_dir), "images": {}}
    recs = read_devset(set_dir)
    todo = [(p, r) for p, r in recs if f"{r.source}/{r.image}" not in data["images"]]
    t0 = time.time()
    for k, (p, r) in enumerate(todo, 1):
        try:
            d = det.detect([load_rgb(p)])[0]
        except Exception as exc:  # noqa: BLE001 - a bad image is skipped, not misaligned
            print(f"  {p}: skipped ({exc})", file=sys.stderr)
            continue
        data["images"][f"{r.source}/{r.image}"] = d.to_json()
        if k % 20 == 0:
            print(f"  ppocr {k}/{len(todo)} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return det.version, data["images"]


def _cached_reader(cache: Path, threads: int):
    """The label-noise recogniser with its readings kept across seeds (each seed re-reads the
    same clean boxes) and on disk (keyed by image path, box and reader version)."""
    import hashlib
    import pickle

    from pipeline.curate.label_noise import image_reader
    from pipeline.legibility import READER_VERSION

    path = cache / f"readings_{hashlib.sha256(READER_VERSION.encode()).hexdigest()[:8]}.pkl"
    memo: dict = pickle.loads(path.read_bytes()) if path.exists() else {}
    inner = image_reader(threads)
    dirty = [0]

    def read(it, boxes):
        keys = [(it.path, tuple(np.round(b, 1))) for b in np.asarray(boxes, float).reshape(-1, 4)]
        todo = [i for i, k in enumerate(keys) if k not in memo]
        if todo:
            for i, r in zip(todo, inner(it, np.asarray(boxes, float)[todo])):
                memo[keys[i]] = r
            dirty[0] += 1
            if dirty[0] % 20 == 0:
                cache.mkdir(parents=True, exist_ok=True)
                path.write_bytes(pickle.dumps(memo))
        return [memo[k] for k in keys]

    read.save = lambda: (cache.mkdir(parents=True, exist_ok=True), path.write_bytes(pickle.dumps(memo)))  # type: ignore[attr-defined]
    return read


def bench_noise(set_dir: Path, cache: Path, seeds: int, rate: float = 0.1, scales: tuple[float, ...] = (1.0,),
                threads: int = 2, detector: str = "ppocr", half: str = "all", first_seed: int = 0) -> dict:
    from pipeline.boxes import Detections
    from pipeline.curate.label_noise import LabelNoiseConfig, NoiseItem, score_label_noise
    from pipeline.curate.testdata import ERROR_KINDS, inject_error
    from pipeline.formats import read_devset

    from pipeline.formats import split_halves

    version, preds = ppocr_predictions(set_dir, cache, scales, threads, detector)
    recs = read_devset(set_dir)
    if half != "all":  # a model trained on one half is out-of-sample only on the other
        recs = split_halves(recs)[0 if half == "a" else 1]
    recs = [(p, r) for p, r in recs if f"{r.source}/{r.image}" in preds]
    reader = _cached_reader(cache, threads)
    scores = {"reading (label_score, default)": ("reading", "label_score"),
              "coverage (boxes only)": ("coverage", "label_score"),
              "cleanlab, calibrated thresholds": ("cleanlab", "label_score"),
              "cleanlab get_label_quality_scores (defaults)": ("coverage", "label_quality_score")}
    res: dict[str, dict] = {name: {"auroc": [], "by_kind": {k: [] for k in ERROR_KINDS}, "pooled": []} for name in scores}
    t0 = time.time()
    for seed in range(first_seed, first_seed + seeds):
        rng = np.random.default_rng(seed)
        n = len(recs)
        bad = set(rng.choice(n, max(1, round(rate * n)), replace=False).tolist())
        items, y, kinds = [], [], []
        for i, (p, r) in enumerate(recs):
            boxes, ign, kind = r.boxes, r.ignore, ""
            if i in bad:
                nb, kind = inject_error(boxes[~ign], r.width, r.height, ERROR_KINDS[int(rng.integers(len(ERROR_KINDS)))], rng)
                boxes = np.concatenate([nb, boxes[ign]])
                ign = np.concatenate([np.zeros(len(nb), bool), np.ones(int(ign.sum()), bool)])
            key = f"{r.source}/{r.image}"
            items.append(NoiseItem(key, boxes, Detections.from_json(preds[key]), ign, path=str(p)))
            y.append(i in bad)
            kinds.append(kind)
        y_arr = np.array(y)
        cache_rep: dict[str, object] = {}
        for name, (method, col) in scores.items():
            if method not in cache_rep:
                cache_rep[method] = score_label_noise(items, LabelNoiseConfig(method=method),
                                                      reader=reader).images.set_index("image_id")
            im = cache_rep[method]
            s = 1.0 - im.loc[[it.image_id for it in items], col].to_numpy(float)
            res[name]["auroc"].append(auroc(y_arr, s))
            res[name]["pooled"] += [(r.source, bool(b), float(v)) for (_, r), b, v in zip(recs, y, s)]
            for k in ERROR_KINDS:
                m = np.array([(not a) or b == k for a, b in zip(y, kinds)])
                if y_arr[m].any():
                    res[name]["by_kind"][k].append(auroc(y_arr[m], s[m]))
    reader.save()
    out = {"set": str(set_dir), "images": len(recs), "error_rate": rate, "seeds": seeds, "first_seed": first_seed, "detector": version,
           "seconds": round(time.time() - t0, 1), "scores": {}}
    for name, r in res.items():
        a = np.array(r["auroc"])
        # per source: every seed's images pooled (a clean image scores the same in every seed, so
        # pooling compares each source's errors with its own clean images)
        by_source = {}
        for src in sorted({x[0] for x in r["pooled"]}):
            ys = np.array([b for s_, b, _ in r["pooled"] if s_ == src])
            vs = np.array([v for s_, _, v in r["pooled"] if s_ == src])
            by_source[src] = {"auroc": round(auroc(ys, vs), 3) if ys.any() and not ys.all() else None,
                              "errors": int(ys.sum())}
        out["scores"][name] = {"auroc_mean": round(float(np.nanmean(a)), 3), "auroc_std": round(float(np.nanstd(a)), 3),
                               "auroc_per_seed": [round(float(v), 3) for v in a],
                               "by_kind": {k: round(float(np.nanmean(v)), 3) if v else None for k, v in r["by_kind"].items()},
                               "by_source": by_source}
    return out


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", type=Path, default=DEFAULT_SET, help="devset-format folder (label-noise benchmark)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--n-images", type=int, default=5000, help="generated images for the speed benchmark")
    ap.add_argument("--engines", default="permissive,fastdup")
    ap.add_argument("--seeds", type=int, default=10, help="noise-injection seeds for the AUROC")
    ap.add_argument("--first-seed", type=int, default=0, help="first noise-injection seed (fresh seeds: e.g. 100)")
    ap.add_argument("--cache", type=Path, default=REPO / "bench-results", help="generated pool and ppocr predictions")
    ap.add_argument("--ppocr-scales", default="1", help="scales of the ppocr passes that make the predictions, e.g. 1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--detector", default="ppocr", help="out-of-sample predictor: ppocr or a bundle.zip (e.g. a tuned db)")
    ap.add_argument("--half", choices=("all", "a", "b"), default="all",
                    help="score only this half of --set (split_halves); use b for a model trained on half A")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-noise", action="store_true")
    ap.add_argument("--_child-engine", help=argparse.SUPPRESS)
    ap.add_argument("--_child-folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.first_seed < 0 or args.threads < 1 or args.n_images < 1:
        ap.error("--seeds, --threads and --n-images must be >= 1, --first-seed >= 0")
    os.environ.setdefault("SENTRY_OPT_OUT", "1")
    if args._child_engine:
        run_engine_child(args._child_engine, args._child_folder, args._child_out)
        return 0
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    if not args.skip_speed:
        results["speed"] = bench_speed(args.n_images, [e for e in args.engines.split(",") if e], args.cache)
        print(f"\nCuration speed on {args.n_images} generated 640x480 images (2 % exact, 3 % near copies, 0.2 % outliers)")
        print(f"{'engine':<11} {'s':>7} {'img/s':>7} {'RSS MB':>7} {'worker MB':>9} {'exact rec':>9} {'near rec':>9} "
              f"{'pairs':>6} {'unplanted':>9} {'differs':>7} {'outl rec':>8} {'flagged':>7} {'outl top1%':>10}")
        for r in results["speed"]:
            if "error" in r:
                print(f"{r['engine']:<11} error: {r['error']}")
                continue
            print(f"{r['engine']:<11} {r['seconds']:>7.1f} {r['images_per_s']:>7.1f} {r['peak_rss_textloop_mb']:>7.0f} "
                  f"{r['peak_rss_fastdup_worker_mb']:>9.0f} "
                  f"{r['exact_recall']:>9} {r['near_recall']:>9} {r['reported_pairs']:>6} {r['unplanted_pairs']:>9} "
                  f"{r['content_differs_pairs']:>7} "
                  f"{r['outlier_recall']:>8} {r['outliers_flagged']:>7} "
                  f"{r['outliers_in_top_1pct']:>4}/{len(r['outlier_ranks']):<5}")
    if not args.skip_noise:
        if not args.set.exists():
            print(f"error: {args.set}: no such folder (--set)", file=sys.stderr)
            return 2
        scales = tuple(float(x) for x in args.ppocr_scales.split(",") if x.strip())
        noise = bench_noise(args.set, args.cache, args.seeds, scales=scales, threads=args.threads,
                            detector=args.detector, half=args.half, first_seed=args.first_seed)
        results["label_noise"] = noise
        print(f"\nLabel-noise AUROC on {noise['images']} images of {noise['set']} "
              f"({int(noise['error_rate'] * 100)} % with one error; seeds {noise['first_seed']}..{noise['first_seed'] + noise['seeds'] - 1}; predictions: {noise['detector']})")
        print(f"{'score':<46} {'AUROC':>12} {'drop':>6} {'shift':>6} {'add':>6}")
        for name, r in noise["scores"].items():
            k = r["by_kind"]
            print(f"{name:<46} {r['auroc_mean']:>6.3f}±{r['auroc_std']:<5.3f} {k['drop'] or float('nan'):>6.3f} "
                  f"{k['shift'] or float('nan'):>6.3f} {k['add'] or float('nan'):>6.3f}")
        print("\nper source (seeds pooled): " + ", ".join(
            f"{src} {v['auroc'] if v['auroc'] is not None else '-'} ({v['errors']} errors)"
            for src, v in next(iter(noise["scores"].values()))["by_source"].items()) + "  [default score]")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
