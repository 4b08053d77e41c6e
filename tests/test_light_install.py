"""A light install (no `textloop[train]` extra): the inference path runs without torch.

Each command runs in a fresh interpreter in which torch, torchvision and onnx2torch cannot
be imported (a meta-path finder raises ModuleNotFoundError for them and their submodules), as on
a machine where they were never installed. Not `sys.modules[name] = None`: scipy's array-API
helpers treat a `torch` key in sys.modules as an imported torch and fail on None. Training says one line naming the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.imagegen import text_font

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "onnx2torch")

RUNNER = f"""
import sys
BLOCKED = {BLOCKED!r}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: light install)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
from pipeline.cli.app import main
sys.argv = ["textloop", *sys.argv[1:]]
main()
"""


def textloop(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TEXTLOOP_WORKSPACE=str(ws), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("light_src")
    font = text_font(28)
    for i, text in enumerate(["SAMPLE 2024-06", "ID 4711 / 37.0 C"]):
        im = Image.new("RGB", (360, 120), (235, 235, 225))
        ImageDraw.Draw(im).text((20, 40), text, fill=(10, 10, 10), font=font)
        im.save(src / f"slide_{i}.png")
    Image.new("RGB", (96, 64), (40, 120, 200)).save(src / "plain.jpg", quality=90)
    return src


def test_the_blocker_blocks(tmp_path):
    r = subprocess.run([sys.executable, "-c", RUNNER.replace("from pipeline.cli.app import main", "import torch"),
                        "status"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "torch" in r.stderr


def test_harvest_predict_redact_rank_curate_report_without_torch(images, tmp_path):
    ws = tmp_path / "ws"
    steps = [
        ("harvest", str(images)),
        ("predict", "--detector", "ppocr", "--out", str(tmp_path / "preds.jsonl")),
        ("predict",),                                              # workspace images, stored in the catalog
        ("redact", str(images), str(tmp_path / "clean")),          # default: current = ppocr
        ("rank", "--top", "2", "--committee", "none"),
        ("curate",),                                               # permissive engine
        ("report",),
        ("status",),
    ]
    out = {}
    for args in steps:
        r = textloop(ws, "--json", *args)
        assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
        out[args[0] + ("" if args[0] != "predict" or len(args) > 1 else "-ws")] = json.loads(r.stdout)
    assert out["harvest"]["new"] == 3 and not out["harvest"]["rejects"]
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and sum(len(p["boxes"]) for p in preds) >= 2   # both text lines found
    assert out["redact"]["redacted"] == 3 and out["redact"]["failed"] == 0 and out["redact"]["boxes"] >= 2
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == ["plain.jpg", "slide_0.png", "slide_1.png"]
    assert out["status"]["images"] == 3


def test_a_db_bundle_predicts_and_redacts_without_torch(images, tmp_path, monkeypatch):
    """A trained (here: stock-weights) db bundle runs on onnxruntime: made with torch in this
    process, used without it in the child."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from pipeline.bundle import save_bundle
    from pipeline.detectors.dbnet import DBModelConfig, build_net

    bundle = tmp_path / "db.zip"
    save_bundle(bundle, build_net(), DBModelConfig(), {"coverage_at_budget": 0.9}, version="db-light-test")
    ws = tmp_path / "ws"
    r = textloop(ws, "--json", "predict", str(images), "--detector", str(bundle), "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 0, r.stderr[-2000:]
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {p["model_version"] for p in preds} == {"db-light-test"} and sum(len(p["boxes"]) for p in preds) >= 2
    r = textloop(ws, "--json", "redact", str(images), str(tmp_path / "clean"), "--detector", str(bundle))
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "clean").iterdir())) == 3


@pytest.mark.parametrize("args", [("train",), ("iterate", "--no-push"), ("train", "--json")])
def test_training_without_torch_is_one_line(args, tmp_path):
    r = textloop(tmp_path / "ws", *args)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'textloop[train]'" in lines[0], r.stderr
    assert not (tmp_path / "ws" / "synth").exists()   # nothing was done before saying so


def test_train_help_still_works_without_torch(tmp_path):
    r = textloop(tmp_path / "ws", "train", "--help")
    assert r.returncode == 0 and "Usage" in r.stdout


def test_packaging_puts_torch_in_the_train_extra():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    assert not names(meta["dependencies"]) & set(BLOCKED)
    assert names(meta["optional-dependencies"]["train"]) == set(BLOCKED)
    make = (REPO / "Makefile").read_text()
    assert '".[train,dev,ray]"' in make                      # the demo/test venv trains


def test_dockerfile_uses_cpu_torch_and_can_build_light():
    """The image cannot be built here (no Docker engine): checked statically."""
    text = (REPO / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "ARG TEXTLOOP_EXTRAS=train" in text
    torch_line = next(ln for ln in text.splitlines() if "download.pytorch.org/whl/cpu" in ln)
    install = next(ln for ln in text.splitlines() if "pip install -e" in ln)
    # torch comes from the CPU index *before* the package, so pip does not fetch the CUDA wheel
    assert text.index(torch_line) < text.index(install)
    assert "${TEXTLOOP_EXTRAS}" in install and "train" in text[text.index(torch_line) - 200:text.index(torch_line)]
