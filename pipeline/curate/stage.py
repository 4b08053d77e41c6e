"""`textloop curate` as a library call: duplicates + label noise -> reports, actions only with apply.

Writes to `<ws>/reports/` (latest, read by the notebook and `textloop report`) and copies to
`<ws>/runs/<iteration>/curate/`:

  duplicates.{parquet,csv}          one row per image (cleanvision-style issue columns)
  duplicate_pairs.{parquet,csv}     exact/near pairs, with `cross_split`
  duplicate_clusters.{parquet,csv}  one row per member of a duplicate group
  label_issues.{parquet,csv}        one row per human-labelled image (label_score, issues)
  label_issue_boxes.{parquet,csv}   one row per given/predicted box (scores, suspected issue)
  duplicates.html, label_issues.html, curate_summary.json
  curate_actions.csv                (with apply) every status/split change with its old value

With `apply`, in one catalog transaction per kind: duplicate groups are moved into one split
and labelled once (other members -> `excluded`), and suspected label issues get status
`needs_review` (action `review`: `push` re-sends them to Label Studio) or `excluded`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from pipeline.catalog import ImageStatus
from pipeline.curate.duplicates import (DuplicateConfig, apply_duplicate_actions, find_duplicates,
                                        plan_duplicate_actions, workspace_images)
from pipeline.curate.label_noise import LabelNoiseConfig, apply_label_actions, find_label_noise
from pipeline.curate.report import duplicates_html, label_issues_html
from pipeline.io import atomic_write_bytes, atomic_write_text, write_table
from pipeline.workspace import check_run_name

log = logging.getLogger("textloop.curate")


def check_model_version(ws: Any, version: str | None) -> None:
    """ValueError naming the known versions when `version` has no stored predictions: every
    labelled image would be skipped and the run would look clean."""
    if version is None:
        return
    with ws.catalog() as cat:   # the versions label noise can compare labels with
        known = cat.prediction_versions()
    if version not in known:
        raise ValueError(f"--model-version {version!r} has no stored predictions; "
                         + (f"known: {', '.join(known)}" if known else
                            "none stored yet (run `textloop predict` or `textloop rank` first)"))


@dataclass(frozen=True)
class CurateSummary:
    """One curation run; `as_dict()` is the `--json` payload (curate_summary.json without the
    last two keys). `duplicates` / `label_noise` are None when that part was skipped."""

    iteration: int | str
    engine: str
    applied: bool
    at: str
    duplicates: dict[str, Any] | None
    label_noise: dict[str, Any] | None
    config: dict[str, Any]
    reports: str                  # <ws>/reports: the latest tables and pages
    run_dir: str                  # runs/<iteration>/curate: this run's copy

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for part in ("duplicates", "label_noise"):
            if d[part] is None:
                del d[part]
        return d


def _named_skips(ws: Any, skipped: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The label-noise skips with each image's original file name (ids alone are opaque)."""
    if not skipped:
        return []
    with ws.catalog() as cat:
        names = cat.image_names()
    return [{"image_id": iid, "name": names.get(iid) or "", "reason": why} for iid, why in skipped]


