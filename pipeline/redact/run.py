"""Redacting files: planning the input tree, one image end to end, resume, sidecars, manifest.

`Redactor.process(item)` is the unit both engines run (local threads, Ray actors), in three
stages: `prepare` (read the input once, sha256, skip it when its output and sidecar already
match the settings, decode every page upright, build the viewer pictures), `detect` (the one
detector, serialised) and `finish` (cover the grown quads or padded boxes, encode a fresh file
(ICC only), optionally audit it with OCR, then write output and sidecar atomically, output
first, so a sidecar always describes a complete output). `run_local` overlaps the stages across
images. The input is never written to.
"""

from __future__ import annotations

import glob as globmod
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.boxes import Detections, boxes_json, line_bridges, quads_json, area as box_area
from pipeline.config import check_number
from pipeline.detectors.base import detect_visible, parallel_calls
from pipeline.engines import call_threads
from pipeline.io import (LineFormatter, UnwritableError, atomic_open, atomic_write_bytes, atomic_write_text, describe_error,
                         is_atomic_temp, is_bug, sha256_bytes, sha256_file, sha256_json, utf8_text)
from pipeline.imaging import ImageRejected
from pipeline.listing import (MAX_LISTED_IGNORED, Listed, NotRegularFile, OutsideTree, Skipped, file_problem, iter_glob,
                              iter_image_files, open_regular, triage)
from pipeline.redact import codec
from pipeline.redact.core import SHAPES, STYLES, Cover, Pad, apply_redaction, cover_shapes, fill_value

log = logging.getLogger("textloop.redact")

# bump when the same settings would produce different bytes, so older outputs are redone, not
# resumed (2: polygon fill; 3: the detector's large-text pass, which covers words the older
# passes left partly readable: the detector versions stay the models' own names; 4: that pass on
# small images too, and associated alpha / extra TIFF channels looked at)
FORMAT_VERSION = 4
DEFAULT_THRESHOLD = 0.3      # favours recall: ppocr's own candidate floor
DEFAULT_PAD = Pad(px=0.0, frac=0.10)   # the knee of the devset padding sweep (README, bench_redact.py)
# DB detectors in redact (stock ppocr and tuned models alike): a second pass finds small scene
# text (stock icdar2015 0.82 -> 0.89 at 2x, polygon fill; a tuned model's 1x pass left 5 of 1,808
# words legible, 0 with it). At 2.5x rather than 2x (eighteenth session, devset half B): icdar2015
# 0.924 -> 0.934, the one word the 2x pass left legible ("SALE" on a banner) found, the generated
# JPEGs' throughput unchanged (the windows rarely fire there), +30 % detection on real photos.
DEFAULT_PPOCR_SCALES = (1.0, 2.5)
# ... on images of any size (up to the thirty-first session only up to 1600 px: a 9 px "ID 48213"
# on a 3200x2400 micrograph stayed legible, for a viewer who zooms in; the windows bound the cost)
DEFAULT_PPOCR_REFINE = "small"     # ... and only around small-text candidates of the 1x map (README: cost/coverage)
# ... and strips along the image's edges (`PPOCRConfig.edge_strip`, px at the strips' scale,
# `edge_scale` x the first pass's): DB's 1x map is 0 on a label the edge cuts, and a text height
# or so from it. 96 px at 1x: synthetic microscopy overlays left legible 5 -> 2 of 102 (twenty-
# seventh session); 128 px at 2x (64 image px), keeping what lies wholly inside a strip too: 1 of
# 102, and labels at generated images' edges 7 -> 2 of 86 legible, devset unchanged, 1024x768
# JPEGs 0.28-0.33 -> 0.42-0.50 CPU-s (twenty-eighth; README: cost and coverage); following the
# lines a strip's inner side cuts that 1x missed: 0 of 86 (thirtieth).
DEFAULT_EDGE_STRIP = 128
DEFAULT_EDGE_SCALE = 2.0
# ... and a pass over a grey image's coloured strokes as ink (`PPOCRConfig.colour_text`, chroma
# 0-255): a purple "DO NOT COPY" at 30 % over a micrograph stayed legible, as DB sees brightness;
# with it 0 of 102 overlays legible, ink 0.817 -> 0.844 (twenty-ninth session; README)
DEFAULT_COLOUR_TEXT = 16
# ... and a pass over a page's faint marks (`PPOCRConfig.faint_text`: black from this many levels
# off the page): a light-grey footer at 244 on a white page of black text stayed legible (DB sees
# nothing from about 12 levels off), and `--verify` passed it (its OCR runs DB too)
DEFAULT_FAINT_TEXT = 6
# ... and text crossing text kept in pieces (`PPOCRConfig.crossed_text`: the least mean probability
# of a component DB drops for its mostly empty rectangle): a watermark across a sign's line made
# one X-shaped component, and DB dropped both the watermark and the line
DEFAULT_CROSSED_TEXT = 0.5
DEFAULT_REVIEW_BAND = (0.3, 0.4)   # holds 26 % of devset images with ppocr (0.3-0.6 would hold 58 %)
# --verify covers what the OCR audit still reads, then reads again, this many times (the demo's
# immunohistochemistry sample: the detector covered half of a faint date stamp, OCR read "8:51"
# in the rest; one round covers it, a second catches what the first uncovered line hid)
DEFAULT_VERIFY_ROUNDS = 2
MAX_VERIFY_ROUNDS = 5
# ... but never a line box larger than this share of the page: OCR "reads" 4-5 letters in a whole
# receipt (sroie: a 846x1461 box read as "MEHFE" at 0.5+), and covering that doubled the set's
# over-redaction; such a reading stays reported (and fails --strict) for a person to judge
MAX_AUDIT_COVER_SHARE = 0.10
# Without --verify the audit still reads (and covers) the outputs of images too noisy for the
# detector's small-text search (`ppocr.NOISY_TEXTURE`): white 7-12 px labels on electron-micrograph
# grain stayed legible after the default passes (2 of 37 in bench_redact's large set, DB's map 0
# on them at every scale) and the audit covers them (0 of 37); on no devset or throughput image
# does it fire (thirty-second session). Raised when which images it picks changes.
AUDIT_NOISY_REVISION = 1


