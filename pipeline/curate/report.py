"""Curation reports: tables to disk, HTML galleries with thumbnails and boxes, and `textloop report`.

Galleries embed their thumbnails as data URIs, so an HTML file stays valid when copied into
`runs/<iteration>/`. Plots use matplotlib's Agg backend (no display needed). Every reader is
robust to a workspace where nothing has happened yet: an empty table or a "nothing yet" panel.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluate import Metrics
from pipeline.io import atomic_write_bytes, atomic_write_text, read_table
from pipeline.workspace import check_run_name

log = logging.getLogger("textloop.curate")

GIVEN_COLOUR = (0, 200, 0)        # human labels
PRED_COLOUR = (255, 120, 0)       # model predictions
ISSUE_COLOUR = (230, 0, 0)        # boxes flagged by label-noise detection

# Table names under reports/ (parquet + csv each); the notebook reads the same names.
TABLES = ("duplicates", "duplicate_pairs", "duplicate_clusters", "label_issues", "label_issue_boxes")


# --- tables -----------------------------------------------------------------------------------

# --- drawing ------------------------------------------------------------------------------------

def render(path: str | Path, given: Any = (), predicted: Any = (), flagged: Any = (), max_side: int = 320) -> Any:
    """A thumbnail (PIL image) of `path` with given (green), predicted (orange) and flagged (red) boxes."""
    from PIL import Image, ImageDraw

    from pipeline.imaging import load_rgb

    try:
        im = Image.fromarray(load_rgb(path))
    except Exception as exc:  # noqa: BLE001 - a broken image becomes a grey tile, not a crash
        im = Image.new("RGB", (max_side, max_side * 3 // 4), (128, 128, 128))
        ImageDraw.Draw(im).text((8, 8), f"cannot load:\n{type(exc).__name__}", fill=(255, 255, 255))
        return im
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    d = ImageDraw.Draw(im)
    width = max(1, round(2 * max(im.size) / 320))
    for boxes, colour in ((given, GIVEN_COLOUR), (predicted, PRED_COLOUR), (flagged, ISSUE_COLOUR)):
        for b in np.asarray(boxes, dtype=float).reshape(-1, 4):
            x0, y0, x1, y1 = (float(v) * scale for v in b)
            d.rectangle([x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)], outline=colour,
                        width=width + (1 if colour == ISSUE_COLOUR else 0))
    return im


def data_uri(im: Any, quality: int = 80) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;border-radius:6px;padding:6px;max-width:340px;font-size:12px}
.card img{display:block;max-width:320px}.group{border:1px solid #999;border-radius:8px;padding:8px;margin:10px 0}
.warn{color:#b00;font-weight:bold}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.scroll{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>{body}</body></html>")


def _legend() -> str:
    return ("<p class='legend'>boxes:<span style='background:rgb(0,200,0)'></span>given (human)"
            "<span style='background:rgb(255,120,0)'></span>predicted (model)"
            "<span style='background:rgb(230,0,0)'></span>flagged</p>")


def _card_name(row: Any) -> str:
    """A gallery card's caption: the image's file name (its id's first 16 characters under it)."""
    name, short = str(getattr(row, "original_name", "") or ""), html.escape(str(row.image_id)[:16])
    return f"<b>{html.escape(name)}</b><br><small>{short}</small>" if name else short


def duplicates_html(images: pd.DataFrame, clusters: pd.DataFrame, engine: str, max_groups: int = 60,
                    max_outliers: int = 30) -> str:
    """Duplicate groups (cross-split ones first), outliers and broken images."""
    parts = [f"<p>engine: <b>{html.escape(engine)}</b>; {len(images)} images</p>"]
    if engine == "fastdup":
        parts.append("<p class='warn'>fastdup is licensed CC BY-NC-ND 4.0 (non-commercial use only).</p>")
    if len(clusters):
        order = clusters.groupby("cluster_id").agg(cross=("cross_split", "max"), size=("cluster_size", "max"))
        order = order.sort_values(["cross", "size"], ascending=False)
        parts.append(f"<h2>Duplicate groups ({len(order)}; {int(order['cross'].sum())} straddle splits)</h2>")
        for cid in list(order.index)[:max_groups]:
            g = clusters[clusters["cluster_id"] == cid]
            cross = bool(g["cross_split"].any())
            cards = "".join(
                f"<div class='card'><img src='{data_uri(render(r.path, max_side=200))}'>"
                f"{_card_name(r)}<br>split: {html.escape(str(r.split))}"
                + (f", {html.escape(str(r.status))}" if getattr(r, "status", "") else "") + "</div>"
                for r in g.itertuples())
            warn = " <span class='warn'>cross-split (train/val/test leakage)</span>" if cross else ""
            parts.append(f"<div class='group'><b>{html.escape(str(cid))}</b> ({len(g)} images){warn}"
                         f"<div class='grid'>{cards}</div></div>")
    else:
        parts.append("<h2>Duplicate groups</h2><p>none found</p>")
    if len(images):
        out = images[images["is_outlier_issue"]].sort_values("outlier_score").head(max_outliers)
        parts.append(f"<h2>Outliers ({int(images['is_outlier_issue'].sum())})</h2>")
        parts.append("<div class='grid'>" + "".join(
            f"<div class='card'><img src='{data_uri(render(r.path, max_side=200))}'>"
            f"{_card_name(r)}<br>outlier score {r.outlier_score:.3f}</div>"
            for r in out.itertuples()) + "</div>" if len(out) else "<p>none</p>")
        broken = images[images["is_broken_issue"]]
        parts.append(f"<h2>Broken images ({len(broken)})</h2>")
        if len(broken):
            parts.append("<table><tr><th>image</th><th>path</th><th>reason</th></tr>" + "".join(
                f"<tr><td>{_card_name(r)}</td><td>{html.escape(str(r.path))}</td>"
                f"<td>{html.escape(str(r.broken_reason))}</td></tr>" for r in broken.itertuples()) + "</table>")
    return _page("textloop curate: duplicates, outliers, broken images", "".join(parts))


def boxes_of(boxes: pd.DataFrame, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Given, predicted and flagged boxes of one image from the label_issue_boxes table."""
    b = boxes[boxes["image_id"] == image_id]
    xy = ["x0", "y0", "x1", "y1"]
    given = b.loc[b["source"] == "given", xy].to_numpy(float)
    pred = b.loc[b["source"] == "predicted", xy].to_numpy(float)
    flagged = b.loc[b["issue"].astype(str) != "", xy].to_numpy(float)
    return given, pred, flagged


def _readings(boxes: pd.DataFrame, image_id: str, most: int = 3) -> str:
    """What the recogniser read in an image's flagged boxes (the reading score's evidence)."""
    if "read_score" not in boxes:
        return ""
    b = boxes[(boxes["image_id"] == image_id) & (boxes["issue"].astype(str) != "") & boxes["read_score"].notna()]
    said = [f"{row.issue.replace('_', ' ')} reads "
            + (f"&ldquo;{html.escape(str(row.read_text))}&rdquo; ({row.read_score:.2f})" if str(row.read_text).strip()
               else "nothing")
            for row in b.sort_values("read_score").head(most).itertuples()]
    if len(b) > most:
        said.append(f"and {len(b) - most} more flagged boxes")
    return "<br>" + "<br>".join(said) if said else ""


def label_issues_html(images: pd.DataFrame, boxes: pd.DataFrame, max_images: int = 60,
                      skipped: Sequence[dict[str, str]] = ()) -> str:
    parts = [_legend()]
    if skipped:
        parts.append(f"<p>{len(skipped)} labelled images not scored:</p><ul>" + "".join(
            f"<li>{html.escape(s.get('name') or s['image_id'][:16])}: {html.escape(s['reason'])}</li>"
            for s in list(skipped)[:50]) + ("<li>...</li>" if len(skipped) > 50 else "") + "</ul>")
    if not len(images):
        parts.append("<p>No human-labelled image with an out-of-sample prediction yet "
                     "(<code>textloop predict --detector ppocr</code> makes one for every image).</p>")
        return _page("textloop curate: label issues", "".join(parts))
    n_issue = int(images["is_label_issue"].sum())
    parts.append(f"<p>{len(images)} labelled images, {n_issue} suspected label issues; worst first.</p><div class='grid'>")
    for r in images.sort_values("label_score").head(max_images).itertuples():
        given, pred, flagged = boxes_of(boxes, r.image_id)
        im = render(r.path, given, pred, flagged, max_side=320)
        name = getattr(r, "name", "") or str(r.image_id)[:16]
        parts.append(f"<div class='card'><img src='{data_uri(im)}'><b>{html.escape(str(name))}</b><br>"
                     f"label score {r.label_score:.3f} (cleanlab {r.label_quality_score:.3f})<br>"
                     f"issues: {html.escape(str(r.issues) or '-')}{_readings(boxes, r.image_id)}<br>"
                     f"model {html.escape(str(r.model_version))}</div>")
    parts.append("</div>")
    return _page("textloop curate: label issues", "".join(parts))


# --- `textloop report` ----------------------------------------------------------------------------

_N_KEYS = ("n_labelled", "labelled", "n_human", "human_images", "n_train_human", "train_images", "n_train")
# What a db model's training stores next to its Metrics (`pipeline.train.db`): the selection at
# the over-redaction budget. Not evaluation metrics, so not fields of `Metrics`.
_BUDGET_KEYS = ("coverage_at_budget", "stock_coverage_at_budget", "over_redaction_budget")


def _number(v: Any) -> float | None:
    """A finite number, else None (JSON null for NaN, missing keys, strings, booleans)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def stored_metrics(met: Any) -> Metrics | None:
    """The `Metrics` a stored metrics dict (a model's or an iteration's row) holds: its top level
    (what training's validation, `train` and `iterate` iterations store), else the `test`
    entry `iterate` adds to a model's row; None when neither has a coverage or F1."""
    for d in (met, met.get("test") if isinstance(met, dict) else None):
        if isinstance(d, dict) and any(_number(d.get(k)) is not None for k in ("text_coverage", "f1")):
            return Metrics.from_dict({k: v if _number(v) is not None else None for k, v in d.items()})
    return None


CURVE_COLUMNS = ["kind", "model_version", "family", "n_labelled", "coverage", "coverage_metric", "text_coverage",
                 "f1", "stock_coverage", "over_redaction_budget", "promoted"]


def learning_curve_table(ws: Any) -> pd.DataFrame:
    """One row per evaluated model (and per iteration that recorded metrics of another model):
    the number of labelled images, and `coverage` = text coverage at the over-redaction budget
    (the README's metric; `text_coverage` at the fixed threshold for models selected without a
    budget, e.g. old Faster R-CNN bundles; `coverage_metric` says which), with stock ppocr's
    coverage on the same validation images as the baseline. The number of labels is read from
    the metrics if recorded there, else counted from the annotations that existed at the time."""
    rows = []
    with ws.catalog() as cat:
        models = cat.models()
        iters = cat.iterations(status="done")
        train_human = {}  # model version -> human-labelled images it was trained on (train iterations)
        for it in iters:
            try:
                met, counts = json.loads(it["metrics"] or "{}"), json.loads(it["counts"] or "{}")
            except ValueError:
                continue
            if it["step"] == "train" and met.get("version") and isinstance(counts.get("human"), int):
                train_human[str(met["version"])] = int(counts["human"])

        def labelled_at(t: float | None) -> int:
            if t is None:
                return 0
            return cat.labelled_count(t)

        def row(kind: str, version: str, family: str, met: dict, n: float | None, t: float | None,
                promoted: bool) -> tuple | None:
            m = stored_metrics(met)
            cov, f1 = (_number(m.text_coverage), _number(m.f1)) if m is not None else (None, None)
            at_budget, stock, budget = (_number(met.get(k)) for k in _BUDGET_KEYS)
            if cov is None and f1 is None and at_budget is None:
                return None
            y = at_budget if at_budget is not None else cov
            metric = "coverage_at_budget" if at_budget is not None else "text_coverage"
            n_lab = int(n) if n is not None else train_human.get(version, labelled_at(t))
            return (kind, version, family, n_lab, y, metric, cov, f1, stock, budget, promoted)

        seen = set()
        for m in models:
            try:
                met = json.loads(m["metrics"] or "{}")
            except ValueError:
                met = {}
            n = next((v for k in _N_KEYS if (v := _number(met.get(k))) is not None), None)
            if n is None and str(m["version"]) not in train_human:
                # registered from elsewhere (`models register`) without a label count: this
                # workspace's count at registration says nothing about what it learnt from
                continue
            r = row("model", str(m["version"]), str(m["kind"] or "model"), met, n, m["created_at"], bool(m["promoted"]))
            if r:
                rows.append(r)
                seen.add(str(m["version"]))
        for it in iters:
            try:
                met, counts = json.loads(it["metrics"] or "{}"), json.loads(it["counts"] or "{}")
            except ValueError:
                continue
            candidate = met.get("candidate") if isinstance(met.get("candidate"), str) else None
            version = str(met.get("model_version") or met.get("version") or candidate or f"iteration {it['id']}")
            if version in seen:  # a train (or iterate) step's metrics are its model's: one point, not two
                continue
            n = next((v for k in _N_KEYS if (v := _number(counts.get(k)) or _number(met.get(k))) is not None), None)
            family = "ppocr" if version.startswith("ppocr") else str(met.get("arch") or met.get("kind") or "model")
            r = row(f"iteration:{it['step']}", version, family, met, n, it["finished_at"], False)
            if r:
                rows.append(r)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _empty_panel(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _pyplot() -> Any:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a file name in a script the plot font lacks (CJK) is drawn as boxes; matplotlib also wrote
    # one UserWarning per glyph, with its source path, on the terminal of `textloop report`
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
    return plt


FAMILY_STYLE = {"db": ("#1f77b4", "o"), "fasterrcnn": ("#d62728", "s"), "ppocr": ("#7f7f7f", "D")}


def learning_curve_figure(curve: pd.DataFrame) -> Any:
    """The learning curve as a matplotlib Figure (not saved): x = labelled images (integer ticks),
    y = text coverage at the over-redaction budget, one line per model family, stock ppocr as
    the dashed baseline, the current (promoted) model starred. Returned so tests read its axes."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.set_title("Learning curve: text coverage vs labelled images")
    c = curve[curve["coverage"].notna()] if len(curve) else curve
    if not len(c):
        _empty_panel(ax, "No evaluated model yet:\ntrain one (`textloop train`); its validation metrics land in the catalog.")
        fig.tight_layout()
        return fig
    c = c.sort_values(["n_labelled", "kind"])
    for family, g in c.groupby("family", sort=True):
        colour, marker = FAMILY_STYLE.get(str(family), ("#2ca02c", "^"))
        note = "" if (g["coverage_metric"] == "coverage_at_budget").all() else " (at threshold 0.3)"
        # several models at one label count: the line goes through their best
        pts = g.groupby("n_labelled")["coverage"].max()
        ax.plot(g["n_labelled"], g["coverage"], linestyle="none", marker=marker, color=colour, alpha=0.55, markersize=6)
        ax.plot(pts.index, pts.values, marker=marker, color=colour, label=f"{family}{note}", markersize=7)
    stock = c.dropna(subset=["stock_coverage"])
    if len(stock):
        b = stock.groupby("n_labelled")["stock_coverage"].mean()
        if len(b) == 1:  # one point: a level line across the plot reads better than a dot
            ax.axhline(float(b.iloc[0]), color=FAMILY_STYLE["ppocr"][0], linestyle="--", linewidth=1.2,
                       label="ppocr stock baseline")
        else:
            ax.plot(b.index, b.values, color=FAMILY_STYLE["ppocr"][0], linestyle="--", marker="D", markersize=4,
                    label="ppocr stock baseline")
    cur = c[c["promoted"]]
    if len(cur):
        ax.plot(cur["n_labelled"], cur["coverage"], linestyle="none", marker="*", markersize=16,
                markerfacecolor="gold", markeredgecolor="black", label="current (promoted)")
    n_max = int(c["n_labelled"].max())
    hi = max(n_max, 4)
    pad = max(0.5, 0.04 * hi)
    ax.set_xlim(-pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("human-labelled images")
    budgets = sorted({round(float(v), 3) for v in c["over_redaction_budget"].dropna()})
    ax.set_ylabel("text coverage (validation)")
    if budgets:
        ax.set_ylabel("text coverage at the\nover-redaction budget (validation)")
        shown = ", ".join(f"{b:.3f}" for b in budgets[:3]) + (" ..." if len(budgets) > 3 else "")
        ax.text(0.01, 0.02, f"over-redaction budget (share of image area): {shown}", transform=ax.transAxes,
                fontsize=8, color="#555")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_learning_curve(curve: pd.DataFrame, path: Path) -> None:
    _save_fig(learning_curve_figure(curve), path)


def ranking_figure(ranking: pd.DataFrame | None) -> Any:
    """One histogram per strategy over the unlabelled pool, each on its own x range (scores of
    different strategies are on different scales: uncertainty sums boxes, random is in [0, 1])."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    cols = [c for c in (ranking.columns if ranking is not None else []) if c.startswith("score_")]
    series = {c[len("score_"):]: pd.to_numeric(ranking[c], errors="coerce").dropna() for c in cols} if cols else {}
    series = {k: v for k, v in series.items() if len(v)}
    title = "Ranking score distribution (unlabelled pool)"
    if ranking is None or not series:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.set_title(title)
        _empty_panel(ax, "No ranking yet: run `textloop rank`.")
        fig.tight_layout()
        return fig
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 3.4 * n), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (ax, (name, v)) in enumerate(zip(axes[0], series.items())):
        ax.hist(v, bins=min(20, max(5, len(v) // 2)), color=colours[k % len(colours)], alpha=0.8)
        ax.set_title(f"{name} ({len(v)} images)", fontsize=10)
        ax.set_xlabel("score (higher = label first)", fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("images")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ranking(ranking: pd.DataFrame | None, path: Path) -> None:
    _save_fig(ranking_figure(ranking), path)


def gallery_figure(items: list[tuple[Any, str]], title: str, empty: str, cols: int = 4) -> Any:
    """A grid of PIL thumbnails with captions (at most two short lines each)."""
    plt = _pyplot()
    if not items:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        _empty_panel(ax, empty)
        ax.set_title(title)
        fig.tight_layout()
        return fig
    cols = max(1, min(cols, len(items)))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (im, cap) in zip(axes.ravel(), items):
        ax.imshow(np.asarray(im))
        ax.set_title(_fit_caption(cap), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _fit_caption(caption: str, width: int = 34, lines: int = 2) -> str:
    """Each line cut to `width` characters, at most `lines` lines: captions never run into
    their neighbours."""
    out = [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in str(caption).splitlines()[:lines]]
    return "\n".join(out)


def plot_gallery(items: list[tuple[Any, str]], path: Path, title: str, empty: str, cols: int = 4) -> None:
    _save_fig(gallery_figure(items, title, empty, cols), path)


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class ReportSummary:
    """What `build_report` wrote; `as_dict()` is the `--json` payload."""

    html: str                  # reports/report.html
    run_copy: str | None       # runs/<iteration>/report: the copy (None before any finished step)
    pngs: dict[str, str]       # figure -> PNG path under reports/
    learning_curve_points: int
    iteration: int | str | None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def shown_pair(group: pd.DataFrame) -> pd.DataFrame:
    """The two members of a duplicate group the report draws: of two splits when it spans
    several (the first two of a group of four were both train members, hiding the test copy
    that makes the group a leak)."""
    first = group.head(1)
    other = group[group["split"] != first["split"].iloc[0]] if len(first) else group.iloc[0:0]
    return pd.concat([first, other.head(1) if len(other) else group.iloc[1:2]])


def build_report(ws: Any, iteration: int | str | None = None, max_items: int = 12) -> ReportSummary:
    """Write `reports/report.html` + PNGs (and a copy under `runs/<iteration>/report/`);
    ValueError for an iteration that is not a simple folder name (`workspace.check_run_name`)."""
    check_run_name(iteration)
    rep_dir = ws.reports_dir
    curve = learning_curve_table(ws)
    ranking = read_table(rep_dir, "ranking")
    clusters = read_table(rep_dir, "duplicate_clusters")
    issues = read_table(rep_dir, "label_issues")
    issue_boxes = read_table(rep_dir, "label_issue_boxes")
    with ws.catalog() as cat:
        known = [str(r["id"]) for r in cat.iterations()]
        last = cat.last_iteration(done=True)   # the step that made the data, not a failed one after it
    if iteration is None:
        iteration = last["id"] if last else None
    elif str(iteration) not in known and not (ws.runs_dir / str(iteration)).is_dir():
        # a typo made a new runs/ folder holding a report of no run
        raise ValueError(f"--iteration {iteration}: no such iteration or runs/ folder "
                         f"(iterations: {', '.join(known[-5:]) or 'none yet'}); leave it out for the last one")
    # no finished step yet: no run to copy it under (it went to runs/0/)
    out_dirs = [rep_dir] + ([ws.run_dir(iteration) / "report"] if iteration is not None else [])
    pngs = {"learning_curve": "learning_curve.png", "ranking": "ranking_scores.png",
            "duplicates": "duplicate_clusters.png", "label_issues": "label_issues.png"}
    tmp = {}
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    first = out_dirs[0]
    plot_learning_curve(curve, first / pngs["learning_curve"])
    plot_ranking(ranking, first / pngs["ranking"])
    dup_items = []
    if clusters is not None and len(clusters):
        order = clusters.groupby("cluster_id")["cross_split"].max().sort_values(ascending=False)
        for cid in list(order.index)[: max(1, max_items // 2)]:
            for r in shown_pair(clusters[clusters["cluster_id"] == cid]).itertuples():
                dup_items.append((render(r.path, max_side=240), f"{cid[:16]} [{r.split}]"))
    plot_gallery(dup_items[:max_items], first / pngs["duplicates"], "Duplicate clusters (pairs side by side)",
                 "No duplicate clusters (or `textloop curate` has not run).")
    lab_items = []
    if issues is not None and len(issues) and issue_boxes is not None:
        for r in issues.sort_values("label_score").head(max_items).itertuples():
            given, pred, flagged = boxes_of(issue_boxes, r.image_id)
            lab_items.append((render(r.path, given, pred, flagged, max_side=320),
                              f"{(getattr(r, 'name', '') or str(r.image_id)[:12])[:28]} score {r.label_score:.2f}\n{r.issues or '-'}"))
    plot_gallery(lab_items, first / pngs["label_issues"], "Label issues (green given, orange predicted, red flagged)",
                 "No label issues to show (no human labels with out-of-sample predictions yet).", cols=3)
    shown = ["model_version", "family", "n_labelled", "coverage", "stock_coverage", "over_redaction_budget",
             "text_coverage", "f1", "promoted", "kind"]
    curve_html = (f"<div class='scroll'>{curve[shown].to_html(index=False, float_format=lambda v: f'{v:.3f}', na_rep='-')}"
                  "</div>" if len(curve) else "<p>no evaluated model yet</p>")
    summary = {}
    summary_path = rep_dir / "curate_summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            summary = {}
    def details(name: str) -> str:
        """A link to curate's page when curate has written it (a link to nothing was a 404)."""
        if (first / name).exists():
            return f"<p>Details: <a href='{name}'>{name}</a></p>"
        return "<p>No details page yet: <code>textloop curate</code> writes it.</p>"

    body = (f"<p>workspace {html.escape(str(ws.root))}, iteration {html.escape(str(iteration))}</p>"
            f"<h2>Learning curve</h2><img src='{pngs['learning_curve']}' alt='learning curve'>{curve_html}"
            f"<h2>Ranking score distribution</h2><img src='{pngs['ranking']}' alt='ranking score distribution'>"
            f"<h2>Duplicate clusters</h2><img src='{pngs['duplicates']}' alt='duplicate clusters'>"
            f"{details('duplicates.html')}"
            f"<h2>Label issues</h2><img src='{pngs['label_issues']}' alt='label issues'>"
            f"{details('label_issues.html')}"
            f"<h2>Last curation</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>")
    atomic_write_text(first / "report.html", _page("textloop report", body))
    for folder in out_dirs[1:]:
        for name in [*pngs.values(), "report.html"]:
            atomic_write_bytes(folder / name, (first / name).read_bytes())
        for name in ("duplicates.html", "label_issues.html"):
            if (first / name).exists():
                atomic_write_bytes(folder / name, (first / name).read_bytes())
    tmp.update({k: str(first / v) for k, v in pngs.items()})
    return ReportSummary(html=str(first / "report.html"), run_copy=str(out_dirs[1]) if len(out_dirs) > 1 else None, pngs=tmp,
                         learning_curve_points=int(len(curve)), iteration=iteration)
