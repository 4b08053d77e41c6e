"""Two `studio init` / `pull` behaviours against the real Label Studio, through the CLI:

- `--classes` keeps each class at its position: `text` stays class 0 and a new class goes at the
  end; a list that moves a class is refused in one line naming the list to give, and the
  project's label config on the server is left as it was.
- a task labelled by two Label Studio users is counted (`several_annotators`) and the label
  stored is the one `--policy` picks (latest edited, or the first created however often it
  was edited since)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pipeline.boxes import xyxy_to_ls_value
from pipeline.config import HarvestConfig
from pipeline.harvest import harvest
from pipeline.studio.client import connect
from pipeline.studio.project import init_project
from pipeline.studio.push import push_images
from pipeline.workspace import Workspace
from tests.fakes import FakeDetector
from tests.imagegen import noise_image

pytestmark = pytest.mark.integration

W, H = 64, 48


def _env(live_studio, title: str) -> dict[str, str]:
    return {"LABEL_STUDIO_URL": live_studio.url, "LABEL_STUDIO_API_KEY": live_studio.token,
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(live_studio.root),
            "TEXTLOOP_LS_PROJECT": title, "TEXTLOOP_LS_FILES_ROOT": ""}


def _cli(ws: Workspace, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`textloop --workspace WS ARGS` in a child process, as a user runs it (only `env` names the server)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "TEXTLOOP_LS_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "pipeline.cli.app", "--workspace", str(ws.root), *args],
                          capture_output=True, text=True, env=full, timeout=120, cwd=str(ws.root))


def _ok_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _server_config(studio, pid: int) -> tuple[str, list[str]]:
    """The project's label config as Label Studio holds it, and its <Label> values in order
    (parsed here, not with textloop's parser)."""
    xml = studio.sdk.projects.get(id=pid).label_config
    return xml, [lab.get("value") for lab in ET.fromstring(xml).iter("Label")]


def test_classes_keep_their_positions_and_a_move_is_refused_leaving_the_server_config(live_studio):
    ws = Workspace.open(live_studio.root / "ws_classes_live")
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    env = _env(live_studio, "classes live test")

    made = _ok_json(_cli(ws, env, "--json", "studio", "init"))
    pid = made["project_id"]
    assert made["created"] and made["classes"] == ["text"]
    assert _server_config(studio, pid)[1] == ["text"]

    # a new class goes at the end: `text` (the detector's class 0) stays first
    added = _ok_json(_cli(ws, env, "--json", "studio", "init", "--classes", "text,logo"))
    assert added["project_id"] == pid and not added["created"] and "label_config" in added["changed"]
    assert added["classes"] == ["text", "logo"]
    before, classes = _server_config(studio, pid)
    assert classes == ["text", "logo"]

    # moving the classes is refused: one line, naming the list to give, and nothing changes
    r = _cli(ws, env, "studio", "init", "--classes", "logo,text")
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "--classes text,logo" in lines[0] and "move" in lines[0], lines[0]
    assert "updated" not in r.stdout and "created" not in r.stdout
    after, classes = _server_config(studio, pid)
    assert after == before and classes == ["text", "logo"]

    # the list the error gives is the project as it is: accepted, nothing to change
    again = _ok_json(_cli(ws, env, "--json", "studio", "init", "--classes", "text,logo"))
    assert again["project_id"] == pid and again["changed"] == [] and again["classes"] == ["text", "logo"]
    assert _server_config(studio, pid)[0] == before


def _result(box: list[float], rid: str) -> list[dict]:
    return [{"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": W,
             "original_height": H, "image_rotation": 0,
             "value": {**xyxy_to_ls_value(box, W, H), "rectanglelabels": ["text"]}}]


def _stored(ws: Workspace) -> dict:
    with ws.catalog() as cat:
        rows = cat.query("SELECT * FROM annotations WHERE source = 'labelstudio'")
    assert len(rows) == 1, rows
    return dict(rows[0])


def _assert_label(ws: Workspace, annotation_id: int, box: list[float], annotator: str) -> None:
    row = _stored(ws)
    assert row["ls_annotation_id"] == annotation_id, (row["ls_annotation_id"], annotation_id)
    assert json.loads(row["boxes"]) == [pytest.approx(box, abs=0.01)]
    assert row["annotator"] == annotator and row["state"] == "submitted"


def test_pull_counts_a_task_two_people_labelled_and_stores_the_policys_label(live_studio, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise_image(8100, (W, H)).save(src / "two.png")
    ws = Workspace.open(live_studio.root / "ws_two_annotators")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    studio = connect(live_studio.url, live_studio.token, local_files_root=live_studio.root)
    pid = init_project(ws, studio, title="two annotators test").project_id
    push_images(ws, None, client=studio, detector=FakeDetector([[5.0, 6.0, 25.0, 14.0]], [0.9], version="two-v1"))
    (task,) = list(studio.sdk.tasks.list(project=pid, fields="all"))
    env = _env(live_studio, "two annotators test")

    # a second labeller in the admin's organisation; each submits a different box
    tag = secrets.token_hex(4)
    second = studio.sdk.users.create(username=f"second-{tag}", email=f"second-{tag}@textloop.test")
    admin = studio.sdk.users.whoami()
    first_box, second_box, edited_box = [4.0, 4.0, 30.0, 20.0], [30.0, 24.0, 60.0, 44.0], [6.0, 8.0, 34.0, 22.0]
    first = studio.sdk.annotations.create(id=task.id, result=_result(first_box, "a"))
    latest = studio.sdk.annotations.create(id=task.id, result=_result(second_box, "b"), completed_by=second.id)
    on_server = {a.id: a.completed_by for a in studio.sdk.annotations.list(id=task.id)}
    assert on_server == {first.id: admin.id, latest.id: second.id}, on_server   # two people, as the test means

    res = _ok_json(_cli(ws, env, "--json", "pull", "--policy", "latest"))
    assert res["several_annotators"] == 1 and res["new"] == 1 and res["labelled"] == 1, res
    assert res["several_annotator_tasks"] == [task.id], res   # which task, to look at
    _assert_label(ws, latest.id, second_box, f"second-{tag}@textloop.test")

    res = _ok_json(_cli(ws, env, "--json", "pull", "--policy", "first"))
    assert res["several_annotators"] == 1 and res["updated"] == 1 and res["new"] == 0, res
    _assert_label(ws, first.id, first_box, live_studio.username)

    # the summary says so too, and a second pull with the same policy changes nothing
    r = _cli(ws, env, "pull", "--policy", "first")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 new, 0 updated, 0 removed (1 unchanged)" in r.stdout, r.stdout
    assert f"1 task(s) labelled by more than one person (task {task.id}): the first label" in r.stdout, r.stdout

    # "latest" is the last edited, "first" the first created however often it was edited since:
    # once the first label is edited after the second was made, both policies pick it
    studio.sdk.annotations.update(id=first.id, result=_result(edited_box, "a"))
    res = _ok_json(_cli(ws, env, "--json", "pull", "--policy", "first"))
    assert res["several_annotators"] == 1 and res["updated"] == 1, res
    _assert_label(ws, first.id, edited_box, live_studio.username)
    res = _ok_json(_cli(ws, env, "--json", "pull", "--policy", "latest"))
    assert res["several_annotators"] == 1 and res["updated"] == 0 and res["unchanged"] == 1, res
    _assert_label(ws, first.id, edited_box, live_studio.username)
