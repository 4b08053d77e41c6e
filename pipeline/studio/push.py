"""`textloop push`: create Label Studio tasks with the detector's boxes as pre-annotations.

Idempotent: an image never gets a second task in a project (the catalog `tasks` table, reconciled
with the server first, so a crash between the HTTP call and the catalog write cannot duplicate);
a new model version adds a fresh prediction to existing tasks. The prediction-level `score` is a
confidence (mean box score), so Label Studio's uncertainty sampling serves the least certain first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pipeline.boxes import Detections
from pipeline.catalog import HUMAN_LABELLED, Catalog, ImageStatus
from pipeline.config import check_number, check_split
from pipeline.studio.client import Studio, StudioError
from pipeline.studio.convert import confidence, detections_to_results
from pipeline.studio.launcher import connect_workspace
from pipeline.studio.project import get_project, served_relpath
from pipeline.workspace import Workspace

log = logging.getLogger("textloop.studio.push")

LABELLED_STATUSES = HUMAN_LABELLED
BATCH = 500  # tasks per import request (Label Studio takes up to 250K / 200 MB)


# formats every browser draws as textloop sees them (at 8 bits a channel)
BROWSER_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP"})
VIEW_DIR = "images/view"   # under the storage Label Studio serves (`studio init` connects images/)


def needs_view(ws: Workspace, im: dict[str, Any]) -> bool:
    """Whether a browser would show this stored image other than textloop sees it (the frame of
    its boxes): no browser but Safari draws TIFF (the labeller got a broken image); a 16-bit PNG
    is drawn by its high byte (12-bit microscopy data was a black page); an orientation a browser
    does not read (WebP EXIF, XMP only, a PNG text chunk) left the picture sideways under upright
    boxes, and pull then refused the labeller's work; transparent pixels are drawn over the page,
    where Label Studio's dark theme hid black text. Reads the file's header only when the catalog
    row cannot tell."""
    if str(im["format"]).upper() not in BROWSER_FORMATS or int(im["bit_depth"] or 8) > 8:
        return True
    from pipeline.imaging import ALPHA_MODES, has_alpha, open_image

    if str(im["mode"]) in ALPHA_MODES:
        return True
    orientation = int(im["orientation"] or 1)
    if orientation == 1 and str(im["format"]).upper() not in ("PNG", "GIF", "WEBP"):   # no colour key either
        return False

    with open_image(ws.abspath(im["path"])) as pic:
        return has_alpha(pic) or (orientation != 1 and _browser_orientation(pic) != orientation)


def _browser_orientation(pic: Any) -> int:
    """The EXIF orientation a browser applies: a JPEG's APP1 or a PNG's eXIf block, nothing else."""
    from PIL import Image

    raw = pic.info.get("exif") if str(pic.format).upper() in ("JPEG", "MPO", "PNG") else None
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception:  # noqa: BLE001 - a block Pillow cannot parse: no browser reads it either
        return 1
    return int(exif.get(0x0112, 1) or 1)


def browser_image(ws: Workspace, im: dict[str, Any]) -> str:
    """The workspace path of the picture Label Studio shows for a catalog image: the stored file,
    or (`needs_view`) an 8-bit PNG of what textloop sees, `imaging.load_rgb` (page 0, upright,
    high bit depths stretched by their range, transparency over white: the frame of every box),
    made once under VIEW_DIR. OSError / ImageRejected when the stored copy cannot be read."""
    if not needs_view(ws, im):
        return str(im["path"])
    rel = f"{VIEW_DIR}/{im['id'][:2]}/{im['id']}.png"
    dest = ws.abspath(rel)
    if not dest.is_file():
        import io

        from PIL import Image

        from pipeline.imaging import load_rgb
        from pipeline.io import atomic_write_bytes

        buf = io.BytesIO()
        Image.fromarray(load_rgb(ws.abspath(im["path"]))).save(buf, "PNG", compress_level=3)
        atomic_write_bytes(dest, buf.getvalue())
    return rel


def local_files_url(ws: Workspace, studio: Studio, relpath: str) -> str:
    """`/data/local-files/?d=<path under the served root>`; refuses paths outside it."""
    from urllib.parse import quote

    return "/data/local-files/?d=" + quote(served_relpath(ws, studio, ws.abspath(relpath)), safe="/")


# --- predictions ------------------------------------------------------------------------------

# --- ordering ---------------------------------------------------------------------------------

def read_ranking(ws: Workspace, strategy: str) -> tuple[dict[str, float], dict[str, int], str]:
    """A push priority per image (higher = label first): the batch `textloop rank` picked for this
    strategy, then the rest by score_<strategy>; an integer `cluster` per duplicate group; and
    the strategy (`ranked` = whichever the last `textloop rank` picked its batch by)."""
    from pipeline.rank import RANKING_TABLE, batch_from_ranking, load_ranking

    p = ws.reports_dir / f"{RANKING_TABLE}.parquet"
    df = load_ranking(ws)
    if df is None:
        raise StudioError(f"{p}: no ranking yet; run `textloop rank` first, or push without --strategy")
    if strategy == "ranked":
        picked = df["batch_strategy"].dropna() if "batch_strategy" in df.columns else []
        if not len(picked):
            raise StudioError(f"{p}: the ranking records no batch strategy; name one with --strategy")
        strategy = str(picked.iloc[0])
    col = f"score_{strategy}"
    if col not in df.columns:
        have = sorted(c[6:] for c in df.columns if c.startswith("score_"))
        raise StudioError(f"{p}: no column {col}; strategies in the ranking: {', '.join(have) or 'none'}")
    # rank's own batch first (diverse: no two near-duplicates), then the rest by score
    order = batch_from_ranking(df[df[col].notna()], strategy, len(df))
    scores = {str(i): float(len(order) - k) for k, i in enumerate(order)}
    clusters: dict[str, int] = {}
    col = "cluster" if "cluster" in df.columns else "duplicate_group" if "duplicate_group" in df.columns else None
    if col:  # Label Studio wants an integer cluster: number the groups in a stable order
        groups = sorted({str(c) for c in df[col] if c is not None and c == c and str(c)})
        number = {g: k + 1 for k, g in enumerate(groups)}
        for i, c in zip(df["image_id"], df[col]):
            if c is not None and c == c and str(c) in number:
                clusters[str(i)] = number[str(c)]
    return scores, clusters, strategy


def order_images(image_ids: Sequence[str], preds: dict[str, Detections], ranking: dict[str, float] | None) -> list[str]:
    """By ranking score (desc; unranked last), else by lowest mean confidence first."""
    if ranking is not None:
        return sorted(image_ids, key=lambda i: (i not in ranking, -ranking.get(i, 0.0), i))
    return sorted(image_ids, key=lambda i: (confidence(preds[i]) if i in preds else 1.0, i))


# --- what a task says about its image ----------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON value Label Studio can sort on: numpy scalars unwrapped, NaN/empty -> None."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if value != value else round(value, 4)
    if isinstance(value, str):
        return value or None
    return value


def ranking_facts(ws: Workspace, strategy: str | None = None) -> dict[str, dict[str, Any]]:
    """Per image the ranking facts a lead sorts tasks by in the data manager: the strategy, its
    score, the batch position, the reason it ranks high and the duplicate group. From the last
    `textloop rank` (`strategy` None or 'ranked': the one it picked its batch by); {} without one."""
    from pipeline.rank import load_ranking

    df = load_ranking(ws)
    if df is None or not len(df) or "image_id" not in df.columns:
        return {}
    if not strategy or strategy == "ranked":
        picked = df["batch_strategy"].dropna() if "batch_strategy" in df.columns else []
        strategy = str(picked.iloc[0]) if len(picked) else None
    col = f"score_{strategy}" if strategy else None
    if col not in df.columns:
        col = None
    facts: dict[str, dict[str, Any]] = {}
    for r in df.to_dict("records"):
        facts[str(r["image_id"])] = {
            "rank_strategy": strategy if col else None,
            "rank_score": _plain(r.get(col)) if col else None,
            "rank_batch": _plain(r.get("batch_rank")) if strategy == r.get("batch_strategy") else None,
            "rank_reason": _plain(r.get("reason")),
            "duplicate_group": _plain(r.get("duplicate_group", r.get("cluster"))),
        }
    for f in facts.values():  # tables from before 2026-12-05 hold batch_rank as floats (NaN for the rest)
        if isinstance(f["rank_batch"], float):
            f["rank_batch"] = int(f["rank_batch"])
    return facts


RANK_FIELDS = ("rank_strategy", "rank_score", "rank_batch", "rank_reason", "duplicate_group")


def image_sources(cat: Catalog, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """Every source (absolute path or URL) each image was harvested from, first seen first."""
    return cat.sources_of(image_ids)


def task_data(image_url: str, data_key: str, im: dict[str, Any], sources: Sequence[str],
              facts: dict[str, Any] | None, review_note: str = "") -> dict[str, Any]:
    """The task's `data`: what Label Studio shows and sorts by. A labeller who spots a problem, or
    a lead sorting the data manager, can tell which file a task is (`file_name`, `file_source`,
    every source in `file_sources`), why it was picked (rank fields, None when no ranking exists)
    and, for a label curation sent back, why (`review_note`, shown above the image; "" otherwise)."""
    srcs = list(sources) or [im["source"]]
    data: dict[str, Any] = {
        data_key: image_url, "image_id": im["id"], "file_name": im["original_name"],
        # not `source`: Label Studio's frontend resolves `$source` to the whole serialized task
        "file_source": srcs[0], "file_sources": srcs, "n_sources": len(srcs),
        "split": im["split"], "width": int(im["width"]), "height": int(im["height"]),
        "review_note": review_note,
    }
    data.update({k: (facts or {}).get(k) for k in RANK_FIELDS})
    return data


# --- the push ---------------------------------------------------------------------------------

def reconcile_tasks(studio: Studio, project_id: int, cat: Catalog,
                    data_out: dict[int, dict[str, Any]] | None = None,
                    labelled_out: set[int] | None = None, open_out: set[int] | None = None) -> dict[str, int]:
    """image_id -> task id on the server; catalog rows for tasks that no longer exist are dropped,
    server tasks missing from the catalog (a push killed after an import) are recorded with the
    prediction they were created with (`pushed_with` in their data) and their image marked
    pushed, so the rerun neither adds that prediction again nor leaves the image `new`.
    `data_out` gets each task's data (task id -> data), so push can bring old tasks' fields up to
    date; `labelled_out` the ids of tasks with any annotation (skipped ones too): a reviewer's work;
    `open_out` the ids of tasks Label Studio serves to labellers (not labelled, or reopened)."""
    server: dict[str, int] = {}
    pager = studio.call(lambda: studio.sdk.tasks.list(project=project_id, page_size=1000, fields="task_only",
                                                      include="id,data,total_annotations,cancelled_annotations,is_labeled"))
    data_out = {} if data_out is None else data_out
    labelled_out = set() if labelled_out is None else labelled_out
    for t in studio.call(lambda: list(pager)):
        image_id = (t.data or {}).get("image_id")
        if image_id and image_id not in server:
            server[str(image_id)] = int(t.id)
            data_out[int(t.id)] = dict(t.data or {})
        if (getattr(t, "total_annotations", 0) or 0) + (getattr(t, "cancelled_annotations", 0) or 0) > 0:
            labelled_out.add(int(t.id))
        if open_out is not None and not getattr(t, "is_labeled", False):
            open_out.add(int(t.id))
    known = cat.tasks(project_id)
    recovered = 0
    with cat.transaction():
        for image_id, tid in known.items():
            if server.get(image_id) != tid:
                cat.forget_task(image_id, project_id, tid)
        for image_id, tid in server.items():
            if known.get(image_id) != tid and cat.has_image(image_id):
                cat.record_task(image_id, project_id, tid)
                data = data_out.get(tid, {})
                if data.get("pushed_with"):
                    cat.record_task_prediction(project_id, tid, image_id, str(data["pushed_with"]),
                                               int(data.get("pushed_boxes") or 0))
                cat.set_status(image_id, ImageStatus.PUSHED, only_from=(ImageStatus.NEW,))
                recovered += 1
    if recovered:
        log.info("recorded %d task(s) an interrupted push had created", recovered)
    return server


def resolve_model(ws: Workspace, model_version: str | None, detector: Any, model: str) -> tuple[str, Callable[[], Any]]:
    """(version, lazy detector getter). Loading the detector is skipped when the catalog already
    holds every prediction needed."""
    holder: dict[str, Any] = {"d": detector}

    def get() -> Any:
        if holder["d"] is None:
            from pipeline.bundle import resolve_detector
            from pipeline.detectors import load_detector

            holder["d"] = load_detector(resolve_detector(model, ws))
        return holder["d"]

    if model_version:
        return model_version, get
    if detector is not None:
        return str(detector.version), get
    if model == "current":
        with ws.catalog() as cat:
            cur = cat.current_model()
        if cur is not None:
            return str(cur["version"]), get
    return str(get().version), get


@dataclass(frozen=True)
class PushSummary:
    """What one push did in the project; `as_dict()` is the `--json` payload, and its integers
    are the counts a `push` iteration records."""

    project_id: int
    model_version: str
    tasks_created: int
    predictions_added: int     # this model version's prediction added to existing tasks
    tasks_updated: int         # existing tasks whose data (file name, sources, ranking facts) changed
    already_pushed: int
    failed: int                # images that could not be predicted
    order: str                 # how new tasks were ordered
    url: str
    sent_for_review: int = 0   # new tasks of images curation flagged (label under review pre-drawn, note in meta)
    tasks_withdrawn: int = 0   # unlabelled tasks of images excluded since they were pushed, deleted
    reopened_for_review: int = 0  # labelled tasks of images curation flagged, reopened with the note
    failures: list[str] = field(default_factory=list)   # "name (image id): reason" of each failed image

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def counts(self) -> dict[str, int]:
        """The integers, as the iteration journal stores them."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, int)}