@dataclass(frozen=True)
class RedactConfig:
    """Everything that decides the output bytes (hashed into the sidecar), plus run behaviour."""

    threshold: float = DEFAULT_THRESHOLD
    pad: Pad = DEFAULT_PAD
    style: str = "fill"
    shape: str = "polygon"       # polygon: DB's quads grown along their own axes; box: enclosing boxes
    color: tuple[int, int, int] = (0, 0, 0)
    jpeg_quality: int = 95
    max_pixels: int = codec.DEFAULT_MAX_PIXELS
    # run behaviour (not part of the settings hash)
    review: bool = False
    review_band: tuple[float, float] = DEFAULT_REVIEW_BAND
    verify: bool = False
    verify_rounds: int = DEFAULT_VERIFY_ROUNDS   # with verify: rounds of covering what OCR still reads
    audit_noisy: bool = True     # without verify: audit the images too noisy for the small-text search
    strict: bool = False
    dry_run: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        """The library checks what the CLI checks: `RedactConfig(threshold=5)` kept no box and
        reported every image redacted, with every word still on it."""
        check_number("threshold", self.threshold, 0, 1)
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if not isinstance(self.pad, Pad):   # a Pad checks its own range
            raise ValueError(f"pad must be a Pad (Pad.parse('2px+10%')), got {self.pad!r}")
        if len(self.color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.color):
            raise ValueError(f"color must be three integers 0-255, got {self.color}")
        check_number("jpeg_quality", self.jpeg_quality, 1, 100, integer=True)
        check_number("max_pixels", self.max_pixels, 1, 1 << 40, integer=True)
        lo, hi = self.review_band
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"review_band needs 0 <= lo < hi <= 1, got {self.review_band}")
        if not 0 <= self.verify_rounds <= MAX_VERIFY_ROUNDS:
            raise ValueError(f"--verify-rounds must be 0-{MAX_VERIFY_ROUNDS}, got {self.verify_rounds}")

    @property
    def detection_floor(self) -> float:
        """Boxes kept from the detector: down to the review band's bottom when reviewing."""
        return min(self.threshold, self.review_band[0]) if self.review else self.threshold

    def settings(self, detector_version: str) -> dict[str, Any]:
        settings = {
            "format_version": FORMAT_VERSION, "detector": detector_version, "threshold": self.threshold,
            "pad": str(self.pad), "style": self.style, "shape": self.shape, "color": list(self.color), "jpeg_quality": self.jpeg_quality,
        }
        # a noisy image's output depends on it (what the audit covered): in the hash, so outputs
        # made without it are redone; off, the settings (and the hash) are what they always were
        return {**settings, "audit_noisy": AUDIT_NOISY_REVISION} if self.audit_noisy else settings

    def settings_hash(self, detector_version: str) -> str:
        return sha256_json(self.settings(detector_version))[:16]


@dataclass(frozen=True)
class Item:
    """One input file and where its output and sidecar go."""

    src: str
    rel: str          # posix path relative to the input root (mirrored under the output)
    out: str
    sidecar: str
    root: str = ""    # the input tree's real path ("" for a single file): what `src` must lie in when read

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def output_rel(self) -> str:
        """The output's path relative to OUTPUT (`sub/x.tif`), or its name for a single file."""
        out = Path(self.out).as_posix()
        return self.rel if out == self.rel or out.endswith("/" + self.rel) else Path(self.out).name


