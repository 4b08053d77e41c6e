"""Start/stop a local Label Studio for a workspace (the CLI `studio up|down|status` and the
integration-test fixture use the same functions).

With a reachable Docker engine `studio up` runs the compose service; otherwise it starts
`label-studio` from its own venv (`.venv-ls`, built by the Makefile) bound to 127.0.0.1, with
telemetry and the version check off, local-files serving rooted at the workspace, and the admin
user/token from the environment or `.env`. A PID file records what `up` started, so `down` stops
exactly that process and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from pipeline.config import privacy_env
from pipeline.io import atomic_write_text
from pipeline.studio.client import Studio, StudioError, check_url, connect, load_settings

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerInfo:
    url: str
    port: int
    pid: int | None
    mode: str            # local | docker
    data_dir: str
    files_root: str
    log: str
    started_at: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def label_studio_bin() -> Path | None:
    """TEXTLOOP_LABEL_STUDIO_BIN, else the repo's .venv-ls, else `label-studio` on PATH."""
    env = os.environ.get("TEXTLOOP_LABEL_STUDIO_BIN")
    for cand in (env, REPO / ".venv-ls" / "bin" / "label-studio", shutil.which("label-studio")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


# Label Studio's default SSRF block list (label_studio/core/utils/io.py, 1.23).
DEFAULT_BANNED_SUBNETS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "233.252.0.0/24", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "::ffff:0:0/96",
    "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:0000::/32", "2001:20::/28",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
)


