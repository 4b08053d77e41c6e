"""Global options after the command name (`textloop status --json`), one implementation for
every command: `pipeline.cli.common.hoist_global_options`, called by the root group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.cli.common import _is_group, _option_table, hoist_global_options

ROOT = typer.main.get_command(app)
GLOBAL = {"--workspace", "-w", "--json", "--verbose", "-v", "--quiet", "-q"}


def _leaf_commands(group=ROOT, prefix=()) -> list[tuple[str, ...]]:
    ctx = typer.main.click.Context(group) if hasattr(typer.main, "click") else None
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if _is_group(cmd):
            out += _leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


LEAVES = _leaf_commands()


def _ctx():
    return ROOT.make_context("textloop", ["status"], resilient_parsing=True)


def test_every_command_is_found():
    names = {" ".join(c) for c in LEAVES}
    for expected in ("status", "harvest", "push", "pull", "redact", "models list", "studio up", "report", "curate"):
        assert expected in names
    assert len(LEAVES) >= 20


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(c) for c in LEAVES])
def test_no_command_redefines_a_global_option(path):
    """A command's own -w/-v/-q/--json would silently win over the global one: there is none."""
    cmd = ROOT
    for name in path:
        cmd = cmd.get_command(None, name)
    own = set(_option_table(cmd.params))
    assert not own & GLOBAL, f"{' '.join(path)} defines {own & GLOBAL}"


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(c) for c in LEAVES])
def test_global_options_after_the_command_parse(path, tmp_path):
    """`textloop CMD --json -v -q -w WS --help` parses (no 'No such option') for every command,
    and the root callback saw the options."""
    seen = {}
    runner = CliRunner()
    import pipeline.cli.app as app_mod

    original = app_mod.AppState

    def spy(**kw):
        seen.update(kw)
        return original(**kw)

    app_mod.AppState = spy
    try:
        res = runner.invoke(app, [*path, "--json", "-v", "-w", str(tmp_path / "ws"), "--help"])
    finally:
        app_mod.AppState = original
    assert res.exit_code == 0, res.output
    assert seen == {"workspace": tmp_path / "ws", "json": True, "verbosity": 1}


CASES = [
    # (typed, what Click must see)
    (["status", "--json"], ["--json", "status"]),
    (["status", "-w", "W", "--json"], ["-w", "W", "--json", "status"]),
    (["status", "--workspace=W", "-vv", "-q"], ["--workspace=W", "-vv", "-q", "status"]),
    (["-q", "status", "-wW"], ["-q", "-wW", "status"]),
    (["models", "list", "--json"], ["--json", "models", "list"]),
    (["studio", "status", "--json", "-w", "W"], ["--json", "-w", "W", "studio", "status"]),
    # a command option's value is never taken for a global option
    (["predict", "-o", "--json", "x"], ["predict", "-o", "--json", "x"]),
    (["redact", "a", "b", "--color", "-q", "--json"], ["--json", "redact", "a", "b", "--color", "-q"]),
    # nothing after `--` moves
    (["harvest", "--json", "--", "-q", "--json"], ["--json", "harvest", "--", "-q", "--json"]),
    # a missing value is left for Click to report; unknown commands are left alone
    (["status", "-w"], ["status", "-w"]),
    (["nope", "--json"], ["nope", "--json"]),
    (["--json", "status"], ["--json", "status"]),
    # --help after a command is that command's help, not the root's
    (["status", "--json", "--help"], ["--json", "status", "--help"]),
]


