from __future__ import annotations

import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.catalog import Catalog
from pipeline.cli.app import app
from pipeline.config import HarvestConfig, SplitRatios
from pipeline.harvest import harvest, split_for
from pipeline.workspace import Workspace
from tests.imagegen import jpeg_bytes, noise_image, write

FAST = HarvestConfig(workers=2, timeout_s=1.0, retries=1, backoff_s=0.05, max_bytes=200_000)


def make_messy_folder(root: Path) -> dict[str, Path]:
    good = jpeg_bytes(1)
    files = {
        "good": write(root / "a" / "good.jpg", good),
        "dup": write(root / "b" / "copy_of_good.JPG", good),
        "png": root / "c.png",
        "tif16": root / "deep" / "er" / "micro.tif",
        "truncated": write(root / "trunc.jpg", jpeg_bytes(2)[:300]),
        "text": write(root / "notes.jpg", b"this is not an image at all\n" * 20),
        "empty": write(root / "empty.png", b""),
        "ignored": write(root / "readme.md", b"# not harvested"),
    }
    noise_image(3).save(files["png"])
    files["tif16"].parent.mkdir(parents=True)
    noise_image(4, mode="I;16").save(files["tif16"])
    return files


def rows(ws: Workspace, sql: str) -> list[dict]:
    with ws.catalog() as cat:
        return cat.query(sql)


def test_folder_harvest_records_images_and_rejects(ws: Workspace, tmp_path: Path) -> None:
    files = make_messy_folder(tmp_path / "src")
    s = harvest(ws, [str(tmp_path / "src")], FAST)
    assert (s.new, s.duplicates, s.skipped) == (3, 1, 0)
    assert dict(s.rejected) == {"corrupt": 1, "not_an_image": 1, "empty": 1}
    imgs = {r["original_name"]: r for r in rows(ws, "SELECT * FROM images")}
    assert set(imgs) == {"good.jpg", "c.png", "micro.tif"}  # the duplicate collapsed onto the first source
    assert imgs["micro.tif"]["bit_depth"] == 16 and imgs["micro.tif"]["format"] == "TIFF"
    assert imgs["good.jpg"]["width"] == 64 and imgs["good.jpg"]["height"] == 48
    sources = rows(ws, "SELECT * FROM image_sources WHERE image_id = (SELECT id FROM images WHERE original_name='good.jpg')")
    assert {Path(r["source"]).name for r in sources} == {"good.jpg", "copy_of_good.JPG"}
    with ws.catalog() as cat:   # what reports call it: every name the user has for it
        assert cat.image_names()[imgs["good.jpg"]["id"]] == "good.jpg (also copy_of_good.JPG)"
        assert cat.image_names()[imgs["c.png"]["id"]] == "c.png"
    rejects = {Path(r["source"]).name: r["reason"] for r in rows(ws, "SELECT * FROM rejects")}
    assert rejects == {"trunc.jpg": "corrupt", "notes.jpg": "not_an_image", "empty.png": "empty"}
    for r in imgs.values():  # content-addressed, bytes identical to the source
        stored = ws.abspath(r["path"])
        assert stored.name.startswith(r["id"]) and stored.parent.name == r["id"][:2]
    assert ws.abspath(imgs["good.jpg"]["path"]).read_bytes() == files["good"].read_bytes()
    assert list(ws.tmp_dir.iterdir()) == []


