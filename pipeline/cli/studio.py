"""`textloop studio up|down|status|init`, `push`, `pull`, `export`, `serve` (Label Studio)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipeline.cli.common import emit, fail, plain, positive, progress, state, usage_errors
from pipeline.studio.client import StudioError
from pipeline.studio.launcher import connect_workspace
from pipeline.workspace import WorkspaceBusy

studio_app = typer.Typer(help="Run and set up Label Studio for this workspace (local server or docker compose).",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(studio_app, name="studio")
    app.command("push")(push_cmd)
    app.command("pull")(pull_cmd)
    app.command("export")(export_cmd)
    app.command("serve")(serve_cmd)


@studio_app.command("up")
def up_cmd(
    ctx: typer.Context,
    port: Optional[int] = typer.Option(None, min=1, max=65535, help="Port on 127.0.0.1 (default: LABEL_STUDIO_URL's when it is on this machine, else 8080)."),
    mode: str = typer.Option("auto", help="auto (docker if an engine is reachable, else local) | local | docker."),
    timeout: float = typer.Option(180.0, callback=positive, help="Seconds to wait for the server to become healthy."),
) -> None:
    """Start Label Studio for this workspace and wait until it is healthy."""
    from pipeline.studio.launcher import check_mode, up

    st = state(ctx)
    with usage_errors():
        check_mode(mode)
    ws = st.ws()
    try:
        with st.console.status("starting Label Studio (~40 s the first time)..."):
            res = up(ws.root, port=port, mode=mode, timeout=timeout)
    except (StudioError, WorkspaceBusy) as exc:
        fail(str(exc))
    info = res.server
    moved = res.already_running and port is not None and info.port != port
    if res.token != "accepted":
        where = f" (it was fixed when the server first started, in {info.data_dir})" if info.data_dir else ""
        emit(st, res.as_dict(), lambda c: None)
        fail(f"Label Studio runs at {info.url}, but {res.token}: LABEL_STUDIO_API_KEY is not its admin's "
             f"token{where}; set that token back, or copy the token from Label Studio's Account & Settings")
    emit(st, res.as_dict(), lambda c: c.print(
        f"Label Studio already running at {info.url} (not started by textloop: used as it is, "
        "`studio down` leaves it)" if info.mode == "external" else
        f"Label Studio {'already running' if res.already_running else 'started'} at {info.url} "
        f"({info.mode}, pid {info.pid}, log {info.log}); log in with LABEL_STUDIO_USERNAME/PASSWORD"
        + (f"\n--port {port} not used: this workspace's server already runs on {info.port} "
           "(`textloop studio down` first to move it)" if moved else "")))


@studio_app.command("down")
def down_cmd(ctx: typer.Context) -> None:
    """Stop the Label Studio that `studio up` started for this workspace (nothing else)."""
    from pipeline.studio.launcher import down

    st = state(ctx)
    res = down(st.read_ws().root)
    emit(st, res.as_dict(), lambda c: c.print(_down_message(res)))


def _down_message(res: Any) -> str:
    """What `down` did (it said "was not running" about another server answering at the URL)."""
    if res.stopped:
        return f"stopped Label Studio at {res.url} (pid {res.pid})"
    if res.reason:
        return res.reason
    if res.other_answering:
        return (f"the Label Studio this workspace started (pid {res.pid}) is gone; the one answering at {res.url} "
                "was not started for this workspace and is left running")
    return f"Label Studio at {res.url} was not running"


@studio_app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Is Label Studio up (LABEL_STUDIO_URL, else the one `studio up` started): the server push and pull use?"""
    from pipeline.studio.launcher import status

    st = state(ctx)
    try:
        res = status(st.read_ws().root)
    except StudioError as exc:
        fail(str(exc), 2)
    emit(st, res.as_dict(), lambda c: c.print(f"{res.url}: {'healthy' if res.healthy else res.problem}"
                                              + (f" (started by textloop, pid {res.pid})" if res.started_by_textloop else "")
                                              + (f"; token: {res.token}" if res.token and res.token != "accepted" else "")))
    if not res.healthy or res.token != "accepted":
        raise typer.Exit(1)


