"""The catalog's API: nesting transactions, one `latest_annotations` rule, `ImageStatus` and the
CHECK constraint migration 5 adds, `catalog.iteration()`, and model names resolved by the registry."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipeline import catalog
from pipeline.catalog import Catalog, ImageStatus

ROOT = Path(__file__).resolve().parents[1]


def add_image(cat: Catalog, iid: str, status: ImageStatus = ImageStatus.NEW, split: str = "train") -> None:
    cat.add_image(iid, f"images/{iid}.png", "gen", f"{iid}.png", 1, 64, 48, "PNG", "RGB", 8, 1, 1, split)
    if status != ImageStatus.NEW:
        cat.set_status(iid, status)


def annotate(cat: Catalog, iid: str, boxes: list, at: float, source: str = "labelstudio", state: str | None = None) -> int:
    return cat.add_annotation(iid, source, boxes=json.dumps(boxes), labels=json.dumps([0] * len(boxes)),
                              state=state or ("submitted" if boxes else "empty"), updated_at=at, pulled_at=at)


# --- transactions -----------------------------------------------------------------------------

def test_methods_join_the_callers_transaction(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a")
        with pytest.raises(RuntimeError), cat.transaction():
            cat.set_split("a", "test")
            cat.set_status("a", ImageStatus.EXCLUDED)
            raise RuntimeError("crash between two writes")
        row = cat.image("a")
        assert (row["split"], row["status"]) == ("train", "new")  # neither write survived


def test_a_failed_inner_block_is_undone_alone(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a")
        with cat.transaction():
            cat.set_split("a", "val")
            with pytest.raises(sqlite3.IntegrityError):
                cat.add_image("a", "images/a.png", "gen", "a.png", 1, 1, 1, "PNG", "RGB", 8, 1, 1, "train")
            cat.set_status("a", ImageStatus.PUSHED)
        row = cat.image("a")
        assert (row["split"], row["status"]) == ("val", "pushed")
        assert not cat.conn.in_transaction


# --- latest_annotations -----------------------------------------------------------------------

def test_latest_annotation_is_the_newest_and_ties_go_to_the_last_stored(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a", ImageStatus.LABELLED)
        add_image(cat, "b", ImageStatus.LABELLED)
        annotate(cat, "a", [[0, 0, 5, 5]], at=2.0)
        annotate(cat, "a", [[1, 1, 6, 6]], at=1.0)                        # older, stored later
        annotate(cat, "b", [[0, 0, 1, 1]], at=5.0)
        annotate(cat, "b", [[2, 2, 3, 3]], at=5.0, source="import:x")     # same time: stored last wins
        annotate(cat, "b", [[9, 9, 9, 9]], at=9.0, state="skipped")       # not a label
        got = cat.latest_annotations(include_excluded=True)
        assert list(got) == ["a", "b"]
        assert json.loads(got["a"]["boxes"]) == [[0, 0, 5, 5]]
        assert json.loads(got["b"]["boxes"]) == [[2, 2, 3, 3]]
        assert got["a"]["path"] == "images/a.png" and got["a"]["width"] == 64
        only_ls = cat.latest_annotations(include_excluded=True, sources=["labelstudio"])
        assert json.loads(only_ls["b"]["boxes"]) == [[0, 0, 1, 1]]
        assert list(cat.latest_annotations(include_excluded=True, image_ids=["b", "zz"])) == ["b"]


def test_latest_annotations_filters_excluded_images_and_splits_only_when_asked(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "kept", ImageStatus.LABELLED, split="test")
        add_image(cat, "out", ImageStatus.EXCLUDED, split="test")
        add_image(cat, "trainimg", ImageStatus.LABELLED, split="train")
        for iid in ("kept", "out", "trainimg"):
            annotate(cat, iid, [[0, 0, 2, 2]], at=1.0)
        assert list(cat.latest_annotations(include_excluded=True)) == ["kept", "out", "trainimg"]
        assert list(cat.latest_annotations(include_excluded=False)) == ["kept", "trainimg"]
        assert list(cat.latest_annotations(include_excluded=False, split="test")) == ["kept"]


def test_each_caller_applies_its_rule_for_excluded_images(ws) -> None:
    """Evaluation, export and label noise leave excluded images out (they are out of the dataset);
    a redaction waiting on its review still gets the reviewed boxes of an excluded image."""
    from pipeline.curate.label_noise import catalog_items
    from pipeline.evaluate import workspace_ground_truth
    from pipeline.redact.review import reviewed_boxes
    from pipeline.studio.export import labelled_rows

    with ws.catalog() as cat:
        for iid, status in (("in", ImageStatus.LABELLED), ("out", ImageStatus.EXCLUDED)):
            add_image(cat, iid, status, split="test")
            cat.record_predictions("m1", [(iid, {"boxes": [[0, 0, 4, 4]], "scores": [0.9], "labels": [0]})])
            cat.conn.execute("UPDATE predictions SET created_at = 0")
            annotate(cat, iid, [[0, 0, 4, 4]], at=10.0)
    assert [Path(p).stem for p, _ in workspace_ground_truth(ws, "test")] == ["in"]
    assert [r["image_id"] for r in labelled_rows(ws)] == ["in"]
    items, skipped = catalog_items(ws)
    assert [it.image_id for it in items] == ["in"] and not skipped
    assert sorted(reviewed_boxes(ws, ["in", "out"])) == ["in", "out"]


# --- statuses ---------------------------------------------------------------------------------

def _check_values(sql: str) -> set[str]:
    m = re.search(r"status IN \(([^)]*)\)", sql)
    assert m is not None
    return set(re.findall(r"'([a-z_]+)'", m.group(1)))


def test_the_check_constraint_holds_exactly_the_enum() -> None:
    (sql,) = [s for v, s in catalog.MIGRATIONS if v == 5]
    assert _check_values(sql) == {s.value for s in ImageStatus}


def test_a_new_catalog_has_the_constraint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Catalog(":memory:") as cat:
        sql = cat.scalar("SELECT sql FROM sqlite_master WHERE name = 'images'")
    assert _check_values(sql) == {s.value for s in ImageStatus}
    assert list(tmp_path.iterdir()) == []   # in memory: no file named ":memory:" in the working folder


def test_a_bad_status_is_refused(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a")
        with pytest.raises(ValueError):
            cat.set_status("a", "labeled")
        with pytest.raises(sqlite3.IntegrityError), cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'labeled' WHERE id = 'a'")
        assert cat.image("a")["status"] == "new"


def test_set_status_reports_the_old_status_and_respects_its_guards(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a", ImageStatus.EXCLUDED)
        assert cat.set_status("a", ImageStatus.LABELLED, never_from=(ImageStatus.EXCLUDED,)) is None
        assert cat.set_status("a", ImageStatus.PUSHED, only_from=(ImageStatus.NEW,)) is None
        assert cat.set_status("a", "new") is ImageStatus.EXCLUDED
        assert cat.set_status("a", ImageStatus.NEW) is None            # unchanged
        assert cat.set_status("missing", ImageStatus.NEW) is None
        assert cat.image("a")["status"] == ImageStatus.NEW == "new"


def test_a_catalog_at_schema_4_migrates_with_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "catalog.sqlite"
    with monkeypatch.context() as m:     # a catalog written by the release before the constraint
        m.setattr(catalog, "MIGRATIONS", [mig for mig in catalog.MIGRATIONS if mig[0] <= 4])
        with Catalog(path) as old:
            assert old.schema_version() == 4
            with old.transaction() as tx:
                for k, status in enumerate(ImageStatus):
                    tx.execute("INSERT INTO images(id, path, source, original_name, bytes, width, height, format, mode,"
                               " bit_depth, split, status, created_at) VALUES (?, ?, 's', 'a.png', 1, 64, 48, 'PNG',"
                               " 'RGB', 8, 'train', ?, ?)", (f"img{k}", f"images/{k}.png", status.value, float(k)))
                tx.execute("INSERT INTO image_sources(image_id, source, original_name, harvested_at)"
                           " VALUES ('img0', '/a.png', 'a.png', 0)")
                tx.execute("INSERT INTO annotations(image_id, source, boxes, labels, state, updated_at, pulled_at)"
                           " VALUES ('img2', 'labelstudio', '[[5,6,7,8]]', '[0]', 'submitted', 1, 1)")
                tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                           " VALUES ('img1', 'm1', '[[1,2,3,4]]', '[0.5]', '[0]', 0)")
                tx.execute("INSERT INTO tasks(image_id, ls_project_id, ls_task_id, created_at) VALUES ('img1', 1, 7, 0)")
            before = old.query("SELECT * FROM images ORDER BY id")
    with Catalog(path) as cat:
        assert cat.schema_version() == catalog.SCHEMA_VERSION >= 5
        assert cat.query("SELECT * FROM images ORDER BY id") == before
        assert cat.query("PRAGMA foreign_key_check") == []
        assert cat.scalar("PRAGMA foreign_keys") == 1
        indexes = {r["name"] for r in cat.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"images_status", "images_split"} <= indexes
        assert cat.sources_of(["img0"]) == {"img0": ["/a.png"]}
        assert list(cat.latest_annotations(include_excluded=True)) == ["img2"]
        with pytest.raises(sqlite3.IntegrityError), cat.transaction() as tx:
            tx.execute("UPDATE images SET status = 'done' WHERE id = 'img0'")
        with pytest.raises(sqlite3.IntegrityError):   # foreign keys are on again
            annotate(cat, "nope", [], at=1.0)
    with sqlite3.connect(path) as raw:
        assert [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")] == \
            list(range(1, catalog.SCHEMA_VERSION + 1))


# --- iterations -------------------------------------------------------------------------------

def test_iteration_records_done_with_its_counts(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        with cat.iteration("rank") as it:
            it.counts["pool"] = 3
            it.save()
            assert json.loads(cat.last_iteration()["counts"]) == {"pool": 3}
            assert cat.last_iteration()["status"] == "running"
            it.metrics = {"strategy": "entropy"}
        row = cat.last_iteration()
        assert (row["step"], row["status"]) == ("rank", "done") and row["finished_at"] >= row["started_at"]
        assert json.loads(row["counts"]) == {"pool": 3} and json.loads(row["metrics"]) == {"strategy": "entropy"}


@pytest.mark.parametrize("exc", [ValueError("bad input"), KeyboardInterrupt()])
def test_iteration_records_a_failure_and_reraises(tmp_path: Path, exc: BaseException) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        with pytest.raises(type(exc)), cat.iteration("train") as it:
            it.counts = {"steps": 2}
            raise exc
        row = cat.last_iteration()
        assert row["status"] == "failed" and json.loads(row["counts"]) == {"steps": 2}
        assert json.loads(row["metrics"])["error"].startswith(type(exc).__name__)


# --- detectors stay pure ----------------------------------------------------------------------

def test_detectors_package_imports_no_storage() -> None:
    tree = ast.parse((ROOT / "pipeline" / "detectors" / "__init__.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"pipeline.workspace", "pipeline.catalog"}


def test_current_is_resolved_by_the_registry(ws) -> None:
    from pipeline.bundle import resolve_detector

    assert resolve_detector("current") == "ppocr"
    assert resolve_detector("current", ws) == "ppocr"          # nothing promoted yet
    assert resolve_detector("ppocr", ws) == "ppocr"
    assert resolve_detector("some/bundle.zip", ws) == "some/bundle.zip"
    with ws.catalog() as cat:
        cat.add_model("m-1", None, "db", "models/m-1/bundle.zip", None, {})
        cat.promote("m-1")
        with pytest.raises(KeyError):
            cat.promote("m-2")
        assert cat.current_model()["version"] == "m-1"
    with pytest.raises(FileNotFoundError, match=r"current model's bundle \(m-1\) is missing"):
        resolve_detector("current", ws)                          # recorded, but its file is not there
    ws.abspath("models/m-1").mkdir(parents=True)
    ws.abspath("models/m-1/bundle.zip").write_bytes(b"PK")
    assert resolve_detector("current", ws) == str(ws.abspath("models/m-1/bundle.zip"))


def test_no_module_but_the_catalog_holds_sql() -> None:
    sql = re.compile(r"\b(SELECT\s+\S.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "pipeline").rglob("*.py"))
                 if p.name != "catalog.py" and sql.search(p.read_text())]
    assert offenders == []


def test_status_summary_counts(ws) -> None:
    from pipeline.status import workspace_status

    with ws.catalog() as cat:
        add_image(cat, "a", ImageStatus.LABELLED, split="test")
        add_image(cat, "b", split="test")
        add_image(cat, "c", split="train")
        cat.record_reject("/bad.png", "decode", "truncated")
        st = workspace_status(cat)
    assert st.images == 3 and st.by_split == {"test": 2, "train": 1}
    assert st.by_status == {"labelled": {"test": 1}, "new": {"test": 1, "train": 1}}
    assert st.rejects == {"decode": 1} and st.last_iteration is None
    assert st.schema_version == catalog.SCHEMA_VERSION
    assert list(st.as_dict()) == ["images", "sources", "by_status", "by_split", "rejects", "annotations", "predictions",
                                  "tasks", "tasks_by_project", "models", "current_model", "last_iteration", "schema_version"]
    # a project deleted in Label Studio and made again: its old tasks are shown apart, not as live
    with ws.catalog() as cat:
        cat.record_task("a", 1, 11)
        cat.record_task("b", 1, 12)
        cat.record_task("a", 2, 21)
        st = workspace_status(cat)
    assert st.tasks == 3 and st.tasks_by_project == {1: 2, 2: 1}
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    r = CliRunner().invoke(app, ["-w", str(ws.root), "status"])
    assert "3 Label Studio tasks (project 1: 2, project 2: 1)" in " ".join(r.output.split()), r.output


def test_a_stage_whose_process_was_killed_does_not_stay_running(tmp_path) -> None:
    """`kill -9` during `train` left its row `running` for ever (status: "train #15 (running)")."""
    import subprocess
    import sys

    from pipeline.status import workspace_status

    with Catalog(tmp_path / "c.sqlite") as cat:
        mine = cat.start_iteration("rank")          # this process: alive, left alone
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        gone = cat.start_iteration("train")
        with cat.transaction() as tx:                # as if started by the process that was killed
            tx.execute("UPDATE iterations SET metrics = ? WHERE id = ?",
                       (json.dumps({"pid": child.pid, "host": __import__("socket").gethostname()}), gone))
        status = workspace_status(cat)
        rows = {r["id"]: r for r in cat.iterations()}
        assert rows[gone]["status"] == "failed" and "ended without finishing" in json.loads(rows[gone]["metrics"])["error"]
        assert rows[mine]["status"] == "running" and status.last_iteration["id"] == gone


def test_a_new_catalog_follows_the_umask(tmp_path) -> None:
    """SQLite made catalog.sqlite 0644 whatever the umask: under umask 002 (a shared workspace)
    images were group-writable and the catalog was not, so the group could not harvest."""
    import os
    import stat

    from pipeline.catalog import Catalog

    old = os.umask(0o002)
    try:
        with Catalog(tmp_path / "catalog.sqlite") as cat:
            cat.scalar("SELECT COUNT(*) FROM images")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "catalog.sqlite").stat().st_mode) == 0o664


def test_a_workspace_that_cannot_be_written_is_one_line(tmp_path, monkeypatch) -> None:
    """A read-only workspace (a mount, another user's folder) gave a 55-line sqlite traceback for
    every command, `status` included: opening the catalog writes (WAL mode, migrations). Now one
    line naming the catalog, exit 1. (SQLite's own error is raised where the write fails: root,
    which runs the tests, ignores file modes.)"""
    import sqlite3

    from typer.testing import CliRunner

    from pipeline.catalog import Catalog
    from pipeline.cli.app import app

    (tmp_path / "ws").mkdir()
    Catalog(tmp_path / "ws" / "catalog.sqlite").close()

    def refuse(self) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Catalog, "migrate", refuse)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "report"])   # report writes reports/
    assert r.exit_code == 1 and "cannot write to the catalog" in r.output and "Traceback" not in r.output, r.output
    assert "catalog.sqlite" in r.output


def test_a_read_only_catalog_reads_and_refuses_writes(tmp_path) -> None:
    with Catalog(tmp_path / "c.sqlite") as cat:
        add_image(cat, "a")
        it = cat.start_iteration("train")    # a running row of a dead process: not "mended" read-only
        dead = subprocess.Popen(["true"])
        dead.wait()
        with cat.transaction() as tx:
            tx.execute("UPDATE iterations SET metrics = ? WHERE id = ?",
                       (json.dumps({"pid": dead.pid, "host": socket.gethostname()}), it))
    before = (tmp_path / "c.sqlite").read_bytes()
    with Catalog(tmp_path / "c.sqlite", read_only=True) as ro:
        assert ro.row_counts()["images"] == 1
        assert ro.close_abandoned_iterations() == []
        with pytest.raises(sqlite3.OperationalError):
            add_image(ro, "b")
    assert (tmp_path / "c.sqlite").read_bytes() == before


def test_a_read_only_catalog_of_an_older_schema_is_refused_in_one_line(tmp_path) -> None:
    from pipeline.catalog import CatalogUnwritable

    with Catalog(tmp_path / "c.sqlite") as cat:
        with cat.transaction() as tx:
            tx.execute("DELETE FROM schema_version WHERE version > 4")
    with pytest.raises(CatalogUnwritable, match="at schema 4, older than .*open it once with write access"):
        Catalog(tmp_path / "c.sqlite", read_only=True)



@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only mount of tmp_path/src at tmp_path/ro (root can bind-mount here; skipped
    where it cannot, since root ignores file modes and nothing else makes a folder read-only)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    yield src, ro
    subprocess.run(["umount", str(ro)], capture_output=True)


def _mount_read_only(src, ro) -> None:
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()}")


def test_a_workspace_on_a_read_only_mount_can_be_read(read_only_mount, tmp_path) -> None:
    """A team's workspace shared read-only: status, models list, export and redact with its
    `current` model read it; commands that write say so in one line. Every command used to
    refuse ("needs write access ... even for status")."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.workspace import Workspace

    src, ro = read_only_mount
    ws = Workspace.open(src)
    Image.new("RGB", (64, 48), "white").save(src / "images" / "a.png")
    with ws.catalog() as cat:
        add_image(cat, "a", ImageStatus.LABELLED)
        annotate(cat, "a", [[1, 2, 30, 20]], at=1.0)
    _mount_read_only(src, ro)
    assert not os.access(ro, os.W_OK) or subprocess.run(["touch", str(ro / "x")]).returncode != 0
    run = CliRunner().invoke
    r = run(app, ["-w", str(ro), "--json", "status"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 1
    r = run(app, ["-w", str(ro), "models", "list"])
    assert r.exit_code == 0, r.output
    r = run(app, ["-w", str(ro), "export", "--format", "jsonl", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "boxes.jsonl").read_text().splitlines()[0])["boxes"]
    r = run(app, ["-w", str(ro), "report"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