def test_harvest_twice_is_idempotent(ws: Workspace, tmp_path: Path) -> None:
    make_messy_folder(tmp_path / "src")
    harvest(ws, [str(tmp_path / "src")], FAST)
    before = [rows(ws, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("images", "image_sources")]
    s2 = harvest(ws, [str(tmp_path / "src")], FAST)
    assert (s2.new, s2.duplicates) == (0, 0) and s2.skipped == 4
    after = [rows(ws, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("images", "image_sources")]
    assert before == after
    assert len([p for p in ws.images_dir.rglob("*") if p.is_file()]) == 3


def test_split_is_deterministic_and_follows_ratios() -> None:
    ratios = SplitRatios(0.6, 0.2, 0.2)
    shas = [f"{i:064x}" for i in range(0, 2**20, 997)]
    first = [split_for(s, ratios) for s in shas]
    assert first == [split_for(s, ratios) for s in shas]
    import hashlib
    hashed = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    counts = {k: sum(split_for(h, ratios) == k for h in hashed) / 3000 for k in ("train", "val", "test")}
    assert abs(counts["train"] - 0.6) < 0.04 and abs(counts["val"] - 0.2) < 0.04
    with pytest.raises(ValueError):
        SplitRatios(0.5, 0.5, 0.5)


def test_migration_from_empty_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with Catalog(path) as cat:
        assert cat.schema_version() >= 1
        tables = {r["name"] for r in cat.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"images", "predictions", "annotations", "models", "tasks", "iterations", "rejects"} <= tables
        assert cat.scalar("PRAGMA journal_mode") == "wal"
    with Catalog(path) as cat:  # reopening does not re-apply
        assert cat.scalar("SELECT COUNT(*) FROM schema_version") == cat.schema_version()


def test_transaction_rolls_back_on_error(ws: Workspace) -> None:
    with ws.catalog() as cat:
        with pytest.raises(RuntimeError):
            with cat.transaction() as tx:
                tx.execute("INSERT INTO rejects(source, reason, detail, at) VALUES ('x', 'r', 'd', 0)")
                raise RuntimeError("crash mid-command")
        assert cat.scalar("SELECT COUNT(*) FROM rejects") == 0


def test_csv_and_url_list_sources(ws: Workspace, tmp_path: Path) -> None:
    img = write(tmp_path / "pics" / "x.jpg", jpeg_bytes(5))
    (tmp_path / "list.csv").write_text("path,patient_site,notes\npics/x.jpg,site-7,hello\n")
    (tmp_path / "nocol.csv").write_text("file,notes\nx.jpg,hi\n")
    (tmp_path / "urls.txt").write_text("# comment\nftp://example.org/a.jpg\n")
    s = harvest(ws, [str(tmp_path / "list.csv"), str(tmp_path / "nocol.csv"), str(tmp_path / "urls.txt"),
                     str(tmp_path / "missing_dir")], FAST)
    assert s.new == 1
    assert dict(s.rejected) == {"missing_column": 1, "bad_url": 1, "not_found": 1}
    meta = json.loads(rows(ws, "SELECT metadata FROM image_sources")[0]["metadata"])
    assert meta == {"patient_site": "site-7", "notes": "hello"}
    assert img.exists()


# --- URL harvest against a real loopback HTTP server ---------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes, float]] = {}
    hits: dict[str, int] = {}

    def log_message(self, *a) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok.jpg")
            self.end_headers()
            return
        code, ctype, body, delay = Handler.routes.get(self.path, (404, "text/plain", b"nope", 0.0))
        if delay:
            time.sleep(delay)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def http_base():
    Handler.routes = {
        "/ok.jpg": (200, "image/jpeg", jpeg_bytes(10), 0.0),
        "/other.png": (200, "image/png", _png(11), 0.0),
        "/slow.jpg": (200, "image/jpeg", jpeg_bytes(12), 3.0),
        "/page.html": (200, "text/html", b"<html>hi</html>", 0.0),
        "/huge.jpg": (200, "image/jpeg", jpeg_bytes(13, size=(900, 900), quality=100), 0.0),
        "/flaky.jpg": (503, "text/plain", b"busy", 0.0),
    }
    Handler.hits = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    noise_image(seed).save(buf, format="PNG")
    return buf.getvalue()


def test_url_harvest_outcomes(ws: Workspace, http_base: str) -> None:
    urls = [f"{http_base}{p}" for p in ("/ok.jpg", "/other.png", "/missing.jpg", "/redirect", "/slow.jpg",
                                        "/page.html", "/huge.jpg", "/flaky.jpg")]
    s = harvest(ws, urls, FAST)
    assert s.new == 2 and s.duplicates == 1  # /redirect lands on /ok.jpg's bytes
    reasons = {r["source"].rsplit("/", 1)[1]: r["reason"] for r in rows(ws, "SELECT * FROM rejects")}
    assert reasons == {"missing.jpg": "http_404", "slow.jpg": "timeout", "page.html": "bad_content_type",
                       "huge.jpg": "too_large", "flaky.jpg": "http_503"}
    assert Handler.hits["/flaky.jpg"] == 2  # retried once (FAST.retries = 1)
    # Resume: already-harvested URLs are not fetched again.
    hits_before = dict(Handler.hits)
    s2 = harvest(ws, urls[:2], FAST)
    assert s2.skipped == 2 and Handler.hits["/ok.jpg"] == hits_before["/ok.jpg"]


def test_cli_harvest_and_status_json(tmp_path: Path) -> None:
    make_messy_folder(tmp_path / "src")
    runner = CliRunner()
    wsdir = str(tmp_path / "w")
    r = runner.invoke(app, ["--workspace", wsdir, "--json", "harvest", str(tmp_path / "src")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["new"] == 3
    # the readme is not an image: named (it was left out in silence), not a reject
    assert [Path(p).name for p in json.loads(r.stdout)["ignored_files"]] == ["readme.md"]
    r = runner.invoke(app, ["--workspace", wsdir, "harvest", str(tmp_path / "src")])
    assert "ignored 1 entr(ies) not named as images" in r.output and "readme.md" in r.output, r.output
    r = runner.invoke(app, ["--workspace", wsdir, "--json", "status"])
    status = json.loads(r.stdout)
    assert status["images"] == 3 and status["rejects"] == {"corrupt": 1, "empty": 1, "not_an_image": 1}
    assert sum(status["by_split"].values()) == 3
    r = runner.invoke(app, ["--workspace", wsdir, "harvest", "--strict", str(tmp_path / "src")])
    assert r.exit_code == 1  # rejects remain and --strict was asked
    r = runner.invoke(app, ["--workspace", wsdir, "harvest", str(tmp_path / "nothing-here")])
    assert r.exit_code == 2  # a mistyped path: a usage error, nothing recorded
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    r = runner.invoke(app, ["--workspace", wsdir, "harvest", str(tmp_path / "bad")])
    assert r.exit_code == 1  # nothing could be harvested


def test_interrupted_harvest_resumes_without_partials_or_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "many"
    for i in range(150):
        write(src / f"{i:03d}.jpg", jpeg_bytes(100 + i, size=(320, 240)))
    wsdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "pipeline.cli.app", "--workspace", str(wsdir), "-q", "harvest", "--workers", "1", str(src)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 60
    catalog = wsdir / "catalog.sqlite"
    while time.time() < deadline:  # kill it once some, but not all, images are in
        time.sleep(0.05)
        if catalog.exists():
            try:
                with Catalog(catalog) as cat:
                    n = cat.scalar("SELECT COUNT(*) FROM images")
            except Exception:
                continue
            if n and n >= 1:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rc = subprocess.run(cmd, capture_output=True).returncode
    assert rc == 0
    ws = Workspace.open(wsdir)
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM images") == 150
        assert cat.scalar("SELECT COUNT(*) FROM image_sources") == 150
    stored = [p for p in ws.images_dir.rglob("*") if p.is_file()]
    assert len(stored) == 150 and not any(p.suffix == ".part" for p in stored)
    for p in stored:
        with Image.open(p) as im:
            im.load()


HARVEST_AFTER_DETECTOR = """
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import HarvestConfig
from pipeline.detectors.ppocr import PPOCRDetector
from pipeline.harvest import harvest
from pipeline.workspace import Workspace

if __name__ == "__main__":
    root = Path(sys.argv[1])
    (root / "src").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "src" / f"{i}.png")
    PPOCRDetector().detect([np.full((200, 300, 3), 255, np.uint8)])   # onnxruntime's threads now run
    print(harvest(Workspace.open(root / "ws"), [str(root / "src")], HarvestConfig(workers=2)).new)
"""


def test_harvest_after_a_detector_ran_in_the_same_process_does_not_hang(tmp_path: Path) -> None:
    """Forking a process with onnxruntime's thread pool running deadlocked the workers
    (`redact --review` harvests after detecting); harvest must finish."""
    script = tmp_path / "run.py"
    script.write_text(HARVEST_AFTER_DETECTOR)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "w")], capture_output=True, text=True, timeout=180,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "6"


def test_worker_pool_does_not_fork_a_process_with_native_thread_pools(monkeypatch) -> None:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from pipeline.harvest import worker_pool

    for m in ("onnxruntime", "torch"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    with worker_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
    monkeypatch.setitem(sys.modules, "onnxruntime", object())
    with worker_pool(2) as pool:
        assert isinstance(pool, ThreadPoolExecutor)


def png_bytes(width: int, height: int, depth: int, colour: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): IHDR, one IDAT, IEND. Without
    `rows` the pixel data is a stub: enough for the header-only size check of a huge image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows or b"\0" * 16))
            + chunk(b"IEND", b""))