@studio_app.command("init")
def init_cmd(
    ctx: typer.Context,
    classes: Optional[str] = typer.Option(None, help="Comma-separated box classes for the label config "
                                          "(default: the project's current ones; 'text' for a new project)."),
    title: Optional[str] = typer.Option(None, help="Project title (default TEXTLOOP_LS_PROJECT or 'textloop')."),
    ml_backend: Optional[str] = typer.Option(None, "--ml-backend", help="URL of `textloop serve` to connect as ML backend."),
    label_config: Optional[Path] = typer.Option(None, help="Label config template (default labelstudio/label_config.xml)."),
) -> None:
    """Create or update the project (idempotent): label config, uncertainty sampling, local-files storage."""
    from pipeline.studio.client import check_url
    from pipeline.studio.project import init_project

    st = state(ctx)
    if ml_backend:   # a usage error, named before Label Studio is asked anything (it exited 1)
        try:
            check_url(ml_backend, "--ml-backend")
        except StudioError as exc:
            fail(str(exc), 2)
    ws = st.read_ws()
    try:
        studio = connect_workspace(ws.root)
        res = init_project(ws, studio, [c for c in (classes or "").split(",") if c.strip()] or None, title, ml_backend,
                           label_config)
    except StudioError as exc:
        fail(str(exc))
    emit(st, res.as_dict(), lambda c: c.print(
        f"project {res.title!r} (id {res.project_id}) "
        f"{'created' if res.created else 'updated (' + ', '.join(res.changed) + ')' if res.changed else 'up to date'}: "
        f"classes {', '.join(res.classes)}, uncertainty sampling, storage {res.storage_id}"
        + (f", ML backend {res.ml_backend_id}" if res.ml_backend_id else "") + f"\n{res.url}"))


def push_cmd(
    ctx: typer.Context,
    top: Optional[int] = typer.Option(None, min=1, help="With --strategy: the first N images of the ranking (those already "
                                      "in Label Studio count: the same push again adds nothing); without: at most N new "
                                      "tasks, lowest confidence first."),
    strategy: Optional[str] = typer.Option(None, help="Order by <ws>/reports/ranking.parquet score_<S> (from `textloop rank`); "
                                                              "'ranked' = the strategy rank picked its batch by."),
    model: str = typer.Option("current", help="Detector: current | ppocr | path to bundle.zip."),
    model_version: Optional[str] = typer.Option(None, help="Use stored predictions of this model version."),
    split: Optional[str] = typer.Option(None, help="Only images of this split."),
    min_score: float = typer.Option(0.3, min=0.0, max=1.0, help="Boxes below this score are not sent to labellers."),
    update_existing: bool = typer.Option(True, help="Add this model version's prediction to existing tasks."),
) -> None:
    """Create Label Studio tasks with the model's boxes as pre-annotations (idempotent, batched)."""
    from pipeline.config import check_split
    from pipeline.studio.push import run_push

    st = state(ctx)
    with usage_errors(ValueError, FileNotFoundError):
        check_split(split)
        from pipeline.detectors import check_spec

        check_spec(model)   # exit 2 before Label Studio is asked anything, as serve and rank do
        if strategy is not None:
            from pipeline.rank import STRATEGIES

            if strategy not in (*STRATEGIES, "ranked"):
                raise ValueError(f"--strategy must be ranked or one of {', '.join(STRATEGIES)}, got {strategy!r}")
    ws = st.read_ws()
    try:
        with progress(st, "push") as update:
            res = run_push(ws, connect_workspace(ws.root), split=split, model=model, model_version=model_version,
                           strategy=strategy, top=top, update_existing=update_existing, min_score=min_score,
                           progress=update)
    except (StudioError, FileNotFoundError, ValueError, WorkspaceBusy) as exc:
        fail(str(exc))

    def render(c: Any) -> None:
        _render_push(c, res)
        for line in res.failures:
            c.print(f"not pushed: {line}", highlight=False, soft_wrap=True)

    emit(st, res.as_dict(), render, problems=res.failures, label="not pushed")


def _render_push(c: Any, res: Any) -> None:
    c.print(
        f"pushed to project {res.project_id} with model {res.model_version}: {res.tasks_created} new tasks, "
        f"{res.predictions_added} existing tasks got this model's prediction, {res.already_pushed} existing tasks "
        "already had it"
        + (f", {res.tasks_updated} existing tasks' data updated (file name, sources, ranking)" if res.tasks_updated else "")
        + (f", {res.failed} images failed" if res.failed else "")
        + (f"; {res.sent_for_review} of the new tasks are labels curation flagged (the label pre-drawn, the "
           "suspected issue shown above the image)" if res.sent_for_review else "")
        + (f"; {res.tasks_withdrawn} unlabelled tasks of excluded images withdrawn" if res.tasks_withdrawn else "")
        + (f"; {res.reopened_for_review} labelled tasks curation flagged reopened for review (the suspected issue "
           "shown above the image)" if res.reopened_for_review else "")
        + f"\norder: {res.order}\n{res.url}")