@dataclass
class Result:
    rel: str
    src: str
    out: str
    status: str                 # redacted | skipped | held | dry_run | failed | waiting_review
    reason: str = ""
    detail: str = ""
    n_boxes: int = 0
    pages: int = 0
    input_sha256: str = ""
    output_sha256: str = ""
    seconds: float = 0.0
    boxes: list[list[list[float]]] = field(default_factory=list)   # per page (unpadded detections)
    scores: list[list[float]] = field(default_factory=list)
    remaining: int = 0          # --verify: legible strings the OCR audit still read in the output
    legible: list[str] = field(default_factory=list)   # --verify: those strings
    audit_covered: int = 0      # --verify: strings the audit read and redact then covered
    audited: bool = False       # the audit read the output (--verify, or an image too noisy for the detector)
    noisy: bool = False         # too noisy for the detector's small-text search (`noisy`): audited by default

    def to_row(self) -> dict[str, Any]:
        """The manifest's row (names that are not UTF-8 shown as `\\xff`: the table must be text)."""
        return {"input": utf8_text(self.rel), "output": utf8_text(self.out) if self.status in ("redacted", "skipped") else "",
                "status": self.status, "reason": self.reason, "detail": utf8_text(self.detail), "boxes": self.n_boxes,
                "pages": self.pages, "input_sha256": self.input_sha256, "output_sha256": self.output_sha256,
                "remaining_text": self.remaining, "legible_text": " | ".join(self.legible),
                "audit_covered": self.audit_covered, "audited": self.audited, "seconds": round(self.seconds, 4)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- planning ------------------------------------------------------------------------------

def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def default_audit_dir(output: Path, single_file: bool) -> Path:
    """Beside the output, so the output tree holds only the redacted images."""
    if single_file:
        return output.parent / f"{output.stem}.audit"
    return output.parent / f"{output.name}.audit"


@dataclass
class Plan:
    """What `plan_input` found: the items to redact, the audit folder, files left out because
    their extension is not an image one (names, for the summary), and entries the listing rule
    skipped (`pipeline.listing`: FIFOs, links out of the tree, dangling links), as failed results."""

    items: list[Item]
    audit: Path
    ignored: list[str]
    problems: list[Result]
    single: bool = False      # INPUT was one file (OUTPUT is that file, or a folder to put it in)


def plan(input_spec: str, output: Path, audit_dir: Path | None = None,
         archive: Path | None = None) -> tuple[list[Item], Path, list[str]]:
    """Items to process for INPUT (file, folder tree, or glob) -> OUTPUT; also the audit dir and
    files ignored because their extension is not an image one. Skipped entries are left out
    (`plan_input` reports them)."""
    p = plan_input(input_spec, output, audit_dir, archive)
    return p.items, p.audit, p.ignored


def sidecar_path(audit: Path, rel: str) -> str:
    """AUDIT/sidecars/<rel>.json; a name too long for the `.json` is cut short with a hash."""
    from pipeline.io import fitted_name

    r = Path(rel)
    return str(audit / "sidecars" / r.parent / fitted_name(r.name, ".json"))


def _problem(path: Path, rel: str, output: Path, reason: str, detail: str) -> Result:
    return Result(rel, str(path), str(output / rel), "failed", reason, detail)


def check_archive(archive: Path, root: Path, output: Path, audit: Path, single: bool) -> None:
    """ValueError for an --archive folder that overlaps the output or audit folder (originals
    moved there replaced the redacted outputs of the same names: a leak the run called a
    success) or lies in the input folder (its images were skipped as the archive's own, and
    originals moved into them); a single file's own folder is refused too."""
    a = archive.resolve()
    for d, what in ((output.resolve(), "output"), (audit.resolve(), "audit")):
        if a == d or a.is_relative_to(d) or d.is_relative_to(a):
            raise ValueError(f"--archive {archive}: overlaps the {what} folder {d}; originals moved there would "
                             f"sit among (or over) the redacted outputs: give a folder outside both")
    r = root.resolve()
    if a == r or (not single and a.is_relative_to(r)):
        raise ValueError(f"--archive {archive}: inside the input folder {r}; give a folder outside it")


def plan_input(input_spec: str, output: str | Path, audit_dir: Path | None = None,
               archive: Path | None = None) -> Plan:
    """Plan a run. A single file must be a regular file (ValueError otherwise: a FIFO would
    block the read forever); a folder is listed by the shared rule of `pipeline.listing`
    (symlinks followed inside the tree only); glob matches get the same checks. A single
    file goes into OUTPUT when OUTPUT is a folder or is written with a trailing slash
    (`clean/`: a str, since Path drops the slash)."""
    folder_named = str(output).endswith(("/", os.sep))
    output = Path(output)
    src = Path(input_spec)
    ignored: list[str] = []
    problems: list[Result] = []
    if not src.is_dir() and os.path.lexists(src):  # one file (even if its name has glob characters)
        problem = file_problem(src)
        if problem is not None:
            raise ValueError(f"{src}: {problem[0]}: {problem[1]}")
        into_dir = output.is_dir() or folder_named
        out = output / src.name if into_dir else output
        if out.resolve() == src.resolve():
            raise ValueError(f"{out}: output would overwrite the input")
        from pipeline.io import not_replaceable

        why_not = not_replaceable(out)   # a device or a link: `redact a.png /dev/null` replaced /dev/null
        if why_not:
            raise ValueError(f"{out}: {why_not}")
        have, want = codec.EXTENSIONS.get(src.suffix.lower()), codec.EXTENSIONS.get(out.suffix.lower())
        if have and want and have != want:  # PNG bytes in a .jpg: viewers and upload checks trip on it
            raise ValueError(f"{out}: outputs keep the input's format ({have}); name it "
                             f"{out.with_suffix(src.suffix).name}")
        audit = audit_dir or default_audit_dir(output, not into_dir)
        if archive is not None:
            check_archive(Path(archive), src.parent, out if not into_dir else output, audit, single=True)
        item = Item(str(src), src.name, str(out), sidecar_path(audit, src.name))
        return Plan([item], audit, ignored, problems, single=True)
    if src.is_dir():
        root = src
    elif _is_glob(input_spec):
        parts = Path(input_spec).parts
        prefix = []
        for part in parts:
            if _is_glob(part):
                break
            prefix.append(part)
        root = Path(*prefix) if prefix else Path(".")
    else:
        raise FileNotFoundError(f"{input_spec}: no such file or folder")
    root_r = root.resolve()
    if output.resolve() == root_r:
        raise ValueError(f"{output}: output folder is the input folder (the input is never modified)")
    audit = audit_dir or default_audit_dir(output, False)
    if archive is not None:
        check_archive(Path(archive), root, output, audit, single=False)
    skip_dirs = [output.resolve(), audit.resolve(), *([Path(archive).resolve()] if archive is not None else [])]
    for d, what in zip(skip_dirs, ("output", "audit", "archive")):
        if root_r.is_relative_to(d):   # the whole input would be skipped as our own folder
            raise ValueError(f"{root}: the input is inside the {what} folder {d}; give an {what} folder outside it")
    found = triage(_walk(root, skip_dirs) if src.is_dir() else _glob_entries(input_spec, root, skip_dirs))
    problems += [_problem(e.path, e.rel, output, e.reason, e.detail) for e in found.problems]
    real_root = os.path.realpath(root)
    items = [Item(str(e.path), e.rel, str(output / e.rel), sidecar_path(audit, e.rel), real_root) for e in found.images]
    items, clashes = _sidecar_clashes(items, output)
    return Plan(items, audit, [str(p) for p in found.ignored], problems + clashes)


RENAME_KEY = "rename.key"   # in the audit folder: the key `renamed` names outputs with


def renamed(planned: Plan, output: Path, create: bool = True) -> Plan:
    """`planned` with each output named by a keyed hash of its input path (HMAC-SHA256, 20 hex
    digits, the input's extension), flat in OUTPUT: file and folder names are often the very
    sample ID or patient name the fill removes from the pixels. The key (AUDIT/`RENAME_KEY`,
    made on the first run, owner-only) keeps names stable, so reruns resume and skip what is
    done, and unlinkable to the inputs without the audit folder, whose manifest maps them back.
    `create=False` (a dry run writes nothing): without a key yet, a throwaway one. ValueError when
    a single file's output was given as a file name (it is then not renamed), the audit folder
    lies in the output folder (the key would be shared with the outputs), or the key is damaged."""
    import hmac

    from pipeline.io import secret_key

    if planned.single and planned.items and Path(planned.items[0].out) == output:
        raise ValueError(f"{output}: --rename names the output itself; give a folder (e.g. {output.parent / 'out'}/)")
    folder = Path(planned.items[0].out).parent if planned.single and planned.items else output
    if planned.audit.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"--audit {planned.audit}: inside the output folder {folder}; with --rename its key and "
                         "manifest map the names back, so they must not travel with the outputs: give a folder outside it")
    key = secret_key(planned.audit / RENAME_KEY, create=create)
    if key is None:
        import secrets

        key = secrets.token_bytes(32)

    def name(rel: str) -> str:
        digest = hmac.new(key, rel.encode("utf-8", "surrogateescape"), "sha256").hexdigest()[:20]
        return digest + Path(rel).suffix

    items = [replace(it, out=str(folder / name(it.rel))) for it in planned.items]
    if len({it.out for it in items}) != len(items):   # 80 bits: never, but a clash would overwrite an output
        raise ValueError(f"{planned.audit / RENAME_KEY}: two inputs got the same name; move the key away and rerun")
    return replace(planned, items=items)


def _sidecar_clashes(items: list[Item], output: Path) -> tuple[list[Item], list[Result]]:
    """Items whose sidecar (`a.png.json`) is the folder of other items' sidecars (a folder
    `a.png.json/` beside `a.png`) fail up front: the redacted output was written and then the
    sidecar could not be, on every rerun."""
    folders = {str(Path(it.sidecar).parent) for it in items}
    folders |= {str(p) for f in list(folders) for p in Path(f).parents}
    keep = [it for it in items if it.sidecar not in folders]
    return keep, [_problem(Path(it.src), it.rel, output, "sidecar_clash",
                           f"its sidecar {it.sidecar} would be the folder of the sidecars of the images "
                           f"in {it.rel}.json/; rename the file or that folder")
                  for it in items if it.sidecar in folders]


