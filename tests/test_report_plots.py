"""The report's PNGs read at a glance: the learning curve's axes are checked on the figure
object (limits, integer ticks, one line per model family, the promoted model marked), and every
figure the report writes has a title, labelled axes and no overlapping text."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.curate import report
from pipeline.workspace import Workspace


def _add_model(ws: Workspace, version: str, kind: str, metrics: dict, promoted: bool = False,
               human: int | None = None, t: float | None = None) -> None:
    t = t or time.time()
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO models(version, parent, kind, path, trained_on, metrics, created_at, promoted) "
                   "VALUES (?,?,?,?,?,?,?,?)", (version, None, kind, f"models/{version}/bundle.zip", "x",
                                                json.dumps(metrics), t, int(promoted)))
        if human is not None:  # what train_workspace logs: the train step with the model's metrics
            tx.execute("INSERT INTO iterations(step, started_at, finished_at, status, counts, metrics) "
                       "VALUES ('train', ?, ?, 'done', ?, ?)",
                       (t, t, json.dumps({"synthetic": 120, "human": human, "val": 16}),
                        json.dumps({"version": version, **metrics})))


def _db_metrics(cov: float, stock: float = 0.62) -> dict:
    return {"text_coverage": cov + 0.05, "f1": 0.4, "coverage_at_budget": cov, "stock_coverage_at_budget": stock,
            "over_redaction_budget": 0.031}


def _texts(fig):
    """Every visible, non-empty text drawn on the figure with its pixel box."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tick_labels, drawn_ticks = set(), []
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels.update((id(tick.label1), id(tick.label2)))
                if ax.axison and lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:  # others are not drawn
                    drawn_ticks += [tick.label1, tick.label2]
    out = []
    for t in [*(t for t in fig.findobj(Text) if id(t) not in tick_labels), *drawn_ticks]:
        if not t.get_visible() or not t.get_text().strip():
            continue
        out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


def assert_readable(fig) -> None:
    """A title, no text overlapping other text, nothing cut off at the figure's edge."""
    texts = _texts(fig)
    assert any(ax.get_title() for ax in fig.axes) or (fig._suptitle is not None and fig._suptitle.get_text())
    fb = fig.bbox
    for i, (a, ba) in enumerate(texts):
        assert ba.x0 >= fb.x0 - 1 and ba.x1 <= fb.x1 + 1 and ba.y0 >= fb.y0 - 1 and ba.y1 <= fb.y1 + 1, f"{a!r} is cut off"
        for b, bb in texts[i + 1:]:
            assert not ba.overlaps(bb), f"text {a!r} overlaps {b!r}"


