"""scripts/check_disk.py: `make` stops with one line before pip fills the disk."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_disk.py"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "TEXTLOOP_SKIP_DISK_CHECK"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**e, **(env or {})}, timeout=60)


def test_a_venv_the_disk_cannot_hold_stops_with_one_line_naming_the_place_and_both_sizes(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free / 1024 ** 3
    r = run(f".venv={free * 2 + 1:.0f}", ".venv-ls=0", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(tmp_path.resolve()) in lines[0] and "GB free" in lines[0] and ".venv" in lines[0]


def test_room_enough_or_venvs_already_built_pass(tmp_path: Path) -> None:
    assert run(".venv=0", cwd=tmp_path).returncode == 0
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    # built: it needs nothing more, however large its entry
    assert run(".venv=1000000", cwd=tmp_path).returncode == 0
    # --path: the venvs live elsewhere than the working directory
    assert run("--path", str(tmp_path), ".venv=1000000", cwd=ROOT).returncode == 0
    assert run("--path", str(tmp_path), ".venv-ls=1000000", cwd=ROOT).returncode == 1
    # the override, for a user who knows better
    assert run(".venv-ls=1000000", cwd=tmp_path, env={"TEXTLOOP_SKIP_DISK_CHECK": "1"}).returncode == 0


def test_a_malformed_size_is_a_usage_error(tmp_path: Path) -> None:
    for bad in (".venv=abc", ".venv", "=3", ".venv=-1", ".venv=nan", ".venv=inf"):
        r = run(bad, cwd=tmp_path)
        assert r.returncode == 2, bad
        assert "VENV=GB" in r.stderr


def test_make_checks_the_disk_before_building_any_venv() -> None:
    if shutil.which("make") is None:
        raise AssertionError("make is needed to build the venvs")
    for target, first in (("venvs", ".venv-fastdup=" ), ("demo", ".venv-ls=")):
        out = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MAKEFLAGS": ""}).stdout.splitlines()
        assert out and "scripts/check_disk.py" in out[0] and first in out[0], (target, out[:3])