def pull_cmd(
    ctx: typer.Context,
    policy: str = typer.Option("latest", help="Which annotation wins per task: latest | first (ground truth always wins)."),
) -> None:
    """Mirror human annotations into the catalog: new, updated and removed since the last pull."""
    from pipeline.studio.pull import run_pull

    st = state(ctx)
    if policy not in ("latest", "first"):
        fail(f"--policy must be latest or first, got {policy!r}", 2)
    ws = st.read_ws()
    try:
        res = run_pull(ws, connect_workspace(ws.root), policy=policy)
    except (StudioError, ValueError) as exc:
        fail(str(exc))
    def render(c: Any) -> None:
        c.print(f"pulled project {res.project_id}: {res.new} new, {res.updated} updated, {res.removed} removed "
                f"({res.unchanged} unchanged); {res.labelled} labelled, {res.empty} verified empty, {res.skipped} skipped"
                + (f"; {res.excluded} of them on images curation excluded (stored, not used for training)"
                   if res.excluded else "")
                + (f"; {res.unknown_tasks} annotated task(s) whose image is not in this workspace (left alone)"
                   if res.unknown_tasks else ""))
        if res.several_annotators:   # one label stands for a task; a disagreement went by unseen
            ids = ", ".join(map(str, res.several_annotator_tasks[:20])) + (", ..." if res.several_annotators > 20 else "")
            c.print(f"{res.several_annotators} task(s) labelled by more than one person (task {ids}): the {policy} label of each "
                    f"is used ({'--policy first' if policy == 'latest' else '--policy latest'} for the "
                    f"{'first' if policy == 'latest' else 'latest'}; a ground-truth label always wins)", highlight=False)
        for line in res.problems:
            c.print(f"not pulled (the catalog keeps what it had): {line}", highlight=False, soft_wrap=True)

    emit(st, res.as_dict(), render, problems=res.problems, label="not pulled")


def export_cmd(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Output folder (boxes.jsonl | annotations.json | labels/ + images/)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (the devset format) | coco | yolo."),
    split: Optional[str] = typer.Option(None, help="Only this split (train/val/test)."),
    classes: str = typer.Option("text", help="Class names in label order (coco categories / yolo names)."),
) -> None:
    """Export the human-labelled dataset; verified text-free images are included with no boxes."""
    from pipeline.studio.export import check_options, export

    st = state(ctx)
    names = tuple(c.strip() for c in classes.split(","))
    with usage_errors():
        check_options(fmt, split, names)
    try:
        res = export(st.read_ws(read_only_ok=True), out, fmt, split, names)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    def render(c) -> None:
        ignored = (f"; {res.ignored_boxes} don't-care boxes " + ("left out (YOLO has no don't-care flag)" if fmt == "yolo"
                                                                 else "kept with their flag")) if res.ignored_boxes else ""
        c.print(f"exported {res.images} images ({res.boxes} boxes, {res.empty_images} without text{ignored}) to {res.out}"
                + (f"; removed {res.removed} files of images no longer in the set" if res.removed else "")
                + (f"; removed {res.label_files_removed} label files an earlier export wrote and this one does not "
                   "(another format's, or other splits' lists)" if res.label_files_removed else ""))
        for line in res.problems:
            c.print(f"[yellow]left out[/] {plain(line)}", highlight=False, soft_wrap=True)

    emit(st, res.as_dict(), render, problems=res.problems, label="left out")


def serve_cmd(
    ctx: typer.Context,
    port: int = typer.Option(9090, min=1, max=65535, help="Port."),
    host: str = typer.Option("127.0.0.1", help="Interface (0.0.0.0 inside docker)."),
    model: str = typer.Option("current", help="Detector: current | ppocr | path to bundle.zip."),
    retrain_every: int = typer.Option(0, min=0, help="Queue a retrain after this many annotation webhooks (0 = only on START_TRAINING)."),
    max_bytes: Optional[int] = typer.Option(None, min=1, help="Refuse a downloaded task image larger than this "
                                            "(default 209715200, as harvest)."),
    max_pixels: Optional[int] = typer.Option(None, min=1, help="Refuse a task image with more pixels than this "
                                             "(default 178956970, as harvest, predict and redact)."),
) -> None:
    """Label Studio ML backend: live boxes for any task; retrains in the background on request."""
    from pipeline.serve import ServeConfig, check_listen, create_app, run_server

    st = state(ctx)
    limits = {k: v for k, v in (("max_bytes", max_bytes), ("max_pixels", max_pixels)) if v is not None}
    try:   # the model loads before the server starts: a bad --model is one line, not a traceback
        app = create_app(st.ws(), ServeConfig(model=model, retrain_every=retrain_every, **limits))
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--model {model}: {exc}", 2)
    try:   # a port in use or a bad --host was uvicorn's "ERROR: ..." and exit 3
        check_listen(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})", 2)
    st.console.print(f"serving model {app.state.backend.model_version} on http://{host}:{port} "
                     f"(connect it: textloop studio init --ml-backend http://{host}:{port}; Ctrl-C stops)")
    # Ctrl-C/SIGTERM: uvicorn stops, then a running retrain is stopped (its stages end `failed`)
    run_server(app, host=host, port=port, log_level="info" if st.verbosity > 0 else "warning")
