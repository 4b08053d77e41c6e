"""The active-learning simulation's summary: labels-to-target and the ratio to random, as the
issue's JSON format defines them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "simulate_al.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("simulate_al", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _runs(*curves: list[float], k: int = 6) -> dict:
    return {"curves": [[[0, 0.4]] + [[k * (i + 1), c] for i, c in enumerate(cs)] for cs in curves]}


def test_labels_to_target_and_ratio_to_random(sim) -> None:
    results = {"random": _runs([0.41, 0.45, 0.50], [0.42, 0.44, 0.48]),
               "uncertainty": _runs([0.50, 0.55, 0.60], [0.47, 0.52, 0.58])}
    s = sim.summary(results, base=0.4, k=6, rounds=3, target=0.5)
    assert results["random"]["labels_to_target"] == [18, None]          # the JSON field
    assert results["uncertainty"]["labels_to_target"] == [6, 12]
    r, u = s["strategies"]["random"], s["strategies"]["uncertainty"]
    assert r["mean_labels_to_target"] == pytest.approx((18 + 24) / 2)   # never reached = one round beyond
    assert u["x_random"] == pytest.approx(9 / 21)
    assert u["mean_curve"] == pytest.approx([0.485, 0.535, 0.59])
    assert u["area"] > r["area"]


def test_default_target_is_halfway_to_the_best_run(sim) -> None:
    results = {"random": _runs([0.40, 0.50]), "committee": _runs([0.60, 0.45])}
    s = sim.summary(results, base=0.4, k=6, rounds=2)
    assert s["target"] == pytest.approx(0.5)
    assert results["committee"]["labels_to_target"] == [6]
    assert results["random"]["labels_to_target"] == [12]


def test_microscopy_simulation_never_uses_the_held_out_microscopy_images(sim) -> None:
    """`--micro`: the same overlay kinds and backgrounds as bench_detect's microscopy set, other
    images (what the detection benchmark reports on must stay unseen)."""
    from pipeline.synth import synth_image

    cfg = sim.micro_config(4)
    from bench_detect import MICRO

    assert (cfg.kinds, cfg.background_kinds, cfg.n_images) == (MICRO.kinds, MICRO.background_kinds, 4)
    held_out = {synth_image(i, MICRO).image.tobytes() for i in range(MICRO.n_images)}
    assert not {synth_image(i, cfg).image.tobytes() for i in range(4)} & held_out


def test_tta_picks_the_image_whose_text_the_model_finds_only_when_upscaled(sim, tmp_path: Path) -> None:
    """`--strategies tta --tta-scales 2`: an image where the 2x view finds a label the 1x view
    misses is picked before one where both views agree (the model against itself)."""
    import numpy as np
    from PIL import Image

    from pipeline.boxes import Detections
    from pipeline.formats import LabelledImage

    class ScaleShy:
        """Finds the word at (20, 20, 80, 40) everywhere, and in b.png a small label only at 2x."""

        def detect(self, images):
            out = []
            for im in images:
                h, w = im.shape[:2]
                s = w / 100.0
                boxes = [[20 * s, 20 * s, 80 * s, 40 * s]]
                if s > 1.5 and im[0, 0, 0] == 200:   # b.png, upscaled
                    boxes.append([10 * s, 70 * s, 16 * s, 76 * s])
                out.append(Detections(np.array(boxes), np.full(len(boxes), 0.9)))
            return out

    pool = []
    for name, shade in (("a.png", 100), ("b.png", 200)):
        Image.new("RGB", (100, 100), (shade, shade, shade)).save(tmp_path / name)
        pool.append((tmp_path / name, LabelledImage(name, 100, 100, source="s")))
    assert sim.pick("tta", ScaleShy(), pool, set(), 1, 0, {}, (2.0,)) == [1]
    assert sim.pick("tta", ScaleShy(), pool, {"s/b.png"}, 1, 0, {}, (2.0,)) == [0]   # labelled: not again


def test_unknown_strategy_and_bad_tta_scales_stop_before_any_work() -> None:
    import subprocess
    import sys

    for args, msg in ((["--strategies", "random,guess"], "--strategies: unknown guess"),
                      (["--tta-scales", "0"], "--tta-scales 0: give rescales between 0.25 and 4")):
        r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and msg in r.stderr.strip().splitlines()[-1]
