"""Model bundles (one self-contained zip per trained model) and the workspace model registry.

A bundle holds everything inference needs and nothing it does not:
  config.json   kind (db | fasterrcnn), format, version, parent, model config (db: the
                thresh/box_thresh/unclip_ratio selected on validation and the stock model's
                sha256; fasterrcnn: architecture, anchors, scales), training facts, selection
  model.onnx    db only: the network for inference (runs through ppocr's pre/post-processing)
  weights.pt    the state_dict (float16 by default: half the size, and the model is rounded to
                exactly these values before its final validation -- and, for db, before the
                ONNX export -- so metrics and predictions of the bundle are the model's); for
                db these are what further fine-tuning starts from
  metrics.json  validation metrics at save time
  labels.json   class index -> name (0-based, what `detect` returns)
  data.json     sha256 of the sorted training data list, and its length
It loads on any machine without the training data (the seed `redactor` rebuilt its dataset
at inference time and could not).

Registry: `register_model` copies a bundle to `<ws>/models/<version>/bundle.zip` and records
it in the catalog `models` table with its parent; `promote` makes exactly one model `current`.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.io import atomic_write_bytes, atomic_write_text, sha256_bytes

BUNDLE_FORMAT = 1
KINDS = ("db", "fasterrcnn")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def data_hash(items: Iterable[str]) -> str:
    """sha256 of the sorted, newline-joined training data list (image ids or paths)."""
    return sha256_bytes("\n".join(sorted(set(items))).encode("utf-8"))


def round_state(state: Mapping[str, Any], dtype: str = "float16") -> dict[str, Any]:
    """A state_dict with floating tensors cast to the bundle dtype (ints untouched)."""
    import torch

    dt = {"float16": torch.float16, "float32": torch.float32}[dtype]

    def cast(v: Any) -> Any:
        if not v.is_floating_point():
            return v.detach()
        if dt == torch.float16 and v.numel() and float(v.detach().abs().max()) > 65504:
            return v.detach().float()  # out of float16 range (PP-OCR has BatchNorm variances of 1e8): keep float32
        return v.detach().to(dt)

    return {k: cast(v).clone() for k, v in state.items()}


def round_model_(model: Any, dtype: str = "float16") -> None:
    """Round a model's floating weights/buffers to what a bundle of `dtype` stores (in place)."""
    import torch

    state = {k: (v.float() if v.is_floating_point() else v) for k, v in round_state(model.state_dict(), dtype).items()}
    with torch.no_grad():
        model.load_state_dict(state)


def make_version(state_bytes: bytes, kind: str = "fasterrcnn") -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{sha256_bytes(state_bytes)[:8]}"


def _kind(config: Any) -> str:
    from pipeline.detectors.dbnet import DBModelConfig

    return "db" if isinstance(config, DBModelConfig) else "fasterrcnn"


