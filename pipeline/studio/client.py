"""Connecting to Label Studio: settings from the environment or `.env`, and clear errors.

Credentials come only from the environment or a `.env` file (never from the command line
history, never printed): `LABEL_STUDIO_URL`, `LABEL_STUDIO_API_KEY` (the names the
label-studio-sdk docs use), and for `studio up` also `LABEL_STUDIO_USERNAME/PASSWORD`.
Every failure that a user can fix is raised as `StudioError` with one line that says what to do.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_URL = "http://127.0.0.1:8080"
REQUEST_TIMEOUT = 120.0    # seconds per API request (connect())
IMPORT_TIMEOUT = 600.0     # seconds for one task import (a batch of 500 tasks)
SLOW_CALL = 15.0           # seconds before a call still waiting is said (once)

log = logging.getLogger("textloop.studio")


class StudioError(Exception):
    """A Label Studio problem the user can fix; str() is one clear line without credentials."""


@dataclass(frozen=True)
class StudioSettings:
    """Where Label Studio runs and how to log in. `repr` hides the secrets."""

    url: str = DEFAULT_URL
    api_key: str = ""
    username: str = "admin@textloop.local"
    password: str = ""
    project_title: str = "textloop"
    # Label Studio serves local files from one document root. `local_files_root` is that folder as
    # we see it (default: the workspace itself), `server_files_root` the same folder as the server
    # sees it (differs when Label Studio runs in Docker; default: same as ours).
    local_files_root: str = ""
    server_files_root: str = ""

    def __repr__(self) -> str:  # never leak credentials into logs or tracebacks
        return (f"StudioSettings(url={self.url!r}, api_key={'***' if self.api_key else ''!r}, "
                f"username={self.username!r}, project_title={self.project_title!r}, "
                f"local_files_root={self.local_files_root!r}, server_files_root={self.server_files_root!r})")

    __str__ = __repr__


def read_dotenv(path: str | Path | None = None) -> dict[str, str]:
    """Values of a `.env` file (default: ./.env, else the repo's .env); missing file -> {}."""
    candidates = [Path(path)] if path else [Path.cwd() / ".env", Path(__file__).resolve().parents[2] / ".env"]
    for p in candidates:
        if p.is_file():
            from dotenv import dotenv_values

            return {k: v for k, v in dotenv_values(p).items() if v is not None}
    return {}


def load_settings(url: str | None = None, api_key: str | None = None, env_file: str | Path | None = None,
                  local_files_root: str | Path | None = None) -> StudioSettings:
    """Explicit arguments, else the environment, else `.env`, else defaults."""
    dot = read_dotenv(env_file)

    def get(name: str, default: str = "") -> str:
        value = os.environ.get(name)
        if value is None:
            value = dot.get(name)
        return default if value is None else value

    return StudioSettings(
        url=(url or get("LABEL_STUDIO_URL", DEFAULT_URL)).rstrip("/"),
        api_key=api_key or get("LABEL_STUDIO_API_KEY") or get("LABEL_STUDIO_USER_TOKEN"),
        username=get("LABEL_STUDIO_USERNAME", "admin@textloop.local"),
        password=get("LABEL_STUDIO_PASSWORD"),
        project_title=get("TEXTLOOP_LS_PROJECT", "textloop"),
        local_files_root=str(local_files_root or get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")),
        server_files_root=get("TEXTLOOP_LS_FILES_ROOT"),
    )


def check_url(url: str, what: str = "LABEL_STUDIO_URL") -> None:
    """StudioError unless `url` is an http(s) URL with a host (and a numeric port): `ftp://...`,
    `host:8080` or `http://host:abc` were reported "not reachable", as if the server were down."""
    import urllib.parse

    hint = f"{what} looks like http://127.0.0.1:8080"
    try:
        p = urllib.parse.urlparse(url)
        p.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise StudioError(f"{what} {url!r} is not a valid URL ({exc}); {hint}") from None
    if p.scheme not in ("http", "https") or not p.hostname:
        raise StudioError(f"{what} {url!r} is not an http(s) URL; {hint}")


def explain(exc: BaseException, url: str) -> StudioError:
    """Turn an SDK/httpx exception into one actionable line (no headers, no tokens)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, StudioError):
        return exc
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return StudioError(f"Label Studio is not reachable at {url} (server down?); start one with `textloop studio up` or set LABEL_STUDIO_URL")
    if isinstance(exc, httpx.TimeoutException):
        return StudioError(f"Label Studio at {url} did not answer in time ({REQUEST_TIMEOUT:g} s per request, "
                           f"{IMPORT_TIMEOUT:g} s for a task import): is it stopped or overloaded?")
    if isinstance(exc, httpx.HTTPError):
        return StudioError(f"Label Studio at {url}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ApiError):
        code = exc.status_code
        detail = _short_detail(exc.body)
        if code == 401 or (code == 403 and any(w in detail.lower() for w in ("credential", "token", "authenticat"))):
            return StudioError(f"Label Studio at {url} rejected the API token (HTTP {code}); check LABEL_STUDIO_API_KEY")
        return StudioError(f"Label Studio at {url} answered HTTP {code}: {detail}")
    return StudioError(f"Label Studio at {url}: {type(exc).__name__}: {exc}")


def _short_detail(body: Any) -> str:
    if isinstance(body, dict):
        parts = []
        if body.get("detail"):
            parts.append(str(body["detail"]))
        if body.get("validation_errors"):
            parts.append(str(body["validation_errors"]))
        text = "; ".join(parts) or str(body)
    else:
        text = str(body)
    text = " ".join(text.split())
    if text[:15].lower().startswith(("<!doctype", "<html")):   # a web page, not the API: the URL has a path
        return "a web page instead of the API (is LABEL_STUDIO_URL the server's root, without a path?)"
    text = re.sub(r"<[^>]*>", "", text)   # markup inside a message (an ML backend's error: '<a href=...>')
    if not text or text in ("None", "{}", "''"):   # a server that is not Label Studio answered
        return "no explanation (is LABEL_STUDIO_URL a Label Studio server?)"
    return text if len(text) <= 300 else text[:297].rsplit(" ", 1)[0] + " ..."


class Studio:
    """An SDK client plus the settings it was made from (the URL for error messages)."""

    def __init__(self, sdk: Any, settings: StudioSettings, timeout: float = REQUEST_TIMEOUT) -> None:
        self.sdk = sdk
        self.settings = settings
        self.timeout = timeout   # what one request waits for; said in the slow-call warning

    @property
    def url(self) -> str:
        return self.settings.url

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one SDK call, translating failures into StudioError."""
        return self._call(lambda: fn(*args, **kwargs), self.timeout)

    def _call(self, fn: Callable[[], Any], limit: float) -> Any:
        """`fn()` with errors as StudioError; one warning if it is still unanswered after
        SLOW_CALL seconds (a hung server otherwise meant minutes of silence)."""
        warn = threading.Timer(SLOW_CALL, lambda: log.warning(
            "still waiting for Label Studio at %s (gives up after %.0f s)", self.url, limit))
        warn.daemon = True
        warn.start()
        try:
            return fn()
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK/transport error becomes one line
            raise explain(exc, self.url) from None
        finally:
            warn.cancel()

    def post_json(self, path: str, payload: Any, params: dict[str, Any] | None = None) -> Any:
        """POST plain JSON with the SDK's session and auth headers. For the big bulk calls: the
        SDK's generic request encoder costs ~2 ms per box on 2 cores (a third of a 2,000-task push)."""
        import json as _json

        from label_studio_sdk.core.api_error import ApiError

        wrapper = self.sdk._client_wrapper

        def go() -> Any:
            headers = dict(wrapper.get_headers(), **{"Content-Type": "application/json"})
            r = wrapper.httpx_client.httpx_client.post(
                f"{self.url}/{path.lstrip('/')}", content=_json.dumps(payload, separators=(",", ":")),
                params=params, headers=headers, timeout=IMPORT_TIMEOUT)
            try:
                body = r.json()
            except ValueError:
                body = r.text
            if r.status_code >= 400:
                raise ApiError(status_code=r.status_code, body=body)
            return body

        return self._call(go, IMPORT_TIMEOUT)

    def __repr__(self) -> str:
        return f"Studio({self.url})"


def connect(url: str | None = None, api_key: str | None = None, env_file: str | Path | None = None,
            timeout: float = REQUEST_TIMEOUT, check: bool = True, local_files_root: str | Path | None = None) -> Studio:
    """A checked connection: raises StudioError if the server is down or the token is wrong."""
    from label_studio_sdk import LabelStudio

    settings = load_settings(url, api_key, env_file, local_files_root)
    check_url(settings.url)
    if not settings.api_key:
        raise StudioError("no Label Studio API token: set LABEL_STUDIO_API_KEY in the environment or .env")
    sdk = LabelStudio(base_url=settings.url, api_key=settings.api_key, timeout=timeout, max_retries=0)
    studio = Studio(sdk, settings, timeout)
    if check:
        studio.call(lambda: sdk.users.whoami())
    return studio
