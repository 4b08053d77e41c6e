"""Duplicates, near duplicates, outliers, broken images and duplicate clusters over an image pool.

Two engines, registered by name in `ENGINES`, behind one function, `find_duplicates(images,
cfg)`, both returning the same tidy tables in the cleanvision style (one row per image,
`<issue>_score` in [0, 1] where LOWER means a more severe issue, and `is_<issue>_issue` booleans):

- `permissive` (default, Apache/BSD only): decodes every image once, hashes its pixels
  (exact duplicates: identical decoded pixels, whatever the file format), perceptual hashes
  (`imagehash` phash + dhash) and a small fixed embedding (tiny grey image, colour histogram
  and gradient-orientation histograms; no model, nothing downloaded). Near duplicates need a
  close phash AND a high embedding cosine similarity; outliers are images much farther from
  their k nearest neighbours than those neighbours are from theirs (a simplified local
  outlier factor over the embedding plus pool-standardised colour/texture statistics).
- `fastdup` (CC BY-NC-ND 4.0: non-commercial use only): runs `fastdup_worker.py` with the
  interpreter of its own venv (`TEXTLOOP_FASTDUP_PYTHON`, default `<repo>/.venv-fastdup/bin/python`),
  with telemetry off. Its similarity pairs give near duplicates, its embeddings give the
  outlier score (same robust rule as the permissive engine, so the two are comparable),
  its invalid-instance list gives broken images (its own bottom-percentile outlier flag is
  kept as the `fastdup_outlier` column); exact duplicates are equal file bytes or
  fastdup similarity >= `exact_similarity`.

Results are keyed by `image_id`, never by row position, so an image that fails to load
cannot shift anyone else's result (a known bug of a seed project).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.catalog import HUMAN_LABELLED, ImageStatus

log = logging.getLogger("textloop.curate")

# name -> engine: (images, config, progress) -> what it found; filled by `register_engine` below
ENGINES: dict[str, Callable[..., "_Features"]] = {}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # higher = more held-out


@dataclass(frozen=True)
class ImageRef:
    """One image of the pool: catalog id (or any unique key), file path and split."""

    image_id: str
    path: Path
    split: str = "train"
    name: str = ""     # the user's file name, for messages (the id is a hash)


@dataclass(frozen=True)
class DuplicateConfig:
    """Thresholds of both engines; defaults were checked on generated resized/recompressed copies."""

    engine: str = "permissive"
    near_phash_distance: int = 10        # permissive: max phash Hamming distance (of 64 bits) ...
    near_cosine: float = 0.96            # ... AND min embedding cosine similarity for a near duplicate
    fastdup_near_similarity: float = 0.96  # fastdup: min similarity for a near duplicate (its own cc default)
    exact_similarity: float = 0.9999     # fastdup: similarity that counts as an exact duplicate
    outlier_k: int = 10                  # neighbours used for the outlier score
    outlier_ratio: float = 2.5           # kNN distance / its neighbours' kNN distance above which: outlier
    workers: int = 2
    fastdup_python: str | None = None    # default: $TEXTLOOP_FASTDUP_PYTHON or <repo>/.venv-fastdup/bin/python
    fastdup_threads: int = 2
    fastdup_timeout_s: float = 3600.0
    # a near pair whose pixels, aligned, differ strongly in places (filled-in copies of one form,
    # another name on the same label) is `content_differs`, not a duplicate: --apply labelled one
    # of them and excluded the others, though each has its own text to find
    content_check: bool = True
    content_level: float = 40.0          # grey-level difference (of 255, both blurred) that counts
    content_share: float = 0.0008        # share of the overlap above it that makes the content differ

    def __post_init__(self) -> None:
        from pipeline.config import check_number

        if self.engine not in ENGINES:
            raise ValueError(f"unknown curation engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        check_number("content_level", self.content_level, 1, 255)
        check_number("content_share", self.content_share, 1e-6, 1)


@dataclass
class DuplicateReport:
    """`images`: one row per image; `pairs`: duplicate pairs; `clusters`: one row per member of a group."""

    engine: str
    images: pd.DataFrame
    pairs: pd.DataFrame
    clusters: pd.DataFrame
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        im = self.images
        return {
            "engine": self.engine,
            "images": int(len(im)),
            "broken": int(im["is_broken_issue"].sum()) if len(im) else 0,
            "exact_duplicates": int(im["is_exact_duplicates_issue"].sum()) if len(im) else 0,
            "near_duplicates": int(im["is_near_duplicates_issue"].sum()) if len(im) else 0,
            "outliers": int(im["is_outlier_issue"].sum()) if len(im) else 0,
            "content_differs_pairs": int((self.pairs["kind"] == "content_differs").sum()) if len(self.pairs) else 0,
            "duplicate_groups": int(self.clusters["cluster_id"].nunique()) if len(self.clusters) else 0,
            "cross_split_groups": int(self.clusters.loc[self.clusters["cross_split"], "cluster_id"].nunique())
            if len(self.clusters) else 0,
            "seconds": round(self.seconds, 3),
        }


# --- public entry point ---------------------------------------------------------------------

def find_duplicates(
    images: Sequence[ImageRef],
    cfg: DuplicateConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DuplicateReport:
    """Run the configured engine over `images` and return the tidy tables."""
    cfg = cfg or DuplicateConfig()
    ids = [im.image_id for im in images]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    t0 = time.perf_counter()
    feats = ENGINES[cfg.engine](images, cfg, progress)
    if cfg.content_check:
        feats.pairs = check_content({im.image_id: im.path for im in images}, feats.pairs, cfg)
    report = _assemble(images, feats, cfg)
    report.seconds = time.perf_counter() - t0
    return report


# --- per-engine features ------------------------------------------------------------------------

def register_engine(name: str) -> Callable[[Callable[..., "_Features"]], Callable[..., "_Features"]]:
    """Add an engine to `ENGINES`: a function (images, cfg, progress) -> `_Features`; every
    engine's features go through the same `_assemble`, so the tables mean the same."""
    def add(fn: Callable[..., "_Features"]) -> Callable[..., "_Features"]:
        ENGINES[name] = fn
        return fn
    return add