def save_bundle(path: str | Path, model: Any, config: Any, metrics: Mapping[str, Any] | None = None,
                train_items: Iterable[str] = (), version: str | None = None, parent: str | None = None,
                dtype: str = "float16", extra: Mapping[str, Any] | None = None, onnx: bytes | None = None) -> str:
    """Write a bundle zip atomically; returns its version. `config` is a FasterRCNNConfig or a
    DBModelConfig (db: `onnx` is the exported network; exported from `model` if not given)."""
    import torch

    from pipeline.evaluate import json_safe

    kind = _kind(config)
    buf = io.BytesIO()
    torch.save(round_state(model.state_dict(), dtype), buf)
    weights = buf.getvalue()
    if kind == "db" and onnx is None:
        from pipeline.detectors.dbnet import export_onnx_bytes

        round_model_(model, dtype)
        onnx = export_onnx_bytes(model, config.input_name)
    version = version or make_version(weights, kind)
    items = list(train_items)
    cfg = {"kind": kind, "format": BUNDLE_FORMAT, "version": version, "parent": parent,
           "created_at": time.time(), "weights_dtype": dtype, "model": config.to_json(), **dict(extra or {})}
    labels = {str(i): name for i, name in enumerate(config.classes)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", json.dumps(json_safe(cfg), indent=2))
        zf.writestr("weights.pt", weights)
        if onnx is not None:
            zf.writestr("model.onnx", onnx)
        zf.writestr("metrics.json", json.dumps(json_safe(dict(metrics or {})), indent=2))
        zf.writestr("labels.json", json.dumps(labels, indent=2))
        zf.writestr("data.json", json.dumps({"sha256": data_hash(items), "n_items": len(set(items))}, indent=2))
    atomic_write_bytes(path, out.getvalue())
    return version


# versions that name something else wherever a model is chosen
RESERVED_VERSIONS = {"ppocr": "the stock PP-OCR detector", "current": "the workspace's promoted model"}
# metrics.json values that are numbers or null (the validation numbers promotion and `redact` read)
NUMERIC_METRICS = ("precision", "recall", "f1", "ap50", "text_coverage", "fully_covered", "over_redaction",
                   "coverage_at_budget", "over_redaction_budget", "stock_coverage_at_budget", "worst_source_delta",
                   "interpolation")


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """config.json, metrics.json, labels.json and data.json of a bundle (no torch needed)."""
    from pipeline.listing import file_problem

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: not a textloop model bundle (a folder; give its bundle.zip)")
    problem = file_problem(path)
    if problem is not None and problem[0] == "not_a_regular_file":   # a FIFO: reading it blocked for ever
        raise ValueError(f"{path}: not a textloop model bundle ({problem[1]})")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = {"config.json", "weights.pt"} - names
            if missing:
                raise ValueError(f"{path}: not a textloop model bundle (missing {', '.join(sorted(missing))})")
            meta = {"config": json.loads(zf.read("config.json"))}
            for key in ("metrics", "labels", "data"):
                meta[key] = json.loads(zf.read(f"{key}.json")) if f"{key}.json" in names else {}
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a textloop model bundle (not a zip file)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt bundle metadata ({exc})") from None
    for key in ("config", "metrics", "labels", "data"):   # data.json [1] was a traceback mid-registration
        if not isinstance(meta[key], dict):
            raise ValueError(f"{path}: corrupt bundle metadata ({key}.json is not an object)")
    kind = meta["config"].get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path}: unsupported model kind {kind!r}")
    if kind == "db" and "model.onnx" not in names:
        raise ValueError(f"{path}: not a textloop model bundle (db bundle without model.onnx)")
    fmt = meta["config"].get("format", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise ValueError(f"{path}: corrupt bundle metadata (format {fmt!r} is not a whole number)")
    if fmt > BUNDLE_FORMAT:
        raise ValueError(f"{path}: bundle format {fmt} is newer than this textloop supports")
    version = meta["config"].get("version")
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version) or ".." in version:
        # the version names the model's folder in a workspace: never a path
        raise ValueError(f"{path}: bad model version {version!r} (letters, digits, '.', '_', '+', '-'; at most 128)")
    if version in RESERVED_VERSIONS:   # `--detector ppocr`, `models promote ppocr` mean stock; `current` the promoted one
        raise ValueError(f"{path}: model version {version!r} is reserved (it names {RESERVED_VERSIONS[version]}); "
                         "give the bundle another version")
    parent = meta["config"].get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ValueError(f"{path}: corrupt bundle metadata (parent {parent!r} is not a model version)")
    if parent == version:
        raise ValueError(f"{path}: a model cannot be its own parent ({version})")
    if not isinstance(meta["config"].get("model"), dict):
        raise ValueError(f"{path}: corrupt bundle metadata (config.json has no model settings)")
    for key in NUMERIC_METRICS:   # "high" was listed, sent to scripts as validation_coverage, compared with stock
        value = meta["metrics"].get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: corrupt bundle metadata (metrics.json {key} is {value!r}, not a number)")
    return meta



