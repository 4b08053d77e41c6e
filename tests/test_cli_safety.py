"""Commands end and name folders safely: SIGTERM is handled as Ctrl-C (the running stage is logged failed), and folder names a user gives stay inside the workspace."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import HarvestConfig
from pipeline.harvest import harvest
from pipeline.workspace import Workspace
from tests.imagegen import noise_image, smooth_image


def test_sigterm_marks_the_running_stage_failed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        noise_image(i, (900, 700)).save(src / f"{i}.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)], HarvestConfig(workers=1))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "-w", str(ws.root), "rank", "--detector", "ppocr"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:   # wait until the rank stage has started (its row exists)
        with ws.catalog() as cat:
            if any(r["step"] == "rank" for r in cat.iterations()):
                break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    with ws.catalog() as cat:
        rows = [r for r in cat.iterations() if r["step"] == "rank"]
    assert rows and rows[-1]["status"] == "failed", (rows, err[-500:])
    assert "signal" in json.loads(rows[-1]["metrics"] or "{}").get("error", "")


def test_an_interrupted_redact_says_so_exits_130_and_the_rerun_resumes(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a folder: one line naming how many images were done and how to
    resume, exit 130 (it could end in an abort, exit 134, when onnxruntime was torn down at
    interpreter exit), no temp files; the rerun skips what was finished and does the rest."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        smooth_image(100 + i).save(src / f"{i:02d}.png")
    out = tmp_path / "out"
    # as a terminal's Ctrl-C reaches it: a suite run in the background (nohup, `&` in a script)
    # hands its children SIGINT ignored, so Python never turns it into KeyboardInterrupt and the
    # run went on to the end (exit 0, nothing said: the rare failure this test had)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "redact", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sidecars = tmp_path / "out.audit" / "sidecars"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(sidecars.glob("*.json")) if sidecars.is_dir() else []) < 3:
        time.sleep(0.05)
    seen = len(list(sidecars.glob("*.json")) if sidecars.is_dir() else [])
    running = proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    # (a rare failure had exit 0 and nothing on stderr: say what the run looked like when signalled)
    assert proc.returncode == 130, (f"still running when signalled: {running}, sidecars then: {seen}",
                                    err[-800:], out_text[-800:])
    assert "interrupted after" in err and "rerun the same command to resume" in err
    assert not [p for p in out.rglob(".*") if p.is_file()]           # no temp files left
    # the count is what was finished, including images the workers completed after the signal
    said = int(re.search(r"interrupted after (\d+) images", err).group(1))
    assert said == len(list(sidecars.glob("*.json"))), (said, err[-300:])
    done = len(list(out.glob("*.png")))
    assert 3 <= done < 40
    res = subprocess.run([sys.executable, "-m", "pipeline.cli.app", "--json", "redact", str(src), str(out)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    summary = json.loads(res.stdout)
    assert res.returncode == 0 and summary["skipped"] == done and summary["redacted"] == 40 - done


def test_folder_names_a_user_gives_stay_inside_the_workspace(tmp_path: Path) -> None:
    """`synth --name ../x` wrote ws/x/ and `--name /abs` wrote /abs/; a train run or synthetic
    set named like a path is refused with one line, before anything is written."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    for args in (["synth", "--name", "../x", "--images", "1"], ["synth", "--name", str(tmp_path / "abs"), "--images", "1"],
                 ["train", "--run", "../../x"], ["train", "--synth", "a/../../b"]):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), *args])
        assert r.exit_code == 2 and "simple folder name" in r.stderr, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # not even the workspace


