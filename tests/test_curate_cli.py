"""`textloop curate` and `textloop report` end to end on a small generated workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.curate.testdata import inject_error, make_pool
from pipeline.harvest import harvest
from pipeline.io import sha256_file
from pipeline.workspace import Workspace


def build_workspace(root: Path, seed: int = 0) -> tuple[Workspace, dict]:
    """A workspace with a planted pool (exact/near duplicate, outlier, broken file rejected at
    harvest), the near pair split across train/test, and human labels + earlier predictions
    on every page, three of them with planted label errors. Used by the notebook test too."""
    import time

    from pipeline.catalog import dumps

    pool = make_pool(root / "src", n=16, seed=seed)
    ws = Workspace.open(root / "ws")
    harvest(ws, [str(pool.folder)])
    ids = {p.name: sha256_file(p) for p in pool.files if p.name != pool.broken}
    near_a, near_b = (ids[n] for n in pool.near)
    rng = np.random.default_rng(seed)
    planted = {}
    t0 = time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("UPDATE images SET split = 'train' WHERE id = ?", (near_a,))
        tx.execute("UPDATE images SET split = 'test' WHERE id = ?", (near_b,))
        for k, (name, iid) in enumerate(sorted(ids.items())):
            true = np.asarray(pool.boxes[name], float).reshape(-1, 4)
            if not len(true):
                continue
            pred = true + rng.normal(0, 1.0, true.shape)
            given = true
            kind = {2: "drop", 5: "shift", 8: "add"}.get(k)
            if kind:
                given, kind = inject_error(true, 320, 240, kind, rng)
                planted[iid] = kind
            tx.execute("INSERT INTO predictions(image_id, model_version, boxes, scores, labels, created_at)"
                       " VALUES (?,?,?,?,?,?)", (iid, "ppocr-test", dumps(np.round(pred, 2).tolist()),
                                                 dumps([0.95] * len(pred)), dumps([0] * len(pred)), t0))
            tx.execute("INSERT INTO annotations(image_id, source, ls_annotation_id, boxes, labels, updated_at,"
                       " pulled_at) VALUES (?,?,?,?,?,?,?)", (iid, "labelstudio", k, dumps(np.round(given, 2).tolist()),
                                                              dumps([0] * len(given)), t0 + 10, t0 + 10))
            tx.execute("UPDATE images SET status = 'labelled' WHERE id = ?", (iid,))
    return ws, {"ids": ids, "pool": pool, "planted": planted}


def test_curate_reports_then_apply(tmp_path: Path) -> None:
    ws, info = build_workspace(tmp_path)
    ids, pool = info["ids"], info["pool"]
    runner = CliRunner()
    res = runner.invoke(app, ["--workspace", str(ws.root), "--json", "curate"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["duplicates"]["cross_split_groups"] >= 1
    pairs = pd.read_parquet(ws.reports_dir / "duplicate_pairs.parquet")
    near = {ids[pool.near[0]], ids[pool.near[1]]}
    assert [r.cross_split for r in pairs.itertuples() if {r.image_a, r.image_b} == near] == [True]
    assert summary["label_noise"]["labelled_images"] >= 10
    for name in ("duplicates", "duplicate_pairs", "duplicate_clusters", "label_issues", "label_issue_boxes"):
        assert (ws.reports_dir / f"{name}.parquet").exists() and (ws.reports_dir / f"{name}.csv").exists()
        assert (Path(summary["run_dir"]) / f"{name}.parquet").exists()
    html = (ws.reports_dir / "duplicates.html").read_text()
    assert "data:image/jpeg;base64" in html and "cross-split" in html
    assert f"<b>{pool.near[0]}</b>" in html and f"<b>{pool.near[1]}</b>" in html   # named, not a hash prefix
    issues = pd.read_parquet(ws.reports_dir / "label_issues.parquet")
    assert set(issues["image_id"][:3]) == set(info["planted"])
    # reports only: nothing changed
    with ws.catalog() as cat:
        before = {r["id"]: (r["split"], r["status"]) for r in cat.images()}
    assert before[ids[pool.near[1]]][0] == "test"

    res = runner.invoke(app, ["--workspace", str(ws.root), "--json", "curate", "--apply", "--worst", "3"])
    assert res.exit_code == 0, res.output
    with ws.catalog() as cat:
        after = {r["id"]: (r["split"], r["status"]) for r in cat.images()}
    # the near pair is in one split now; the exact pair too
    assert after[ids[pool.near[0]]][0] == after[ids[pool.near[1]]][0]
    assert after[ids[pool.exact[0]]][0] == after[ids[pool.exact[1]]][0]
    # three worst label issues went back for review
    assert {i for i, (_, s) in after.items() if s == "needs_review"} == set(info["planted"])
    actions = pd.read_csv(Path(json.loads(res.output)["run_dir"]) / "curate_actions.csv")
    assert len(actions) >= 4
    assert actions["original_name"].notna().all() and actions["original_name"].str.len().min() > 0  # named, not ids only
    # rerun is idempotent: no more changes, said in words (it printed Python dicts)
    res = runner.invoke(app, ["--workspace", str(ws.root), "curate", "--apply", "--worst", "3"])
    assert res.exit_code == 0 and "applied: 0 images moved to their group's split; 0 duplicates excluded" in res.output
    assert "{" not in res.output, res.output
    with ws.catalog() as cat:
        again = {r["id"]: (r["split"], r["status"]) for r in cat.images()}
    assert again == after


def test_exclude_the_worst_n_twice_excludes_nothing_more(tmp_path: Path) -> None:
    """`--worst N --label-action exclude` took N more images on every rerun: excluded images
    leave the pool, so the next N became the worst. The earlier exclusions now count."""
    ws, info = build_workspace(tmp_path)
    runner = CliRunner()
    args = ["--workspace", str(ws.root), "--json", "curate", "--skip-duplicates", "--apply", "--worst", "2",
            "--label-action", "exclude"]
    first = json.loads(runner.invoke(app, args).stdout)
    assert first["label_noise"]["applied"]["changed"] == 2
    with ws.catalog() as cat:
        excluded = {r["id"] for r in cat.images() if r["status"] == "excluded"}
    assert len(excluded) == 2 and excluded <= set(info["planted"])
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["label_noise"]["applied"]["changed"] == 0
    with ws.catalog() as cat:
        assert {r["id"] for r in cat.images() if r["status"] == "excluded"} == excluded
    # the reports still leave excluded images out
    issues = pd.read_parquet(ws.reports_dir / "label_issues.parquet")
    assert not set(issues["image_id"]) & excluded and (issues["name"] != "").all()


def test_label_action_without_apply_warns_and_changes_nothing(tmp_path: Path) -> None:
    """`--label-action exclude` (or `--worst`) without `--apply` was ignored silently: the user
    expected exclusions and got none. It still writes the reports, and says so."""
    ws, info = build_workspace(tmp_path)
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "curate", "--skip-duplicates", "--worst", "2",
                                   "--label-action", "exclude"])
    assert res.exit_code == 0, res.output
    assert "--label-action and --worst act only with --apply" in " ".join(res.stderr.split())
    with ws.catalog() as cat:
        assert not [r for r in cat.images() if r["status"] == "excluded"]
    assert (ws.reports_dir / "label_issues.parquet").is_file()


def test_duplicate_group_labelled_once(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "src", n=8, seed=5, broken=False)
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(pool.folder)])
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "--json", "curate", "--apply"])
    assert res.exit_code == 0, res.output
    a, b = sha256_file(pool.folder / pool.exact[0]), sha256_file(pool.folder / pool.exact[1])
    with ws.catalog() as cat:
        st = {r["id"]: r["status"] for r in cat.images()}
    assert sorted([st[a], st[b]]) == ["excluded", "new"]


def test_report_on_empty_and_curated_workspace(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    assert runner.invoke(app, ["--workspace", str(empty), "init"]).exit_code == 0
    res = runner.invoke(app, ["--workspace", str(empty), "--json", "report"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert Path(out["html"]).exists() and out["learning_curve_points"] == 0
    for png in out["pngs"].values():
        assert Path(png).read_bytes()[:4] == b"\x89PNG"

    ws, _ = build_workspace(tmp_path / "full")
    import time

    from pipeline.catalog import dumps
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO models(version, kind, path, metrics, created_at, promoted) VALUES (?,?,?,?,?,1)",
                   ("frcnn-1", "fasterrcnn", "models/x/bundle.zip", dumps({"f1": 0.5, "text_coverage": 0.7, "n_labelled": 12}),
                    time.time()))
    assert runner.invoke(app, ["--workspace", str(ws.root), "curate"]).exit_code == 0
    res = runner.invoke(app, ["--workspace", str(ws.root), "--json", "report"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["learning_curve_points"] == 1
    page = Path(out["html"]).read_text()
    assert "learning_curve.png" in page and "label_issues.png" in page
    assert (Path(out["run_copy"]) / "report.html").exists()


def test_report_iteration_names_an_existing_run(tmp_path: Path) -> None:
    """`report --iteration 99` made runs/99/ with a report of no run in it (a typo for 9): it
    is refused with the iterations there are; an existing one gets its copy."""
    ws, _ = build_workspace(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["--workspace", str(ws.root), "curate", "--skip-label-noise"]).exit_code == 0
    with ws.catalog() as cat:
        last = str(cat.last_iteration(done=True)["id"])
    res = runner.invoke(app, ["--workspace", str(ws.root), "report", "--iteration", "99"])
    assert res.exit_code == 2 and "--iteration 99: no such iteration" in res.output and last in res.output
    assert not (ws.runs_dir / "99").exists()
    res = runner.invoke(app, ["--workspace", str(ws.root), "--json", "report", "--iteration", last])
    assert res.exit_code == 0 and Path(json.loads(res.output)["run_copy"]) == ws.runs_dir / last / "report"


def test_an_interrupted_curation_leaves_the_reports_of_the_last_complete_one(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C during label noise left reports/ with the new duplicate tables next to the old
    label issues and summary (`report` mixed two runs), and exited 130 without a word."""
    import pipeline.curate.stage as stage

    ws, info = build_workspace(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["--workspace", str(ws.root), "curate"]).exit_code == 0
    before = {f.name: f.read_bytes() for f in ws.reports_dir.iterdir() if f.is_file()}
    assert {"duplicates.parquet", "label_issues.parquet", "curate_summary.json"} <= set(before)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "find_label_noise", interrupted)
    make_pool(tmp_path / "more", n=3, seed=5, broken=False)    # the next run sees other images
    harvest(ws, [str(tmp_path / "more")])
    res = runner.invoke(app, ["--workspace", str(ws.root), "curate"])
    assert res.exit_code == 130 and "interrupted; reports/ keep the last complete curation" in " ".join(res.output.split())
    after = {f.name: f.read_bytes() for f in ws.reports_dir.iterdir() if f.is_file()}
    assert after == before