def push_images(
    ws: Workspace,
    image_ids: Sequence[str] | None,
    model_version: str | None = None,
    client: Studio | None = None,
    *,
    detector: Any = None,
    model: str = "current",
    strategy: str | None = None,
    top: int | None = None,
    update_existing: bool = True,
    batch_size: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
    min_score: float | None = None,
    held: bool = False,
    keep_order: bool = False,
) -> PushSummary:
    """Push `image_ids` (None: every image not excluded) as tasks with predictions.

    `top` limits how many *new* tasks are created, in ranking order (`strategy`), in the order of
    `image_ids` (`keep_order`: iterate's batch, in its strategy's priority), or by lowest mean
    confidence. Existing tasks get this model version's prediction if they lack it. Boxes below
    `min_score` (default: `predict`'s threshold, 0.3) are not sent.

    `held`: these are redactions held for review (`redact --review`), whose stored boxes under
    `model_version` are what the redaction used. Label Studio shows a task only the predictions
    of the project's `model_version`, so they go under the project's version (the task's
    `held_by_redact` names theirs), replace what an unlabelled task showed before, and any
    later push of another model shows them together with its own boxes: a reviewer never sees
    fewer boxes than the redaction found, and the other tasks keep theirs."""
    from pipeline.predict import DEFAULT_THRESHOLD

    floor = DEFAULT_THRESHOLD if min_score is None else min_score
    check_number("min_score", floor, 0, 1)
    with ws.lock("push"):   # two pushes at once both created the same tasks (a label then went missing)
        return _push_images(ws, image_ids, model_version, client, detector=detector, model=model, strategy=strategy,
                            top=top, update_existing=update_existing, batch_size=batch_size, progress=progress,
                            floor=floor, held=held, keep_order=keep_order)