def check_bundle(path: str | Path) -> dict[str, Any]:
    """The bundle's meta once its networks have loaded (db: an onnxruntime session of its ONNX,
    and its weights.pt -- what further fine-tuning starts from -- when torch is installed;
    fasterrcnn: its weights into the configured model): what `register_model` checks before a
    model can be recorded, and so promoted. A db bundle with a damaged weights.pt used to
    register, then broke `train --parent` and blocked registering the good copy."""
    path = Path(path)
    meta = read_bundle_meta(path)
    if meta["config"]["kind"] == "db":
        try:
            load_bundle(path, threads=1)
        except ValueError as exc:   # its settings (thresh 5...): the message did not say whose
            raise ValueError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    try:
        import torch  # noqa: F401
    except ImportError:
        return meta   # the weights are checked where they can be used (train extra)
    load_model(path)
    return meta


@contextmanager
def _loading(path: Path) -> Iterator[None]:
    """A bundle whose files do not load is one ValueError naming it: a CRC error, a truncated
    member, onnxruntime's "invalid protobuf", torch's unpickling error..."""
    try:
        yield
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the zip, onnxruntime or torch say
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: the bundle's network does not load ({first[:200]})") from None


def load_model(path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode with float32 weights, its config, meta) from a bundle: a FasterRCNN and
    FasterRCNNConfig, or the trainable DB network and DBModelConfig (to fine-tune further)."""
    import torch

    from pipeline.detectors.fasterrcnn import FasterRCNNConfig, build_model

    path = Path(path)
    meta = read_bundle_meta(path)
    with _loading(path), zipfile.ZipFile(path) as zf:
        state = torch.load(io.BytesIO(zf.read("weights.pt")), map_location="cpu", weights_only=True)
    if meta["config"]["kind"] == "db":
        from pipeline.detectors.dbnet import DBModelConfig, build_net

        cfg: Any = DBModelConfig.from_json(meta["config"]["model"])
        model = build_net()   # the stock network's graph; the bundle's weights go into it
    else:
        cfg = FasterRCNNConfig.from_json(meta["config"]["model"])
        model = build_model(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the bundled config ({str(exc).splitlines()[0]})") from None
    return model.eval(), cfg, meta


WORKSPACE_CHECK = "workspace_check"
BUNDLE_HASH = "bundle_sha256"   # catalog metrics key: the registered file's bytes (a same-version impostor is refused)   # catalog metrics key: the promotion rule's last run on this workspace


def record_workspace_check(ws: Any, version: str, check: Mapping[str, Any]) -> None:
    """Keep the promotion rule's comparison on this workspace's val split with the model's
    catalog record. Why: a bundle's own metrics were measured on the validation split of the
    workspace that trained it; for a model registered from elsewhere those numbers say nothing
    about this workspace's images, yet `models list` and `redact` showed them."""
    with ws.catalog() as cat:
        row = cat.model(version)
        if row is None:
            raise KeyError(f"unknown model version {version!r}")
        metrics = json.loads(row["metrics"] or "{}")
        cat.set_model_metrics(version, {**metrics, WORKSPACE_CHECK: {**dict(check), "checked_at": time.time()}})


def validation_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A registered model's validation numbers as reports show them: this workspace's own
    comparison with stock ppocr when the promotion rule has run here, else the training-time
    numbers stored in the bundle; `validation_source` says which."""
    check = metrics.get(WORKSPACE_CHECK)
    if isinstance(check, Mapping) and isinstance(check.get("candidate"), (int, float)):
        return {"validation_coverage": check["candidate"], "stock_validation_coverage": check.get("stock"),
                "over_redaction_budget": check.get("budget"),
                "validation_source": f"this workspace's val split, {check.get('images', 0)} images",
                "validated_here": True}
    cov = metrics.get("coverage_at_budget", metrics.get("text_coverage"))
    return {"validation_coverage": cov, "stock_validation_coverage": metrics.get("stock_coverage_at_budget"),
            "over_redaction_budget": metrics.get("over_redaction_budget"),
            "validation_source": "validation when trained" if cov is not None else None, "validated_here": False}


def registered_model_info(ws: Any, version: str) -> dict[str, Any] | None:
    """`validation_view` of a registered model's catalog record; None if `version` is not registered."""
    with ws.catalog() as cat:
        row = cat.model(version)
    return validation_view(json.loads(row["metrics"] or "{}")) if row is not None else None