def test_16_bit_rgb_png_is_recorded_as_16_bit(ws: Workspace, tmp_path: Path) -> None:
    """Pillow opens a 16-bit RGB PNG as 8-bit 'RGB'; the catalog has the file's real depth."""
    import numpy as np

    px = (np.arange(12 * 16 * 3, dtype=np.uint16).reshape(12, 16, 3) * 97).astype(">u2")
    deep = write(tmp_path / "src" / "deep.png",
                 png_bytes(16, 12, 16, 2, b"".join(b"\0" + row.tobytes() for row in px)))
    noise_image(5, (16, 12)).save(tmp_path / "src" / "flat.png")
    assert Image.open(deep).mode == "RGB"          # what made the mode table say 8
    s = harvest(ws, [str(tmp_path / "src")], FAST)
    assert s.new == 2 and not s.reject_lines
    depth = {r["original_name"]: r["bit_depth"] for r in rows(ws, "SELECT original_name, bit_depth FROM images")}
    assert depth == {"deep.png": 16, "flat.png": 8}


def test_too_many_pixels_quotes_the_configured_limit(ws: Workspace, tmp_path: Path) -> None:
    """The reject states the image's pixels and the --max-pixels limit, not Pillow's internal
    threshold (which was quoted before: 357913940 for the default, 178956970 for a lower one)."""
    from dataclasses import replace

    big = write(tmp_path / "a" / "big.png", png_bytes(20_000, 20_000, 8, 0))       # 400 Mpx
    mid = write(tmp_path / "b" / "mid.png", png_bytes(15_000, 15_000, 8, 0))       # 225 Mpx
    s = harvest(ws, [str(big)], FAST)
    assert s.reject_lines == [f"{big}: too_many_pixels (400,000,000 pixels exceeds the limit of 178,956,970 "
                              f"pixels; raise --max-pixels to accept it)"]
    s = harvest(ws, [str(mid)], replace(FAST, max_pixels=500_000))
    assert s.reject_lines == [f"{mid}: too_many_pixels (225,000,000 pixels exceeds the limit of 500,000 "
                              f"pixels; raise --max-pixels to accept it)"]