@pytest.mark.parametrize("typed,parsed", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_hoisting(typed, parsed):
    assert hoist_global_options(ROOT, _ctx(), typed) == parsed


# Commands that run in a second on an empty workspace: the JSON after the command equals the
# JSON before it.
RUNNABLE = [["init"], ["status"], ["models", "list"], ["studio", "status"], ["report"]]


@pytest.mark.parametrize("cmd", RUNNABLE, ids=[" ".join(c) for c in RUNNABLE])
def test_json_after_the_command_gives_the_same_output(cmd, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("TEXTLOOP_WORKSPACE", raising=False)
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    assert runner.invoke(app, ["-w", ws, "init"]).exit_code == 0   # status and report need one
    before = runner.invoke(app, ["--json", "-w", ws, *cmd])
    after = runner.invoke(app, [*cmd, "--json", "--workspace", ws])
    assert before.exit_code == after.exit_code
    a, b = json.loads(before.stdout), json.loads(after.stdout)
    for d in (a, b):  # time stamps differ between the two runs
        if isinstance(d, dict):
            for k in ("generated_at", "started_at", "iteration", "run_copy"):
                d.pop(k, None)
    assert a == b
    assert Path(ws).is_dir()


def test_piped_tables_are_not_cut_to_80_columns(tmp_path, monkeypatch):
    """`textloop models list | less` (or > file) printed "db-20…": rich assumes 80 columns when
    stdout is no terminal. Piped output gets room; COLUMNS still decides when set."""
    import time

    from pipeline.workspace import Workspace

    monkeypatch.delenv("COLUMNS", raising=False)
    ws = Workspace.open(tmp_path / "ws")
    version = "db-20261203-130540-7fa247ea-with-a-long-name"
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO models(version, parent, kind, path, trained_on, metrics, created_at, promoted) "
                   "VALUES (?,?,?,?,?,?,?,1)", (version, version, "db", f"models/{version}/bundle.zip", "x",
                                                json.dumps({"coverage_at_budget": 0.9}), time.time()))
    r = CliRunner().invoke(app, ["-w", str(ws.root), "models", "list"])
    assert r.exit_code == 0 and r.stdout.count(version) == 2, r.stdout   # version and parent, whole
    monkeypatch.setenv("COLUMNS", "60")
    r = CliRunner().invoke(app, ["-w", str(ws.root), "models", "list"])
    assert version not in r.stdout and max(map(len, r.stdout.splitlines())) <= 60


def test_a_long_title_stays_on_one_line_when_there_is_room(tmp_path, monkeypatch):
    """`redact SRC -> OUT` was centred over the two-column table and broken in two, even piped
    at 200 columns: the title is one line when the output is wide enough for it."""
    from PIL import Image

    monkeypatch.delenv("COLUMNS", raising=False)
    src, out = tmp_path / "in", tmp_path / "an_output_folder_with_a_long_name"
    src.mkdir()
    Image.new("RGB", (32, 32), "white").save(src / "a.png")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(src), str(out)])
    assert r.exit_code == 0, r.output
    assert f"redact {src} -> {out}" in r.stdout, r.stdout


def test_messages_redirected_to_a_log_are_not_cut_at_80_columns(tmp_path, monkeypatch):
    """Progress and warning lines on stderr wrapped at rich's 80 columns (with a trailing space)
    when redirected to a log file, which broke `grep` on them."""
    from PIL import Image

    monkeypatch.delenv("COLUMNS", raising=False)
    Image.new("RGB", (32, 32), "white").save(tmp_path / "a.png")
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "redact", str(tmp_path / "a.png"), str(tmp_path / "o.png"),
                                 "--style", "blur"])
    assert r.exit_code == 0, r.output
    (line,) = [x for x in r.stderr.splitlines() if "reversible" in x]
    assert len(line) > 80 and line.rstrip().endswith("for anything sensitive.")


@pytest.mark.parametrize("typed,suggested", [(["status", "--jsn"], "--json"), (["--jsn", "status"], "--json"),
                                             (["redact", "a", "b", "--shap", "box"], "--shape"),
                                             (["status", "--zzz"], None)])
def test_a_mistyped_option_after_the_command_gets_the_global_one_suggested(typed, suggested):
    """Global options are accepted after the command, so a typo of one there is suggested too
    (click only looked among the command's own options), and nothing far off is."""
    r = CliRunner().invoke(app, typed)
    assert r.exit_code == 2 and "No such option" in r.output
    if suggested:
        said = r.output[r.output.index("Possible options"):]
        assert suggested in said, r.output
    else:
        assert "Possible options" not in r.output


def test_help_descriptions_wrap_at_the_terminal_not_at_the_docstring():
    """typer kept every line break of a docstring, so at 80 columns a sentence broke twice:
    once where the terminal ended and once where the source line did ("(EXIF orientation" /
    "applied)" on a line of its own). Every command's help is now paragraphs."""
    for path in LEAVES:
        cmd = ROOT
        for name in path:
            cmd = cmd.get_command(None, name)
        assert all("\n" not in para for para in (cmd.help or "").split("\n\n")), path
    out = CliRunner().invoke(app, ["redact", "--help"], env={"COLUMNS": "80"}).output
    assert "orientation applied) and carry" in out, out   # was "(EXIF orientation" / "applied) and carry"


@pytest.mark.parametrize("path", [(), *LEAVES])
def test_help_shows_flags_as_flags(path):
    """typer 0.29 printed every flag with a value placeholder (`--json <bool>`, `--dry-run
    <bool>`); typing what the help showed (`--json true`) then failed. Flags take no value."""
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"}).output
    assert "<bool>" not in out and "--help" in out, out
    if not path:   # -v counts (-vv), it takes no number: `-v 1` was read as a command
        assert "<int>" not in out, out
