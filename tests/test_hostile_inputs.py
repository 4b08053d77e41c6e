"""Hostile trees and inputs, settings and errors (issue 11, parts 3 and 4), through the CLI:
FIFOs, symlinks out of the tree and in cycles, malformed URLs, a server that dribbles bytes,
a SIGKILLed harvest, temp files of a killed run, pixel limits on every page, file modes, option
ranges, unwritable output/audit folders and a damaged catalog."""

from __future__ import annotations

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app

pytestmark = pytest.mark.timeout(120)   # a FIFO that is opened would hang forever


def png(path: Path, seed: int = 0, size: tuple[int, int] = (64, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(1, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def run(tmp_path: Path, *args: str, json_out: bool = True):
    opts = ["-w", str(tmp_path / "ws")] + (["--json"] if json_out else [])
    return CliRunner().invoke(app, [*opts, *args])


def harvest_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    r = run(tmp_path, "harvest", "--workers", "2", *args)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.stdout)


def redact_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    r = run(tmp_path, "redact", *args)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, json.loads(r.stdout)


def reasons(summary: dict) -> dict[str, str]:
    """harvest summary reject lines -> {file name: reason}."""
    out = {}
    for line in summary["rejects"]:
        source, rest = line.split(": ", 1)
        out[source.rsplit("/", 1)[-1]] = rest.split(" ", 1)[0]
    return out


def failures(summary: dict) -> dict[str, str]:
    """redact summary errors ("<src>: <reason>: <detail>") -> {file name: reason}."""
    out = {}
    for line in summary["errors"]:
        src, reason = line.split(": ")[:2]
        out[src.rsplit("/", 1)[-1]] = reason
    return out


# --- 1. FIFOs ------------------------------------------------------------------------------------

def test_fifo_in_a_folder_and_as_an_argument_is_listed_not_opened(tmp_path, fake):
    src = tmp_path / "in"
    png(src / "a.png")
    os.mkfifo(src / "x.jpg")
    os.mkfifo(tmp_path / "direct.png")
    code, s = harvest_json(tmp_path, str(src), str(tmp_path / "direct.png"))
    assert code == 0 and s["new"] == 1
    assert reasons(s) == {"x.jpg": "not_a_regular_file", "direct.png": "not_a_regular_file"}

    code, s = redact_json(tmp_path, str(src), str(tmp_path / "out"))
    assert code == 1 and s["redacted"] == 1 and s["failed"] == 1
    assert failures(s) == {"x.jpg": "not_a_regular_file"}
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "x.jpg").exists()

    r = run(tmp_path, "redact", str(tmp_path / "direct.png"), str(tmp_path / "o.png"), json_out=False)
    assert r.exit_code == 2 and "direct.png" in r.output and "FIFO" in r.output


# --- 2. symlinks -----------------------------------------------------------------------------------

def hostile_tree(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    png(src / "a.png", 1)
    png(src / "sub" / "c.png", 2)
    png(tmp_path / "outside" / "secret.png", 3)
    (src / "alias.png").symlink_to("a.png")                              # inside: followed
    (src / "linked_sub").symlink_to("sub", target_is_directory=True)      # inside: listed once
    (src / "loop").symlink_to(".", target_is_directory=True)              # cycle
    (src / "leak.png").symlink_to(tmp_path / "outside" / "secret.png")   # outside
    (src / "outdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")               # dangling
    return src


def test_symlinks_inside_followed_outside_and_dangling_reported_run_finishes(tmp_path, fake):
    src = hostile_tree(tmp_path)
    code, s = redact_json(tmp_path, str(src), str(tmp_path / "out"))
    assert code == 1, s   # the skipped entries are listed as failures; the rest is done
    assert failures(s) == {"leak.png": "outside_tree", "outdir": "outside_tree", "gone.png": "dangling_symlink"}
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outs == ["a.png", "alias.png", "sub/c.png"]
    assert s["redacted"] == 3
    # nested sidecar: output is the path relative to OUTPUT
    sc = json.loads((tmp_path / "out.audit" / "sidecars" / "sub" / "c.png.json").read_text())
    assert sc["output"] == "sub/c.png" and sc["input"] == "sub/c.png"

    code, h = harvest_json(tmp_path, str(src))
    assert code == 0 and h["new"] == 2   # a.png (alias: the same file) and sub/c.png; never secret.png
    assert reasons(h) == {"leak.png": "outside_tree", "outdir": "outside_tree", "gone.png": "dangling_symlink"}


# --- 3. malformed URLs --------------------------------------------------------------------------

def test_malformed_urls_are_bad_url_rejects_and_the_rest_is_harvested(tmp_path):
    good = png(tmp_path / "good.png")
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:abc/x.png\nhttp://[::1\n")
    (tmp_path / "list.csv").write_text("url,note\nhttp://[::1/y.png,bad\nhttp://:80/z.png,nohost\n")
    code, s = harvest_json(tmp_path, "http://127.0.0.1:abc/x.png", "http://[::1", str(tmp_path / "urls.txt"),
                           str(tmp_path / "list.csv"), str(good))
    assert code == 0 and s["new"] == 1
    assert s["rejected"] == {"bad_url": 6}, s["rejects"]


# --- 4. whole-request deadline --------------------------------------------------------------------

class Dribble(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def test_timeout_is_a_deadline_for_the_whole_download(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dribble)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.png"
        t0 = time.monotonic()
        code, s = harvest_json(tmp_path, "--timeout", "1", "--retries", "0", url)
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert s["rejected"] == {"timeout": 1} and code == 1
    assert elapsed < 3 * 1 + 5, elapsed   # a byte every 0.2 s kept a per-read timeout waiting 200 s


# --- 5. SIGKILL: workers die with harvest and never hold the lock ---------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkilled_harvest_leaves_no_workers_and_the_rerun_runs(tmp_path):
    src = tmp_path / "src"
    for i in range(120):
        png(src / f"{i:03d}.png", i, size=(200, 150))
    cmd = [sys.executable, "-m", "pipeline.cli.app", "-w", str(tmp_path / "w"), "-q", "harvest", "--workers", "2", str(src)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "harvest did not start its workers"
        proc.send_signal(signal.SIGKILL)   # only harvest itself, as a tester or the OOM killer would
        proc.wait()
        end = time.time() + 10
        while time.time() < end and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived the killed harvest"
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "another harvest" not in r.stderr and time.time() - t0 < 100
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


# --- 6. temp files of a killed run ----------------------------------------------------------------

def test_rerun_removes_its_own_stale_temp_files_only(tmp_path, fake):
    src = tmp_path / "in"
    png(src / "sub" / "a.png")
    out, audit = tmp_path / "out", tmp_path / "out.audit"
    stale = [out / "sub" / ".a.png.k2x9_q1z.tmp", audit / "sidecars" / "sub" / ".a.png.json.abcd1234.tmp",
             audit / ".manifest.csv.zz00zz00.tmp"]
    keep = [out / "sub" / ".notes.tmp", out / "sub" / "a.png.k2x9_q1z.tmp"]   # not our pattern
    for p in stale + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 60, time.time() - 60))
    code, s = redact_json(tmp_path, str(src), str(out))
    assert code == 0 and s["redacted"] == 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# --- 7. one pixel limit, every page, the option works ---------------------------------------------

def test_max_pixels_option_beats_pillows_own_limit_in_harvest_and_redact(tmp_path, fake, monkeypatch):
    """Scaled down: Pillow's bomb check at 1,000 px stands for its 89.5 Mpx default, which
    refused a 144 Mpx PNG under our documented 178,956,970 and ignored a raised --max-pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    src = png(tmp_path / "in" / "big.png", size=(60, 40))       # 2,400 px: over Pillow's 2x error level
    code, s = harvest_json(tmp_path, "--max-pixels", "5000", str(src))
    assert code == 0 and s["new"] == 1, s
    code, s = redact_json(tmp_path, str(src.parent), str(tmp_path / "out"), "--max-pixels", "5000")
    assert code == 0 and s["redacted"] == 1, s
    code, s = redact_json(tmp_path, str(src.parent), str(tmp_path / "out2"), "--max-pixels", "2000")
    assert code == 1 and failures(s) == {"big.png": "too_many_pixels"}


def test_max_pixels_applies_to_every_page(tmp_path, fake):
    tif = tmp_path / "in" / "stack.tif"
    tif.parent.mkdir(parents=True)
    with tifffile.TiffWriter(tif) as tw:
        tw.write(np.zeros((10, 10), np.uint8), photometric="minisblack")
        tw.write(np.zeros((100, 100), np.uint8), photometric="minisblack")   # page 2: 10,000 px
    code, s = harvest_json(tmp_path, "--max-pixels", "1000", str(tif))
    assert code == 1 and reasons(s) == {"stack.tif": "too_many_pixels"}
    code, s = redact_json(tmp_path, str(tif.parent), str(tmp_path / "out"), "--max-pixels", "1000")
    assert code == 1 and failures(s) == {"stack.tif": "too_many_pixels"}
    # one wording everywhere: which page, its pixels, the configured limit and the option
    assert any("stack.tif" in e and "page 2: 100x100 = 10,000 pixels exceeds the limit of 1,000 pixels; raise "
               "--max-pixels" in e for e in s["errors"]), s["errors"]


# --- 8. file modes follow the umask ---------------------------------------------------------------

def test_outputs_sidecars_and_manifests_follow_the_umask(tmp_path, fake):
    old = os.umask(0o022)
    os.umask(old)
    from pipeline.io import _umask

    expected = 0o666 & ~_umask()
    png(tmp_path / "in" / "a.png")
    code, _ = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 0
    audit = tmp_path / "out.audit"
    for p in (tmp_path / "out" / "a.png", audit / "sidecars" / "a.png.json", audit / "manifest.csv",
              audit / "manifest.parquet", audit / "summary.json"):
        assert stat.S_IMODE(p.stat().st_mode) == expected, (p, oct(p.stat().st_mode))
    assert expected & 0o044  # with the usual umask others can read the cleaned images


# --- 9. settings out of range ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["redact", "IN", "OUT", "--threshold", "2"],
    ["redact", "IN", "OUT", "--threshold", "-0.1"],
    ["redact", "IN", "OUT", "--max-pixels", "-1"],
    ["redact", "IN", "OUT", "--workers", "0"],
    ["redact", "IN", "OUT", "--review-band", "0.5,0.2"],
    ["redact", "IN", "OUT", "--scales", ","],
    ["redact", "IN", "OUT", "--scales", "1,nan"],
    ["redact", "IN", "OUT", "--scales", "0"],
    ["harvest", "IN", "--timeout", "0"],
    ["harvest", "IN", "--timeout", "-3"],
    ["harvest", "IN", "--retries", "-1"],
    ["harvest", "IN", "--workers", "-2"],
    ["harvest", "IN", "--max-pixels", "-5"],
    ["harvest", "IN", "--max-bytes", "0"],
])
def test_out_of_range_settings_are_refused_with_one_line(tmp_path, args):
    png(tmp_path / "in" / "a.png")
    args = [str(tmp_path / "in") if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = run(tmp_path, *args, json_out=False)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()
    assert not (tmp_path / "ws" / "images").exists() or args[0] != "harvest"


# --- 10. errors: unwritable output/audit, damaged catalog ------------------------------------------

def test_output_or_audit_folder_that_cannot_be_created_is_one_error(tmp_path, fake):
    png(tmp_path / "in" / "a.png")
    (tmp_path / "file").write_text("a file, not a folder")
    r = run(tmp_path, "redact", str(tmp_path / "in"), str(tmp_path / "file" / "out"), json_out=False)
    assert r.exit_code == 2 and "file/out" in r.output and "Traceback" not in r.output
    r = run(tmp_path, "redact", str(tmp_path / "in"), str(tmp_path / "out"), "--audit", str(tmp_path / "file" / "audit"),
            json_out=False)
    assert r.exit_code == 2 and "file/audit" in r.output and "Traceback" not in r.output


def test_unwritable_output_subfolder_is_output_unwritable_not_unreadable(tmp_path, fake):
    png(tmp_path / "in" / "a.png", 1)
    png(tmp_path / "in" / "sub" / "b.png", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("in the way")   # works as root too, unlike chmod
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 1 and s["redacted"] == 1
    assert failures(s) == {"b.png": "output_unwritable"}
    assert any("out/sub/b.png" in e for e in s["errors"])


def test_damaged_catalog_is_one_line_naming_the_file(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "catalog.sqlite").write_bytes(b"not a database " * 200)
    png(tmp_path / "in" / "a.png")
    for args in (["status"], ["harvest", str(tmp_path / "in")]):
        r = run(tmp_path, *args, json_out=False)
        assert r.exit_code == 1 and r.exception is not None and isinstance(r.exception, SystemExit), r.output
        assert "catalog.sqlite is damaged" in r.output and "backup" in r.output and "Traceback" not in r.output


def test_a_catalog_emptied_to_zero_bytes_is_damage_not_a_new_workspace(tmp_path):
    """`status` on a workspace whose catalog.sqlite was cut to 0 bytes said "0 images" (exit 0)
    and wrote a fresh schema into it: SQLite takes an empty file for a new database."""
    png(tmp_path / "in" / "a.png")
    code, _ = harvest_json(tmp_path, str(tmp_path / "in"))
    assert code == 0
    (tmp_path / "ws" / "catalog.sqlite").write_bytes(b"")
    for args in (["status"], ["harvest", str(tmp_path / "in")]):
        r = run(tmp_path, *args, json_out=False)
        assert r.exit_code == 1 and "catalog.sqlite is damaged (it is empty, 0 bytes" in " ".join(r.output.split()), r.output
    assert (tmp_path / "ws" / "catalog.sqlite").stat().st_size == 0          # nothing written over it


def test_an_output_that_is_a_file_says_so(tmp_path, fake):
    """`redact in afile` said "cannot create or write this folder (File exists)"."""
    png(tmp_path / "in" / "a.png", 1)
    (tmp_path / "afile").write_text("x")
    r = run(tmp_path, "redact", str(tmp_path / "in"), str(tmp_path / "afile" / "out"), json_out=False)
    assert r.exit_code == 2 and f"({tmp_path / 'afile'} is a file, not a folder)" in " ".join(r.output.split())


def test_outputs_that_are_devices_fifos_or_links_are_never_replaced(tmp_path, fake):
    """As root, `redact in.png /dev/null` put a regular file where /dev/null was, and
    `predict --out /dev/stdout` replaced that link; a FIFO output was swapped for a file while
    its reader waited. Each is one line now, and the thing stays what it was."""
    png(tmp_path / "in" / "a.png", 1)
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mkfifo(dev / "pipe.png")
    (dev / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (dev / "out.jsonl").symlink_to("/proc/self/fd/1")
    for name, kind in (("pipe.png", "a FIFO"), ("link.png", "a symbolic link")):
        r = run(tmp_path, "redact", str(tmp_path / "in" / "a.png"), str(dev / name), json_out=False)
        assert r.exit_code == 2 and f"it is {kind}" in " ".join(r.output.split()), r.output
    r = run(tmp_path, "predict", str(tmp_path / "in" / "a.png"), "--detector", "ppocr", "--out", str(dev / "out.jsonl"),
            json_out=False)
    assert r.exit_code != 0 and "it is a symbolic link" in " ".join(r.output.split()), r.output
    assert stat.S_ISFIFO(os.lstat(dev / "pipe.png").st_mode) and (dev / "link.png").is_symlink()
    assert (dev / "out.jsonl").is_symlink() and not (tmp_path / "elsewhere.png").exists()


def test_file_names_up_to_255_bytes_are_redacted_with_their_sidecars(tmp_path, fake):
    """Names of 236-255 bytes are valid; the temp name (`.NAME.XXXXXXXX.tmp`) and the sidecar
    (`NAME.json`) went over the limit and the image failed with "File name too long"."""
    long_names = ["x" * (255 - 4) + ".png", "é" * 120 + "y" * (255 - 244) + ".png"]
    for name in long_names:
        assert len(name.encode()) == 255
        png(tmp_path / "in" / name, 2)
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 0 and s["redacted"] == 2, s
    sidecars = sorted(p.name for p in (tmp_path / "out.audit" / "sidecars").iterdir())
    assert len(sidecars) == 2 and all(len(n.encode()) <= 255 and n.endswith(".json") for n in sidecars)
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 0 and s["skipped"] == 2, s                 # the sidecars are found again: a rerun is a no-op


def test_a_newline_in_a_file_name_keeps_every_log_entry_on_one_line(tmp_path, fake):
    """`new\\nline.png` split its redact.log entry in two ("line.png: redacted" alone on a line,
    as if another file), and curate's and redact's console output broke the same way."""
    import re

    from pipeline.cli.common import plain

    png(tmp_path / "in" / "new\nline.png", 3)
    png(tmp_path / "in" / "ok.png", 4)
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 0 and s["redacted"] == 2
    lines = (tmp_path / "out.audit" / "redact.log").read_text().splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", x) for x in lines), lines
    assert any("new\\nline.png: redacted" in x for x in lines)
    assert plain("new\nline.png") == "new\\nline.png" and plain("\x1b[2Jwiped") == "\\x1b[2Jwiped"


def test_a_folder_named_like_a_files_sidecar_fails_that_file_up_front(tmp_path, fake):
    """`a.png` beside a folder `a.png.json/`: a.png's sidecar (`sidecars/a.png.json`) is the folder
    of the other images' sidecars. a.png was redacted and then failed on its sidecar, on every
    rerun; now it fails before anything is written, naming the clash, and the folder's images
    are redacted."""
    png(tmp_path / "in" / "a.png", 1)
    png(tmp_path / "in" / "a.png.json" / "b.png", 2)
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 1 and s["redacted"] == 1 and s["failed"] == 1, s
    assert len(s["errors"]) == 1 and "a.png: sidecar_clash" in s["errors"][0] and "a.png.json/" in s["errors"][0]
    assert (tmp_path / "out" / "a.png.json" / "b.png").is_file() and not (tmp_path / "out" / "a.png").exists()
    assert (tmp_path / "out.audit" / "sidecars" / "a.png.json" / "b.png.json").is_file()
    code, s = redact_json(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    assert code == 1 and s["skipped"] == 1 and s["failed"] == 1, s