def test_reject_lines_show_paths_as_the_folder_was_typed(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    """Rejects found while listing (a FIFO) and while reading (an empty file) both read
    `src/...` when the user typed `src`, not one relative and one absolute; the catalog keeps
    the absolute path it looks sources up by."""
    make_messy_folder(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "pipe.jpg")
    monkeypatch.chdir(tmp_path)
    s = harvest(ws, ["src"], FAST)
    assert sorted(line.split(":")[0] for line in s.reject_lines) == [
        "src/empty.png", "src/notes.jpg", "src/pipe.jpg", "src/trunc.jpg"]
    assert str(tmp_path / "src" / "empty.png") in {r["source"] for r in rows(ws, "SELECT source FROM rejects")}


def test_an_entry_is_one_reject_however_its_folder_is_typed_and_goes_when_it_goes(ws: Workspace, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """A FIFO harvested as `src`, `/abs/src` and through a linked folder was three rejects in
    `status`; a deleted dangling link stayed one for ever."""
    make_messy_folder(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "pipe.jpg")
    (tmp_path / "src" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "srclink").symlink_to(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    for typed in ("src", str(tmp_path / "src"), "srclink"):
        harvest(ws, [typed], FAST)
    listed = sorted(r["source"] for r in rows(ws, "SELECT source FROM rejects WHERE reason IN "
                                                  "('not_a_regular_file', 'dangling_symlink')"))
    assert listed == [str(tmp_path.resolve() / "src" / "dangling.png"), str(tmp_path.resolve() / "src" / "pipe.jpg")]
    (tmp_path / "src" / "dangling.png").unlink()
    harvest(ws, ["src"], FAST)
    assert [r["source"] for r in rows(ws, "SELECT source FROM rejects WHERE reason = 'dangling_symlink'")] == []
    assert rows(ws, "SELECT source FROM rejects WHERE reason = 'not_a_regular_file'")   # still there: still a problem


def test_quiet_harvest_lists_at_most_fifty_rejects(tmp_path):
    """-q is "errors only": a folder of thousands of rejects printed thousands of lines; the
    first 50 are named, then a count (the JSON and `status` keep all of them)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(57):
        (src / f"empty_{i:02d}.png").write_bytes(b"")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "-q", "harvest", str(src)])
    lines = r.stderr.splitlines()
    assert sum(line.startswith("rejected ") and "empty_" in line for line in lines) == 50, r.stderr
    assert "... and 7 more" in r.stderr and r.stdout == ""
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws2"), "--json", "harvest", str(src)])
    assert len(json.loads(r.stdout)["rejects"]) == 57


def test_a_mistyped_path_is_one_line_and_records_nothing(tmp_path):
    """`harvest nope/` made the workspace and a `not_found` reject that no later harvest cleared."""
    (tmp_path / "src").mkdir()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "harvest", str(tmp_path / "src"), str(tmp_path / "nope")])
    assert r.exit_code == 2 and f"{tmp_path / 'nope'}: no such file or folder" in r.output
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_harvest_keeping_what_finished(tmp_path, sig):
    """Ctrl-C (the terminal signals every process of the group) or `timeout`/`docker stop`:
    workers raised KeyboardInterrupt inside the pool (a traceback each, and harvest could hang
    for good), or died of SIGTERM and broke the pool; finished images were lost back to the last
    200-item batch, their files left in images/.tmp. Now: one line, exit 130, every finished
    source recorded, and the rerun does only the rest."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(150):
        noise_image(500 + i, (900, 700)).save(src / f"{i:03d}.png")
    src_files = sorted(src.glob("*.png"))
    wsdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "pipeline.cli.app", "--workspace", str(wsdir), "harvest", "--workers", "2", str(src)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((wsdir / "images" / ".tmp").glob("*"))) < 5:   # fetched, not yet recorded
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-1500:]
    said = int(re.search(r"harvest interrupted after (\d+) of (\d+) sources", err).group(1))
    with Catalog(wsdir / "catalog.sqlite") as cat:
        kept = cat.scalar("SELECT COUNT(*) FROM images")
    assert 1 <= kept == said < len(src_files)
    assert not [p for p in (wsdir / "images").rglob("*.part")]
    res = subprocess.run([*cmd[:3], "--json", *cmd[3:]], capture_output=True, text=True, timeout=300)
    summary = json.loads(res.stdout)
    assert res.returncode == 0 and summary["skipped"] == kept and summary["new"] == len(src_files) - kept


def test_a_signal_stops_a_download_waiting_on_its_retries(tmp_path, http_base):
    """Ctrl-C during a URL harvest waited out every attempt and backoff (24 s with --timeout 5
    --retries 3, 85 s with the defaults), then stored the interrupted URL as a `timeout` reject
    and said "after 1 of 1". Now the download stops at once, is no reject, and the rerun fetches it."""
    Handler.routes["/slower.jpg"] = (200, "image/jpeg", jpeg_bytes(14), 30.0)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{http_base}/slower.jpg\n")
    wsdir = tmp_path / "w"
    Workspace.open(wsdir)   # made before: a failed command removes a workspace it made and left empty
    cmd = [sys.executable, "-m", "pipeline.cli.app", "--workspace", str(wsdir), "harvest", str(urls),
           "--timeout", "5", "--retries", "3", "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not Handler.hits.get("/slower.jpg"):    # the request is under way
        time.sleep(0.05)
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert proc.returncode == 130 and "harvest interrupted after 0 of 1 sources" in err, err[-800:]
    assert took < 4.0, took            # not the 5 s attempt, let alone its retries
    with Catalog(wsdir / "catalog.sqlite") as cat:
        assert cat.scalar("SELECT COUNT(*) FROM rejects") == 0
    assert not [p for p in (wsdir / "images").rglob("*.part")]


def test_a_folder_without_images_is_said_and_exits_1(tmp_path):
    """`harvest emptyd` printed "0 ok, 0 rejected" and exited 0: a mistyped or empty folder
    looked like success (the README says nothing harvested is a non-zero exit)."""
    (tmp_path / "emptyd").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    for folder, extra in (("emptyd", ""), ("notes", "1 entr(ies) not named as images")):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "harvest", str(tmp_path / folder)])
        assert r.exit_code == 1 and "nothing harvested: no image files in" in r.output and extra in r.output, r.output


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_timeout_that_never_ends_is_refused_naming_the_option(tmp_path, value):
    """`--timeout inf` passed typer's > 0 check and was refused as "timeout must be ...": the
    config's field, not the option the user typed."""
    (tmp_path / "src").mkdir()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "harvest", str(tmp_path / "src"), "--timeout", value])
    assert r.exit_code == 2 and "--timeout" in r.output and "timeout must" not in r.output.replace("--timeout must", ""), r.output


