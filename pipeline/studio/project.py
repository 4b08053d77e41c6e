"""The Label Studio project of a workspace: label config, idempotent create/update, storage.

The project id is remembered per server URL in `<workspace>/labelstudio/project.json`, so push
and pull find it again; a project deleted on the server is reported, never silently recreated.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from pipeline.io import atomic_write_text
from pipeline.studio.client import Studio, StudioError, check_url, explain
from pipeline.workspace import Workspace

SAMPLING = "Uncertainty sampling"
DEFAULT_CLASSES = ("text",)
_PALETTE = ("#FF3B30", "#007AFF", "#34C759", "#FF9500", "#AF52DE", "#5AC8FA", "#FFCC00", "#FF2D55")


# Used when the package is installed without the repo's labelstudio/ folder.
FALLBACK_CONFIG = """<View>
  <Header value="$file_name" size="4" underline="false"/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <RectangleLabels name="label" toName="image" strokeWidth="2" canRotate="true">
    <Label value="text" background="#FF3B30"/>
  </RectangleLabels>
</View>
"""


def default_config_path() -> Path:
    return Path(__file__).resolve().parents[2] / "labelstudio" / "label_config.xml"


@dataclass(frozen=True)
class LabelConfig:
    """What push/pull need from a label config: tag names and the class list."""

    xml: str
    from_name: str = "label"
    to_name: str = "image"
    data_key: str = "image"
    classes: tuple[str, ...] = DEFAULT_CLASSES

    def label_of(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else self.classes[0]

    def index_of(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise StudioError(f"label {label!r} is not in the label config classes {list(self.classes)}") from None


def parse_label_config(xml: str) -> LabelConfig:
    """Find the RectangleLabels control on an Image; raise StudioError if there is none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise StudioError(f"label config is not valid XML ({exc})") from None
    images = {el.get("name"): el for el in root.iter("Image")}
    for rect in root.iter("RectangleLabels"):
        to = rect.get("toName", "")
        if to in images:
            value = images[to].get("value", "")
            classes = tuple(lab.get("value", "") for lab in rect.iter("Label"))
            if not classes:
                break
            return LabelConfig(xml=xml, from_name=rect.get("name", ""), to_name=to,
                               data_key=value.lstrip("$"), classes=classes)
    raise StudioError("label config has no <RectangleLabels> with <Label>s on an <Image>")


def render_label_config(classes: Sequence[str] | None = None, template: str | Path | None = None) -> LabelConfig:
    """labelstudio/label_config.xml with its <Label> list replaced by `classes` (default: as is)."""
    path = Path(template or default_config_path())
    if template is None and not path.exists():
        xml = FALLBACK_CONFIG
    else:
        try:
            xml = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StudioError(f"{path}: cannot read the label config ({exc.strerror or exc})") from None
    if classes:
        classes = [c.strip() for c in classes if c.strip()]
        if len(set(classes)) != len(classes):
            raise StudioError(f"duplicate class names in {classes}")
        root = ET.fromstring(xml)
        for rect in root.iter("RectangleLabels"):
            for lab in list(rect.iter("Label")):
                rect.remove(lab)
            for i, c in enumerate(classes):
                el = ET.SubElement(rect, "Label", {"value": c, "background": _PALETTE[i % len(_PALETTE)]})
                el.tail = "\n    "
        xml = ET.tostring(root, encoding="unicode")
    return parse_label_config(xml)


def same_xml(a: str, b: str) -> bool:
    """Two label configs that differ only in whitespace, comments or attribute order are the same
    (so `studio init` leaves such a project alone, and brings any other up to the template)."""
    try:
        return ET.canonicalize(a, strip_text=True) == ET.canonicalize(b, strip_text=True)
    except ET.ParseError:
        return False


# --- project state ----------------------------------------------------------------------------

def state_path(ws: Workspace) -> Path:
    return ws.root / "labelstudio" / "project.json"


def _read_state(ws: Workspace) -> dict[str, Any]:
    p = state_path(ws)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StudioError(f"{p}: unreadable project state ({exc}); delete it and run `textloop studio init`") from None


def _write_state(ws: Workspace, url: str, record: dict[str, Any]) -> None:
    data = _read_state(ws)
    data[url] = record
    atomic_write_text(state_path(ws), json.dumps(data, indent=2))


@dataclass(frozen=True)
class ProjectRef:
    id: int
    title: str
    config: LabelConfig
    model_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def served_roots(ws: Workspace, studio: Studio) -> tuple[Path, str]:
    """(the local-files document root as we see it, the same folder as the server sees it)."""
    local = Path(studio.settings.local_files_root or ws.root).resolve()
    server = (studio.settings.server_files_root or str(local)).rstrip("/")
    return local, server


