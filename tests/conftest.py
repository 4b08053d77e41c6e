from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.workspace import Workspace

os.environ.setdefault("SENTRY_OPT_OUT", "1")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")