def test_iterate_checks_every_option_before_the_round(tmp_path: Path) -> None:
    """A bad --committee failed after curate and an hour of retraining (exit 1), a bad --engine
    or --label-action after pull: each is now one line and exit 2 before any step (or folder)."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    for args, msg in ((["--committee", "nosuch"], "--committee: unknown detector 'nosuch'"),
                      (["--committee", str(tmp_path / "gone.zip")], "model bundle not found"),
                      (["--engine", "foo"], "unknown curation engine 'foo'"),
                      (["--label-action", "foo"], "--label-action must be review or exclude")):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "iterate", "--no-push", *args])
        assert r.exit_code == 2 and msg in r.stderr, (args, r.output)
    assert not (tmp_path / "ws").exists()


def test_contradictory_or_idle_options_are_refused(tmp_path: Path) -> None:
    """Options that cannot both hold, or that would silently do nothing, are one line each."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    (tmp_path / "afile").write_text("x")
    for args, msg, code in ((["train", "--resume", "--restart"], "give one", 2),
                            (["train", "--force"], "it needs --promote", 2),
                            (["push", "--strategy", "best"], "--strategy must be ranked or one of", 2),
                            # before Label Studio is asked (it was exit 1 after a connection attempt)
                            (["push", "--model", str(tmp_path / "gone.zip")], "model bundle not found", 2),
                            (["push", "--model", "nosuch"], "unknown detector 'nosuch'", 2),
                            (["synth", "--backgrounds", str(tmp_path / "none")], "none", 2),
                            (["export", "--format", "jsonl", str(tmp_path / "afile")], "is not a folder", 1)):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), *args])
        assert r.exit_code == code and msg in r.stderr, (args, r.output)
    assert (tmp_path / "afile").read_text() == "x"


def test_a_refused_resume_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    """`train --resume` with other options or data than the checkpoint's exited 1 (as a crash
    would) while every other bad option exits 2; the library's refusal (tests/test_train.py)
    reaches the user as one line, exit 2."""
    from typer.testing import CliRunner

    import pipeline.train as train_pkg
    from pipeline.cli.app import app

    def refuse(*args, **kwargs):
        raise train_pkg.ResumeRefused("runs/x/checkpoint.pt: resumed with other training options (lr 5e-05 -> 0.001)")

    monkeypatch.setattr(train_pkg, "train_run", refuse)
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "train", "--run", "x", "--resume", "--lr", "1e-3"])
    assert r.exit_code == 2 and "resumed with other training options (lr" in r.stderr, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_evaluate_checks_its_options_before_reading_ground_truth(tmp_path: Path) -> None:
    """`evaluate --detector nosuch` said "no labelled images" (the data check ran first)."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    for args, msg in ((["--detector", "nosuch"], "unknown detector 'nosuch'"), (["--sweep", "0.3,5"], "--sweep")):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "evaluate", *args])
        assert r.exit_code == 2 and msg in r.stderr, (args, r.output)


def test_train_resume_without_a_checkpoint_and_register_of_a_folder_are_one_line(tmp_path: Path) -> None:
    """`train --run typo --resume` trained a new model from scratch and exited 0; `models
    register some_folder` printed a traceback. Both are one line now, before any work."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    ws = str(tmp_path / "ws")
    r = CliRunner().invoke(app, ["-w", ws, "train", "--run", "typo", "--resume", "--budget-minutes", "1"])
    assert r.exit_code == 2 and "run 'typo' has no checkpoint to resume" in r.stderr, r.output
    assert not (tmp_path / "ws" / "synth").exists() and not list((tmp_path / "ws" / "models").glob("*"))
    (tmp_path / "b.zip").mkdir()
    r = CliRunner().invoke(app, ["-w", ws, "models", "register", str(tmp_path / "b.zip")])
    assert r.exit_code == 1 and "not a textloop model bundle (a folder" in r.stderr and "Traceback" not in r.output


