"""Training for real on tiny synthetic images: the loss goes down, resume replays exactly,
a diverging run stops with a clear message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.detectors.fasterrcnn import FasterRCNNConfig
from pipeline.synth import SynthConfig
from pipeline.train import ResumeRefused, TrainConfig, TrainingError, losses_of, train
from tests.imagegen import synth_train_val

TINY_MODEL = FasterRCNNConfig(train_max_side=160, max_side=192, width_mult=0.5, fpn_channels=32, representation_size=64)
TINY_SYNTH = SynthConfig(n_images=12, seed=1, width=(128, 192), overlays=(2, 4), p_empty=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synth_train_val(tmp_path_factory.mktemp("tiny"), TINY_SYNTH, n_val=3)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), arch="fasterrcnn", model=TINY_MODEL, epochs=2, steps_per_epoch=10, batch_size=2, lr=2e-3,
                warmup_steps=2, augment=False, seed=3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_loss_goes_down(tiny: dict, tmp_path: Path) -> None:
    # the peak is the process's: reset it to today's RSS, so that the bound below is training's own
    # and not that of whatever test ran before in this pytest process (Linux >= 4.0)
    clear = Path("/proc/self/clear_refs")
    if clear.exists():
        clear.write_text("5")
    r = train(_cfg(tmp_path / "run"), tiny["train"], (), tiny["val"])
    losses = losses_of(r.history)
    assert r.steps == 20 and len(losses) == 20 and r.stopped == "done"
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert r.checkpoint.exists()
    assert "text_coverage" in r.metrics and r.metrics["n_images"] == 3
    assert r.peak_rss_mb < 4096
    assert sum(r.timing.values()) <= r.seconds + 0.01   # the parts fit in the total (validation was outside it)
    epochs = [h for h in r.history if "val" in h]
    assert [h["epoch"] for h in epochs] == [1, 2]


def test_resume_continues_from_checkpoint(tiny: dict, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "full", epochs=2, steps_per_epoch=3, augment=True)
    full = train(cfg, tiny["train"])
    # the same run, stopped by its budget after the first step, then resumed
    part_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), budget_minutes=1e-6)
    part = train(part_cfg, tiny["train"])
    assert part.stopped == "budget" and part.steps == 1
    resumed = train(dataclasses.replace(part_cfg, budget_minutes=None, resume=True), tiny["train"])
    assert resumed.steps == 6
    assert losses_of(resumed.history)[0] == pytest.approx(losses_of(full.history)[0])
    np.testing.assert_allclose(losses_of(resumed.history), losses_of(full.history), rtol=1e-4, atol=1e-5)


def test_a_resume_with_other_training_options_is_refused(tiny: dict, tmp_path: Path) -> None:
    """`--resume --lr 1e-3` followed the checkpoint's schedule while the bundle recorded 1e-3,
    and took a new batch size: mixed settings, recorded wrongly. Named and refused now; more
    time (`budget_minutes`) or other threads are fine."""
    cfg = _cfg(tmp_path / "part", epochs=2, steps_per_epoch=3, budget_minutes=1e-6)
    assert train(cfg, tiny["train"]).steps == 1
    with pytest.raises(ResumeRefused, match=r"other training options .*batch_size 2 -> 3, lr 0.002 -> 0.001"):
        train(dataclasses.replace(cfg, budget_minutes=None, resume=True, lr=1e-3, batch_size=cfg.batch_size + 1),
              tiny["train"])
    # other data (a synthetic set made again, labels edited) cannot be resumed step-exact either
    with pytest.raises(ResumeRefused, match="training data changed since this checkpoint"):
        train(dataclasses.replace(cfg, budget_minutes=None, resume=True), tiny["train"][1:])
    resumed = train(dataclasses.replace(cfg, budget_minutes=None, resume=True, threads=1), tiny["train"])
    assert resumed.steps == 6
    # iterate keys a round's run folder by the same options: another seed is another run
    assert cfg.run_options() == dataclasses.replace(cfg, budget_minutes=5.0, threads=2, out_dir="x").run_options()
    assert cfg.run_options() != dataclasses.replace(cfg, seed=cfg.seed + 1).run_options()


def test_non_finite_loss_stops_with_a_clear_message(tiny: dict, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "nan", optimizer="sgd", lr=1e12, warmup_steps=0, grad_clip=0.0, epochs=1, steps_per_epoch=6)
    with pytest.raises(TrainingError, match="non-finite loss at step"):
        train(cfg, tiny["train"])


def test_no_data_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no training images"):
        train(_cfg(tmp_path / "x"))


def _bn_stats(model) -> dict:
    import torch

    return {n: b.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
            for b in [m.running_mean]}


def test_fine_tuning_keeps_the_parents_batchnorm_statistics(tiny: dict, tmp_path: Path) -> None:
    """Fine-tuning on a few images in batches of 2 must not overwrite the BatchNorm statistics
    the parent learnt (it lost coverage in the active-learning simulation); training from
    scratch, or `freeze_bn=False`, updates them."""
    from pipeline.bundle import load_model, save_bundle

    scratch = train(_cfg(tmp_path / "scratch", epochs=1, steps_per_epoch=4), tiny["train"])
    parent = tmp_path / "parent.zip"
    save_bundle(parent, scratch.model, scratch.config.model, {}, scratch.train_keys, version="parent")
    before = _bn_stats(load_model(parent)[0])
    assert before
    tuned = train(_cfg(tmp_path / "ft", epochs=1, steps_per_epoch=3, parent_bundle=str(parent)), tiny["train"])
    after = _bn_stats(tuned.model)
    assert all(torch_equal(before[k], after[k]) for k in before)
    unfrozen = train(_cfg(tmp_path / "ft2", epochs=1, steps_per_epoch=3, parent_bundle=str(parent), freeze_bn=False),
                     tiny["train"])
    changed = _bn_stats(unfrozen.model)
    assert not all(torch_equal(before[k], changed[k]) for k in before)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_ctrl_c_keeps_finished_steps_and_resume_replays_them(tiny: dict, tmp_path: Path) -> None:
    """Ctrl-C mid-epoch writes the checkpoint (README promises it); --resume then continues at
    the next step and gives the same losses as an uninterrupted run."""
    cfg = _cfg(tmp_path / "full", epochs=1, steps_per_epoch=5, augment=True)
    full = train(cfg, tiny["train"])

    def ctrl_c_after_step_2(step: int, total: int, info: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    part_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        train(part_cfg, tiny["train"], progress=ctrl_c_after_step_2)
    assert (tmp_path / "part" / "checkpoint.pt").exists()
    resumed = train(dataclasses.replace(part_cfg, resume=True), tiny["train"])
    assert resumed.steps == 5
    np.testing.assert_allclose(losses_of(resumed.history), losses_of(full.history), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"seed": -1}, "seed must be a whole number"),
    ({"threads": 10**6}, "threads"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"optimizer": "foo"}, "optimizer"),
    ({"val_metric": "nope"}, "val_metric must be one of"),
    ({"val_threshold": 5}, "val_threshold"),
    ({"scale_jitter": (-1, 0)}, "scale_jitter"),
    ({"arch": "fasterrcnn", "crop": -5}, "crop"),
    ({"batch_size": 100_000}, "batch_size"),
    ({"db": {"distill": float("nan")}}, "distill"),
    ({"db": {"missed_text": 1e9}}, "missed_text"),
    ({"db": {"l2sp": float("inf")}}, "l2sp"),
])
def test_training_options_are_range_checked_in_the_library(kw, message) -> None:
    """A user's walkthrough: the library took seed=-1 (numpy failed mid-run), distill=nan (a
    "non-finite loss" blamed on the learning rate), a batch of 100,000 crops..."""
    from pipeline.train.db import DBRecipe

    with pytest.raises(ValueError, match=message):
        DBRecipe(**kw["db"]) if "db" in kw else TrainConfig(**kw)


def test_synth_refuses_a_negative_seed_and_a_huge_width() -> None:
    from pipeline.synth import SynthConfig

    with pytest.raises(ValueError, match="seed"):
        SynthConfig(seed=-1)
    with pytest.raises(ValueError, match="width"):
        SynthConfig(width=(512, 100_000))


def test_resume_takes_the_runs_options_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """After Ctrl-C textloop prints `textloop train --run R --resume`; run exactly so, it was
    refused ("resumed with other training options: epochs 4 -> 10, ...") unless every option
    was typed again. Options not given now come from the checkpoint; a given one that differs
    is still refused (the engine's check, tested above)."""
    from typer.testing import CliRunner

    import pipeline.train as tr
    from pipeline.cli.app import app

    from pipeline.train import DBRecipe

    started = TrainConfig(arch="db", epochs=4, steps_per_epoch=8, lr=1e-3, db=DBRecipe(crop=384, interpolate=(1.0,)))
    saved = started.to_json()
    now = TrainConfig(arch="db", resume=True, epochs=5, db=DBRecipe(l2sp=0.5))   # typed: --epochs 5 --l2sp 0.5
    got = now.adopting(saved, keep={"epochs", "db.l2sp"})
    assert (got.epochs, got.steps_per_epoch, got.lr, got.db.crop, got.db.interpolate) == (5, 8, 1e-3, 384, (1.0,))
    diffs = got.resume_differences(saved)   # only what was typed differs, so the engine still refuses it
    assert got.db.l2sp == 0.5 and len(diffs) == 2 and "epochs 4 -> 5" in diffs and "'l2sp': 0.5" in str(diffs)
    assert TrainConfig(arch="db", resume=True).adopting(saved, keep=()).resume_differences(saved) == []
    # the CLI says which options were typed
    seen = {}
    monkeypatch.setattr(tr, "train_run", lambda ws, cfg, **kw: seen.update(kw) or (_ for _ in ()).throw(
        tr.TrainingError("stop here")))
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "train", "--run", "r", "--resume", "--threads", "1",
                                 "--crop", "256"])
    assert r.exit_code == 1 and seen["given"] == {"run", "resume", "threads", "db.crop"}, (r.output, seen)


def test_a_faster_rcnn_option_with_the_db_arch_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "train", "--backbone", "resnet50"])
    assert r.exit_code == 2 and "--backbone" in r.output and "--arch fasterrcnn" in r.output, r.output
    # and the other way round: the DB recipe's options were accepted and ignored by Faster R-CNN
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "train", "--arch", "fasterrcnn", "--l2sp", "5",
                                 "--over-redaction-budget", "0.01"])
    assert r.exit_code == 2 and "--l2sp, --over-redaction-budget: DB recipe option" in " ".join(r.output.split()), r.output
