"""`--engine ray` on a local Ray instance gives byte-identical outputs to the local engine."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from tests.test_redact import sha_tree
from tests.imagegen import text_font

pytest.importorskip("ray.data", reason="ray is an optional extra: pip install -e '.[ray]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import os

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _tree(root):
    from PIL import ImageDraw

    font = text_font(22)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.tif", "sub/e.webp"]):
        im = Image.new("RGB", (320, 160), tuple(int(v) for v in rng.integers(180, 250, 3)))
        ImageDraw.Draw(im).text((20 + 10 * i, 40), f"ID {1000 + i} lot {i}X", font=font, fill=(10, 10, 10))
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")


def _run(tmp_path, src, out, *extra):
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", str(src), str(out),
                                 "--detector", "ppocr", "--scales", "1", *extra])
    return r.exit_code, json.loads(r.stdout)


def test_ray_engine_outputs_are_byte_identical_to_local(tmp_path, local_ray):
    src = tmp_path / "in"
    _tree(src)
    code_l, s_l = _run(tmp_path, src, tmp_path / "local")
    code_r, s_r = _run(tmp_path, src, tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert code_l == code_r == 1                                     # the broken file fails on both
    assert s_l["redacted"] == s_r["redacted"] == 5 and s_l["boxes"] == s_r["boxes"] > 0
    assert sha_tree(tmp_path / "local") == sha_tree(tmp_path / "ray")
    for p in (tmp_path / "local.audit" / "sidecars").rglob("*.json"):
        rel = p.relative_to(tmp_path / "local.audit")
        a, b = json.loads(p.read_text()), json.loads((tmp_path / "ray.audit" / rel).read_text())
        assert a == b                                                 # same sidecars (boxes, hashes, settings)
    # the same redact.log lines from either engine (actors log nothing themselves: Ray's session
    # logs under /tmp kept the file names and failures, and redact.log had none)
    def lines(name):
        text = (tmp_path / f"{name}.audit" / "redact.log").read_text()
        return sorted(line.split(" ", 3)[-1].replace(str(tmp_path / name), "OUT")
                      for line in text.splitlines() if ": redacted (" in line or "broken.jpg" in line)
    assert lines("local") == lines("ray") and len(lines("ray")) == 6
    # resume works across engines: nothing left to do
    code, s = _run(tmp_path, src, tmp_path / "ray", "--engine", "ray")
    assert s["skipped"] == 5 and s["redacted"] == 0


def test_relative_paths_reach_actors_whose_working_directory_differs(tmp_path, local_ray, monkeypatch):
    """Actors resolved `redact in out` from their own working directory (a cluster's raylet's):
    every image failed `not_found`, or the outputs went there while the summary said redacted."""
    src = tmp_path / "in"
    _tree(src)
    monkeypatch.chdir(tmp_path)   # the local instance's workers started in another folder
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "--json", "redact", "in", "rel_out", "--detector", "ppocr",
                                 "--scales", "1", "--engine", "ray"])
    s = json.loads(r.stdout)
    assert s["redacted"] == 5, s["errors"]
    assert len(sha_tree(tmp_path / "rel_out")) == 5 and len(list((tmp_path / "rel_out.audit" / "sidecars").rglob("*.json"))) == 5
    assert all(not e.startswith("/") for e in s["errors"])   # results name the paths as typed


def test_sigterm_under_ray_ends_like_ctrl_c_with_an_exact_count_and_the_rerun_resumes(tmp_path):
    """Ray's driver replaced textloop's SIGTERM handler: `kill` ended the command with exit 15,
    no summary and no resume hint, and actors went on writing after the count was taken. Now it
    is Ctrl-C's ending (exit 130, "interrupted after N"), N is every sidecar written, and the
    rerun (local engine: the same outputs) does only the rest."""
    import signal
    import subprocess
    import sys
    import time

    from tests.imagegen import smooth_image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        smooth_image(300 + i).save(src / f"{i:02d}.png")
    out, sidecars = tmp_path / "out", tmp_path / "out.audit" / "sidecars"
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "redact", str(src), str(out),
                             "--engine", "ray", "--workers", "2", "--detector", "ppocr", "--scales", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(sidecars.glob("*.json")) if sidecars.is_dir() else []) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-800:]
    assert "Token authentication is enabled" not in err   # Ray said so on every run (auth stays on)
    said = int(re.search(r"interrupted after (\d+) images", err).group(1))
    time.sleep(2)   # an actor still running would write more now
    written = len(list(sidecars.glob("*.json")))
    assert said == written and 3 <= written < 60, (said, written, err[-300:])
    res = subprocess.run([sys.executable, "-m", "pipeline.cli.app", "--json", "redact", str(src), str(out),
                          "--detector", "ppocr", "--scales", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    summary = json.loads(res.stdout)
    assert res.returncode == 0 and summary["skipped"] == written and summary["redacted"] == 60 - written