def _push_images(ws: Workspace, image_ids: Sequence[str] | None, model_version: str | None, client: Studio | None,
                 *, detector: Any, model: str, strategy: str | None, top: int | None, update_existing: bool,
                 batch_size: int, progress: Callable[[int, int], None] | None, floor: float,
                 held: bool, keep_order: bool = False) -> PushSummary:
    from pipeline.predict import load_predictions, predict_workspace

    studio = client or connect_workspace(ws.root)  # the server `studio up` started
    project = get_project(ws, studio)
    version, get_detector = resolve_model(ws, model_version, detector, model)
    # the version Label Studio files the predictions under (see `held` above)
    ls_version = project.model_version if held and project.model_version else version
    with ws.catalog() as cat:
        if image_ids is None:
            rows = cat.images(include_excluded=False)
        else:
            rows = cat.images_by_ids(image_ids)
            missing = set(image_ids) - {r["id"] for r in rows}
            if missing:
                raise StudioError(f"{len(missing)} image id(s) not in the catalog, e.g. {sorted(missing)[0]}")
        images = {r["id"]: r for r in rows}
        server_data: dict[int, dict[str, Any]] = {}
        labelled_tasks: set[int] = set()
        open_tasks: set[int] = set()
        server_tasks = reconcile_tasks(studio, project.id, cat, server_data, labelled_tasks, open_tasks)
        withdrawn = _withdraw_excluded(studio, cat, project.id, server_tasks, labelled_tasks)
        sources = image_sources(cat, list(images))
        have_version = cat.tasks_with_prediction(project.id, ls_version)

        ranking, clusters, order_note = None, {}, "lowest mean prediction confidence first (no --strategy)"
        if strategy:
            ranking, clusters, strategy = read_ranking(ws, strategy)
            order_note = f"ranking score_{strategy} (highest first)"
        facts = ranking_facts(ws, strategy)
        # Images a human already labelled elsewhere (e.g. `textloop import`) need no task unless
        # asked for by id; existing tasks still get the new model's predictions.
        new_ids = [i for i in images if i not in server_tasks
                   and (image_ids is not None or images[i]["status"] not in LABELLED_STATUSES)]
        # Without a ranking the order needs predictions of all candidates; with one only of the chosen.
        if ranking is not None:
            if top is not None:
                # the first `top` of the ranking (rank's batch first), counting those already in
                # Label Studio: the same push again adds nothing (it sent the next `top` each time)
                wanted = [i for i in images if image_ids is not None or images[i]["status"] not in LABELLED_STATUSES
                          or i in server_tasks]
                chosen = set(order_images(wanted, {}, ranking)[:top])
                new_ids = [i for i in new_ids if i in chosen]
            new_ids = order_images(new_ids, {}, ranking)
        if held:   # an unlabelled task of a held image shows the redaction's boxes, once
            upd_ids = [i for i in images if i in server_tasks and server_tasks[i] not in labelled_tasks
                       and server_data.get(server_tasks[i], {}).get("held_by_redact") != version]
        else:
            upd_ids = [i for i in images if i in server_tasks and server_tasks[i] not in have_version] \
                if update_existing else []
        need = list(dict.fromkeys(new_ids + upd_ids))
        # rank stores boxes down to 0.05 (weak boxes carry its uncertainty); labellers see only
        # boxes a redaction would use, as `predict` and the ML backend do
        preds = {k: d.filter(floor) for k, d in load_predictions(cat, version, need).items()}
        todo = [i for i in need if i not in preds]
        carried = {} if held else _held_boxes(cat, server_data, labelled_tasks,
                                              {i: server_tasks[i] for i in upd_ids}, floor)
    errors: list[tuple[str, str]] = []
    if todo:
        det = get_detector()
        if str(det.version) != version:
            raise StudioError(f"predictions for model {version} are missing for {len(todo)} images and the loaded "
                              f"detector is {det.version}; predict with that model first, or push with --model <detector>")
        preds.update(predict_workspace(ws, det, todo, threshold=floor, errors=errors))
    failed = [i for i in need if i not in preds]
    why = dict(errors)
    failures = [f"{images[i]['original_name'] or images[i]['path']} ({i[:12]}): {why.get(i, 'not predicted')}"
                for i in failed]
    if ranking is None and keep_order and image_ids is not None:
        position = {i: k for k, i in enumerate(image_ids)}
        new_ids = sorted((i for i in new_ids if i in preds), key=position.__getitem__)
        order_note = "in the order given (iterate: rank's batch, by its strategy)"
        if top is not None:
            new_ids = new_ids[:top]
    elif ranking is None:
        new_ids = order_images([i for i in new_ids if i in preds], preds, None)
        if top is not None:
            new_ids = new_ids[:top]
    upd_ids = [i for i in upd_ids if i in preds]
    # what the browser shows (a TIFF or 16-bit image as a PNG of what textloop sees): an image
    # whose picture cannot be made gets no task, named with the reason, as a failed prediction
    from pipeline.imaging import ImageRejected

    shown_at: dict[str, str] = {}
    for i in new_ids:
        try:
            shown_at[i] = browser_image(ws, images[i])
        except (OSError, ImageRejected) as exc:
            failures.append(f"{images[i]['original_name'] or images[i]['path']} ({i[:12]}): no picture for Label "
                            f"Studio could be made ({getattr(exc, 'detail', None) or exc})")
    new_ids = [i for i in new_ids if i in shown_at]

    # An image curation sent back for review that has no task yet (labelled outside Label
    # Studio, e.g. `textloop import`): its task shows the label under review, not the model's boxes.
    from pipeline.redact.review import reviewed_boxes   # the latest human label, as detections (score 1, shapes kept)

    under_review = reviewed_boxes(ws, [i for i in new_ids if images[i]["status"] == ImageStatus.NEEDS_REVIEW.value])

    def shown(image_id: str) -> Detections:
        if image_id in under_review:
            return under_review[image_id]
        if image_id in carried:    # a held redaction's boxes stay in view beside this model's
            return Detections.concat([carried[image_id], preds[image_id]]).nms(0.5)
        return preds[image_id]

    def prediction(image_id: str) -> dict[str, Any]:
        im = images[image_id]
        det = shown(image_id)
        p: dict[str, Any] = {"model_version": ls_version, "score": round(confidence(det), 4),
                             "result": detections_to_results(det, int(im["width"]), int(im["height"]), project.config)}
        if image_id in clusters:
            p["cluster"] = clusters[image_id]
        return p

    from pipeline.studio.review import review_notes   # why a flagged label is back: shown above its image

    notes = review_notes(ws, [i for i in images if images[i]["status"] == ImageStatus.NEEDS_REVIEW.value])
    total = len(new_ids) + len(upd_ids)
    done = created = added = 0
    with ws.catalog() as cat:
        for i in range(0, len(new_ids), batch_size):
            chunk = new_ids[i:i + batch_size]
            payload = []
            for image_id in chunk:
                im = images[image_id]
                payload.append({
                    # `pushed_with`: the prediction the task is created with, which a rerun after a
                    # kill between this import and the catalog write reads back (`reconcile_tasks`)
                    "data": {**task_data(local_files_url(ws, studio, shown_at[image_id]), project.config.data_key, im,
                                         sources.get(image_id, ()), facts.get(image_id), notes.get(image_id, "")),
                             "pushed_with": ls_version, "pushed_boxes": len(shown(image_id)),
                             **({"held_by_redact": version} if held else {})},
                    "predictions": [prediction(image_id)],
                })
            resp = studio.post_json(f"api/projects/{project.id}/import", payload, {"return_task_ids": "true"})
            task_ids = list(resp.get("task_ids") or []) if isinstance(resp, dict) else []
            if len(task_ids) != len(chunk):  # not expected; recover the mapping from the server
                mapping = reconcile_tasks(studio, project.id, cat)
                task_ids = [mapping[c] for c in chunk]
            now = time.time()
            with cat.transaction():  # the batch's tasks, their predictions and statuses together
                for image_id, tid in zip(chunk, task_ids):
                    cat.record_task(image_id, project.id, int(tid), now)
                    cat.record_task_prediction(project.id, int(tid), image_id, ls_version, len(shown(image_id)), now)
                    cat.set_status(image_id, ImageStatus.PUSHED, only_from=(ImageStatus.NEW,))
            created += len(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        for i in range(0, len(upd_ids), batch_size):
            chunk = upd_ids[i:i + batch_size]
            if held:   # the task showed another prediction under this version: the redaction's replaces it
                _drop_predictions(studio, [server_tasks[c] for c in chunk], ls_version)
            payload = [dict(prediction(image_id), task=server_tasks[image_id]) for image_id in chunk]
            studio.post_json(f"api/projects/{project.id}/import/predictions", payload)
            now = time.time()
            with cat.transaction():
                for image_id in chunk:
                    cat.record_task_prediction(project.id, server_tasks[image_id], image_id, ls_version,
                                               len(shown(image_id)), now)
            added += len(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        # Tasks pushed before (by an older textloop, or before the last `rank`) get today's fields:
        # one PATCH per task whose data differ, nothing when all are up to date.
        updated = 0
        for image_id, tid in server_tasks.items():
            if image_id not in images:
                continue
            old = server_data.get(tid, {})
            stored = local_files_url(ws, studio, images[image_id]["path"])
            url = old.get(project.config.data_key) or stored
            if url == stored:   # pushed before browsers got a picture of it, where it needs one
                try:
                    url = local_files_url(ws, studio, browser_image(ws, images[image_id]))
                except (OSError, ImageRejected) as exc:
                    log.warning("%s: no picture for Label Studio could be made (%s)", images[image_id]["path"], exc)
            want = task_data(url, project.config.data_key, images[image_id], sources.get(image_id, ()),
                             facts.get(image_id), notes.get(image_id, ""))
            if want["review_note"] and old.get("review_note"):   # the note review gave it stays
                want["review_note"] = old["review_note"]
            if held and image_id in upd_ids:
                want["held_by_redact"] = version
            if any(old.get(k) != v for k, v in want.items()):
                studio.call(studio.sdk.tasks.update, id=tid, data={**old, **want})
                updated += 1
        if updated:
            log.info("updated the data of %d existing tasks (file name, sources, ranking facts)", updated)
    # Labels curation flagged (`needs_review`): new tasks above carry the label; labelled tasks
    # are reopened with the note. A task already open again is left alone, so pushing twice does
    # not comment twice (curate's message promised push would send them; only iterate did).
    with ws.catalog() as cat:
        flagged = [r["id"] for r in cat.images(status=ImageStatus.NEEDS_REVIEW)]
    closed = labelled_tasks - open_tasks   # labelled and not served again
    reopen = [i for i in flagged if i not in under_review and server_tasks.get(i) in closed]
    from pipeline.studio.review import request_review

    if under_review:   # new tasks, made above with the note in their data: in their meta too
        request_review(ws, list(under_review), notes, client=studio, note_in_data=True)
    # tasks reopened: flagged images outside this push's images had no data written above
    reopened = request_review(ws, reopen, client=studio)["reopened"] if reopen else 0
    if (created or added) and project.model_version != ls_version:
        # Uncertainty sampling only looks at predictions of the project's model_version.
        studio.call(studio.sdk.projects.update, id=project.id, model_version=ls_version)
    return PushSummary(
        project_id=project.id, model_version=ls_version, tasks_created=created, predictions_added=added,
        tasks_updated=updated, already_pushed=len([i for i in images if i in server_tasks]) - len(upd_ids),
        failed=len(failed), order=order_note, url=f"{studio.url}/projects/{project.id}/data",
        sent_for_review=len(under_review), tasks_withdrawn=withdrawn, reopened_for_review=reopened,
        failures=failures)


def _held_boxes(cat: Catalog, server_data: dict[int, dict[str, Any]], labelled_tasks: set[int],
                tasks: dict[str, int], floor: float) -> dict[str, Detections]:
    """image_id -> the boxes a held redaction used, for the unlabelled `tasks` (image_id -> task
    id) whose data say `held_by_redact`: the detector's predictions stored under that version."""
    from pipeline.predict import load_predictions

    by_version: dict[str, list[str]] = {}
    for image_id, tid in tasks.items():
        v = server_data.get(tid, {}).get("held_by_redact")
        if v and tid not in labelled_tasks:
            by_version.setdefault(str(v), []).append(image_id)
    out: dict[str, Detections] = {}
    for v, ids in by_version.items():
        out.update({k: d.filter(floor) for k, d in load_predictions(cat, v, ids).items()})
    return out


def _drop_predictions(studio: Studio, task_ids: Sequence[int], version: str) -> None:
    """Delete the predictions of `version` on these tasks (the one a held redaction replaces)."""
    for tid in task_ids:
        for p in studio.call(lambda: list(studio.sdk.predictions.list(task=tid))):
            if (p.model_version or "") == version:
                studio.call(studio.sdk.predictions.delete, id=int(p.id))


def _withdraw_excluded(studio: Studio, cat: Catalog, project_id: int, server_tasks: dict[str, int],
                       labelled_tasks: set[int]) -> int:
    """Delete the unlabelled tasks of images `curate --apply` (or a person) excluded since they
    were pushed, so labellers stop spending time on them; a task with an annotation stays (the
    reviewer's work; `pull` counts its label as excluded). Returns how many were deleted."""
    excluded = {r["id"] for r in cat.images_by_ids(list(server_tasks)) if r["status"] == ImageStatus.EXCLUDED}
    gone = 0
    for image_id in sorted(excluded):
        tid = server_tasks[image_id]
        if tid in labelled_tasks:
            continue
        studio.call(studio.sdk.tasks.delete, id=str(tid))
        cat.forget_task(image_id, project_id, tid)
        del server_tasks[image_id]
        gone += 1
    if gone:
        log.info("withdrew %d unlabelled task(s) of excluded images", gone)
    return gone


def run_push(ws: Workspace, client: Studio | None = None, *, split: str | None = None, model: str = "current",
             model_version: str | None = None, strategy: str | None = None, top: int | None = None,
             update_existing: bool = True, min_score: float | None = None,
             progress: Callable[[int, int], None] | None = None) -> PushSummary:
    """`textloop push` as one call: `push_images` over the split's images (default every image
    not excluded), recorded as a `push` iteration with its counts, or as failed with the error
    (iterate calls `push_images` inside its own round instead)."""
    check_split(split)
    ids = None
    if split:
        with ws.catalog() as cat:
            ids = [r["id"] for r in cat.images(split=split) if r["status"] != ImageStatus.EXCLUDED]
    with ws.catalog() as journal, journal.iteration("push") as it:   # `failed` (with the error) if it raises
        res = push_images(ws, ids, model_version, client, model=model, strategy=strategy, top=top,
                          update_existing=update_existing, progress=progress, min_score=min_score)
        it.counts = res.counts()
    return res
