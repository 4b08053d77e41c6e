from __future__ import annotations

import math

import pytest

from pipeline.loop import promotion_decision

CUR = {"text_coverage": 0.90, "f1": 0.60, "over_redaction": 0.05}


@pytest.mark.parametrize("candidate, promote, regressed", [
    ({"text_coverage": 0.92, "f1": 0.61, "over_redaction": 0.05}, True, []),
    ({"text_coverage": 0.898, "f1": 0.60, "over_redaction": 0.05}, True, []),          # within tolerance
    ({"text_coverage": 0.85, "f1": 0.70, "over_redaction": 0.04}, False, ["text_coverage"]),
    ({"text_coverage": 0.95, "f1": 0.50, "over_redaction": 0.05}, False, ["f1"]),
    ({"text_coverage": 0.95, "f1": 0.65, "over_redaction": 0.20}, False, ["over_redaction"]),
    ({"text_coverage": 0.95, "f1": math.nan, "over_redaction": 0.05}, True, []),      # undefined: not compared
])
def test_promotion_rule(candidate, promote, regressed) -> None:
    ok, regressions = promotion_decision(candidate, CUR, tolerance=0.005)
    assert ok == promote
    assert [r.split(":")[0] for r in regressions] == regressed


def test_first_model_is_promoted() -> None:
    assert promotion_decision({"text_coverage": 0.1, "f1": 0.1}, None) == (True, [])


def test_evaluation_skips_an_unreadable_test_image(tmp_path) -> None:
    """One broken file in the test split must not fail the round after training finished."""
    import numpy as np
    from PIL import Image

    from pipeline.formats import LabelledImage
    from pipeline.loop import _evaluate_on
    from tests.fakes import FakeDetector

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (64, 48), "white").save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    def Box() -> FakeDetector:
        return FakeDetector([[10, 10, 30, 20]], [0.9], version="fake")

    gt = [(p, LabelledImage(p.name, 64, 48, np.array([[10.0, 10, 30, 20]]))) for p in (good, bad)]
    m = _evaluate_on(Box(), gt, 0.3)
    assert m.n_images == 1 and m.text_coverage == 1.0


def test_iterate_config_is_built_from_train_and_rank_configs() -> None:
    """One default per setting: a round retrains with TrainConfig's own defaults except the
    round's short schedule, ranks with RankOptions' defaults, and fasterrcnn's learning rate is
    the one `textloop train` documents (the CLI used 2e-3, the library 1e-3)."""
    from dataclasses import replace

    from pipeline.loop import ROUND_TRAINING, IterateConfig
    from pipeline.rank import RankOptions
    from pipeline.train.engine import TrainConfig

    cfg = IterateConfig()
    assert cfg.rank == RankOptions()
    assert cfg.train == replace(TrainConfig(), epochs=3, steps_per_epoch=50, budget_minutes=10.0) == ROUND_TRAINING
    assert TrainConfig(arch="fasterrcnn").effective_lr == 2e-3
    assert replace(cfg.train, arch="fasterrcnn").effective_lr == 2e-3


def test_iterate_on_a_workspace_without_images_says_what_to_do_first(tmp_path) -> None:
    """`init` then `iterate` made 400 synthetic images and trained for 7 minutes on nothing."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    runner = CliRunner()
    assert runner.invoke(app, ["-w", str(tmp_path / "ws"), "init"]).exit_code == 0
    r = runner.invoke(app, ["-w", str(tmp_path / "ws"), "iterate", "--no-push"])
    assert r.exit_code == 2 and "no images in" in r.output and "textloop harvest" in r.output
    assert not (tmp_path / "ws" / "synth").exists() or not any((tmp_path / "ws" / "synth").iterdir())
    assert not any((tmp_path / "ws" / "runs").glob("train-*"))