def _ticks_in_view(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_one_model_at_zero_labels_is_a_readable_point(ws):
    """The demo: one db model trained on synthetic data only (0 labels) and its train step."""
    _add_model(ws, "db-20260101-demo", "db", _db_metrics(0.55), human=0)
    curve = report.learning_curve_table(ws)
    assert len(curve) == 1, "the train step's metrics are the model's: one point, not two"
    fig = report.learning_curve_figure(curve)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 0 < hi and hi >= 4 and lo >= -1, (lo, hi)   # not -0.04..0.04
    ticks = _ticks_in_view(ax)
    assert ticks and all(float(t).is_integer() for t in ticks) and 0 in ticks
    assert ax.get_ylim() == (0, 1.05)
    assert "labelled images" in ax.get_xlabel() and "over-redaction budget" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["db", "ppocr stock baseline"]
    assert_readable(fig)


def test_an_iterate_round_adds_no_second_point_for_its_candidate(ws):
    """An `iterate` round records its candidate's test-split numbers under `candidate`; they
    were drawn as an anonymous second point at every labelled image (val and test included)."""
    _add_model(ws, "db-round", "db", _db_metrics(0.6), human=5)
    with ws.catalog() as cat, cat.transaction() as tx:
        tx.execute("INSERT INTO iterations(step, started_at, finished_at, status, counts, metrics) "
                   "VALUES ('iterate', ?, ?, 'done', '{}', ?)",
                   (time.time(), time.time(), json.dumps({"candidate": "db-round", "promoted": True,
                                                          "text_coverage": 0.99, "f1": 0.5})))
    curve = report.learning_curve_table(ws)
    assert list(curve["model_version"]) == ["db-round"] and list(curve["n_labelled"]) == [5]


def test_a_bundle_registered_from_elsewhere_is_not_plotted_at_this_workspaces_label_count(ws):
    """`models register` of a bundle trained in another workspace, whose metrics carry no label
    count, used to be plotted at the number of labels *this* workspace had when it was
    registered: a point saying nothing about what the model learnt from."""
    t0 = time.time() - 100
    _add_model(ws, "db-here", "db", _db_metrics(0.60), human=2, t=t0 + 1)     # trained here on 2 labels
    _add_model(ws, "db-elsewhere", "db", _db_metrics(0.70), t=t0 + 2)        # registered, no count
    _add_model(ws, "db-counted", "db", {**_db_metrics(0.65), "n_train_human": 40}, t=t0 + 3)  # its own count
    curve = report.learning_curve_table(ws).set_index("model_version")
    assert "db-elsewhere" not in curve.index
    assert curve.loc["db-here", "n_labelled"] == 2 and curve.loc["db-counted", "n_labelled"] == 40


def test_families_promoted_and_integer_ticks(ws):
    t0 = time.time() - 100
    _add_model(ws, "db-a", "db", _db_metrics(0.50), human=0, t=t0)
    _add_model(ws, "db-b", "db", _db_metrics(0.58, 0.60), human=7, t=t0 + 1)
    _add_model(ws, "db-c", "db", _db_metrics(0.66, 0.61), promoted=True, human=23, t=t0 + 2)
    _add_model(ws, "frcnn-a", "fasterrcnn", {"text_coverage": 0.34, "f1": 0.2}, human=0, t=t0 + 3)
    _add_model(ws, "frcnn-b", "fasterrcnn", {"text_coverage": 0.41, "f1": 0.25}, human=23, t=t0 + 4)
    curve = report.learning_curve_table(ws)
    assert sorted(curve["n_labelled"]) == [0, 0, 7, 23, 23]
    assert set(curve["coverage_metric"]) == {"coverage_at_budget", "text_coverage"}
    fig = report.learning_curve_figure(curve)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 0 and 23 < hi < 26
    assert all(float(t).is_integer() for t in _ticks_in_view(ax))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["db", "fasterrcnn (at threshold 0.3)", "ppocr stock baseline", "current (promoted)"]
    star = [ln for ln in ax.get_lines() if ln.get_label() == "current (promoted)"][0]
    assert list(star.get_xdata()) == [23] and list(star.get_ydata()) == [pytest.approx(0.66)]
    db = [ln for ln in ax.get_lines() if ln.get_label() == "db"][0]
    assert list(db.get_xdata()) == [0, 7, 23]
    assert_readable(fig)


def test_empty_workspace_says_what_to_do(ws):
    fig = report.learning_curve_figure(report.learning_curve_table(ws))
    assert any("No evaluated model yet" in t for t, _ in _texts(fig))
    assert_readable(fig)
    assert_readable(report.ranking_figure(None))


def test_ranking_and_galleries_are_readable(tmp_path):
    rng = np.random.default_rng(0)
    ranking = pd.DataFrame({"image_id": [f"{i:064x}" for i in range(40)],
                            "score_uncertainty": rng.random(40), "score_committee": rng.random(40) * 0.6,
                            "score_tta": np.nan, "score_random": rng.random(40)})
    ranking.loc[:5, "score_uncertainty"] *= 20      # strategies on different scales: one panel each
    fig = report.ranking_figure(ranking)
    assert [ax.get_title() for ax in fig.axes] == ["uncertainty (40 images)", "committee (40 images)",
                                                    "random (40 images)"]
    assert fig.axes[0].get_ylabel() == "images" and all(ax.get_xlabel() for ax in fig.axes)
    assert fig.axes[2].get_xlim()[1] < 2 < fig.axes[0].get_xlim()[1]
    assert_readable(fig)
    thumbs = [(Image.new("RGB", (240, 180), (200, 200, 200)),
               f"{'c' * 40} [train]\nlabel score 0.12 and a long list of issues: overlooked_text, bad_location")
              for _ in range(6)]
    for cols in (4, 3):
        assert_readable(report.gallery_figure(thumbs, "Duplicate clusters (pairs side by side)", "none", cols=cols))
    assert_readable(report.gallery_figure([], "Label issues", "No label issues to show."))


def test_build_report_writes_every_png(ws):
    _add_model(ws, "db-20260101-demo", "db", _db_metrics(0.55), human=0)
    out = report.build_report(ws)
    for name, path in out.pngs.items():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 600, name
    html = (ws.reports_dir / "report.html").read_text()
    assert all(f"src='{p.split('/')[-1]}'" in html for p in out.pngs.values())


def test_stored_metrics_are_read_as_metrics():
    """Stored metrics are read by the `Metrics` field names: the top level, else the `test`
    entry iterate adds to a model's row; nothing else is guessed."""
    top = report.stored_metrics({"text_coverage": 0.5, "f1": None, "test": {"text_coverage": 0.9, "f1": 0.8}})
    assert top.text_coverage == 0.5 and np.isnan(top.f1)
    nested = report.stored_metrics({"labelled_images": 4, "test": {"text_coverage": 0.7, "f1": 0.6}})
    assert (nested.text_coverage, nested.f1) == (0.7, 0.6)
    assert report.stored_metrics({"overall": {"text_coverage": 0.7}}) is None
    assert report.stored_metrics({"version": "v", "text_coverage": float("nan")}) is None


def test_iterate_test_metrics_make_a_curve_point(ws):
    """A model whose row only holds iterate's test evaluation still gets its point."""
    _add_model(ws, "frcnn-t", "fasterrcnn", {"test": {"text_coverage": 0.42, "f1": 0.3}}, human=5)
    curve = report.learning_curve_table(ws)
    assert len(curve) == 1
    row = curve.iloc[0]
    assert (row["n_labelled"], row["coverage_metric"]) == (5, "text_coverage")
    assert (row["coverage"], row["f1"]) == pytest.approx((0.42, 0.3))


def test_the_report_copy_goes_to_the_last_finished_step_not_a_failed_one(ws):
    """A failed `curate --engine fastdup` after a good curate: the report's copy went under the
    failed step's folder, beside its empty curate output."""
    with ws.catalog() as cat:
        with cat.iteration("curate") as it:
            good = it.id
        with pytest.raises(RuntimeError):
            with cat.iteration("curate"):
                raise RuntimeError("no .venv-fastdup")
    report.build_report(ws)
    assert (ws.run_dir(good) / "report" / "report.html").exists()
    assert not (ws.run_dir(good + 1) / "report").exists()


def test_a_cross_split_group_is_drawn_with_a_member_of_each_split() -> None:
    import pandas as pd

    from pipeline.curate.report import shown_pair

    g = pd.DataFrame({"image_id": list("abcd"), "split": ["train", "train", "train", "test"]})
    assert list(shown_pair(g)["split"]) == ["train", "test"]
    assert list(shown_pair(g.iloc[:2])["image_id"]) == ["a", "b"]     # one split: the first two
    assert list(shown_pair(g.iloc[:1])["image_id"]) == ["a"]


def test_a_file_name_in_a_script_the_font_lacks_writes_no_warnings(tmp_path):
    """`report` with a CJK file name printed four raw matplotlib "Glyph ... missing from font"
    warnings, with source paths, on stderr; the gallery is still written."""
    import warnings

    thumbs = [(Image.new("RGB", (120, 90), (200, 200, 200)), "日本語のスキャン.png [train]")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        report.plot_gallery(thumbs, tmp_path / "g.png", "Label issues", "none")
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert not [w for w in seen if "missing from font" in str(w.message)], [str(w.message) for w in seen]
