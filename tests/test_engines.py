"""One engine choice for redact and predict (`pipeline.engines`): local threads or Ray Data
actors, the same detections either way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.engines import ENGINES, SpecFactory, check_engine
from tests.imagegen import text_font


def _images(root):

    font = text_font(24)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        im = Image.new("RGB", (360, 160), (235, 232, 226))
        ImageDraw.Draw(im).text((20, 50), f"Sample {4711 + i} lot B{i}", font=font, fill=(10, 10, 10))
        im.save(root / f"{i}.png")
    (root / "bad.png").write_bytes(b"not a png")


def test_engine_names_are_checked():
    assert ENGINES == ("local", "ray") and check_engine("local") == "local"
    with pytest.raises(ValueError, match="engine must be one of"):
        check_engine("dask")


def test_spec_factory_is_picklable_and_builds_the_detector():
    import pickle

    from pipeline.redact.run import pass_options

    f = pickle.loads(pickle.dumps(SpecFactory("ppocr", pass_options())))
    det = f()
    assert det.config.scales == (1.0, 2.5) and det.config.refine == "small"   # redact's passes
    assert SpecFactory("ppocr")().config.scales == (1.0,)
    # predict's own options mean what they say, on Ray as locally: 2x over the whole image
    assert SpecFactory("ppocr", {"scales": (1.0, 2.0)})().config.refine == "image"


def test_actors_share_the_cores_out_instead_of_oversubscribing_them(monkeypatch):
    """Two actors of two onnxruntime threads each on two cores: each actor now runs (and
    reserves from Ray) the cores shared out, and a user's `-o threads=N` still wins."""
    import os

    from pipeline.detectors import load_detector

    det = load_detector("ppocr")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for workers, threads in ((1, 8), (2, 4), (3, 2), (8, 1), (32, 1)):
        f = SpecFactory.of("ppocr", det, {}, workers=workers)
        assert f.options["threads"] == threads and f.cpus == threads
    assert SpecFactory.of("ppocr", det, {"threads": 3}, workers=8).cpus == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    built = SpecFactory.of("ppocr", det, {"scales": (1.0,)}, workers=2)()
    assert built.config.threads == 1 and built.parallel_calls == 2


def test_an_actor_never_opens_the_workspace_and_stops_on_another_model(tmp_path, monkeypatch):
    """Actors resolved `current` in the workspace themselves: on a node without it they created
    an empty one and ran stock ppocr, stored under the tuned model's version. The driver now
    resolves the spec (an absolute bundle path), and an actor whose model differs stops."""
    from pipeline.detectors import load_detector
    from pipeline.workspace import Workspace

    with pytest.raises(ValueError, match="resolved spec"):
        SpecFactory("current")
    ws_dir = tmp_path / "ws"
    det = load_detector("ppocr")
    f = SpecFactory.of("current", det, {}, Workspace.open(ws_dir))   # nothing promoted: stock
    assert f.spec == "ppocr" and f.version == det.version
    import shutil

    shutil.rmtree(ws_dir)
    assert f().version == det.version and not ws_dir.exists()      # built without the workspace
    monkeypatch.chdir(tmp_path)
    assert SpecFactory.of("models/b.zip", det).spec == str(tmp_path / "models" / "b.zip")
    with pytest.raises(RuntimeError, match="not the driver's"):
        SpecFactory("ppocr", {"scales": (1.0, 2.0)}, version=det.version)()


def test_predict_cli_rejects_an_unknown_engine(tmp_path):
    _images(tmp_path / "in")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "predict", str(tmp_path / "in"), "--engine", "spark",
                                 "--no-store"])
    assert r.exit_code == 2 and "engine must be one of" in r.output


@pytest.mark.slow
def test_predict_on_ray_gives_the_local_detections(tmp_path):
    pytest.importorskip("ray.data", reason="ray is an optional extra: pip install -e '.[ray]'")
    import os

    import ray

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _images(tmp_path / "in")
        outs = {}
        for engine in ("local", "ray"):
            out = tmp_path / f"{engine}.jsonl"
            r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "predict", str(tmp_path / "in"),
                                         "--detector", "ppocr", "--no-store", "--engine", engine, "--workers", "2",
                                         "--out", str(out)])
            assert r.exit_code == 0, r.output
            s = json.loads(r.stdout)
            assert s["images"] == 4 and len(s["errors"]) == 1
            outs[engine] = {rec["image"]: rec for rec in map(json.loads, out.read_text().splitlines())}
        assert outs["local"].keys() == outs["ray"].keys()
        for k, rec in outs["local"].items():
            assert np.allclose(rec["boxes"], outs["ray"][k]["boxes"]) and rec["boxes"]
    finally:
        ray.shutdown()
