"""notebooks/curation.ipynb runs without error on a small generated, curated workspace (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline.curate.report import build_report
from pipeline.curate.stage import run_curate

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "curation.ipynb"


def _execute(ws_root: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("TEXTLOOP_WORKSPACE", str(ws_root))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel uses the inline backend
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def test_notebook_runs_on_curated_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_curate_cli import build_workspace

    ws, info = build_workspace(tmp_path)
    run_curate(ws)
    build_report(ws)
    nb = _execute(ws.root, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # duplicate groups, outliers, label issues drawn with boxes
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    assert str(ws.root) in text


def test_notebook_runs_before_any_curation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    nb = _execute(ws.root, monkeypatch)
    text = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "run `textloop curate`" in text


def test_notebook_runs_when_the_last_curation_and_ranking_were_empty(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A workspace whose curation compared no images and whose rank found nothing left to label
    (every image labelled: the state after a few rounds) failed in the notebook (KeyError
    'outlier_score'; "hist method requires numerical or datetime columns")."""
    import pandas as pd

    from pipeline.io import write_table
    from pipeline.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    run_curate(ws)
    write_table(pd.DataFrame({"image_id": pd.Series(dtype=str), "score_uncertainty": pd.Series(dtype=float)}),
                [ws.reports_dir], "ranking")
    nb = _execute(ws.root, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert "no images to compare" in text and "no unlabelled images to rank" in text, text
