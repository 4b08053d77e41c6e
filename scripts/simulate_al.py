"""Active-learning simulation on a devset-format set with its ground truth as the oracle.

    .venv/bin/python scripts/simulate_al.py --base-bundle BUNDLE.zip --json bench-results/al.json

The set is split by the fixed benchmark rule (`pipeline.formats.split_halves`): the first half is
the unlabelled pool, the second half the test set. Each run starts from the same base model
(trained on synthetic data only), then for `--rounds` rounds: the strategy picks `--k` images
from the pool, the oracle labels them, the model is fine-tuned from the previous round on
labelled + synthetic images for `--steps` steps, and text coverage is measured on the test
set. `labels_to_target` = the number of labels at the first round whose coverage reaches the
target (default: halfway between the base model and the best coverage any run reached).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.bundle import load_bundle, save_bundle  # noqa: E402
from pipeline.boxes import Detections  # noqa: E402
from pipeline.detectors.ppocr import PPOCRDetector  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.formats import read_devset, split_halves  # noqa: E402
from pipeline.imaging import load_rgb  # noqa: E402
from pipeline.rank import committee_score, random_score, uncertainty_score  # noqa: E402
from pipeline.synth import SynthConfig, generate  # noqa: E402
from pipeline.train import Sample, TrainConfig, samples_from_devset, samples_from_jsonl, train  # noqa: E402

STRATEGIES = ("random", "uncertainty", "committee")


def detect_all(det, items, min_score: float = 0.05) -> list[Detections]:
    return [det.detect([load_rgb(p)])[0].filter(min_score) for p, _ in items]


def coverage(det, test, threshold: float = 0.3) -> dict:
    preds = [d.filter(threshold) for d in detect_all(det, test)]
    m = evaluate([r for _, r in test], preds)
    return {"text_coverage": float(m["text_coverage"]), "f1": float(m["f1"]), "over_redaction": float(m["over_redaction"])}


def pick(strategy: str, det, pool, labelled: set[str], k: int, seed: int, committee: dict[str, Detections]) -> list[int]:
    cand = [i for i, (_, r) in enumerate(pool) if f"{r.source}/{r.image}" not in labelled]
    if strategy == "random":
        scores = [random_score(f"{pool[i][1].source}/{pool[i][1].image}", seed) for i in cand]
    else:
        preds = detect_all(det, [pool[i] for i in cand])
        scores = []
        for i, d in zip(cand, preds):
            r = pool[i][1]
            if strategy == "uncertainty":
                scores.append(uncertainty_score(d, r.width, r.height))
            else:
                scores.append(committee_score(d, committee[f"{r.source}/{r.image}"], r.width, r.height))
        # ties (and equal scores) broken by the seed so seeds differ
        scores = [s + 1e-9 * random_score(f"{pool[i][1].image}", seed) for s, i in zip(scores, cand)]
    order = np.argsort(-np.asarray(scores), kind="stable")
    return [cand[j] for j in order[:k]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=REPO.parent / "shared" / "data" / "devset")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--base-bundle", type=Path, required=True, help="model trained on synthetic data only (e.g. from bench_detect)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/textloop_al"))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps per round")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--test-limit", type=int, default=24, help="evaluate on this many test images (every n-th)")
    ap.add_argument("--synth-images", type=int, default=40)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t_start = time.time()
    records = [x for x in read_devset(args.set) if len(x[1].boxes) or x[1].source != "negatives_skimage"]
    pool, test = split_halves(records)
    if args.test_limit and len(test) > args.test_limit:
        step = len(test) / args.test_limit
        test = [test[int(i * step)] for i in range(args.test_limit)]
    args.work.mkdir(parents=True, exist_ok=True)
    synth_dir = args.work / "synth"
    if not (synth_dir / "boxes.jsonl").exists():
        generate(synth_dir, SynthConfig(n_images=args.synth_images, seed=4242))
    synth = samples_from_jsonl(synth_dir / "boxes.jsonl", "synth/")
    print(f"pool {len(pool)} images, test {len(test)}, synthetic {len(synth)}", file=sys.stderr)

    ppocr = PPOCRDetector()
    committee = {f"{r.source}/{r.image}": d for (p, r), d in zip(pool, detect_all(ppocr, pool))}
    base = load_bundle(args.base_bundle)
    base_m = coverage(base, test)
    print(f"base model: coverage {base_m['text_coverage']:.3f} f1 {base_m['f1']:.3f}", file=sys.stderr)

    results: dict[str, dict] = {}
    for strategy in args.strategies.split(","):
        res: dict = {"labels_to_target": [], "curves": [], "f1_curves": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            labelled: set[str] = set()
            chosen: list[Sample] = []
            model_path, det = args.base_bundle, base
            curve, f1c = [[0, base_m["text_coverage"]]], [[0, base_m["f1"]]]
            for rnd in range(args.rounds):
                picks = pick(strategy, det, pool, labelled, args.k, seed, committee)
                for i in picks:
                    labelled.add(f"{pool[i][1].source}/{pool[i][1].image}")
                chosen += samples_from_devset([pool[i] for i in picks])
                out = args.work / f"{strategy}-s{seed}-r{rnd}"
                cfg = TrainConfig(out_dir=str(out), epochs=1, steps_per_epoch=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, warmup_steps=args.warmup, seed=seed, threads=args.threads, human_fraction=0.7,
                                  parent_bundle=str(model_path), patience=100)
                r = train(cfg, synth, chosen, [])
                model_path = out / "bundle.zip"
                save_bundle(model_path, r.model, r.config.model, {}, r.train_keys, version=f"al-{strategy}-{seed}-{rnd}")
                det = load_bundle(model_path)
                m = coverage(det, test)
                curve.append([len(labelled), m["text_coverage"]])
                f1c.append([len(labelled), m["f1"]])
                print(f"{strategy:11} seed {seed} round {rnd}: {len(labelled):3d} labels -> coverage "
                      f"{m['text_coverage']:.3f} f1 {m['f1']:.3f} ({time.time() - t_start:.0f}s)", file=sys.stderr)
            res["curves"].append(curve)
            res["f1_curves"].append(f1c)
            results[strategy] = res
            summarise(args, base_m, results, test, t_start)

    summarise(args, base_m, results, test, t_start, final=True)


def summarise(args: argparse.Namespace, base_m: dict, results: dict, test: list, t_start: float,
              final: bool = False) -> None:
    """Labels-to-target per run, the table, and the JSON (written after every run, so an
    interrupted simulation keeps what it measured)."""
    points = [cov for r in results.values() for c in r["curves"] for _, cov in c[1:]]
    if not points:
        return
    # default target: halfway from the base model to the best coverage any run reached
    target = args.target if args.target is not None else base_m["text_coverage"] + 0.5 * max(
        0.0, max(points) - base_m["text_coverage"])
    for res in results.values():  # noqa: B007
        res["labels_to_target"] = [next((n for n, cov in c[1:] if cov >= target), None) for c in res["curves"]]

    def mean_ltt(r: dict) -> float:
        # never reached counts as one round beyond the budget (a lower bound of the true cost)
        cap = args.k * (args.rounds + 1)
        return float(np.mean([v if v is not None else cap for v in r["labels_to_target"]]))

    print(f"\ntarget text coverage {target:.3f} (base {base_m['text_coverage']:.3f}); test {len(test)} images")
    print(f"{'strategy':12} {'labels to target (per seed)':30} {'mean':>6} {'x random':>9} {'final coverage':>15}")
    rnd_mean = mean_ltt(results["random"]) if results.get("random", {}).get("curves") else None
    for s, r in results.items():
        m = mean_ltt(r)
        ratio = f"{m / rnd_mean:.2f}" if rnd_mean else "-"
        fin = np.mean([c[-1][1] for c in r["curves"]])
        print(f"{s:12} {str(r['labels_to_target']):30} {m:>6.1f} {ratio:>9} {fin:>15.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"complete": final, "target": target, "base": base_m, "k": args.k, "rounds": args.rounds,
                                         "steps": args.steps, "test_images": len(test),
                                         "seconds": time.time() - t_start, "strategies": results}, indent=2))


if __name__ == "__main__":
    main()