def with_workspace_info(detector: Any, ws: Any) -> Any:
    """`detector` with its `info` (what summaries and sidecars report) updated from its record in
    `ws`'s registry, when it is a registered model there; returned for chaining. Looked up by
    the model's own version: redact's passes add their hash to the detector's."""
    if ws is not None and getattr(detector, "info", None):
        extra = registered_model_info(ws, getattr(detector, "model_version", None) or detector.version)
        if extra is not None:
            detector.info = {**detector.info, **extra}
    return detector


def model_info(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What reports say about a bundle's model: kind, version, validation coverage (at the
    over-redaction budget for db) and stock ppocr's on the same split."""
    m = meta.get("metrics") or {}
    return {"kind": meta["config"].get("kind"), "version": str(meta["config"]["version"]),
            **validation_view(m), "validation_over_redaction": m.get("over_redaction")}


def load_bundle(path: str | Path, **options: Any) -> Any:
    """A ready Detector from a bundle. fasterrcnn options: score_threshold, max_side, tile,
    threads (another is a ValueError); db options: any PPOCRConfig field (threads, scales, max_side, ...;
    `thresh`/`box_thresh`/`unclip_ratio` replace the bundle's selection and change the version),
    an unknown one is a ValueError."""
    path = Path(path)
    meta = read_bundle_meta(path)
    if meta["config"]["kind"] == "db":
        from pipeline.detectors.dbnet import DBDetector, DBModelConfig

        cfg = DBModelConfig.from_json(meta["config"]["model"])
        with _loading(path):
            with zipfile.ZipFile(path) as zf:
                onnx = zf.read("model.onnx")
            return DBDetector(cfg.ppocr_config(**options), version=str(meta["config"]["version"]), model_bytes=onnx,
                              info=model_info(meta), overrides=cfg.overrides(options))
    from pipeline.detectors.fasterrcnn import FasterRCNNDetector

    allowed = {"score_threshold", "max_side", "tile", "threads"}
    unknown = sorted(set(options) - allowed)
    if unknown:   # they were ignored: `-o scales=100` ran as if not given, exit 0
        raise ValueError(f"{path}: a Faster R-CNN model takes no option {', '.join(unknown)} "
                         f"(it takes {', '.join(sorted(allowed))})")
    check_fasterrcnn_options(path, options)
    model, fcfg, meta = load_model(path)
    kw = {k: v for k, v in options.items() if v is not None}
    det = FasterRCNNDetector(model, fcfg, version=str(meta["config"]["version"]), **kw)
    det.info = model_info(meta)
    return det


def check_fasterrcnn_options(path: str | Path, options: dict[str, Any]) -> None:
    """ValueError naming the bundle and option for a value out of range, before any work (as the
    DB detectors' options are): `score_threshold=2` found nothing, `-1` everything, `tile=abc`
    was true, `max_side=-5` failed on every image and `threads=-3` ended in a traceback."""
    from pipeline.config import check_number

    ranges = {"score_threshold": (0.0, 1.0, False), "max_side": (64, 16384, True), "threads": (1, 1024, True)}
    try:
        for name, (lo, hi, integer) in ranges.items():
            if options.get(name) is not None:
                check_number(name, options[name], lo, hi, integer=integer)
        if options.get("tile") is not None and not isinstance(options["tile"], bool):
            raise ValueError(f"tile must be true or false, got {options['tile']!r}")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# --- registry ---------------------------------------------------------------------------------

