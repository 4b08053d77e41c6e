#!/usr/bin/env python
"""`redact --engine ray` on this machine: images/s with 1, 2, ... actors (issue 13 asks that
throughput grow with actors), each actor running the detector threads `SpecFactory.of` gives
it (`engines.call_threads`: the cores shared out), plus the old layout for comparison (every
actor two threads while reserving one CPU). The benchmark's generated 1024x768 JPEGs
(`bench_redact.make_sets`), a local Ray instance started once, one warm-up run, then the
configurations interleaved for `--rounds` rounds so the machine's drift hits them alike.
Wall time of `ray_engine.run_ray` from the first item to the last result (actor start-up
included, Ray's own start-up not).

    .venv/bin/python scripts/bench_ray.py --n 50 --rounds 2 --json bench-results/ray.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/textloop-bench-ray"))
    ap.add_argument("--n", type=int, default=50, help="JPEGs (1-5000)")
    ap.add_argument("--actors", default="1,2", help="actor counts to compare, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the configurations (1-20)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.n <= 5000 or not 1 <= args.rounds <= 20:
        ap.error("--n must be 1-5000 and --rounds 1-20")
    try:
        actors = [int(a) for a in args.actors.split(",")]
    except ValueError:
        ap.error(f"--actors {args.actors!r}: give whole numbers, e.g. 1,2")
    if not actors or min(actors) < 1 or max(actors) > 64:
        ap.error("--actors: each 1-64")

    from bench_redact import make_sets

    from pipeline.detectors import load_detector
    from pipeline.engines import SpecFactory, init_ray
    from pipeline.redact.ray_engine import run_ray
    from pipeline.redact.run import Item, RedactConfig, pass_options

    src = make_sets(args.work, args.n, 0)["jpeg"]
    paths = sorted(src.glob("*.jpg"))
    det = load_detector("ppocr", **pass_options())

    class OldLayout(SpecFactory):   # before 2026-12-05: two threads per actor, one CPU reserved
        @property
        def cpus(self) -> float:
            return 1.0

    configs: list[tuple[str, int, SpecFactory]] = [
        (f"{a} actor(s), {SpecFactory.of('ppocr', det, pass_options(), workers=a).options['threads']} thread(s) each",
         a, SpecFactory.of("ppocr", det, pass_options(), workers=a)) for a in actors]
    if max(actors) > 1:
        configs.append((f"{max(actors)} actors, 2 threads each, 1 CPU reserved (old)", max(actors),
                        OldLayout("ppocr", {**pass_options(), "threads": 2}, version=str(det.version))))

    def run(factory: SpecFactory, workers: int, n: int) -> float:
        out = args.work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        items = [Item(str(p), p.name, str(out / p.name), str(out / f"{p.name}.json")) for p in paths[:n]]
        t0 = time.perf_counter()
        results = list(run_ray(factory, RedactConfig(), items, workers))
        dt = time.perf_counter() - t0
        bad = [r for r in results if r.status != "redacted"]
        if len(results) != n or bad:
            raise SystemExit(f"ray run failed: {len(results)} results, {len(bad)} not redacted")
        return dt

    init_ray()
    run(configs[0][2], configs[0][1], min(4, len(paths)))   # warm-up: Ray's workers, the folded-graph cache
    rows: dict[str, dict[str, Any]] = {name: {"config": name, "actors": a, "cpus_per_actor": f.cpus, "seconds": []}
                                       for name, a, f in configs}
    for _ in range(args.rounds):
        for name, a, f in configs:
            rows[name]["seconds"].append(run(f, a, len(paths)))
            print(f"  {name}: {len(paths) / rows[name]['seconds'][-1]:.2f} images/s", file=sys.stderr, flush=True)
    print(f"redact --engine ray, {len(paths)} JPEGs 1024x768, default detector, {args.rounds} round(s):")
    print(f"{'configuration':<52} {'images/s (each round)':<26} best")
    for r in rows.values():
        r["images_per_s"] = [round(len(paths) / s, 3) for s in r["seconds"]]
        print(f"{r['config']:<52} {' / '.join(f'{x:.2f}' for x in r['images_per_s']):<26} {max(r['images_per_s']):.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": len(paths), "rows": list(rows.values())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