def _walk(root: Path, skip_dirs: Sequence[Path] = ()) -> list[Listed | Skipped]:
    """The input tree by the shared listing rule, minus OUTPUT/audit/archive if they are inside."""
    return list(iter_image_files(root, None, exclude=skip_dirs))


def _glob_entries(pattern: str, root: Path, skip_dirs: Sequence[Path]) -> list[Listed | Skipped]:
    """Glob matches by the shared listing rule (`listing.iter_glob`)."""
    return list(iter_glob(pattern, root, exclude=skip_dirs))


def remove_stale_temps(folders: Iterable[Path], before: float, files: Iterable[Path] = ()) -> list[Path]:
    """Delete temp files an interrupted run left behind: in the `folders` trees (OUTPUT and the
    audit folder, which are ours) any name of our own atomic writes (`.NAME.XXXXXXXX.tmp`,
    `io.is_atomic_temp`); beside each of `files` (a single output in someone's folder) only
    that file's own temp names. Only regular files older than `before` (this run's start: a
    concurrent run's file in flight is newer); symlinks are not followed. Returns what was removed."""
    candidates: list[Path] = []
    for folder in folders:
        if os.path.isdir(folder) and not os.path.islink(folder):
            for dirpath, _dirnames, filenames in os.walk(folder):
                candidates.extend(Path(dirpath, n) for n in filenames if is_atomic_temp(n))
    for f in files:
        f = Path(f)
        candidates.extend(p for p in f.parent.glob(f".{globmod.escape(f.name)}.*.tmp") if is_atomic_temp(p.name))
    removed: list[Path] = []
    for p in candidates:
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < before:
                p.unlink()
                removed.append(p)
        except OSError as exc:
            log.warning("%s: stale temp file not removed (%s)", p, exc.strerror or exc)
    if removed:
        log.info("removed %d temp file(s) left by an interrupted run", len(removed))
    return removed


# --- one image -----------------------------------------------------------------------------

def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_result(res: Result) -> Result:
    """The image's line in redact.log (a failure also on the console)."""
    if res.status == "failed":
        log.warning("%s: %s: %s", res.src, res.reason, res.detail)
    else:
        log.info("%s: %s (%d boxes)", res.rel, res.status, res.n_boxes)
    return res