def ssrf_env(allow: tuple[str, ...]) -> dict[str, str]:
    """Keep Label Studio's SSRF protection but let it reach the ML backend (`textloop serve`) on
    the `allow`ed networks (loopback locally; the compose network in docker)."""
    banned = [s for s in DEFAULT_BANNED_SUBNETS if s not in allow]
    return {"ML_BLOCK_LOCAL_IP": "false", "USE_DEFAULT_BANNED_SUBNETS": "false",
            "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned)}


def server_env(files_root: Path, data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    """The environment of a local server (loopback only, telemetry off, local-file serving for the workspace, legacy API token)."""
    env = dict(os.environ)
    env.pop("LABEL_STUDIO_URL", None)
    env.update(privacy_env())
    env.update({
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        **ssrf_env(allow=("127.0.0.0/8", "::1/128")),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def wait_healthy(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll GET /health until {"status": "UP"}; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log and log.exists() else []
            raise StudioError(f"label-studio exited with code {proc.returncode} during start-up"
                              + (f": {tail[0][:200]}" if tail else "") + (f" (log: {log})" if log else ""))
        if is_healthy(url, timeout=2.0):
            return
        time.sleep(0.5)
    raise StudioError(f"label-studio at {url} not healthy after {timeout:.0f} s" + (f" (log: {log})" if log else ""))


def start_local(files_root: Path, data_dir: Path, port: int | None = None, username: str = "admin@textloop.local",
                password: str = "", token: str = "", timeout: float = 180.0, ls_bin: Path | None = None) -> tuple[ServerInfo, subprocess.Popen]:
    """Start `label-studio` on 127.0.0.1 and wait until healthy. Returns (info, process)."""
    ls_bin = ls_bin or label_studio_bin()
    if ls_bin is None:
        raise StudioError("label-studio is not installed: run `make install-ls` (creates .venv-ls) or set TEXTLOOP_LABEL_STUDIO_BIN")
    if not token or not password:
        raise StudioError("set LABEL_STUDIO_API_KEY and LABEL_STUDIO_PASSWORD (environment or .env) before `studio up`")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "label-studio.log"
    url = f"http://127.0.0.1:{port}"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise StudioError(f"port {port} on 127.0.0.1 is already in use; choose another with --port")
    cmd = [str(ls_bin), "start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser",
           "--data-dir", str(data_dir)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, env=server_env(files_root, data_dir, username, password, token),
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(data_dir), start_new_session=True)
    info = ServerInfo(url=url, port=port, pid=proc.pid, mode="local", data_dir=str(data_dir),
                      files_root=str(files_root), log=str(log), started_at=time.time())
    try:
        wait_healthy(url, timeout, proc, log)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return info, proc


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """Stop the process group started for `pid` (SIGTERM, then SIGKILL). True if it was running."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    if pgid != pid:  # we start with start_new_session, so the group id is the pid; anything else is not ours
        os.kill(pid, signal.SIGTERM)
    else:
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL) if pgid == pid else os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


# --- the workspace-level commands (PID file in <workspace>/labelstudio/server.json) -------------

def pid_file(ws_root: Path) -> Path:
    return ws_root / "labelstudio" / "server.json"


def read_info(ws_root: Path) -> ServerInfo | None:
    """The server `up` started for this workspace, or None. A local server whose files root is
    another folder is not this workspace's: a copied workspace (`cp -r ws ws2`) took the
    original's server for its own, and its `studio down` stopped it."""
    p = pid_file(ws_root)
    if not p.exists():
        return None
    try:
        info = ServerInfo(**json.loads(p.read_text()))
    except (OSError, TypeError, json.JSONDecodeError):
        return None
    if info.mode == "local" and info.files_root and Path(info.files_root).resolve() != Path(ws_root).resolve():
        return None
    return info


def _is_label_studio(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
            return True  # no /proc (macOS): trust the PID file
        except ProcessLookupError:
            return False
    return "label-studio" in cmd or "label_studio" in cmd


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no SDK: all mean "use the local path"
        return False


@dataclass(frozen=True)
class UpResult:
    """The server `up` started, or found already running; `as_dict()` is the `--json` payload
    (the PID file's fields and `already_running`)."""

    server: ServerInfo
    already_running: bool
    token: str | None = None   # "accepted", or why LABEL_STUDIO_API_KEY does not open the server

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self.server), already_running=self.already_running, token=self.token)


@dataclass(frozen=True)
class DownResult:
    """What `down` stopped. With nothing started by `up` there is no server: only `reason`."""

    stopped: bool
    url: str | None = None
    pid: int | None = None
    mode: str | None = None
    reason: str | None = None
    other_answering: bool = False   # not stopped, and another Label Studio answers at `url` (left running)

    def as_dict(self) -> dict[str, Any]:
        if self.reason is not None:
            return {"stopped": self.stopped, "reason": self.reason}
        return {"stopped": self.stopped, "url": self.url, "pid": self.pid, "mode": self.mode,
                "other_answering": self.other_answering}


@dataclass(frozen=True)
class StatusResult:
    """Whether the workspace's server (or LABEL_STUDIO_URL) answers; `as_dict()` is the `--json` payload."""

    url: str
    healthy: bool
    started_by_textloop: bool
    pid: int | None
    mode: str | None
    log: str | None
    token: str | None = None   # healthy only: "accepted" | why it is not ("rejected (HTTP 401) ...")
    problem: str | None = None  # not healthy: what answered instead (nothing, too slowly, another server)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


MODES = ("auto", "local", "docker")


def check_mode(mode: str) -> None:
    """ValueError for a `--mode` that is none of MODES (any other value started a local server)."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")


def up(ws_root: Path, port: int | None = None, mode: str = "auto", timeout: float = 180.0) -> UpResult:
    """Start Label Studio for the workspace unless ours is already running, or one answers at
    the port (`port`, else LABEL_STUDIO_URL's when it is on this machine, else 8080): that one is
    used as it is (mode `external`; `down` never stops it). Returns its info. One `up` per
    workspace at a time (WorkspaceBusy): two at once migrated one database together and one
    died ("table auth_permission already exists")."""
    from pipeline.workspace import Workspace

    check_mode(mode)
    ws_root.mkdir(parents=True, exist_ok=True)
    with Workspace(ws_root.resolve()).lock("studio-up"):
        res = _up(ws_root.resolve(), port, mode, timeout)
    # the admin's token is fixed when a server first starts: a key changed in .env since was
    # "started" here and then refused by every push and pull
    return replace(res, token=token_state(res.server.url))


def _up(ws_root: Path, port: int | None, mode: str, timeout: float) -> UpResult:
    current = read_info(ws_root)
    if current and current.mode == "local" and current.pid and _is_label_studio(current.pid):
        return UpResult(current, already_running=True)
    s = load_settings()
    port = port or loopback_port(s.url) or 8080
    url = f"http://127.0.0.1:{port}"
    if is_healthy(url):   # it said "port in use" for the server LABEL_STUDIO_URL names
        return UpResult(ServerInfo(url=url, port=port, pid=None, mode="external", data_dir="", files_root="",
                                   log="", started_at=time.time()), already_running=True)
    if mode == "docker" or (mode == "auto" and docker_available()):
        compose = REPO / "docker-compose.yml"
        env = dict(os.environ, TEXTLOOP_WORKSPACE_DIR=str(ws_root), LABEL_STUDIO_PORT=str(port))
        r = subprocess.run(["docker", "compose", "-f", str(compose), "up", "-d", "label-studio"], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise StudioError(f"docker compose up failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout)
        info = ServerInfo(url=url, port=port, pid=None, mode="docker", data_dir="(docker volume)",
                          files_root=str(ws_root), log="docker compose logs label-studio", started_at=time.time())
    else:
        info, _ = start_local(ws_root, ws_root / "labelstudio" / "server", port, s.username, s.password, s.api_key, timeout)
    atomic_write_text(pid_file(ws_root), json.dumps(asdict(info), indent=2))
    return UpResult(info, already_running=False)


def loopback_port(url: str) -> int | None:
    """The port of `url` when it names this machine (the only place `up` can start a server)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        pass
    return None


def is_healthy(url: str, timeout: float = 3.0) -> bool:
    """Whether a Label Studio answers GET /health at `url`."""
    return health_problem(url, timeout) is None


def health_problem(url: str, timeout: float = 3.0) -> str | None:
    """None when a Label Studio answers GET /health at `url`, else what answered instead:
    nothing, too slowly, or another server (a web app on 8080 was called "not reachable", as
    if nothing were there, and `studio up` then failed on the port it holds)."""
    import httpx

    try:
        r = httpx.get(url + "/health", timeout=timeout)
    except httpx.TimeoutException:
        return f"no answer in {timeout:g} s"
    except httpx.HTTPError as exc:
        return "not reachable (server down?)" if isinstance(exc, httpx.ConnectError) else f"{type(exc).__name__}: {exc}"
    if r.status_code == 200 and "UP" in r.text:
        return None
    return f"a server answers, but it is not Label Studio (GET /health: HTTP {r.status_code})"


def down(ws_root: Path) -> DownResult:
    """Stop what `up` started for this workspace (and only that)."""
    ws_root = ws_root.resolve()
    info = read_info(ws_root)
    if info is None:
        return DownResult(stopped=False, reason="nothing started by `textloop studio up` for this workspace")
    stopped = False
    if info.mode == "docker":
        compose = REPO / "docker-compose.yml"
        r = subprocess.run(["docker", "compose", "-f", str(compose), "stop", "label-studio"], capture_output=True, text=True)
        stopped = r.returncode == 0
    elif info.pid and _is_label_studio(info.pid):
        stopped = stop_pid(info.pid)
    pid_file(ws_root).unlink(missing_ok=True)
    # a stale PID file's URL may be served by another Label Studio: said so, left running
    other = not stopped and bool(info.url) and is_healthy(info.url)
    return DownResult(stopped=stopped, url=info.url, pid=info.pid, mode=info.mode, other_answering=other)


def status(ws_root: Path) -> StatusResult:
    """Is the workspace's server (or LABEL_STUDIO_URL) up?"""
    ws_root = ws_root.resolve()
    info = read_info(ws_root)
    url = workspace_url(ws_root)   # what push and pull talk to (status looked at `up`'s server instead)
    check_url(url)
    if info is not None and info.url.rstrip("/") != url:
        info = None   # `up` started another server than the one in use: not this one's status
    problem = health_problem(url)
    healthy = problem is None
    token = token_state(url) if healthy else None   # "healthy" with a wrong token: every push failed HTTP 401
    running = bool(info and (info.mode == "docker" or (info.pid and _is_label_studio(info.pid))))
    return StatusResult(url=url, healthy=healthy, started_by_textloop=running, pid=info.pid if info else None,
                        mode=info.mode if info else None, log=info.log if info else None, token=token,
                        problem=problem)


def token_state(url: str) -> str:
    """"accepted" when LABEL_STUDIO_API_KEY opens the server at `url`, else why not."""
    try:
        connect(url=url, timeout=10.0)
        return "accepted"
    except StudioError as exc:
        return str(exc)


def workspace_url(ws_root: Path) -> str:
    """LABEL_STUDIO_URL from the environment, else the server `studio up` started for this
    workspace, else LABEL_STUDIO_URL from .env, else the default."""
    url = os.environ.get("LABEL_STUDIO_URL")
    if not url:
        info = read_info(ws_root)
        url = info.url if info else None
    return load_settings(url).url


def connect_workspace(ws_root: Path) -> Studio:
    """A checked connection to the workspace's Label Studio (`workspace_url`)."""
    return connect(url=workspace_url(ws_root))