def test_a_url_lists_bad_lines_are_one_row_each_and_go_when_fixed(tmp_path, monkeypatch):
    """`harvest urls.txt` then `harvest /abs/urls.txt` counted every bad line twice (keyed by the
    path as typed), and lines deleted from the list stayed counted for ever."""
    monkeypatch.chdir(tmp_path)
    lst = tmp_path / "urls.txt"
    lst.write_text("http://127.0.0.1:abc/x.png\nftp://example.org/y.png\n# a comment\n")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, ["urls.txt"])
    harvest(ws, [str(lst)])
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM rejects") == 2
    lst.write_text("ftp://example.org/y.png\n")   # one bad line fixed (deleted)
    summary = harvest(ws, ["urls.txt"])
    assert summary.reject_lines and summary.reject_lines[0].startswith("urls.txt:1: bad_url")   # as typed
    with ws.catalog() as cat:
        assert cat.scalar("SELECT COUNT(*) FROM rejects") == 1


def test_a_link_beside_its_file_and_a_touched_file_are_nothing_new(tmp_path):
    """A symlink in the folder to a file of the same folder stored the image under the link's
    name (the file's own name appeared nowhere); a touched file harvested again was counted as
    "duplicate (new source recorded)" though no source was new."""
    src = tmp_path / "src"
    src.mkdir()
    noise_image(7, (64, 48)).save(src / "noise_3.png")
    (src / "a_link.png").symlink_to(src / "noise_3.png")
    ws = Workspace.open(tmp_path / "ws")
    first = harvest(ws, [str(src)])
    assert first.new == 1 and first.duplicates == 0
    with ws.catalog() as cat:
        assert [r["original_name"] for r in cat.images()] == ["noise_3.png"]
    os.utime(src / "noise_3.png", (time.time() + 5, time.time() + 5))
    again = harvest(ws, [str(src)])
    assert again.skipped == 1 and again.duplicates == 0 and again.new == 0