def register_model(ws: Any, bundle_path: str | Path, parent: str | None = None, promote: bool = False,
                   force: bool = False) -> str:
    """Copy a bundle into `<ws>/models/<version>/` and record it; idempotent for the same bundle.
    `promote`: then make it current under the promotion rule (`promote`; PromotionRefused)."""
    bundle_path = Path(bundle_path)
    meta = check_bundle(bundle_path)
    version = str(meta["config"]["version"])
    if parent is not None and parent == version:
        raise ValueError(f"{bundle_path}: a model cannot be its own parent ({version})")
    given_parent = parent
    parent = parent if parent is not None else meta["config"].get("parent")
    dest = ws.models_dir / version / "bundle.zip"
    rel = dest.relative_to(ws.root).as_posix()
    data = bundle_path.read_bytes()
    digest = sha256_bytes(data)
    with ws.catalog() as cat:
        existing = cat.model(version)
        if existing:
            recorded = json.loads(existing["metrics"] or "{}").get(BUNDLE_HASH)
            if (dest.exists() and dest.read_bytes() != data) or (recorded is not None and recorded != digest):
                # with its file deleted, another bundle of the same version became the current model
                raise ValueError(f"{bundle_path}: model version {version} is already registered from another "
                                 f"bundle file ({dest}); a bundle's version names it once")
            if given_parent is not None and given_parent != existing["parent"]:
                raise ValueError(f"{bundle_path}: model version {version} is registered with parent "
                                 f"{existing['parent'] or 'none'}; its lineage is recorded once")
        if not dest.exists() or dest.read_bytes() != data:
            if bundle_path.resolve() != dest.resolve():
                atomic_write_bytes(dest, data)
        atomic_write_text(dest.parent / "metrics.json", json.dumps(meta["metrics"], indent=2))
        if not existing:
            cat.add_model(version, parent, meta["config"].get("kind", "fasterrcnn"), rel, meta["data"].get("sha256"),
                          {**meta["metrics"], BUNDLE_HASH: digest})
    if promote:   # under the rule, as `promote` below
        from pipeline.train.workspace import promote_checked

        promote_checked(ws, version, force=force)
    return version


def set_current(ws: Any, version: str) -> None:
    """Make `version` the one `current` model (all others demoted) in one transaction, with no
    check: for code that has applied the promotion rule itself (`promote`, `iterate`)."""
    with ws.catalog() as cat:
        cat.promote(version)


def use_stock(ws: Any) -> str | None:
    """Make stock ppocr `current` again (no promoted model); returns the version that was current.
    Stock needs no check: it is what the promotion rule compares with. Without it, a model
    forced into use could only be replaced by forcing another."""
    with ws.catalog() as cat:
        return cat.demote_all()


def promote(ws: Any, version: str, force: bool = False) -> Any:
    """Make `version` current if the promotion rule passes (at least stock ppocr's validation
    coverage at the over-redaction budget; `pipeline.train.promote_checked`), else raise
    PromotionRefused with both numbers; `force` promotes anyway (logged). Returns the check.
    Why here too: the library's `promote` / `register_model(promote=True)` made a model the CLI
    refuses current, and `redact` would then have used it."""
    from pipeline.train.workspace import promote_checked

    return promote_checked(ws, version, force=force)


def list_models(ws: Any) -> list[dict[str, Any]]:
    with ws.catalog() as cat:
        rows = cat.models()
    out = []
    for r in rows:
        path = ws.abspath(r["path"])
        out.append({
            "version": r["version"], "parent": r["parent"], "kind": r["kind"], "path": r["path"],
            "promoted": bool(r["promoted"]), "trained_on": r["trained_on"], "created_at": r["created_at"],
            "metrics": json.loads(r["metrics"] or "{}"), "bytes": path.stat().st_size if path.exists() else None,
        })
        out[-1]["validation"] = validation_view(out[-1]["metrics"])
    return out



def resolve_detector(spec: str, ws: Any = None) -> str:
    """The model registry's half of `load_detector`: a spec with its model name resolved, so the
    detectors get a path and never look at storage. `current` becomes the workspace's promoted
    bundle (stock `ppocr` when none is promoted, or without a workspace); other specs (`ppocr`,
    a bundle.zip path) are returned as they are."""
    if spec != "current":
        return spec
    if ws is not None:
        with ws.catalog() as cat:
            model = cat.current_model()
        if model is not None:
            path = ws.abspath(model["path"])
            if not path.is_file():   # every command said only "model bundle not found"
                raise FileNotFoundError(f"{path}: the current model's bundle ({model['version']}) is missing; "
                                        "`textloop models promote ppocr` makes stock current again")
            return str(path)
    return "ppocr"