def test_read_only_commands_do_not_create_a_workspace_at_a_mistyped_path(tmp_path) -> None:
    """`textloop -w /data/wokspace status` made an empty workspace there and reported 0 images,
    exit 0; `report` wrote a report of nothing. Both now say there is no workspace (exit 2)."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    typo = tmp_path / "wokspace"
    # so did every command that only reads the pool or the models (a walkthrough: rank, curate,
    # predict, export and models list exited 0 with empty results; push made the folder)
    for cmd in (["status"], ["report"], ["rank"], ["curate"], ["predict"], ["export", str(tmp_path / "exp")],
                ["models", "list"], ["models", "promote", "db-x"], ["push"], ["pull"], ["studio", "init"],
                ["studio", "status"], ["studio", "down"], ["evaluate"], ["iterate"]):
        r = CliRunner().invoke(app, ["-w", str(typo), *cmd])
        assert r.exit_code == 2 and "no workspace here" in r.output, (cmd, r.output)
        assert not typo.exists(), cmd
    assert CliRunner().invoke(app, ["-w", str(typo), "init"]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", str(typo), "--json", "status"])
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == 0


def test_report_links_only_to_the_pages_curate_wrote(tmp_path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["-w", str(ws), "init"]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", str(ws), "report"])
    assert r.exit_code == 0, r.output
    page = (ws / "reports" / "report.html").read_text()
    assert "href='duplicates.html'" not in page and "href='label_issues.html'" not in page
    assert "textloop curate</code> writes it" in page


def test_a_file_in_the_way_of_the_workspace_is_named(tmp_path: Path) -> None:
    """`-w afile`, and a file where the workspace's reports/ folder goes, both said "<workspace>:
    cannot create workspace (File exists)"; the path that is in the way is named now."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    (tmp_path / "afile").write_text("x")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "reports").write_text("x")
    (tmp_path / "src").mkdir()
    for ws, blocker, what in (("afile", "afile", "workspace"), ("ws", "ws/reports", "the workspace's reports/ folder")):
        r = CliRunner().invoke(app, ["-w", str(tmp_path / ws), "harvest", str(tmp_path / "src")])
        said = " ".join(r.output.split())
        assert r.exit_code == 1 and f"{tmp_path / blocker}: cannot create {what} (a file is in the way" in said, r.output


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line() -> None:
    """A Ctrl-C in the first ~0.3 s lands in an import; it used to print that import's traceback."""
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'typer':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from pipeline.cli.entry import main\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130
    assert r.stderr.strip() == "interrupted while starting; nothing was done"


def _float_options():
    """(command path, option) for every float option of every command."""
    import typer.main

    from pipeline.cli.app import app

    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path: list[str]) -> None:   # typer vendors its own click: match by names
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        args = ["x" for p in cmd.params if p.param_type_name == "argument" and p.required]
        for p in cmd.params:
            if p.param_type_name == "option" and type(p.type).__name__ in ("FloatParamType", "FloatRange"):
                out.append((path + args, max(p.opts, key=len)))
    walk(root, [])
    return out


def test_no_float_option_takes_nan_or_inf(tmp_path: Path) -> None:
    """NaN passes click's min/max: `push --min-score nan` pushed tasks without boxes."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    options = _float_options()
    assert any(o == "--min-score" for _, o in options) and len(options) > 10
    for path, option in options:
        for bad in ("nan", "inf"):
            r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), *path, option, bad])
            assert r.exit_code == 2 and option in r.output and "Traceback" not in r.output, (path, option, r.output)
    assert not (tmp_path / "ws").exists()


def test_names_with_brackets_are_shown_as_they_are(tmp_path: Path) -> None:
    """rich read `[red]` and `[x0, y0]` in file names as markup: `[red]scan.png` was reported
    as `scan.png` and `[x0, y0].png` as `.png`, files that do not exist."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("[red]scan.png", "[x0, y0].png"):
        (src / name).write_bytes(b"junk")
    noise_image(1, (64, 48)).save(src / "ok.png")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.app", "-w", str(tmp_path / "ws"), "harvest", str(src)],
                       capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "COLUMNS": "300"})
    assert r.returncode == 0, r.stderr
    assert f"{src}/[red]scan.png" in r.stdout and f"{src}/[x0, y0].png" in r.stdout, r.stdout