@dataclass
class _Features:
    """What an engine found, keyed by image id."""

    broken: dict[str, str]                      # image_id -> reason
    exact_key: dict[str, str]                   # image_id -> key; equal keys = exact duplicates
    pairs: list[tuple[str, str, float, str]]    # (a, b, similarity, kind) near/exact pairs
    embed_ids: list[str]                        # rows of `embeddings`
    embeddings: np.ndarray                      # (n, d) L2-normalised
    outlier_space: np.ndarray | None = None     # (n, d') for the outlier score; default: embeddings
    stats: dict[str, Any] = field(default_factory=dict)
    extra_cols: dict[str, dict[str, Any]] = field(default_factory=dict)


def _thumb_features(rgb: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """phash, dhash (as 64-bit ints), the small fixed embedding and global statistics of one image."""
    import imagehash
    from PIL import Image

    im = Image.fromarray(rgb)
    thumb = im.resize((64, 64), Image.Resampling.BOX if min(im.size) >= 64 else Image.Resampling.BILINEAR)
    ph = int(str(imagehash.phash(thumb)), 16)
    dh = int(str(imagehash.dhash(thumb)), 16)
    t = np.asarray(thumb, dtype=np.float32) / 255.0
    gray = t @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    # 1. structure: a 16x16 grey image, zero mean
    g16 = gray.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()
    g16 = g16 - g16.mean()
    # 2. colour: a 4x4x4 joint RGB histogram (sqrt for Hellinger-like comparison)
    q = np.minimum((t * 4).astype(np.int64), 3)
    hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64).astype(np.float32)
    hist = np.sqrt(hist / hist.sum())
    # 3. texture: gradient-orientation histograms over 4x4 cells, 8 bins, magnitude-weighted
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = gray[:, 2:] - gray[:, :-2]
    gy[1:-1, :] = gray[2:, :] - gray[:-2, :]
    mag = np.hypot(gx, gy)
    ang = (np.arctan2(gy, gx) % np.pi) / np.pi * 8
    b = np.minimum(ang.astype(np.int64), 7)
    cell = (np.arange(64) // 16)
    idx = (cell[:, None] * 4 + cell[None, :]) * 8 + b
    hog = np.sqrt(np.bincount(idx.ravel(), weights=mag.ravel(), minlength=128).astype(np.float32))

    def unit(v: np.ndarray) -> np.ndarray:
        n = float(np.linalg.norm(v))
        return v / n if n > 1e-12 else v

    emb = np.concatenate([unit(g16) * np.sqrt(0.4), unit(hist) * np.sqrt(0.3), unit(hog) * np.sqrt(0.3)])
    # global statistics (standardised over the pool later): what makes an image unlike the rest
    mx, mn = t.max(axis=-1), t.min(axis=-1)
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    lap = np.abs(4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:])
    grad = float(mag.mean())
    stats = np.array([*t.mean(axis=(0, 1)), *t.std(axis=(0, 1)), sat.mean(), grad, float(lap.mean()) / (grad + 1e-3),
                      float((gray < 0.15).mean()), float((gray > 0.85).mean())], dtype=np.float32)
    return ph, dh, unit(emb).astype(np.float32), stats