class Redactor:
    """Detector + settings; `process(item)` redacts one file. Thread-safe (detector calls are
    serialised unless `parallel_calls` allows more). `log_results=False`: the
    caller logs each result (a Ray actor has no redact.log; the driver writes it)."""

    def __init__(self, detector: Any, cfg: RedactConfig, verifier: Any | None = None, log_results: bool = True) -> None:
        self.log_results = log_results
        self.detector = detector
        self.verifier = verifier
        self.cfg = cfg
        self.settings = cfg.settings(detector.version)
        self.settings_hash = cfg.settings_hash(detector.version)
        # at most the detector's `parallel_calls` overlap (one: calls are serialised)
        self._slots = threading.BoundedSemaphore(parallel_calls(detector))
        # DB detectors' extra pass for the audit of a noisy page (`PPOCRDetector.closer_look`):
        # only when an audit can run (a reader given and --verify or --audit-noisy)
        can_audit = verifier is not None and (cfg.verify or cfg.audit_noisy)
        self._closer_look = getattr(detector, "closer_look", None) if can_audit else None
        # ... and, with --verify, their look at every page's low contrast (`contrast_look`)
        self._contrast_look = getattr(detector, "contrast_look", None) if verifier is not None and cfg.verify else None

    def up_to_date(self, item: Item, in_sha: str) -> tuple[str, dict[str, Any]] | None:
        """('skipped'|'held', sidecar) when this input was already done with these settings."""
        sc = read_sidecar(item.sidecar)
        if not sc or sc.get("input_sha256") != in_sha or sc.get("settings_hash") != self.settings_hash:
            return None
        if sc.get("status") == "held":
            return "held", sc
        if sc.get("status") != "redacted" or not Path(item.out).is_file():
            return None
        if sha256_file(item.out) != sc.get("output_sha256"):
            return None
        if self.cfg.audit_noisy and sc.get("noisy") and not sc.get("verify") and self.verifier is not None:
            return None   # made without a reader (`Redactor` with none): the audit it needs never ran
        if self.cfg.verify or sc.get("verify"):
            # an output made without the audit (or by another reader, or with fewer covering
            # rounds while text was left) is not done: a skipped image would pass unread; so is
            # a noisy image's (audited without --verify) whose reader has changed
            v = sc.get("verify") or {}
            if v.get("reader") != getattr(self.verifier, "version", None):
                return None
            if sc.get("noisy") and self._closer_look is not None and v.get("closer_look") != CLOSER_LOOK_REVISION:
                return None   # audited before the detector's closer look was read
            if self._contrast_look is not None and v.get("contrast_look") != CONTRAST_LOOK_REVISION:
                return None   # audited before the lines of the contrast look were read
            if v.get("remaining") and (self.cfg.strict or v.get("rounds", 0) < self.cfg.verify_rounds):
                return None
        return "skipped", sc

    def process(self, item: Item, reviewed: Detections | None = None) -> Result:
        """Redact one file; never raises for a bad image (the result says why it failed).

        `reviewed`: human-reviewed boxes for page 0 (from `--from-review`) replacing detections.
        The three stages (`prepare`, `detect`, `finish`) run here one after the other; the local
        engine overlaps them across images (`run_local`), with the same bytes out."""
        return self.finish(self.detect(self.prepare(item, reviewed)))

    def _guard(self, job: "Job", stage: Callable[["Job"], None]) -> "Job":
        """Run one stage, turning any failure into the result's reason (a bad image never
        stops the batch); the stage's seconds add to the image's."""
        if job.over:
            return job
        t0 = time.perf_counter()
        res, item = job.res, job.item
        try:
            stage(job)
            res.seconds += time.perf_counter() - t0
            return job
        except ImageRejected as exc:
            res.status, res.reason, res.detail = "failed", exc.reason, exc.detail
        except (NotRegularFile, OutsideTree) as exc:   # the listing's reasons, met when it was read
            res.status, res.reason, res.detail = "failed", exc.reason, exc.strerror or str(exc)
        except FileNotFoundError as exc:
            res.status, res.reason, res.detail = "failed", "not_found", str(exc)
        except UnwritableError as exc:  # the output or audit folder, not the input
            res.status, res.reason, res.detail = "failed", "output_unwritable", str(exc)
        except PermissionError as exc:
            res.status, res.reason, res.detail = "failed", "unreadable", str(exc)
        except OSError as exc:
            res.status, res.reason, res.detail = "failed", "io_error", str(exc)
        except MemoryError:
            res.status, res.reason, res.detail = "failed", "out_of_memory", "image too large for memory"
        except Exception as exc:  # a detector/encoder failure on one image must not stop the batch
            if is_bug(exc):   # ... but an error in our own code is not the image's: stop
                raise
            log.exception("%s: unexpected error", item.src)
            res.status, res.reason, res.detail = "failed", "error", describe_error(exc)
        res.seconds += time.perf_counter() - t0
        job.over = True
        return job

    def _log(self, res: Result) -> Result:
        return log_result(res) if self.log_results else res

    def prepare(self, item: Item, reviewed: Detections | None = None) -> "Job":
        """Stage 1 (any thread): read, hash, resume check, decode every page, build the views."""
        job = Job(item, reviewed, Result(item.rel, item.src, item.out, "failed"))
        return self._guard(job, self._prepare)

    def detect(self, job: "Job") -> "Job":
        """Stage 2 (the detector's thread; calls are serialised): detections per page."""
        return self._guard(job, self._detect)

    def finish(self, job: "Job") -> Result:
        """Stage 3 (any thread): hold / cover / encode / verify / write output and sidecar."""
        self._guard(job, self._finish)
        job.doc = job.views = job.dets = None   # free the pixels early
        return self._log(job.res)

    def _prepare(self, job: "Job") -> None:
        cfg, item, res = self.cfg, job.item, job.res
        # opened as listed: a FIFO swapped in since blocked a thread for ever (and SIGTERM with
        # it), a link out of the tree swapped in was read and redacted
        with open_regular(item.src, inside=item.root or None) as fh:
            data = fh.read()
        res.input_sha256 = in_sha = sha256_bytes(data)
        if not cfg.force and not cfg.dry_run and job.reviewed is None:
            done = self.up_to_date(item, in_sha)
            if done is not None:
                status, sc = done
                res.status, res.output_sha256 = status, sc.get("output_sha256", "")
                res.n_boxes, res.pages = int(sc.get("n_boxes", 0)), len(sc.get("pages", []))
                if sc.get("verify"):   # the summary reports what the audit of the kept output read
                    v = sc["verify"]
                    res.audited = True
                    res.remaining = int(v.get("remaining", 0))
                    res.legible = [str(x["text"]) for x in v.get("legible", [])]
                job.over = True
                return
        job.doc = doc = codec.decode(data, cfg.max_pixels)
        del data
        res.pages = len(doc.pages)
        job.views = [None if (i == 0 and job.reviewed is not None) else codec.detector_views(page, doc.page_icc(i))
                     for i, page in enumerate(doc.pages)]
        if (cfg.audit_noisy and not cfg.verify) or self._closer_look is not None:
            job.noisy = [bool(views) and noisy(views[0]) for views in job.views]
            res.noisy = cfg.audit_noisy and not cfg.verify and any(job.noisy)

    def _detect(self, job: "Job") -> None:
        floor = self.cfg.detection_floor
        dets: list[Detections] = []
        for views in job.views:
            if views is None:
                dets.append(job.reviewed)
                continue
            with self._slots:
                dets.append(detect_visible(self.detector, [views])[0].filter(floor))
        if not self.cfg.dry_run and (self._contrast_look is not None or (self._closer_look is not None and any(job.noisy))):
            job.lines = [self._lines(views, k < len(job.noisy) and job.noisy[k]) for k, views in enumerate(job.views)]
        job.dets = dets
        job.views = None

    def _lines(self, views: list[np.ndarray] | None, noisy_page: bool) -> np.ndarray | None:
        """Quads (N, 4, 2) for the audit to read on one page, in every round's output: the
        detector's closer look on a noisy page and its contrast look with --verify, looked for in
        every picture of the page as the detections are (`detect_visible`); None for none."""
        looks = [look for look, on in ((self._closer_look, noisy_page), (self._contrast_look, True))
                 if look is not None and on]
        if views is None or not looks:
            return None
        with self._slots:
            return np.concatenate([np.asarray(look(v).quads, np.float64).reshape(-1, 4, 2) for look in looks for v in views])

    def _finish(self, job: "Job") -> None:
        cfg, item, res, doc, dets, reviewed = self.cfg, job.item, job.res, job.doc, job.dets, job.reviewed
        res.boxes = [boxes_json(d.boxes) for d in dets]
        res.scores = [[round(float(s), 4) for s in d.scores] for d in dets]
        if cfg.review and reviewed is None:
            lo, hi = cfg.review_band
            if any(((d.scores >= lo) & (d.scores < hi)).any() for d in dets):
                res.status = "held"
                res.n_boxes = sum(len(d) for d in dets)
                if not cfg.dry_run:
                    # held means not written: an output of an earlier run (`--review --force` after
                    # `--from-review`) stayed beside a sidecar that said `held` with no output hash
                    Path(item.out).unlink(missing_ok=True)
                    self._write_sidecar(item, res, doc, [], status="held", dets=dets)
                return
        final = [d if (i == 0 and reviewed is not None) else d.filter(cfg.threshold) for i, d in enumerate(dets)]
        res.n_boxes = sum(len(d) for d in final)
        if cfg.dry_run:
            res.status = "dry_run"
            return
        covers, out_bytes = self._render(doc, final)
        verify: dict[str, Any] | None = None
        if (cfg.verify or res.noisy) and self.verifier is not None:
            # boxes, scores and quads stay the detector's (what review, replay and training read);
            # the covered windows and polygons include the audit's lines, listed in `verify`
            covers, out_bytes, verify = self._audit(doc, final, covers, out_bytes, job.lines)
            res.audit_covered, res.audited = len(verify["covered"]), True
            verify["because"] = "verify" if cfg.verify else "noisy"   # what made it audit this image
            if self._closer_look is not None and any(job.noisy):   # the lines it also read (`_lines`)
                verify["closer_look"] = CLOSER_LOOK_REVISION
            if self._contrast_look is not None:
                verify["contrast_look"] = CONTRAST_LOOK_REVISION
            res.remaining = verify["remaining"]
            res.legible = [str(x["text"]) for x in verify["legible"]]
            if res.remaining and cfg.strict:
                res.status, res.reason = "failed", "text_remaining"
                shown = ", ".join(repr(t) for t in res.legible[:3])
                res.detail = f"{res.remaining} legible string(s) in the output, e.g. {shown} (--strict; nothing written)"
                Path(item.out).unlink(missing_ok=True)  # never leave an older output that looks done
                # nor an older sidecar saying `redacted`, with the hash of the file just removed
                self._write_sidecar(item, res, doc, covers, status="failed", verify=verify,
                                    source="review" if reviewed is not None else "detector", dets=final)
                return
        atomic_write_bytes(item.out, out_bytes)
        res.output_sha256 = sha256_bytes(out_bytes)
        res.status = "redacted"
        try:
            self._write_sidecar(item, res, doc, covers, status="redacted", verify=verify,
                                source="review" if reviewed is not None else "detector", dets=final)
        except BaseException:   # (disk full, a folder in its place) a failed image leaves no output in OUTPUT
            Path(item.out).unlink(missing_ok=True)
            raise

    def _render(self, doc: codec.Document, dets: Sequence[Detections]) -> tuple[list[Cover], bytes]:
        """Cover every page's detections and encode: the covers and the output bytes."""
        cfg = self.cfg
        arrays, covers = [], []
        for page, d in zip(doc.pages, dets):
            cover = cover_shapes(d.boxes, d.quads, page.width, page.height, cfg.pad, cfg.shape)
            value = fill_value(cfg.color, page.array.dtype, page.channels, page.kind, page.inverted)
            covered = apply_redaction(page.array, cover.boxes, cfg.style, value, mask=cover.mask)
            arrays.append(codec.opaque_where(page, covered, cover.mask))
            covers.append(cover)
        out_doc = doc.with_arrays(arrays)
        del arrays
        return covers, codec.encode(out_doc, codec.EncodeOptions(jpeg_quality=cfg.jpeg_quality, webp_quality=cfg.jpeg_quality))

    def _audit(self, doc: codec.Document, dets: Sequence[Detections], covers: list[Cover], out_bytes: bytes,
               lines: Sequence[np.ndarray | None] = ()) -> tuple[list[Cover], bytes, dict[str, Any]]:
        """The legibility audit, which also covers what it reads: each of `verify_rounds` rounds
        adds the lines OCR still reads outside the fill (their boxes, padded like detections) and
        reads the new output again, since covering one line can leave a neighbour it had
        swallowed; the gap between such a line and a covered box on the same text line is
        covered with it (`boxes.line_bridges`). Lines larger than `MAX_AUDIT_COVER_SHARE` of the
        page are only reported, never covered. What it reads after the last round is reported
        (and fails `--strict`). `lines`: per page, the detector's closer look on a noisy page and
        its contrast look with --verify (`_lines`), read in every round too."""
        dets, added = list(dets), []
        bridges: list[list[list[float]]] = [[] for _ in dets]
        for rnd in range(self.cfg.verify_rounds + 1):
            verify = self._verify(out_bytes, covers, lines)
            if not verify["legible"] or rnd == self.cfg.verify_rounds:
                break
            coverable = [x for x in verify["legible"] if box_area([x["box"]])[0]
                         <= MAX_AUDIT_COVER_SHARE * doc.pages[x["page"]].width * doc.pages[x["page"]].height]
            if not coverable:
                break
            for i, d in enumerate(dets):
                read = [x for x in coverable if x["page"] == i]
                if not read:
                    continue
                boxes = np.asarray([x["box"] for x in read], np.float64)
                bridge = line_bridges(boxes, d.boxes)    # a line's middle between its covered parts
                bridges[i] += boxes_json(bridge)
                dets[i] = Detections.concat([d, Detections(np.concatenate([boxes, bridge]),
                                                           [x["score"] for x in read] + [1.0] * len(bridge))])
            added += [{**x, "round": rnd + 1} for x in coverable]
            covers, out_bytes = self._render(doc, dets)
        verify.update(rounds=self.cfg.verify_rounds, covered=added, bridges=bridges)
        return covers, out_bytes, verify

    def _verify(self, out_bytes: bytes, covers: list[Cover], lines: Sequence[np.ndarray | None] = ()
                ) -> dict[str, Any]:
        """Legibility audit of the bytes actually written: decode them as a viewer would, read
        every view with an OCR recogniser, and what runs on beyond each cover's ends
        (`Reader.read_on`: the rest of a line the detector boxed in part), and `lines`, per page,
        where they lie (the detector's closer and contrast looks); list what it reads outside the covered areas
        (its text masked, `legibility.mask_text`: the audit trail must not hold the words removed)."""
        out_doc = codec.decode(out_bytes, self.cfg.max_pixels)
        legible: list[dict[str, Any]] = []
        for i, (page, cover) in enumerate(zip(out_doc.pages, covers)):
            mask, shapes = cover.mask, cover.shapes()
            views = codec.detector_views(page, out_doc.page_icc(i))
            read = self.verifier.legible(self.verifier.read_views(views), mask)
            found = [r for k, v in enumerate(views) for r in self.verifier.read_on(v, shapes, mask, view=k)]
            if i < len(lines) and lines[i] is not None and len(lines[i]):
                found += [r for k, v in enumerate(views) for r in self.verifier.read_lines(v, lines[i], view=k, covered=mask)]
            read += self.verifier.legible(found, mask, found=True)
            legible.extend({"page": i, **r.as_dict(masked=True)} for r in read)
        return {"reader": self.verifier.version, "min_chars": self.verifier.min_chars,
                "min_score": self.verifier.min_score, "remaining": len(legible), "legible": legible}

    def _write_sidecar(self, item: Item, res: Result, doc: codec.Document, covered: list[Cover],
                       status: str, verify: dict[str, Any] | None = None, source: str = "detector",
                       dets: Sequence[Detections] = ()) -> None:
        sc = {
            "tool": "textloop redact",
            "status": status,
            "input": item.rel,
            "input_sha256": res.input_sha256,
            "output": item.output_rel if status == "redacted" else None,
            "output_sha256": res.output_sha256 or None,
            "format": doc.format,
            "width": doc.pages[0].width,
            "height": doc.pages[0].height,
            "bit_depth": doc.bit_depth,
            "source_orientation": doc.orientation,
            "icc_profile": any(doc.page_icc(i) for i in range(len(doc.pages))),
            "detector": {"name": getattr(self.detector, "name", ""), "version": self.detector.version,
                         "validation_coverage": (getattr(self.detector, "info", None) or {}).get("validation_coverage"),
                         "validation_source": (getattr(self.detector, "info", None) or {}).get("validation_source"),
                         "passes": self.detector.passes() if hasattr(self.detector, "passes") else None},
            "boxes_from": source,
            "settings": self.settings,
            "settings_hash": self.settings_hash,
            "n_boxes": res.n_boxes,
            "pages": [self._page_record(i, res, covered[i] if i < len(covered) else None,
                                        dets[i] if i < len(dets) else None) for i in range(len(doc.pages))],
        }
        if verify is not None:
            sc["verify"] = verify
        if res.noisy:   # too noisy for the small-text search: an output not audited for it is not done
            sc["noisy"] = True
        atomic_write_text(item.sidecar, json.dumps(sc, indent=1) + "\n")


    @staticmethod
    def _page_record(i: int, res: Result, cover: Cover | None, det: Detections | None) -> dict[str, Any]:
        """Sidecar entry of one page: detections (boxes, scores, DB quads when the detector gave
        them), and what was covered: the pixel windows, the grown polygons, the pixel count."""
        rec: dict[str, Any] = {"page": i, "boxes": res.boxes[i] if i < len(res.boxes) else [],
                               "scores": res.scores[i] if i < len(res.scores) else []}
        if det is not None and det.quads is not None:
            rec["quads"] = quads_json(det.quads)
        rec["redacted"] = [] if cover is None else [[int(v) for v in b] for b in cover.boxes]
        if cover is not None:
            if cover.polygons is not None:
                rec["polygons"] = [None if not np.isfinite(p).all() else [[round(float(x), 2), round(float(y), 2)] for x, y in p]
                                   for p in cover.polygons]
            rec["covered_px"] = cover.area
        return rec