def test_a_fifo_named_as_a_bundle_or_a_labelled_image_is_refused_without_blocking(tmp_path: Path) -> None:
    """`models register fifo.zip`, `--detector fifo.zip`, `train --parent fifo.zip` and a label
    file naming a FIFO image blocked for ever, with no output."""
    import os

    os.mkfifo(tmp_path / "fifo.zip")
    os.mkfifo(tmp_path / "fifo.png")
    noise_image(1, (64, 48)).save(tmp_path / "ok.png")
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"image": name, "width": 64, "height": 48, "boxes": [[1, 1, 9, 9]]}) + "\n"
                          for name in ("fifo.png", "ok.png")))
    ws = ["-w", str(tmp_path / "ws")]
    for args in (["models", "register", str(tmp_path / "fifo.zip")],
                 ["predict", "--detector", str(tmp_path / "fifo.zip"), str(tmp_path / "ok.png")],
                 ["train", "--parent", str(tmp_path / "fifo.zip"), "--epochs", "1", "--steps-per-epoch", "1"]):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli.app", *ws, *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode in (1, 2) and "fifo.zip" in r.stderr and "FIFO" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.app", *ws, "--json", "evaluate", "--gt", str(gt)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "fifo.png" in r.stdout + r.stderr, r.stderr