def served_relpath(ws: Workspace, studio: Studio, path: Path) -> str:
    """`path` relative to the document root; StudioError if Label Studio cannot serve it."""
    local, _ = served_roots(ws, studio)
    full = Path(path).resolve()
    try:
        return full.relative_to(local).as_posix()
    except ValueError:
        raise StudioError(f"image path {full} is outside the served root {local} (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); "
                          "Label Studio can only serve files under it") from None


@dataclass(frozen=True)
class ProjectSummary:
    """The project `init_project` created or checked; `as_dict()` is the `--json` payload."""

    project_id: int
    title: str
    created: bool              # False: it existed (and was brought up to date)
    classes: list[str]
    storage_id: int            # the local-files storage serving <workspace>/images
    ml_backend_id: int | None
    url: str
    changed: list[str] = field(default_factory=list)   # settings an existing project was given ([]: up to date)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def init_project(
    ws: Workspace, studio: Studio, classes: Sequence[str] | None = None, title: str | None = None,
    ml_backend: str | None = None, template: str | Path | None = None,
) -> ProjectSummary:
    """Create or update the project (label config, uncertainty sampling, empty annotations allowed),
    connect local-files storage to `<workspace>/images`, optionally register an ML backend.
    Idempotent: running it again changes nothing that is already right; without `classes` the
    project keeps the classes it was given last (a plain `studio init` put the default back)."""
    if ml_backend:   # "notaurl" came back as Label Studio's SSRF refusal ("must not resolve to local ...")
        check_url(ml_backend, "--ml-backend")
    state = _read_state(ws).get(studio.url, {})
    config = render_label_config(classes or state.get("classes") or None, template)
    title = title or studio.settings.project_title
    sdk = studio.sdk
    project = None
    if state.get("project_id"):
        project = _get_project(studio, int(state["project_id"]), missing_ok=True)
    if project is None:
        found = [p for p in studio.call(lambda: list(sdk.projects.list(title=title, page_size=100))) if p.title == title]
        project = found[0] if found else None
    settings = dict(label_config=config.xml, sampling=SAMPLING, enable_empty_annotation=True,
                    show_collab_predictions=True, show_skip_button=True,
                    description="textloop: fix the detector's text boxes; submit empty when there is no text.")
    created = project is None
    changes: dict[str, Any] = {}
    if created:
        project = studio.call(sdk.projects.create, title=title, **settings)
    else:
        existing = parse_label_config(project.label_config) if project.label_config else None
        changes = {k: v for k, v in settings.items() if k != "label_config" and getattr(project, k, None) != v}
        if existing is None or not same_xml(project.label_config, config.xml):
            if existing is not None:
                _check_class_positions(int(project.id), list(existing.classes), list(config.classes))
                _check_classes_in_use(studio, int(project.id), set(existing.classes) - set(config.classes))
            changes["label_config"] = config.xml
        if changes:
            studio.call(sdk.projects.update, id=project.id, **changes)
    pid = int(project.id)
    try:
        storage_id = _ensure_storage(ws, studio, pid)
    except BaseException:
        if created:   # a project this call made and could not connect: not left behind empty
            try:
                sdk.projects.delete(id=pid)
            except Exception:  # noqa: BLE001 - the storage error is the one to report
                pass
        raise
    # the backend this workspace connected, checked on the server: a project made again (or a
    # backend removed in its settings) kept reporting "ML backend 1" that was no longer there
    backend_url = ml_backend or state.get("ml_backend_url")
    if backend_url:
        backend_id: int | None = _ensure_ml_backend(studio, pid, backend_url)
    else:
        ids = {int(b.id) for b in studio.call(lambda: list(sdk.ml.list(project=pid)))} if state.get("ml_backend_id") else set()
        backend_id = state.get("ml_backend_id") if state.get("ml_backend_id") in ids else None
    if backend_id != state.get("ml_backend_id"):
        changes["ml_backend"] = backend_url or None
    title = project.title or title   # the workspace's project keeps its title when TEXTLOOP_LS_PROJECT changes
    record = {"project_id": pid, "title": title, "storage_id": storage_id, "ml_backend_id": backend_id,
              "ml_backend_url": backend_url.rstrip("/") if backend_url else None,
              "classes": list(config.classes), "updated_at": time.time()}
    _write_state(ws, studio.url, record)
    return ProjectSummary(project_id=pid, title=title, created=created, classes=list(config.classes),
                          storage_id=storage_id, ml_backend_id=backend_id, url=f"{studio.url}/projects/{pid}/data",
                          changed=sorted(changes))