@dataclass
class Job:
    """One image between the stages of `Redactor` (decoded pages, views, detections)."""

    item: Item
    reviewed: Detections | None
    res: Result
    doc: codec.Document | None = None
    views: list[Any] | None = None
    dets: list[Detections] | None = None
    noisy: list[bool] = field(default_factory=list)   # per page: too noisy for the detector's small-text search
    lines: list[np.ndarray | None] = field(default_factory=list)   # per page: lines for the audit (`Redactor._lines`)
    over: bool = False          # skipped / held / failed already: later stages do nothing


CLOSER_LOOK_REVISION = 2   # in a noisy image's audit record: the closer look's lines were read too (2: from 2 characters)
CONTRAST_LOOK_REVISION = 1   # in a --verify audit record: the contrast look's lines were read too


def noisy(rgb: np.ndarray) -> bool:
    """Is this view too noisy for the detector's small-text search (`ppocr.NOISY_TEXTURE`)? Its
    output is audited without --verify: DB misses small text on such grain, OCR reads it."""
    import cv2

    from pipeline.detectors.ppocr import NOISY_TEXTURE, texture_level

    # straight to grey (the same grey as the detector's): no BGR copy of every image on the way
    return texture_level(cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)) >= NOISY_TEXTURE


def pass_options(scales: Sequence[float] = DEFAULT_PPOCR_SCALES, refine: str = DEFAULT_PPOCR_REFINE) -> dict[str, Any]:
    """redact's passes for a DB detector (stock or tuned; `PPOCRConfig` fields): extra scales run,
    with `refine="small"`, only on windows around what the 1x probability map marks as possibly
    small text (on images of any size: a tiled 1x pass keeps its map too); with them, strips along
    the edges and a look at a grey image's coloured marks (README: the cost and coverage of each
    choice)."""
    scales = tuple(float(x) for x in scales)
    if scales == (1.0,):   # `--scales 1`: the one plain pass, asked for by name
        return {"scales": scales}
    return {"scales": scales, "refine": refine,
            "edge_strip": DEFAULT_EDGE_STRIP, "edge_scale": DEFAULT_EDGE_SCALE, "colour_text": DEFAULT_COLOUR_TEXT,
            "faint_text": DEFAULT_FAINT_TEXT, "crossed_text": DEFAULT_CROSSED_TEXT}