def _load_one(ref: ImageRef) -> tuple[str, str | None, str | None, int, int, np.ndarray | None, np.ndarray | None]:
    """(id, error, pixel_key, phash, dhash, embedding, stats) of one image; never raises."""
    from PIL import ImageOps

    from pipeline.imaging import ImageRejected, open_image, pixel_key, to_uint8_rgb

    try:
        with open_image(ref.path) as im:
            key = pixel_key(im)     # every page and the alpha: what "exact" means
            rgb = to_uint8_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        return ref.image_id, "missing", None, 0, 0, None, None
    except ImageRejected as exc:   # the shared reasons: not_an_image, corrupt, ...
        return ref.image_id, f"{exc.reason}: {exc.detail}"[:200], None, 0, 0, None, None
    except Exception as exc:  # noqa: BLE001 - a bad image in a batch is logged and skipped
        return ref.image_id, f"corrupt: {type(exc).__name__}: {exc}"[:200], None, 0, 0, None, None
    if rgb.ndim != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
        return ref.image_id, "too_small", None, 0, 0, None, None
    ph, dh, emb, stats = _thumb_features(rgb)
    return ref.image_id, None, key, ph, dh, emb, stats


CONTENT_SIDE = 512            # long side the content check compares at
CONTENT_TRIES_PER_IMAGE = 8   # near pairs checked per image before its remaining ones count as differing


def _grey_small(path: Path) -> list[np.ndarray] | None:
    """Upright grey pixels, long side at most CONTENT_SIDE, float32; None if it cannot be read.
    A transparent image gives two: over white and over black (white text on transparent
    pixels shows only over black, so two such images with other text must not look alike)."""
    import cv2

    from pipeline.imaging import has_alpha, load_rgb, open_image

    try:
        with open_image(path) as im:
            backgrounds = (255, 0) if has_alpha(im) else (255,)
        # 16-bit pages scaled as everywhere else
        return [cv2.cvtColor(load_rgb(path, max_side=CONTENT_SIDE, background=bg), cv2.COLOR_RGB2GRAY).astype(np.float32)
                for bg in backgrounds]
    except Exception:  # noqa: BLE001 - unreadable: the engine has reported it already
        return None