def run_curate(
    ws: Any,
    dup_cfg: DuplicateConfig | None = None,
    noise_cfg: LabelNoiseConfig | None = None,
    apply: bool = False,
    label_action: str = "review",
    worst: int | None = None,
    iteration: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    duplicates: bool = True,
    label_noise: bool = True,
    phase: Callable[[str], None] | None = None,
) -> CurateSummary:
    """Run curation over the workspace; the summary is also written as curate_summary.json.
    ValueError before any work for a bad label action, iteration name or model version."""
    dup_cfg = dup_cfg or DuplicateConfig()
    noise_cfg = noise_cfg or LabelNoiseConfig()
    if label_action not in ("review", "exclude"):
        raise ValueError(f"unknown label action {label_action!r}: use review or exclude")
    check_run_name(iteration)
    check_model_version(ws, noise_cfg.model_version)
    # logged as its own `curate` row in `iterations` (failed, with the error, if anything raises)
    with ws.catalog() as journal, journal.iteration("curate") as it:
        iteration = it.id if iteration is None else iteration
        run_dir = ws.run_dir(iteration) / "curate"
        if run_dir.is_dir():   # this run's files only (a rerun under the same --iteration replaces them)
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        # written to the run's folder first and copied to reports/ when the run is complete: an
        # interrupted run left reports/ half new, half old, and `report` mixed the two
        folders = [run_dir]
        summary: dict[str, Any] = {"iteration": iteration, "engine": dup_cfg.engine, "applied": apply,
                                   "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        actions: list[pd.DataFrame] = []
        if duplicates:
            if phase:
                phase(f"duplicates ({dup_cfg.engine})")
            refs = workspace_images(ws)
            rep = find_duplicates(refs, dup_cfg, progress=progress)
            with ws.catalog() as cat:
                statuses = {r["id"]: r["status"] for r in cat.images()}
                names = cat.image_names()
            for table in (rep.images, rep.clusters):   # the galleries named images by a hash prefix
                table["original_name"] = [names.get(i, "") for i in table["image_id"]]
                table["status"] = [statuses.get(i, "") for i in table["image_id"]]
            write_table(rep.images, folders, "duplicates")
            write_table(rep.pairs, folders, "duplicate_pairs")
            write_table(rep.clusters, folders, "duplicate_clusters")
            page = duplicates_html(rep.images, rep.clusters, rep.engine)
            for f in folders:
                atomic_write_text(f / "duplicates.html", page)
            summary["duplicates"] = rep.summary()
            plan = plan_duplicate_actions(rep, statuses)
            summary["duplicates"]["planned_split_moves"] = int((plan["old_split"] != plan["new_split"]).sum())
            summary["duplicates"]["planned_exclusions"] = int((plan["old_status"] != plan["new_status"]).sum())
            if apply and len(plan):
                summary["duplicates"]["applied"] = apply_duplicate_actions(ws, plan)
                changed = plan[(plan["old_split"] != plan["new_split"]) | (plan["old_status"] != plan["new_status"])]
                actions.append(changed.assign(kind="duplicate", label_score=float("nan"), issues=""))
        if label_noise:
            # --worst N with exclude ranks the images earlier runs excluded too, so a rerun's
            # N worst are the same N (already excluded) instead of the next N
            rank_excluded = apply and label_action == "exclude" and worst is not None
            if phase:
                phase(f"label noise ({noise_cfg.method})")
            noise = find_label_noise(ws, noise_cfg, progress=progress, include_excluded=rank_excluded)
            shown = noise.without_status(ImageStatus.EXCLUDED.value) if rank_excluded else noise
            write_table(shown.images, folders, "label_issues")
            write_table(shown.boxes, folders, "label_issue_boxes")
            skipped = _named_skips(ws, shown.skipped)
            page = label_issues_html(shown.images, shown.boxes, skipped=skipped)
            for f in folders:
                atomic_write_text(f / "label_issues.html", page)
            summary["label_noise"] = shown.summary()
            summary["label_noise"]["method"] = noise_cfg.method
            summary["label_noise"]["skipped_images"] = skipped
            if apply and len(noise.images):
                changed = apply_label_actions(ws, noise, label_action, worst)
                summary["label_noise"]["applied"] = {"action": label_action, "changed": int(len(changed))}
                if len(changed):
                    actions.append(changed.assign(kind=f"label_{label_action}"))
        if actions:
            table = pd.concat(actions, ignore_index=True)
            with ws.catalog() as cat:   # each change names the image as the user knows it
                names = cat.image_names()
            table.insert(1, "original_name", [names.get(i, "") for i in table["image_id"]])
            for f in folders:
                atomic_write_bytes(f / "curate_actions.csv", table.to_csv(index=False).encode())
        summary["config"] = {"duplicates": asdict(dup_cfg), "label_noise": asdict(noise_cfg)}
        text = json.dumps(summary, indent=2, default=str)
        for f in folders:
            atomic_write_text(f / "curate_summary.json", text)
        for f in sorted(run_dir.iterdir()):   # the complete run becomes the reports' curation
            if f.is_file():
                atomic_write_bytes(ws.reports_dir / f.name, f.read_bytes())
        it.counts = {"images": summary.get("duplicates", {}).get("images", 0),
                     "labelled": summary.get("label_noise", {}).get("labelled_images", 0),
                     "label_issues": summary.get("label_noise", {}).get("label_issues", 0),
                     "duplicate_groups": summary.get("duplicates", {}).get("duplicate_groups", 0)}
        it.metrics = {"engine": dup_cfg.engine, "applied": apply}
    return CurateSummary(iteration=iteration, engine=dup_cfg.engine, applied=apply, at=summary["at"],
                         duplicates=summary.get("duplicates"), label_noise=summary.get("label_noise"),
                         config=summary["config"], reports=str(ws.reports_dir), run_dir=str(run_dir))