def bundle_pass_options(path: str, scales: Sequence[float] | None = None) -> dict[str, Any]:
    """redact's passes for a model bundle: `pass_options` for a tuned db model (its own 1x pass
    alone left devset words legible), none for a Faster R-CNN one (`scales` is then an error)."""
    from pipeline.bundle import read_bundle_meta

    if Path(path).suffix == ".zip":
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: model bundle not found")
        if read_bundle_meta(path)["config"].get("kind") == "db":
            return pass_options(tuple(scales) if scales else DEFAULT_PPOCR_SCALES)
    if scales:
        raise ValueError("--scales applies to DB detectors only (ppocr and tuned db models)")
    return {}


def local_options(options: dict[str, Any], workers: int) -> dict[str, Any]:
    """A detector's options (`pass_options` / `bundle_pass_options`) for the local engine running
    `workers` images at once: a DB detector (its options always name `scales`) gets
    `call_threads(workers)` threads per call, so its calls overlap; others are left as they are."""
    return {**options, "threads": call_threads(workers)} if "scales" in options else dict(options)


def build_ppocr(**options: Any) -> Any:
    """redact's stock detector: one `PPOCRDetector` (one ONNX session) with `options`
    (`PPOCRConfig` fields; default `pass_options()`, redact's passes)."""
    from pipeline.detectors import load_detector

    return load_detector("ppocr", **(options or pass_options()))


# --- engines -------------------------------------------------------------------------------