def content_differs(a: np.ndarray, b: np.ndarray, level: float = 40.0, share: float = 0.0008) -> bool:
    """Whether two near-duplicate greys differ in places once aligned: True for copies of one
    form with other text in its fields, False for resized, recompressed or slightly cropped
    copies (their differences are small everywhere). Pairs that cannot be aligned are judged
    as they are."""
    import cv2

    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    A = cv2.GaussianBlur(cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA), (0, 0), 1.0)
    B = cv2.GaussianBlur(cv2.resize(b, (w, h), interpolation=cv2.INTER_AREA), (0, 0), 1.0)
    unaligned = float((np.abs(A - B) > level).mean())
    if unaligned < share / 4:   # a resized, recompressed copy: aligned already
        return False
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    for f in (0.25, 0.5):   # coarse to fine, so a few percent of crop or shift is found
        As = cv2.resize(A, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        Bs = cv2.resize(B, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        if min(As.shape) < 8:
            continue
        ws = warp.copy()
        ws[:, 2] *= f
        try:
            _, ws = cv2.findTransformECC(As, Bs, ws, cv2.MOTION_AFFINE, crit, None, 3)
        except cv2.error:   # nothing to align on (two different pages): judged as they are
            return unaligned >= share
        warp = ws.copy()
        warp[:, 2] /= f
    if np.linalg.det(warp[:, :2]) < 1.0:   # compare in the frame where the other is enlarged, not
        warp = cv2.invertAffineTransform(warp)   # shrunk (shrinking text by interpolation aliases it)
        A, B = B, A
    flags = cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(B, warp, (w, h), flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(B, dtype=np.uint8), warp, (w, h), flags=cv2.INTER_NEAREST | flags,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.erode(valid, np.ones((9, 9), np.uint8)) > 0    # not the edge a crop cut off
    if valid.sum() < 0.5 * valid.size:   # aligned onto less than half of it: judged as they are
        return unaligned >= share
    big = (np.abs(A - moved) > level) & valid
    return bool(big.sum() >= share * valid.sum())


def check_content(paths: dict[str, Path], pairs: list[tuple[str, str, float, str]], cfg: DuplicateConfig
                  ) -> list[tuple[str, str, float, str]]:
    """`pairs` with each near pair whose content differs (`content_differs`) marked
    `content_differs`. Most similar first; a pair already joined through confirmed copies is not
    checked again, and an image's pairs beyond CONTENT_TRIES_PER_IMAGE differing ones are taken
    as differing too (a thousand filled-in forms would be half a million checks)."""
    from pipeline.io import LRU

    cache = LRU(256)

    def grey(iid: str) -> list[np.ndarray] | None:
        return cache.get_or(iid, lambda: _grey_small(paths[iid]))

    uf = _UnionFind()
    differing: dict[str, int] = {}
    out: dict[int, tuple[str, str, float, str]] = {}
    order = sorted(range(len(pairs)), key=lambda k: -pairs[k][2])
    for k in order:
        a, b, sim, kind = pairs[k]
        if kind != "near" or (a in uf.parent and b in uf.parent and uf.find(a) == uf.find(b)):
            out[k] = pairs[k]
            if kind != "near":
                uf.union(a, b)
            continue
        if max(differing.get(a, 0), differing.get(b, 0)) >= CONTENT_TRIES_PER_IMAGE:
            verdict: bool | None = True
        else:
            ga, gb = grey(a), grey(b)
            verdict = None if ga is None or gb is None else any(
                content_differs(x, y, cfg.content_level, cfg.content_share) for x, y in zip(ga, gb))
        if verdict:
            differing[a], differing[b] = differing.get(a, 0) + 1, differing.get(b, 0) + 1
            out[k] = (a, b, sim, "content_differs")
        else:
            uf.union(a, b)
            out[k] = pairs[k]
    return [out[k] for k in range(len(pairs))]


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x.astype(np.uint64)
    out = np.zeros(x.shape, dtype=np.uint8)
    for shift in range(0, 64, 8):
        out += np.unpackbits(((x >> np.uint64(shift)) & np.uint64(255)).astype(np.uint8)[..., None], axis=-1).sum(-1).astype(np.uint8)
    return out


@register_engine("permissive")
def _permissive_features(images: Sequence[ImageRef], cfg: DuplicateConfig,
                         progress: Callable[[int, int], None] | None) -> _Features:
    broken: dict[str, str] = {}
    exact: dict[str, str] = {}
    ok_ids: list[str] = []
    ph_list: list[int] = []
    embs: list[np.ndarray] = []
    stats: list[np.ndarray] = []
    total = len(images)
    names = {im.image_id: f"{im.name} ({im.image_id[:12]})" for im in images if im.name}
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        for done, (iid, err, key, ph, _dh, emb, st) in enumerate(pool.map(_load_one, images), 1):
            if err is not None:
                log.warning("%s: skipped (%s)", names.get(iid) or iid, err)
                broken[iid] = err
            else:
                exact[iid] = key or ""
                ok_ids.append(iid)
                ph_list.append(ph)
                embs.append(emb)  # type: ignore[arg-type]
                stats.append(st)  # type: ignore[arg-type]
            if progress:
                progress(done, total)
    E = np.stack(embs) if embs else np.zeros((0, 1), dtype=np.float32)
    ph_arr = np.array(ph_list, dtype=np.uint64)
    pairs: list[tuple[str, str, float, str]] = []
    n = len(ok_ids)
    block = 1024
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = E[s:e] @ E.T
        ham = _popcount(ph_arr[s:e, None] ^ ph_arr[None, :])
        cand = (ham <= cfg.near_phash_distance) & (sims >= cfg.near_cosine)
        ii, jj = np.nonzero(cand)
        for i, j in zip(ii.tolist(), jj.tolist()):
            a = s + i
            if j <= a:
                continue
            ida, idb = ok_ids[a], ok_ids[j]
            kind = "exact" if exact[ida] == exact[idb] else "near"
            pairs.append((ida, idb, float(sims[i, j]), kind))
    # exact duplicates whose features disagree cannot happen (same pixels, same features),
    # but add them defensively so the exact rule never depends on the thresholds
    seen = {(a, b) for a, b, _, _ in pairs}
    by_key: dict[str, list[str]] = {}
    for iid in ok_ids:
        by_key.setdefault(exact[iid], []).append(iid)
    for members in by_key.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = sorted((members[i], members[j]), key=ok_ids.index)
                if (a, b) not in seen:
                    pairs.append((a, b, 1.0, "exact"))
    phash_hex = {iid: f"{h:016x}" for iid, h in zip(ok_ids, ph_list)}
    # outlier space: the embedding plus pool-standardised global statistics
    X = E
    if len(stats) >= 4:
        S = np.stack(stats).astype(np.float64)
        med = np.median(S, axis=0)
        mad = np.median(np.abs(S - med), axis=0) * 1.4826
        Z = np.clip((S - med) / np.maximum(mad, 1e-3 + 0.05 * np.abs(med)), -20, 20) / np.sqrt(S.shape[1])
        X = np.concatenate([E, 1.0 * Z.astype(np.float32)], axis=1)
    return _Features(broken, exact, pairs, ok_ids, E, outlier_space=X, extra_cols={"phash": phash_hex})


# --- fastdup engine (subprocess) ----------------------------------------------------------------

def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def worker_env() -> dict[str, str]:
    """The fastdup worker's environment: ours without PYTHONPATH or user site-packages (its venv's
    own packages only), with telemetry and fastdup's version check off (`config.privacy_env`)."""
    from pipeline.config import privacy_env

    env = {**os.environ, **privacy_env(), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def fastdup_python(explicit: str | None = None) -> Path:
    """The fastdup venv interpreter: explicit, else $TEXTLOOP_FASTDUP_PYTHON, else <repo>/.venv-fastdup/bin/python."""
    value = explicit or os.environ.get("TEXTLOOP_FASTDUP_PYTHON") or str(repo_root() / ".venv-fastdup" / "bin" / "python")
    return Path(value)


class FastdupUnavailable(RuntimeError):
    """The fastdup interpreter is missing or broken (one clear line for the CLI)."""


def _sha256_file(path: Path) -> str | None:
    from pipeline.io import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


@register_engine("fastdup")
def _fastdup_features(images: Sequence[ImageRef], cfg: DuplicateConfig,
                      progress: Callable[[int, int], None] | None = None) -> _Features:
    from pipeline.imaging import file_pixel_key

    py = fastdup_python(cfg.fastdup_python)
    if not py.exists():
        raise FastdupUnavailable(
            f"{py}: fastdup interpreter not found; run `make install-fastdup` or set TEXTLOOP_FASTDUP_PYTHON "
            "(or use --engine permissive)")
    worker = Path(__file__).with_name("fastdup_worker.py")
    by_path: dict[str, str] = {}
    broken: dict[str, str] = {}
    for ref in images:
        p = str(Path(ref.path).resolve())
        if not Path(p).is_file():
            broken[ref.image_id] = "missing"
            continue
        by_path[p] = ref.image_id
    exact: dict[str, str] = {}
    for p, iid in by_path.items():
        exact[iid] = _sha256_file(Path(p)) or iid
    with tempfile.TemporaryDirectory(prefix="textloop-fastdup-") as tmp:
        tmpd = Path(tmp)
        (tmpd / "files.txt").write_text("\n".join(by_path) + "\n", encoding="utf-8")
        env = worker_env()
        cmd = [str(py), str(worker), "--files", str(tmpd / "files.txt"), "--work-dir", str(tmpd / "work"),
               "--out", str(tmpd / "out"), "--threshold", str(min(cfg.fastdup_near_similarity, 0.9)),
               "--cc-threshold", str(cfg.fastdup_near_similarity), "--num-threads", str(cfg.fastdup_threads)]
        if by_path:
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cfg.fastdup_timeout_s,
                                      cwd=tmpd)
            except OSError as exc:
                raise FastdupUnavailable(f"{py}: cannot run the fastdup interpreter ({exc})") from None
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"fastdup worker failed (exit {proc.returncode}): {tail[0][:300]}")
            out = tmpd / "out"
            missing = [n for n in ("files.csv", "similarity.csv", "outliers.csv", "embeddings.npy", "embeddings.csv")
                       if not (out / n).is_file()]
            if missing:   # exit 0 and nothing written: not a Python that runs our fastdup worker
                raise FastdupUnavailable(f"{py}: ran but wrote no fastdup results ({missing[0]} missing): not a Python "
                                         "with fastdup installed (make install-fastdup, or --fastdup-python)")
            files = pd.read_csv(out / "files.csv")
            sim = pd.read_csv(out / "similarity.csv")
            fd_out = pd.read_csv(out / "outliers.csv")
            emb = np.load(out / "embeddings.npy")
            emb_files = pd.read_csv(out / "embeddings.csv")["filename"].astype(str).tolist()
            try:
                worker_stats = json.loads((out / "worker_stats.json").read_text())
            except (OSError, ValueError):
                worker_stats = {}
        else:
            worker_stats = {}
            files = pd.DataFrame(columns=["filename", "is_valid", "error_code"])
            sim = pd.DataFrame(columns=["filename_a", "filename_b", "similarity"])
            fd_out = pd.DataFrame(columns=["filename", "nearest", "similarity"])
            emb, emb_files = np.zeros((0, 1), dtype=np.float32), []

    def to_id(f: str) -> str | None:
        return by_path.get(str(Path(f).resolve())) or by_path.get(f)

    seen_files = set()
    for f, valid, code in zip(files["filename"].astype(str), files["is_valid"], files["error_code"].astype(str)):
        iid = to_id(f)
        if iid is None:
            continue
        seen_files.add(iid)
        if not (valid is True or str(valid).lower() == "true"):
            # fastdup also calls valid GIFs, animated WebPs and 3-pixel-wide strips "corrupt" or
            # "too small": say when Pillow reads the file, so no one deletes a good image
            readable = file_pixel_key(f) is not None
            broken[iid] = (f"fastdup could not read it ({code}; Pillow decodes it): not compared by fastdup"
                           if readable else f"corrupt: {code}")
    for iid in by_path.values():
        if iid not in seen_files and iid not in broken:
            broken[iid] = "skipped by fastdup"
    # embeddings -> kept rows (valid images only), re-normalised
    keep = [(i, to_id(f)) for i, f in enumerate(emb_files)]
    keep = [(i, iid) for i, iid in keep if iid is not None and iid not in broken]
    E = emb[[i for i, _ in keep]].astype(np.float32) if keep else np.zeros((0, 1), dtype=np.float32)
    if len(E):
        E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    embed_ids = [iid for _, iid in keep]
    for iid in by_path.values():  # images fastdup read but gave no vector: treat as broken
        if iid not in broken and iid not in set(embed_ids):
            broken[iid] = "no embedding from fastdup"
    pairs: list[tuple[str, str, float, str]] = []
    seen: set[tuple[str, str]] = set()
    paths = {iid: p for p, iid in by_path.items()}
    keys: dict[str, str | None] = {}

    def pixels(iid: str) -> str | None:
        if iid not in keys:
            keys[iid] = file_pixel_key(paths[iid])
        return keys[iid]

    for fa, fb, s in zip(sim["filename_a"].astype(str), sim["filename_b"].astype(str), sim["similarity"].astype(float)):
        a, b = to_id(fa), to_id(fb)
        if a is None or b is None or a == b or a in broken or b in broken:
            continue
        same_bytes = exact.get(a) == exact.get(b)
        if s < cfg.fastdup_near_similarity and not same_bytes:
            continue
        # fastdup's 1.0 is not "the same pixels" (its embedding drops alpha and later pages):
        # above the exact similarity, the decoded pixels decide
        kind = "exact" if same_bytes or (s >= cfg.exact_similarity and pixels(a) is not None
                                         and pixels(a) == pixels(b)) else "near"
        key = (a, b) if a < b else (b, a)
        if key not in seen:
            seen.add(key)
            pairs.append((key[0], key[1], float(s), kind))
    # byte-identical files always count, whatever fastdup's similarity said
    by_key: dict[str, list[str]] = {}
    for iid, k in exact.items():
        if iid not in broken:
            by_key.setdefault(k, []).append(iid)
    for members in by_key.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                key = tuple(sorted((members[i], members[j])))
                if key not in seen:
                    seen.add(key)  # type: ignore[arg-type]
                    pairs.append((key[0], key[1], 1.0, "exact"))
    # make "exact" symmetric across a group: equal-bytes or >= exact_similarity
    exact_key = {iid: exact[iid] for iid in embed_ids}
    fd_flag = {to_id(f): True for f in fd_out["filename"].astype(str)} if len(fd_out) else {}
    feats = _Features(broken, exact_key, pairs, embed_ids, E,
                      extra_cols={"fastdup_outlier": {k: v for k, v in fd_flag.items() if k}})
    feats.stats = {"fastdup_worker_peak_rss_kb": worker_stats.get("peak_rss_kb")}
    return feats


# --- shared assembly ---------------------------------------------------------------------------

class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def knn_outlier_scores(X: np.ndarray, groups: Sequence[int] | None = None, k: int = 5, ratio_threshold: float = 2.0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean distance to the k nearest neighbours, its ratio to the same quantity of those
    neighbours (a simplified local outlier factor: ~1 inside any cluster, dense or loose), and
    a [0,1] score = exp(-max(ratio - 1, 0) / (ratio_threshold - 1)) (e^-1 at the threshold).

    Members of the same duplicate group (`groups`, one int per row, -1 = none) are not each
    other's neighbours, so a duplicated outlier is still an outlier.
    """
    n = len(X)
    if n < 4:
        return np.zeros(n), np.ones(n), np.ones(n)
    g = np.asarray(groups if groups is not None else [-1] * n)
    k = max(1, min(k, n - 2))
    Xd = X.astype(np.float64)
    sq = (Xd ** 2).sum(axis=1)
    knn = np.zeros(n, dtype=np.float64)
    nbrs = np.zeros((n, k), dtype=np.int64)
    block = 1024
    for s in range(0, n, block):
        e = min(n, s + block)
        d2 = np.maximum(sq[s:e, None] + sq[None, :] - 2.0 * (Xd[s:e] @ Xd.T), 0.0)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf
        same = (g[s:e, None] == g[None, :]) & (g[s:e, None] >= 0)
        d2[same] = np.inf
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(d2, idx, axis=1)
        nbrs[s:e] = idx
        finite = np.isfinite(part)   # a row of only group mates has no neighbour: 0, without numpy's warning
        knn[s:e] = np.where(finite, np.sqrt(np.where(finite, part, 0.0)), 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    ratio = knn / np.maximum(knn[nbrs].mean(axis=1), 1e-9)
    score = np.exp(-np.clip(ratio - 1.0, 0, None) / max(ratio_threshold - 1.0, 1e-6))
    return knn, ratio, score


def _assemble(images: Sequence[ImageRef], f: _Features, cfg: DuplicateConfig) -> DuplicateReport:
    split = {im.image_id: im.split for im in images}
    path = {im.image_id: str(im.path) for im in images}
    order = {im.image_id: i for i, im in enumerate(images)}
    uf = _UnionFind()
    best: dict[str, tuple[float, str]] = {}
    exact_ids: set[str] = set()
    near_ids: set[str] = set()
    for a, b, s, kind in f.pairs:
        if kind == "content_differs":   # reported in the pairs table, not a duplicate
            continue
        uf.union(a, b)
        for x, y in ((a, b), (b, a)):
            if s > best.get(x, (-1.0, ""))[0]:
                best[x] = (s, y)
            (exact_ids if kind == "exact" else near_ids).add(x)
    pairs = pd.DataFrame(
        [(a, b, min(s, 1.0), kind, split[a], split[b], split[a] != split[b]) for a, b, s, kind in f.pairs],
        columns=["image_a", "image_b", "similarity", "kind", "split_a", "split_b", "cross_split"],
    ).astype({"similarity": float, "cross_split": bool})
    pairs = pairs.sort_values(["kind", "similarity"], ascending=[True, False], ignore_index=True)

    root_num: dict[str, int] = {}
    gids = [root_num.setdefault(uf.find(i), len(root_num)) if i in uf.parent else -1 for i in f.embed_ids]
    X = f.outlier_space if f.outlier_space is not None else f.embeddings
    knn_d, z, oscore = knn_outlier_scores(X, gids, cfg.outlier_k, cfg.outlier_ratio)
    out_by_id = {iid: (float(knn_d[i]), float(z[i]), float(oscore[i])) for i, iid in enumerate(f.embed_ids)}

    groups: dict[str, list[str]] = {}
    for iid in list(uf.parent):
        groups.setdefault(uf.find(iid), []).append(iid)
    cluster_rows = []
    cluster_of: dict[str, str] = {}
    for root, members in groups.items():
        members.sort(key=lambda m: order[m])
        cid = f"dup-{members[0][:12]}"
        splits = {split[m] for m in members}
        for m in members:
            cluster_of[m] = cid
            cluster_rows.append((cid, m, split[m], len(members), len(splits) > 1, path[m]))
    clusters = pd.DataFrame(cluster_rows, columns=["cluster_id", "image_id", "split", "cluster_size", "cross_split", "path"])
    clusters = clusters.astype({"cross_split": bool}).sort_values(["cluster_size", "cluster_id"], ascending=[False, True],
                                                                    ignore_index=True)

    cross_clusters = set(clusters.loc[clusters["cross_split"], "cluster_id"]) if len(clusters) else set()
    rows = []
    for im in images:
        iid = im.image_id
        is_broken = iid in f.broken
        s, nn = best.get(iid, (np.nan, None))
        ks, zz, os_ = out_by_id.get(iid, (np.nan, np.nan, np.nan))
        row = {
            "image_id": iid, "path": path[iid], "split": split[iid],
            "is_broken_issue": is_broken, "broken_reason": f.broken.get(iid, ""),
            "broken_score": 0.0 if is_broken else 1.0,
            "is_exact_duplicates_issue": iid in exact_ids,
            "exact_duplicates_score": 0.0 if iid in exact_ids else 1.0,
            "is_near_duplicates_issue": iid in near_ids and iid not in exact_ids,
            "near_duplicates_score": float(np.clip(1.0 - s, 0.0, 1.0)) if nn is not None else 1.0,
            "nearest_duplicate": nn or "",
            "duplicate_similarity": float(min(s, 1.0)) if nn is not None else np.nan,
            "cluster_id": cluster_of.get(iid, ""),
            "cluster_size": int(len(groups[uf.find(iid)])) if iid in cluster_of else 1,
            "cross_split_duplicate": cluster_of.get(iid) in cross_clusters,
            "outlier_score": os_ if not is_broken else np.nan,
            "is_outlier_issue": bool(not is_broken and np.isfinite(zz) and zz > cfg.outlier_ratio),
            "knn_distance": ks, "outlier_ratio": zz,
        }
        for col, values in f.extra_cols.items():
            row[col] = values.get(iid, False if col == "fastdup_outlier" else "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not len(df):
        df = pd.DataFrame(columns=["image_id", "path", "split", "is_broken_issue", "broken_reason", "broken_score",
                                   "is_exact_duplicates_issue", "exact_duplicates_score", "is_near_duplicates_issue",
                                   "near_duplicates_score", "nearest_duplicate", "duplicate_similarity", "cluster_id",
                                   "cluster_size", "cross_split_duplicate", "outlier_score", "is_outlier_issue",
                                   "knn_distance", "outlier_ratio"])
    return DuplicateReport(cfg.engine, df, pairs, clusters,
                           extra={"embeddings": f.embeddings, "embedding_ids": list(f.embed_ids), **f.stats})


# --- catalog glue ------------------------------------------------------------------------------

def workspace_images(ws: Any, statuses: Sequence[str] | None = None) -> list[ImageRef]:
    """Every catalog image (optionally only some statuses) as ImageRefs, in id order."""
    with ws.catalog() as cat:
        rows = cat.images()
    return [image_ref(ws, r) for r in rows if statuses is None or r["status"] in statuses]


def image_ref(ws: Any, row: Mapping[str, Any]) -> ImageRef:
    """A catalog row as an ImageRef, named by its file name (a skipped image was named by its hash)."""
    return ImageRef(row["id"], ws.abspath(row["path"]), row["split"], row["original_name"] or "")


LABELLED_STATES = (*HUMAN_LABELLED, ImageStatus.NEEDS_REVIEW)  # images that carry a human label


def plan_duplicate_actions(report: DuplicateReport, statuses: dict[str, str]) -> pd.DataFrame:
    """What `--apply` does per duplicate group, as a table (also written to the run folder).

    - The group's split becomes the split most of its members are in (ties: the more held-out
      one, test > val > train), so no near duplicate straddles train and val/test.
    - One member is the representative (already labelled first, then pushed, then the earliest
      in the pool); the others that are not labelled yet get status `excluded`, so the group is
      labelled once (push skips `excluded`; training ignores them).
    """
    rows = []
    if not len(report.clusters):
        return pd.DataFrame(columns=["cluster_id", "image_id", "old_split", "new_split", "old_status", "new_status",
                                     "representative"])
    for cid, g in report.clusters.groupby("cluster_id", sort=False):
        counts = g["split"].value_counts()
        top = counts.max()
        target = max((s for s, c in counts.items() if c == top), key=lambda s: SPLIT_ORDER.get(s, 0))
        members = list(g["image_id"])

        def rank(m: str) -> tuple[int, int]:
            st = statuses.get(m, ImageStatus.NEW)
            return (0 if st in LABELLED_STATES else 1 if st == ImageStatus.PUSHED else 2, members.index(m))

        rep = min(members, key=rank)
        for m, sp in zip(g["image_id"], g["split"]):
            st = statuses.get(m, ImageStatus.NEW.value)
            new_status = st
            if m != rep and st not in LABELLED_STATES and st != ImageStatus.EXCLUDED:
                new_status = ImageStatus.EXCLUDED.value
            rows.append((cid, m, sp, target, st, new_status, m == rep))
    return pd.DataFrame(rows, columns=["cluster_id", "image_id", "old_split", "new_split", "old_status", "new_status",
                                       "representative"])


def apply_duplicate_actions(ws: Any, plan: pd.DataFrame) -> dict[str, int]:
    """Apply a plan in one catalog transaction: all of it or nothing."""
    moved = excluded = 0
    with ws.catalog() as cat, cat.transaction():
        for r in plan.itertuples(index=False):
            if r.new_split != r.old_split:
                cat.set_split(r.image_id, r.new_split)
                moved += 1
            if r.new_status != r.old_status:
                cat.set_status(r.image_id, r.new_status)
                excluded += 1
    return {"moved_split": moved, "excluded": excluded}
