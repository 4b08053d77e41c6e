"""docker-compose.yml, .env and Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from pipeline.config import privacy_env
from pipeline.studio.launcher import DEFAULT_BANNED_SUBNETS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(REPO / ".env").items()}


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against .env (errors if unset)."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} must be set in .env ({arg})")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


@pytest.fixture(scope="module")
def compose(dotenv) -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())

    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return _interpolate(x, dotenv) if isinstance(x, str) else x

    return walk(data)


def test_services_exist_and_jupyter_is_optional(compose):
    services = compose["services"]
    assert {"label-studio", "pipeline", "ml-backend", "jupyter"} <= set(services)
    assert services["jupyter"].get("profiles") == ["jupyter"]
    assert all("profiles" not in services[s] for s in ("label-studio", "pipeline", "ml-backend"))


def test_label_studio_image_is_pinned_to_the_tested_version(compose):
    image = compose["services"]["label-studio"]["image"]
    assert re.fullmatch(r"heartexlabs/label-studio:\d+\.\d+\.\d+", image), image
    makefile = (REPO / "Makefile").read_text()
    assert f"label-studio=={image.split(':')[1]}" in makefile  # same version as .venv-ls


def test_every_published_port_is_on_loopback(compose):
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
            published += 1
    assert published >= 3


def test_workspace_is_the_local_files_root_everywhere(compose):
    services = compose["services"]
    for name in ("label-studio", "pipeline", "ml-backend", "jupyter"):
        mounts = services[name]["volumes"]
        assert any(m.endswith(":/workspace") for m in mounts), name
    ls_env = services["label-studio"]["environment"]
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/workspace"
    for name in ("pipeline", "ml-backend"):
        env = services[name]["environment"]
        assert env["TEXTLOOP_WORKSPACE"] == "/workspace" and env["TEXTLOOP_LS_FILES_ROOT"] == "/workspace"
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"


def test_admin_user_and_token_come_from_dotenv(compose, dotenv):
    ls_env = compose["services"]["label-studio"]["environment"]
    assert ls_env["LABEL_STUDIO_USERNAME"] == dotenv["LABEL_STUDIO_USERNAME"]
    assert ls_env["LABEL_STUDIO_PASSWORD"] == dotenv["LABEL_STUDIO_PASSWORD"]
    assert ls_env["LABEL_STUDIO_USER_TOKEN"] == dotenv["LABEL_STUDIO_API_KEY"]
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for name in ("pipeline", "ml-backend"):
        assert compose["services"][name]["environment"]["LABEL_STUDIO_API_KEY"] == dotenv["LABEL_STUDIO_API_KEY"]
    raw = (REPO / "docker-compose.yml").read_text()
    assert dotenv["LABEL_STUDIO_PASSWORD"] not in raw and dotenv["LABEL_STUDIO_API_KEY"] not in raw


def test_privacy_settings_in_every_service_and_dotenv(compose, dotenv):
    for name, svc in compose["services"].items():
        env = svc["environment"]
        for key in ("LATEST_VERSION_CHECK", "COLLECT_ANALYTICS", "SENTRY_DSN", "FRONTEND_SENTRY_DSN"):
            assert str(env[key]) == privacy_env()[key], f"{name}: {key}={env[key]!r}"
    for key, value in privacy_env().items():
        assert dotenv[key] == value


def test_ssrf_protection_only_opens_the_compose_network(compose):
    env = compose["services"]["label-studio"]["environment"]
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    banned = set(env["USER_ADDITIONAL_BANNED_SUBNETS"].split(","))
    assert set(DEFAULT_BANNED_SUBNETS) - banned == {"172.16.0.0/12", "192.168.0.0/16"}


def test_dotenv_has_placeholder_credentials_with_a_warning(dotenv):
    text = (REPO / ".env").read_text()
    assert re.search(r"#.*CHANGE", text, re.IGNORECASE)
    for key in ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY", "JUPYTER_TOKEN"):
        assert "change-me" in dotenv[key]
    assert len(dotenv["LABEL_STUDIO_API_KEY"]) <= 40  # Label Studio's token field limit


def test_services_run_textloop_from_the_dockerfile(compose):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["textloop"\]', dockerfile, re.M)
    assert "--index-url https://download.pytorch.org/whl/cpu" in dockerfile
    services = compose["services"]
    assert services["pipeline"]["build"] == "." and services["ml-backend"]["build"] == "."
    assert services["ml-backend"]["command"][-4:] == ["--host", "0.0.0.0", "--port", "9090"]
    assert "serve" in services["ml-backend"]["command"]
    assert services["ml-backend"]["depends_on"]["label-studio"]["condition"] == "service_healthy"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignore and ".git" in ignore  # credentials and history stay out of the image