def test_a_current_model_whose_bundle_is_gone_is_one_line_and_stock_can_be_current_again(tmp_path: Path) -> None:
    """A deleted bundle.zip of the current model: `models promote` and `train` (parent auto)
    printed tracebacks, and nothing could make stock ppocr current again."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    ws = Workspace.open(tmp_path / "ws")
    with ws.catalog() as cat:
        cat.add_model("db-gone", None, "db", "models/db-gone/bundle.zip", None, {})
        cat.promote("db-gone")
    run = CliRunner().invoke
    r = run(app, ["-w", str(ws.root), "models", "promote", "db-gone"])
    assert r.exit_code == 1 and "bundle not found" in r.output and "Traceback" not in r.output, r.output
    r = run(app, ["-w", str(ws.root), "train", "--epochs", "1", "--steps-per-epoch", "1"])
    assert r.exit_code == 2 and "parent db-gone: its bundle" in r.output and "is missing" in r.output, r.output
    r = run(app, ["-w", str(ws.root), "--json", "models", "promote", "ppocr"])
    assert r.exit_code == 0 and json.loads(r.stdout)["previous"] == "db-gone", r.output
    with ws.catalog() as cat:
        assert cat.current_model() is None


def test_a_bad_option_or_argument_is_one_line_like_every_other_error(tmp_path: Path) -> None:
    """click drew a five-line usage box for an option out of its range or a missing argument,
    while every other error was one `error:` line; a typo'd command is one line too, and the
    exit codes stay: 2 for usage, 0 for --help."""
    ws = ["-w", str(tmp_path / "ws")]
    for args, says in ((["redact", "in", "out", "--threshold", "-0.1"], "'--threshold': -0.1 is not in the range"),
                       (["redact"], "Missing argument 'input'"),
                       (["harvset"], "No such command 'harvset'"),
                       (["redact", "in", "out", "--pad", "5%+"], "bad --pad '5%+'")):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli.app", *ws, *args], capture_output=True, text=True,
                           timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (args, r.stderr)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.app", "redact", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--threshold" in r.stdout
    assert not (tmp_path / "ws").exists()


def test_output_piped_into_a_reader_that_leaves_is_not_a_traceback(tmp_path: Path) -> None:
    """`textloop --help | head -1`: the closed pipe ended in a 60-line traceback (typer 0.2x has
    no click `Abort`, and evaluating that `except` on the way out raised AttributeError)."""
    for args in (["--help"], ["harvest", "--help"]):
        p = subprocess.Popen([sys.executable, "-c", "from pipeline.cli.entry import main; main()", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()        # the reader is gone before the first line is written
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 1 and err == "", (args, err)


def test_ctrl_c_landing_in_a_callback_the_main_thread_runs_ends_the_redact_run(monkeypatch) -> None:
    """A future already done when its callback is added runs that callback in the main thread.
    A Ctrl-C landing there, just after an image's result was set, was caught with the stage's
    errors and dropped (setting the finished future's exception raised, and concurrent.futures
    logs and drops that): the run went on and exited 0. It must end the run."""
    import concurrent.futures as cf
    from types import SimpleNamespace

    import pytest

    from pipeline.redact import run as rr

    real_future = cf.Future

    class NowExecutor:
        """Runs each task at submit: every callback then runs in the thread that adds it."""

        def __init__(self, *a, **k) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def submit(self, fn, *args):
            f = real_future()
            try:
                f.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - as ThreadPoolExecutor does
                f.set_exception(exc)
            return f

        def shutdown(self, **k) -> None:
            pass

    class CtrlCAfterFirstResult(real_future):
        fired = False

        def set_result(self, result) -> None:
            super().set_result(result)
            if not CtrlCAfterFirstResult.fired:
                CtrlCAfterFirstResult.fired = True
                raise KeyboardInterrupt   # the signal's handler ran right after the result was set

    class Stages:
        detector = object()

        def prepare(self, item, reviewed):
            return item

        def detect(self, x):
            return x

        def finish(self, x):
            return x

    monkeypatch.setattr(cf, "ThreadPoolExecutor", NowExecutor)
    monkeypatch.setattr(cf, "Future", CtrlCAfterFirstResult)
    done = []
    with pytest.raises(KeyboardInterrupt):
        for res in rr.run_local(Stages(), [SimpleNamespace(rel=f"img{i}") for i in range(20)], workers=1):
            done.append(res)
    assert len(done) < 20


def test_a_failed_command_leaves_no_workspace_behind_at_a_mistyped_path(tmp_path: Path) -> None:
    """`-w typo train --resume`, `models register bad.zip`, `serve --model foo` each failed and
    left an empty workspace at the typo. A workspace the command made is removed when it fails
    with the workspace as made (the folders it created for it too); one that succeeds, or that
    holds anything, is kept."""
    def textloop(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli.app", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    (tmp_path / "bad.zip").write_bytes(b"junk")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no image here")
    for args in (["train", "--resume"], ["models", "register", str(tmp_path / "bad.zip")], ["serve", "--model", "foo"],
                 ["harvest", str(tmp_path / "nothing")],        # its job lock is no record
                 ["studio", "up", "--mode", "bogus"]):          # any mode but docker started a local server
        r = textloop("-w", str(tmp_path / "new" / "ws"), *args)
        assert r.returncode in (1, 2) and r.stderr.startswith("error: "), (args, r.stderr)
        assert not (tmp_path / "new").exists(), args
    assert textloop("-w", str(tmp_path / "kept"), "init").returncode == 0
    assert textloop("-w", str(tmp_path / "kept"), "train", "--resume").returncode == 2
    assert (tmp_path / "kept" / "catalog.sqlite").is_file()          # it existed before the command
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"not an image")
    r = textloop("-w", str(tmp_path / "rejects"), "harvest", str(tmp_path / "junk"))
    assert r.returncode == 1 and (tmp_path / "rejects" / "catalog.sqlite").is_file()   # made, and holds the reject
    src = tmp_path / "src"
    src.mkdir()
    noise_image(0, (40, 30)).save(src / "a.png")
    harvest(Workspace.open(tmp_path / "used"), [str(src)], HarvestConfig(workers=1))
    assert textloop("-w", str(tmp_path / "used"), "models", "register", str(tmp_path / "bad.zip")).returncode == 1
    assert (tmp_path / "used" / "catalog.sqlite").is_file()


def test_a_command_stopped_by_sigterm_without_its_own_handler_says_so(tmp_path: Path) -> None:
    """`push` killed while Label Studio was slow to answer exited 130 with nothing on stderr:
    typer turned the interrupt into a silent exit. Every such stop now says it in one line."""
    import socket

    ws = tmp_path / "ws"
    assert subprocess.run([sys.executable, "-m", "pipeline.cli.app", "-w", str(ws), "init"], cwd=tmp_path,
                          capture_output=True, timeout=120).returncode == 0
    with socket.socket() as silent:          # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = dict(os.environ, LABEL_STUDIO_URL=f"http://127.0.0.1:{silent.getsockname()[1]}")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.app", "-w", str(ws), "push"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
