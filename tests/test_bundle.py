"""Model bundles: a round trip in another process and folder without the training data gives
identical predictions; the registry keeps exactly one current model; the CLI lists/promotes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.bundle import list_models, load_bundle, read_bundle_meta, set_current, register_model, save_bundle
from pipeline.cli.app import app
from pipeline.detectors import load_detector
from pipeline.detectors.fasterrcnn import FasterRCNNConfig, FasterRCNNDetector, build_model
from pipeline.imaging import load_rgb
from pipeline.synth import generate
from pipeline.train import TrainConfig, samples_from_jsonl, train
from pipeline.workspace import Workspace
from tests.test_train import TINY_MODEL, TINY_SYNTH


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bundle")
    generate(root / "synth", TINY_SYNTH)
    cfg = TrainConfig(out_dir=str(root / "run"), arch="fasterrcnn", model=TINY_MODEL, epochs=1, steps_per_epoch=4, batch_size=2,
                      warmup_steps=1, augment=False, threads=1)
    result = train(cfg, samples_from_jsonl(root / "synth/boxes.jsonl"))
    return {"root": root, "result": result}


def test_round_trip_elsewhere_without_training_data(trained: dict, tmp_path: Path) -> None:
    root, result = trained["root"], trained["result"]
    bundle = tmp_path / "made" / "bundle.zip"
    version = save_bundle(bundle, result.model, result.config.model, {"f1": float("nan"), "text_coverage": 0.5},
                          result.train_keys)
    test_imgs = [tmp_path / "elsewhere" / f"img{i}.png" for i in range(2)]
    for i, dst in enumerate(test_imgs):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "synth/images" / f"{i:06d}.png", dst)
    ref_det = FasterRCNNDetector(result.model, result.config.model, score_threshold=0.0)
    reference = [d.boxes.tolist() for d in ref_det.detect([load_rgb(p) for p in test_imgs])]
    assert sum(len(b) for b in reference) > 0
    shutil.copyfile(bundle, tmp_path / "elsewhere" / "bundle.zip")
    shutil.rmtree(root / "synth")        # the training data is gone
    shutil.rmtree(tmp_path / "made")
    code = ("import json; from pipeline.detectors import load_detector; from pipeline.imaging import load_rgb\n"
            "d = load_detector('bundle.zip', score_threshold=0.0, threads=1)\n"
            "print(json.dumps({'version': d.version, 'boxes': [x.boxes.tolist() for x in "
            "d.detect([load_rgb('img0.png'), load_rgb('img1.png')])]}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "elsewhere", capture_output=True, text=True,
                         check=True, timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["version"] == version
    assert got["boxes"] == reference
    meta = read_bundle_meta(tmp_path / "elsewhere" / "bundle.zip")
    assert meta["labels"] == {"0": "text"} and meta["metrics"]["f1"] is None
    # an option a Faster R-CNN model does not take is refused (it was ignored: `-o scales=100`, exit 0)
    from pipeline.detectors import load_detector

    with pytest.raises(ValueError, match="takes no option bogus, scales"):
        load_detector(str(tmp_path / "elsewhere" / "bundle.zip"), scales=100, bogus=1)
    # and a value out of range is named before any work (score_threshold=2 found nothing, exit 0)
    for bad, message in (({"score_threshold": 2}, "score_threshold must be a number from 0 to 1"),
                         ({"score_threshold": float("nan")}, "score_threshold must be"),
                         ({"tile": "abc"}, "tile must be true or false"), ({"max_side": 0}, "max_side must be"),
                         ({"threads": -3}, "threads must be a whole number")):
        with pytest.raises(ValueError, match=message):
            load_detector(str(tmp_path / "elsewhere" / "bundle.zip"), **bad)
    assert meta["data"]["n_items"] == len(set(result.train_keys)) and len(meta["data"]["sha256"]) == 64


def test_default_bundle_is_small(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    save_bundle(path, build_model(FasterRCNNConfig()), FasterRCNNConfig(), version="size-check")
    assert path.stat().st_size < 7_000_000
    with zipfile.ZipFile(path) as zf:
        assert {"config.json", "weights.pt", "metrics.json", "labels.json", "data.json"} <= set(zf.namelist())


def test_registry_promote_and_current(trained: dict, ws, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = trained["result"]
    a = save_bundle(tmp_path / "a.zip", result.model, result.config.model, {"f1": 0.1}, version="m-a")
    b = save_bundle(tmp_path / "b.zip", result.model, result.config.model, {"f1": 0.2}, version="m-b", parent="m-a")
    assert register_model(ws, tmp_path / "a.zip", promote=True, force=True) == a   # no numbers: only forced
    assert register_model(ws, tmp_path / "a.zip") == a           # idempotent
    assert register_model(ws, tmp_path / "b.zip") == b
    models = {m["version"]: m for m in list_models(ws)}
    assert models["m-b"]["parent"] == "m-a" and models["m-a"]["promoted"] and not models["m-b"]["promoted"]
    assert (ws.models_dir / "m-b" / "bundle.zip").exists()
    set_current(ws, "m-b")
    assert [m["version"] for m in list_models(ws) if m["promoted"]] == ["m-b"]
    assert load_detector("current", ws).version == "m-b"
    with pytest.raises(KeyError):
        set_current(ws, "nope")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a textloop model bundle"):
        register_model(ws, tmp_path / "bad.zip")
    with pytest.raises(ValueError, match="not a textloop model bundle"):
        load_bundle(tmp_path / "bad.zip")

    runner = CliRunner()
    r = runner.invoke(app, ["--workspace", str(ws.root), "--json", "models"])
    assert r.exit_code == 0, r.output
    assert [m["version"] for m in json.loads(r.stdout) if m["promoted"]] == ["m-b"]
    # an untested model (no val split, no stored comparison with stock ppocr) is refused ...
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "promote", "m-a"])
    assert r.exit_code == 1 and "not promoted" in r.output and "--force" in r.output
    r = runner.invoke(app, ["--workspace", str(ws.root), "--json", "models", "promote", "m-a"])
    assert r.exit_code == 1 and json.loads(r.stdout)["current"] is None   # scripts get the refusal on stdout
    assert "not compared with stock ppocr" in json.loads(r.stdout)["refused"]
    assert [m["version"] for m in list_models(ws) if m["promoted"]] == ["m-b"]
    # ... unless forced, with a warning
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "promote", "m-a", "--force"])
    assert r.exit_code == 0, r.output
    assert r.output.count("despite the rule") == 1, r.output
    # once: the log printed the same warning on stderr (logging goes to pytest's caplog here)
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING and "despite the rule" in x.getMessage()]
    assert [m["version"] for m in list_models(ws) if m["promoted"]] == ["m-a"]
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "promote", "missing"])
    assert r.exit_code == 2 and "unknown model version 'missing'" in r.stderr   # usage, like train --parent


def test_registry_refuses_impostors_bad_metadata_and_lineage_changes(trained: dict, ws, tmp_path: Path) -> None:
    """From a walkthrough: with a registered model's file deleted, another bundle of the same
    version replaced it (and so the current model) unchecked; a data.json that is a list was a
    traceback after the files were written; a bundle without metrics printed NaN in --json;
    `--parent` on a registered model was ignored, and `--force` without `--promote` accepted."""
    result = trained["result"]
    runner = CliRunner()
    w = ["--workspace", str(ws.root)]
    save_bundle(tmp_path / "a.zip", result.model, result.config.model, {"f1": 0.3}, version="m-x")
    save_bundle(tmp_path / "impostor.zip", result.model, result.config.model, {"f1": 0.9}, version="m-x")
    assert register_model(ws, tmp_path / "a.zip") == "m-x"
    (ws.models_dir / "m-x" / "bundle.zip").unlink()
    with pytest.raises(ValueError, match="already registered from another bundle file"):
        register_model(ws, tmp_path / "impostor.zip")
    assert not (ws.models_dir / "m-x" / "bundle.zip").exists()
    assert register_model(ws, tmp_path / "a.zip") == "m-x"            # the same file puts it back
    assert (ws.models_dir / "m-x" / "bundle.zip").read_bytes() == (tmp_path / "a.zip").read_bytes()
    # lineage is recorded once; a model is not its own parent
    save_bundle(tmp_path / "p.zip", result.model, result.config.model, {}, version="m-p")
    register_model(ws, tmp_path / "p.zip")
    r = runner.invoke(app, [*w, "models", "register", str(tmp_path / "a.zip"), "--parent", "m-p"])
    assert r.exit_code == 1 and "registered with parent none" in r.output, r.output
    with pytest.raises(ValueError, match="cannot be its own parent"):
        register_model(ws, tmp_path / "a.zip", parent="m-x")
    r = runner.invoke(app, [*w, "models", "register", str(tmp_path / "a.zip"), "--force"])
    assert r.exit_code == 2 and "--force applies with --promote only" in r.output, r.output
    # metadata of the wrong shape: one line naming the bundle, nothing written
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    bad = tmp_path / "bad-data.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            if name == "config.json":
                cfg = json.loads(data)
                data = json.dumps({**cfg, "version": "m-bad", "format": None}).encode()
            zf.writestr(name, b"[1]" if name == "data.json" else data)
    r = runner.invoke(app, [*w, "models", "register", str(bad)])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and str(bad) in r.output and "Traceback" not in r.output
    assert not (ws.models_dir / "m-bad").exists()
    # NaN is not JSON: a model without numbers refused in --json is strict JSON
    save_bundle(tmp_path / "n.zip", result.model, result.config.model, {}, version="m-n")
    r = runner.invoke(app, [*w, "--json", "models", "register", str(tmp_path / "n.zip"), "--promote"])
    assert r.exit_code == 1
    refused = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert refused["version"] == "m-n" and refused["promoted"] is False and refused["promotion"]["candidate"] is None
    # a current model whose bundle was deleted: every command says how to go on, status warns
    set_current(ws, "m-p")
    (ws.models_dir / "m-p" / "bundle.zip").unlink()
    with pytest.raises(FileNotFoundError, match="current model's bundle .m-p. is missing.*models promote ppocr"):
        load_detector("current", ws)
    r = runner.invoke(app, [*w, "status"])
    assert r.exit_code == 0 and "current model's bundle (m-p) is missing" in r.output, r.output
    rows = [line for line in r.output.splitlines() if line.lstrip("│ ").startswith("m-p ")]
    assert len(rows) == 1 and "missing" in rows[0] and "[red]" not in r.output, r.output   # a cell printed its markup
    r = runner.invoke(app, [*w, "--json", "status"])
    assert {m["version"]: m["bundle_missing"] for m in json.loads(r.stdout)["models"]}["m-p"] is True


def test_register_refuses_reserved_versions_own_parents_and_words_for_numbers(trained: dict, ws, tmp_path: Path) -> None:
    """A bundle versioned `ppocr` or `current` registered, and could then never be made current
    (`models promote ppocr` means stock); one recording itself as its parent registered with that
    lineage; metrics.json saying "high" was listed and sent to scripts as validation_coverage."""
    result = trained["result"]
    save_bundle(tmp_path / "a.zip", result.model, result.config.model, {"f1": 0.3}, version="m-a")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}

    def edited(name: str, config: dict | None = None, metrics: dict | None = None) -> Path:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for member, data in members.items():
                if member == "config.json" and config:
                    data = json.dumps({**json.loads(data), **config}).encode()
                if member == "metrics.json" and metrics:
                    data = json.dumps(metrics).encode()
                zf.writestr(member, data)
        return tmp_path / name

    for bundle, message in ((edited("ppocr.zip", {"version": "ppocr"}), "model version 'ppocr' is reserved"),
                            (edited("current.zip", {"version": "current"}), "model version 'current' is reserved"),
                            (edited("self.zip", {"version": "m-self", "parent": "m-self"}), "cannot be its own parent"),
                            (edited("words.zip", {"version": "m-w"}, {"coverage_at_budget": "high"}),
                             "metrics.json coverage_at_budget is 'high', not a number")):
        r = CliRunner().invoke(app, ["--workspace", str(ws.root), "models", "register", str(bundle)])
        assert r.exit_code == 1 and message in r.output and str(bundle) in r.output, r.output
    assert list_models(ws) == []
    assert register_model(ws, edited("fine.zip", {"version": "m-fine"}, {"coverage_at_budget": None, "f1": 0.5})) == "m-fine"


def forged_bundle(path: Path, config: dict, model_onnx: bytes | None = b"garbage") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("weights.pt", b"garbage")
        if model_onnx is not None:
            zf.writestr("model.onnx", model_onnx)
    return path


def test_register_refuses_bundles_that_are_not_models(ws, tmp_path: Path) -> None:
    """A bundle's version names a folder in the workspace, and a registered model can be
    promoted: a path as the version, or a network that does not load, is refused with one line
    and leaves no file and no catalog row behind."""
    runner = CliRunner()
    cases = {
        "../../evil": "bad model version",
        "/tmp/abs": "bad model version",
        "a/b": "bad model version",
    }
    for version, message in cases.items():
        b = forged_bundle(tmp_path / "f.zip", {"kind": "db", "version": version, "model": {}})
        r = runner.invoke(app, ["--workspace", str(ws.root), "models", "register", str(b)])
        assert r.exit_code != 0 and message in r.output, r.output
    assert not (tmp_path / "evil").exists() and not (ws.root.parent / "evil").exists()
    b = forged_bundle(tmp_path / "g.zip", {"kind": "db", "version": "garbage1", "model": {}})
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "register", str(b)])
    assert r.exit_code != 0 and "does not load" in r.output and "Traceback" not in r.output, r.output
    b = forged_bundle(tmp_path / "h.zip", {"kind": "db", "version": "nomodel"})
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "register", str(b)])
    assert r.exit_code != 0 and "no model settings" in r.output, r.output
    assert list_models(ws) == [] and not any(ws.models_dir.iterdir())
    # a plain name with '+' is no path: the detection benchmark names its bundles so (db-synth+devA)
    from pipeline.bundle import read_bundle_meta

    ok = forged_bundle(tmp_path / "ok.zip", {"kind": "db", "version": "db-synth+devA", "model": {}})
    assert read_bundle_meta(ok)["config"]["version"] == "db-synth+devA"
    # a --parent that names no registered model is refused (a typo was recorded as the lineage)
    r = runner.invoke(app, ["--workspace", str(ws.root), "models", "register", str(ok), "--parent", "nosuchparent"])
    assert r.exit_code == 2 and "--parent nosuchparent: not a registered model version" in r.output, r.output


def test_cli_synth_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner()
    wsdir = str(tmp_path / "w")
    args = ["--workspace", wsdir, "--json", "synth", "-n", "2", "--width", "128,160", "--seed", "4"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    assert first["images"] == 2 and not first["skipped"]
    assert len(list((tmp_path / "w/synth/default/images").glob("*.png"))) == 2
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["skipped"]
    r = runner.invoke(app, ["--workspace", wsdir, "synth", "--granularity", "letters"])
    assert r.exit_code == 2
    # backgrounds replaced under the same names: the set is made again (it was "up to date")
    import os

    bg = tmp_path / "bg"
    bg.mkdir()
    Image.new("RGB", (200, 160), "white").save(bg / "a.png")
    with_bg = ["--workspace", wsdir, "--json", "synth", "-n", "2", "--width", "128,160", "--name", "bg",
               "--backgrounds", str(bg)]
    assert not json.loads(runner.invoke(app, with_bg).stdout)["skipped"]
    assert json.loads(runner.invoke(app, with_bg).stdout)["skipped"]
    Image.new("RGB", (200, 160), "gray").save(bg / "a.png")
    os.utime(bg / "a.png", ns=(1, 10**18))
    assert not json.loads(runner.invoke(app, with_bg).stdout)["skipped"]


@pytest.mark.slow
def test_cli_train_registers_but_promotes_only_when_asked(tmp_path: Path) -> None:
    runner = CliRunner()
    wsdir = str(tmp_path / "w")
    r = runner.invoke(app, ["--workspace", wsdir, "synth", "-n", "4", "--width", "160,200"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--workspace", wsdir, "--json", "train", "--epochs", "1", "--steps-per-epoch", "2",
                            "--batch-size", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert not out["promoted"] and out["steps"] == 2 and Path(out["bundle"]).exists()
    assert [m["version"] for m in list_models(Workspace.open(wsdir))] == [out["version"]]
    assert not any(m["promoted"] for m in list_models(Workspace.open(wsdir)))  # redact keeps ppocr
    r = runner.invoke(app, ["--workspace", wsdir, "train"])
    # a finished run is named as such (it said "continue it with --resume", which then refused)
    assert r.exit_code == 2 and f"already finished as model {out['version']}" in r.output and "--restart" in r.output
    assert f"models promote {out['version']}" in r.output            # not current: promoting it is the advice
    assert runner.invoke(app, ["--workspace", wsdir, "models", "promote", out["version"], "--force"]).exit_code == 0
    r = runner.invoke(app, ["--workspace", wsdir, "train"])
    assert r.exit_code == 2 and "it is the current model" in r.output and "models promote" not in r.output, r.output
    # resuming a run that finished would register the same weights again under a new version
    r = runner.invoke(app, ["--workspace", wsdir, "train", "--resume", "--epochs", "1", "--steps-per-epoch", "2",
                            "--batch-size", "1", "--threads", "1"])
    assert r.exit_code == 2 and f"already finished as model {out['version']}" in r.output, r.output
    assert [m["version"] for m in list_models(Workspace.open(wsdir))] == [out["version"]]
    # the Quick start's loop: new labels arrive (here imported), and the same `train` learns them
    r = runner.invoke(app, ["--workspace", wsdir, "synth", "--name", "labelled", "-n", "8", "--width", "160,200", "--seed", "9"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--workspace", wsdir, "import", str(tmp_path / "w/synth/labelled/boxes.jsonl")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--workspace", wsdir, "--json", "train", "--epochs", "1", "--steps-per-epoch", "2",
                            "--batch-size", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["human"] > 0 and again["version"] != out["version"] and again["parent"] == out["version"]
    assert "training data changed since" in r.stderr
    # other hyperparameters on the same labels train the run again: they were dropped, and the
    # finished model (perhaps the broken one they were meant to fix) was offered for promotion
    # ... keeping the run's other options (its 1 epoch and batch of 1 are not typed again)
    r = runner.invoke(app, ["--workspace", wsdir, "--json", "train", "--steps-per-epoch", "3", "--threads", "1"])
    assert r.exit_code == 0 and "with other options (steps_per_epoch 2 -> 3)" in r.stderr, r.output
    assert json.loads(r.stdout)["steps"] == 3


def test_tiled_inference_on_large_writable_images() -> None:
    """Images larger than max_side go through overlapping native tiles; boxes stay in image pixels."""
    import torch

    torch.manual_seed(0)
    det = FasterRCNNDetector(build_model(TINY_MODEL), TINY_MODEL, max_side=64, score_threshold=0.0, threads=1)
    img = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)  # writable, tiles are views
    out = det.detect([img, np.ascontiguousarray(img[:60, :60])])
    assert len(out) == 2
    b = out[0].boxes
    assert len(b) and (b[:, 0] >= -1).all() and (b[:, 2] <= 201).all() and (b[:, 3] <= 151).all()
    assert (out[0].labels == 0).all()