def test_fastdup_missing_is_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TEXTLOOP_FASTDUP_PYTHON", str(tmp_path / "missing" / "python"))
    pool = make_pool(tmp_path / "src", n=4, broken=False)
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(pool.folder)])
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "curate", "--engine", "fastdup"])
    assert res.exit_code == 1
    assert "fastdup interpreter not found" in res.output
    # a program that runs and writes nothing (`--fastdup-python /bin/true`) was a traceback
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "curate", "--engine", "fastdup",
                                   "--fastdup-python", "/bin/true"])
    assert res.exit_code == 1 and "wrote no fastdup results" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("cmd", ["curate", "report"])
@pytest.mark.parametrize("name", ["../../escape", "ABS", "..", ".", "a/b", ""])
def test_iteration_must_be_a_simple_name_inside_runs(tmp_path: Path, cmd: str, name: str) -> None:
    """`curate --iteration ../../escape` (or an absolute path) wrote its copy outside the
    workspace: refused with one line, exit 2, nothing written anywhere."""
    if name == "ABS":
        name = str(tmp_path / "abs")
    before = set(tmp_path.rglob("*"))
    res = CliRunner().invoke(app, ["--workspace", str(tmp_path / "a" / "ws"), cmd, "--iteration", name])
    assert res.exit_code == 2, res.output
    assert "--iteration must be a simple folder name" in " ".join(res.output.split())
    assert set(tmp_path.rglob("*")) == before