def run_local(redactor: Redactor, items: Iterable[Item], workers: int = 2,
              reviewed: dict[str, Detections] | None = None, fail_fast: bool = False,
              pipelined: bool = True) -> Iterator[Result]:
    """Results as they finish. Pipelined (default): `workers` threads decode, one thread runs
    the detector (up to `workers` when it allows `parallel_calls`: a DB detector with one
    onnxruntime thread per call), `workers` threads cover/encode/write, so the detector never waits for a
    decode or an encode; at most `2 * workers + 2` images are in flight (memory stays flat in the
    number of images). `pipelined=False`: each of `workers` threads runs whole images (the
    detector still serialised). Both give the same bytes (the same three stages)."""
    import threading
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    workers = max(1, int(workers))
    window = 2 * workers + 2
    it = iter(items)
    rv = reviewed or {}
    stop = False
    closing = threading.Event()   # the consumer stopped (Ctrl-C, SIGTERM, an error): start nothing new
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="redact-decode") as decode, \
            ThreadPoolExecutor(max_workers=min(workers, parallel_calls(redactor.detector)),
                               thread_name_prefix="redact-detect") as detect, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="redact-encode") as encode:
        in_flight: set[Future] = set()

        def chain(item: Item) -> Future:
            final: Future = Future()

            def forward(fut: Future, nxt: Callable[[Future], None]) -> None:
                if closing.is_set():
                    final.cancel()
                    return
                try:
                    nxt(fut)
                except BaseException as exc:  # noqa: BLE001 - the stages catch image errors; this is a bug
                    if not final.done():
                        final.set_exception(exc)
                    # a callback on a future that was already done runs in the thread that adds it,
                    # the main thread included: Ctrl-C landing there must end the run, not be kept
                    # as one image's error (or lost, when that image's result was already set)
                    if not isinstance(exc, Exception) and threading.current_thread() is threading.main_thread():
                        raise

            def after_decode(fut: Future) -> None:
                detect.submit(redactor.detect, fut.result()).add_done_callback(lambda f: forward(f, after_detect))

            def after_detect(fut: Future) -> None:
                encode.submit(redactor.finish, fut.result()).add_done_callback(lambda f: forward(f, done))

            def done(fut: Future) -> None:
                final.set_result(fut.result())

            decode.submit(redactor.prepare, item, rv.get(item.rel)).add_done_callback(lambda f: forward(f, after_decode))
            return final

        def submit() -> bool:
            item = next(it, None)
            if item is None:
                return False
            if pipelined:
                in_flight.add(chain(item))
            else:
                in_flight.add(decode.submit(redactor.process, item, rv.get(item.rel)))
            return True

        try:
            for _ in range(window if pipelined else workers * 2):
                if not submit():
                    break
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    in_flight.discard(fut)
                    res = fut.result()
                    yield res
                    if fail_fast and res.status == "failed":
                        stop = True
                    if not stop:
                        submit()
        finally:
            # queued stages are dropped and only the running ones finish (a second or so), so the
            # threads are gone before the interpreter exits: onnxruntime aborted the process
            # ("terminate called without an active exception") when it exited under a running session
            closing.set()
            for pool in (decode, detect, encode):
                pool.shutdown(wait=False, cancel_futures=True)


# --- audit trail ---------------------------------------------------------------------------

MANIFEST_COLUMNS = ["input", "output", "status", "reason", "detail", "boxes", "pages", "input_sha256",
                    "output_sha256", "remaining_text", "legible_text", "audit_covered", "seconds"]


def write_manifest(audit: Path, results: Sequence[Result]) -> dict[str, str]:
    """manifest.csv and manifest.parquet: one row per input, sorted by input path."""
    import pandas as pd

    audit.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([r.to_row() for r in sorted(results, key=lambda r: r.rel)], columns=MANIFEST_COLUMNS)
    csv_path, pq_path = audit / "manifest.csv", audit / "manifest.parquet"
    atomic_write_text(csv_path, df.to_csv(index=False))
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(pq_path, buf.getvalue())
    return {"csv": str(csv_path), "parquet": str(pq_path)}


def summarize(results: Sequence[Result], seconds: float, ignored: Sequence[str] = ()) -> dict[str, Any]:
    """The run's counts and lists. `no_text_found`: written images with nothing covered (the
    detector found nothing above the threshold): counted apart, since in a batch of thousands a
    threshold or detector problem shows as many of them. `ignored_files`: files left out because
    their names are not image names (not redacted, not in the output)."""
    from collections import Counter

    by = Counter(r.status for r in results)
    processed = [r for r in results if r.status in ("redacted", "held", "dry_run")]
    return {
        "images": len(results),
        "redacted": by.get("redacted", 0),
        "no_text_found": sum(1 for r in results if r.status == "redacted" and not r.n_boxes and not r.audit_covered),
        "skipped": by.get("skipped", 0),
        "held_for_review": by.get("held", 0),
        "waiting_review": by.get("waiting_review", 0),
        "dry_run": by.get("dry_run", 0),
        "failed": by.get("failed", 0),
        "boxes": sum(r.n_boxes for r in processed),
        "remaining_text": sum(r.remaining for r in results),
        "audit_covered": sum(r.audit_covered for r in results),
        "audited": sum(1 for r in results if r.audited),
        "legible": [{"input": utf8_text(r.rel), "text": t} for r in results for t in r.legible],
        "ignored_non_images": len(ignored),
        "ignored_files": [utf8_text(str(p)) for p in ignored[:MAX_LISTED_IGNORED]],
        "seconds": round(seconds, 2),
        "images_per_s": round(len(processed) / seconds, 2) if seconds > 0 and processed else 0.0,
        "errors": [utf8_text(f"{r.src}: {r.reason}: {r.detail}") for r in results if r.status == "failed"],
    }


def archive_original(item: Item, archive_root: Path, max_pixels: int = codec.DEFAULT_MAX_PIXELS) -> Path:
    """Move the input to ARCHIVE/<rel> after checking its output decodes and matches its sidecar.

    A symlink is archived as the bytes it points at (then removed): moved as is, an absolute or
    relative link would point nowhere (or back into the input tree) from inside the archive."""
    import shutil

    sc = read_sidecar(item.sidecar) or {}
    data = Path(item.out).read_bytes()
    if sha256_bytes(data) != sc.get("output_sha256"):
        raise OSError(f"{item.out}: output does not match its sidecar; original not archived")
    codec.decode(data, max_pixels)
    dest = archive_root / item.rel
    if os.path.lexists(dest):   # an earlier original of the same name: never moved over
        raise OSError(f"{dest}: already in the archive (an earlier original of this name); original not moved")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(item.src).is_symlink():
        with open(item.src, "rb") as fin, atomic_open(dest) as fout:
            shutil.copyfileobj(fin, fout)
        shutil.copystat(item.src, dest)   # follows the link: the target's times and mode
        os.unlink(item.src)
    else:
        shutil.move(item.src, dest)
    return dest


def add_log_file(audit: Path) -> Callable[[], None]:
    """Append this run's redact log to AUDIT/redact.log; returns the remover."""
    audit.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(audit / "redact.log", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(message)s"))
    # INFO goes to the file only; the console keeps the level chosen by -v/-q
    console = logging.StreamHandler()
    console.setLevel(max(logging.ERROR, logging.getLogger().getEffectiveLevel()))  # failures are listed in the summary
    console.setFormatter(LineFormatter())
    prev = (log.level, log.propagate)
    log.addHandler(handler)
    log.addHandler(console)
    log.setLevel(logging.INFO)
    log.propagate = False

    def remove() -> None:
        log.removeHandler(handler)
        log.removeHandler(console)
        handler.close()
        log.setLevel(prev[0])
        log.propagate = prev[1]

    return remove