def _get_project(studio: Studio, pid: int, missing_ok: bool = False) -> Any:
    from label_studio_sdk.core.api_error import ApiError

    try:
        return studio.sdk.projects.get(id=pid)
    except ApiError as exc:
        if exc.status_code == 404:
            if missing_ok:
                return None
            raise StudioError(f"Label Studio project {pid} no longer exists at {studio.url}; run `textloop studio init`") from None
        raise explain(exc, studio.url) from None
    except Exception as exc:  # noqa: BLE001
        raise explain(exc, studio.url) from None


def _ensure_storage(ws: Workspace, studio: Studio, pid: int) -> int:
    rel = served_relpath(ws, studio, ws.images_dir)
    path = served_roots(ws, studio)[1] + "/" + rel
    existing = studio.call(lambda: list(studio.sdk.import_storage.local.list(project=pid)))
    for s in existing:
        if (s.path or "").rstrip("/") == path:
            return int(s.id)
    try:
        s = studio.sdk.import_storage.local.create(project=pid, path=path, title="textloop workspace images",
                                                   use_blob_urls=False, recursive_scan=True)
    except Exception as exc:  # noqa: BLE001
        from pipeline.studio.client import explain

        err = explain(exc, studio.url)
        raise StudioError(f"cannot connect local-files storage {path}: {err} "
                          "(the server needs LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                          "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = the workspace; see TEXTLOOP_LS_FILES_ROOT)") from None
    return int(s.id)


def _check_class_positions(pid: int, old: list[str], new: list[str]) -> None:
    """Refuse a class list that moves a kept class: labels are stored as class numbers and the
    detector's boxes are class 0, so `--classes logo,text` on a `text,logo` project sent every
    detector box as `logo` and made `pull` renumber the stored labels. New classes go at the end."""
    moved = [c for i, c in enumerate(old) if c in new and new.index(c) != i]
    if moved:
        keep = old + [c for c in new if c not in old]
        raise StudioError(f"project {pid}: --classes would move {', '.join(repr(c) for c in moved)} "
                          f"(classes keep their positions: labels are stored as class numbers, and detector boxes "
                          f"are class 0, {old[0]!r}); add new classes at the end: --classes {','.join(keep)}")


def _check_classes_in_use(studio: Studio, pid: int, removed: set[str]) -> None:
    """Refuse a label config that drops a class boxes in the project still carry: every later
    `pull` stopped at the first such box ("label 'logo' is not in the label config classes")."""
    if not removed:
        return
    from pipeline.studio.pull import export_tasks

    used: dict[str, int] = {}
    for task in export_tasks(studio, pid):
        for ann in task.get("annotations") or []:
            for r in ann.get("result") or []:
                for name in (r.get("value") or {}).get("rectanglelabels") or []:
                    if name in removed:
                        used[name] = used.get(name, 0) + 1
    if used:
        listed = ", ".join(f"{name!r} ({n} box{'es' if n > 1 else ''})" for name, n in sorted(used.items()))
        raise StudioError(f"project {pid}: annotations still use {listed}; keep the class in --classes, "
                          "or relabel those boxes in Label Studio first")


def _ensure_ml_backend(studio: Studio, pid: int, url: str) -> int:
    url = url.rstrip("/")
    for b in studio.call(lambda: list(studio.sdk.ml.list(project=pid))):
        if (b.url or "").rstrip("/") == url:
            return int(b.id)
    b = studio.call(studio.sdk.ml.create, project=pid, url=url, title="textloop", is_interactive=False, timeout=120)
    return int(b.id)


def get_project(ws: Workspace, studio: Studio, expect: LabelConfig | None = None) -> ProjectRef:
    """The workspace's project on this server, checked: exists, and its label config matches."""
    state = _read_state(ws).get(studio.url)
    if not state or not state.get("project_id"):
        raise StudioError(f"no Label Studio project for workspace {ws.root} at {studio.url}; run `textloop studio init`")
    project = _get_project(studio, int(state["project_id"]))
    cfg = parse_label_config(project.label_config or "")
    expect = expect or render_label_config(state.get("classes") or None)
    if (cfg.from_name, cfg.to_name, cfg.data_key) != (expect.from_name, expect.to_name, expect.data_key) \
            or cfg.classes != expect.classes:
        raise StudioError(
            f"label config mismatch in project {project.id}: it has {cfg.from_name}->{cfg.to_name} ${cfg.data_key} "
            f"classes {list(cfg.classes)}, textloop expects {expect.from_name}->{expect.to_name} ${expect.data_key} "
            f"classes {list(expect.classes)}; run `textloop studio init` to update it")
    return ProjectRef(id=int(project.id), title=project.title or "", config=cfg,
                      model_version=project.model_version or "", extra=state)