def test_unknown_model_version_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    """`curate --model-version nosuch` used to skip every labelled image and report a clean
    run: refused with exit 2, naming the versions that have stored predictions."""
    from PIL import Image

    from pipeline.boxes import Detections

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(src / "a.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    with ws.catalog() as cat:
        (image_id,) = [r["id"] for r in cat.images()]
        cat.record_predictions("ppocr-test", [(image_id, Detections().to_json())])
    runner = CliRunner()
    res = runner.invoke(app, ["--workspace", str(ws.root), "curate", "--model-version", "nosuch"])
    assert res.exit_code == 2, res.output
    assert "--model-version 'nosuch' has no stored predictions; known: ppocr-test" in " ".join(res.output.split())
    assert not (ws.root / "runs").exists() or not any((ws.root / "runs").iterdir())
    res = runner.invoke(app, ["--workspace", str(ws.root), "--json", "curate", "--model-version", "ppocr-test",
                              "--skip-duplicates"])
    assert res.exit_code == 0, res.output


def test_skipping_both_parts_is_refused(tmp_path: Path) -> None:
    """`curate --skip-duplicates --skip-label-noise` ran, did nothing, exited 0 and replaced
    reports/curate_summary.json with an empty one beside the last run's tables."""
    ws = Workspace.open(tmp_path / "ws")
    r = CliRunner().invoke(app, ["--workspace", str(ws.root), "curate", "--skip-duplicates", "--skip-label-noise"])
    assert r.exit_code == 2 and "leave nothing to do" in r.output, r.output
    assert not (ws.reports_dir / "curate_summary.json").exists()


def test_report_before_any_finished_step_writes_no_run_copy(tmp_path: Path) -> None:
    """`report` on a fresh workspace wrote its copy to runs/0/, a run that does not exist."""
    ws = Workspace.open(tmp_path / "ws")
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "--json", "report"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run_copy"] is None and Path(out["html"]).exists()
    assert not (ws.root / "runs" / "0").exists()


def test_broken_images_are_named_by_their_file_names(tmp_path: Path) -> None:
    """The Broken images table of duplicates.html showed the image id and the workspace path."""
    pool = make_pool(tmp_path / "src", n=4, broken=False)
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(pool.folder)])
    with ws.catalog() as cat:
        row = cat.images()[0]
    ws.abspath(row["path"]).write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "curate", "--skip-label-noise"])
    assert res.exit_code == 0, res.output
    # it named a label_issues.html it had not written
    assert "(duplicates.html);" in res.output and not (ws.reports_dir / "label_issues.html").exists()
    page = (ws.reports_dir / "duplicates.html").read_text()
    broken = page[page.index("Broken images"):]
    assert f"<b>{row['original_name']}</b>" in broken, broken[:500]