def test_a_file_rewritten_in_place_is_named_and_no_longer_a_source_of_its_old_image(tmp_path):
    """A file edited in place (a crop, a redacted copy saved over it) is a new image; the old one
    kept naming the path as its source, so its task and export pointed at a file that now shows
    other pixels, and every rerun read the file again."""
    src = tmp_path / "src"
    src.mkdir()
    noise_image(7, (64, 48)).save(src / "scan.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    with ws.catalog() as cat:
        [old] = [r["id"] for r in cat.images()]
    noise_image(8, (64, 48)).save(src / "scan.png")
    again = harvest(ws, [str(src)])
    assert again.new == 1 and len(again.replaced) == 1 and f"was image {old[:12]}" in again.replaced[0]
    with ws.catalog() as cat:
        ids = {r["id"] for r in cat.images()}
        new = (ids - {old}).pop()
        assert old in ids                                     # nothing lost: the earlier image stays
        assert cat.sources_of([old, new]) == {new: [str(src / "scan.png")]}
    third = harvest(ws, [str(src)])
    assert third.skipped == 1 and not third.replaced        # and the rerun skips the file unread


def test_csv_rows_take_url_or_path_and_their_problems_are_named(tmp_path):
    """A CSV with both `url` and `path` columns ignored `path` (the image was never harvested);
    an unclosed quote was a `bad_url`; a dangling link named in it was `not_found`."""
    noise_image(3, (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "list.csv").write_text('url,path,note\n,a.png,kept\n,gone.png,x\n"http://h/x.png,,y\n')
    ws = Workspace.open(tmp_path / "ws")
    summary = harvest(ws, [str(tmp_path / "list.csv")])
    assert summary.new == 1 and dict(summary.rejected) == {"dangling_symlink": 1, "malformed_csv": 1}, summary.as_dict()
    with ws.catalog() as cat:
        [row] = cat.images()
    assert row["original_name"] == "a.png"


def test_reject_details_are_one_line_and_url_names_decoded():
    from pipeline.harvest import Reject, _url_name

    assert "\n" not in Reject("u", "http_302", "redirect error\nThe last 30x error message was:\nFound").line()
    assert _url_name("http://h/with%20space.jpg") == "with space.jpg"


def test_harvest_again_puts_back_a_deleted_or_damaged_stored_image(tmp_path):
    """A stored image deleted or truncated since was "already harvested (skipped)" for ever, and
    curate kept flagging it. Harvesting its source again restores the bytes."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        noise_image(40 + i, (64, 48)).save(src / f"{i}.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    with ws.catalog() as cat:
        stored = [ws.abspath(r["path"]) for r in cat.images()]
    want = [p.read_bytes() for p in stored]
    stored[0].unlink()
    stored[1].write_bytes(want[1][:20])
    again = harvest(ws, [str(src)])
    assert [p.read_bytes() for p in stored] == want
    assert again.new == 0 and again.ok == 2


def test_splits_given_for_images_already_placed_are_said_to_apply_to_new_ones_only(tmp_path):
    """`harvest imgs --splits 0,0,1` on images harvested before kept every split (by design) and
    said nothing: the user thought the ratios applied."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        noise_image(40 + i, (40, 30)).save(src / f"{i}.png")
    ws = ["-w", str(tmp_path / "ws")]
    assert CliRunner().invoke(app, [*ws, "harvest", str(src)]).exit_code == 0
    r = CliRunner().invoke(app, [*ws, "harvest", str(src), "--splits", "0,0,1"])
    assert r.exit_code == 0 and "--splits places new images only; 3 were already in the workspace" in " ".join(r.stderr.split())
    r = CliRunner().invoke(app, [*ws, "harvest", str(src)])
    assert "--splits" not in r.stderr
