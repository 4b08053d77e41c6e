"""`textloop redact INPUT OUTPUT`: folders of images in, the same tree out with text covered."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipeline.cli.common import AppState, emit, fail, parse_floats, plain, progress, state, titled
from pipeline.config import DEFAULT_MAX_PIXELS
from pipeline.redact import run as rr
from pipeline.redact.tree import AuditTrailError, RedactSummary, redact_tree
from pipeline.redact.core import Pad, parse_color


def register(app: typer.Typer) -> None:
    app.command("redact")(redact_cmd)


def redact_cmd(
    ctx: typer.Context,
    input: str = typer.Argument(..., help="An image file, a folder (recursive), or a glob (quote it)."),
    output: str = typer.Argument(..., help="Output file or folder (a trailing / makes a single file go into it); the input tree is mirrored under it."),
    detector: str = typer.Option("current", help="ppocr | current (the workspace's promoted model, else ppocr) | path/to/bundle.zip."),
    threshold: float = typer.Option(rr.DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Minimum box score (0-1); low favours recall."),
    pad: str = typer.Option(str(rr.DEFAULT_PAD), help="Growth of each box per side: pixels and/or % of box height, e.g. 4, 15%, 2px+15%."),
    style: str = typer.Option("fill", help="fill (opaque, default) | blur | pixelate (both reversible!)."),
    shape: str = typer.Option("polygon", help="polygon (default): DB's rotated quads grown along their own axes | box: their axis-aligned enclosing boxes."),
    color: str = typer.Option("black", help="Fill colour: a CSS name (black, white, magenta...), #rrggbb or r,g,b."),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG/WebP quality of lossy outputs."),
    workers: int = typer.Option(2, min=1, max=256, help="Images in flight (local threads or Ray actors); a DB "
                                "detector runs up to this many at once, the cores shared between them."),
    engine: str = typer.Option("local", help="local | ray (Ray Data; RAY_ADDRESS or a local instance)."),
    force: bool = typer.Option(False, "--force", help="Redo images already done with the same settings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Detect and report; write nothing."),
    archive: Optional[Path] = typer.Option(None, help="Move each original here (tree mirrored) after its output is checked; a folder outside INPUT and OUTPUT."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed image."),
    verify: bool = typer.Option(False, "--verify", help="Legibility audit: OCR (PP-OCRv4 recogniser) reads every output as viewers show it, covers strings of 3+ characters it still reads, reads again; reports what is left."),
    verify_rounds: Optional[int] = typer.Option(None, min=0, max=rr.MAX_VERIFY_ROUNDS, help=f"With --verify: rounds of covering what OCR still reads (0: only report; default {rr.DEFAULT_VERIFY_ROUNDS})."),
    audit_noisy: bool = typer.Option(True, "--audit-noisy/--no-audit-noisy", help="Without --verify: audit (as --verify does) the images too noisy for the detector's small-text search, e.g. electron-micrograph grain, where it misses small labels OCR still reads."),
    strict: bool = typer.Option(False, "--strict", help="With --verify: fail (and do not write) images in which OCR still reads text after the covering rounds."),
    review: bool = typer.Option(False, "--review", help="Hold images with uncertain boxes back and send them to Label Studio."),
    review_band: str = typer.Option("%g,%g" % rr.DEFAULT_REVIEW_BAND, help="Uncertain score band lo,hi for --review."),
    from_review: bool = typer.Option(False, "--from-review", help="Finish held images with their reviewed boxes (after `textloop pull`)."),
    audit: Optional[Path] = typer.Option(None, help="Sidecars, manifest and log (default: OUTPUT.audit beside OUTPUT)."),
    rename: bool = typer.Option(False, "--rename", help="Name outputs by a keyed hash of their input path, flat in OUTPUT (names and folders often carry the IDs the fill removes); the manifest maps them back, the key stays in the audit folder."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Refuse images with more pixels on any page (decompression bombs)."),
    scales: Optional[str] = typer.Option(None, help="DB detectors (ppocr or a tuned db model): detection scales (default 1,2.5: the 2.5x pass only on windows around possible small text, on images of any size; 1 is the plain 1x pass, ~2x faster on real images)."),
) -> None:
    """Cover every text region in a file, folder tree or glob: opaque fill, clean metadata, resumable.

    Outputs keep format, size, bit depth, pages and ICC profile, are upright (EXIF orientation
    applied) and carry no EXIF/GPS/XMP/IPTC/comments/text chunks. Each image gets a sidecar JSON
    (hashes, boxes, scores, detector, settings) in the audit folder, with manifest.csv/.parquet,
    redact.log and summary.json. Exit code 1 if any image failed."""
    st = state(ctx)
    cfg = _config(st, threshold, pad, style, shape, color, quality, max_pixels, review, review_band, verify, strict,
                  dry_run, force or from_review, verify_rounds, audit_noisy)
    try:
        with progress(st, "redact") as update:
            # `current` reads a workspace's promoted model; without a workspace it is stock ppocr and
            # none is created (a redaction-only user never asked for one)
            summary = redact_tree(input, output, cfg, workspace=st.ws if review or from_review else lambda: st.existing_ws(read_only_ok=True),
                                  detector=detector,
                                  scales=parse_floats(scales, "--scales") or None, engine=engine, workers=workers,
                                  archive=archive, audit=audit, fail_fast=fail_fast, from_review=from_review,
                                  rename=rename, progress=update)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    except AuditTrailError as exc:
        done = exc.summary
        if done is not None:   # what happened to the images, then why it is not on disk
            emit(st, done.as_dict(), lambda c: _render(c, done, verify), problems=done.errors)
        fail(str(exc))
    except KeyboardInterrupt as exc:   # (cli.app.main releases the detector before the process exits)
        fail(str(exc) or "interrupted; rerun the same command to resume", 130)
    emit(st, summary.as_dict(), lambda c: _render(c, summary, verify), problems=summary.errors)
    if from_review and not st.json and not any(r.status in ("redacted", "waiting_review", "failed")
                                               for r in summary.results):
        st.console.print(f"nothing is held for review in {summary.audit}: `redact --review` holds images "
                         "with uncertain boxes; run it with the same INPUT and OUTPUT first", highlight=False, soft_wrap=True)
    if not summary.ok:
        raise typer.Exit(1)


def _config(st: AppState, threshold: float, pad: str, style: str, shape: str, color: str, quality: int,
            max_pixels: int, review: bool, review_band: str, verify: bool, strict: bool, dry_run: bool,
            force: bool, verify_rounds: int | None = None, audit_noisy: bool = True) -> rr.RedactConfig:
    """The options that decide the output, checked (exit code 2 on a bad one)."""
    if verify_rounds is not None and not verify:
        fail("--verify-rounds needs --verify", 2)
    try:
        pad_v = Pad.parse(pad)
        color_v = parse_color(color)
        lo, hi = (float(x) for x in review_band.split(","))
    except ValueError as exc:
        fail(str(exc) if "--" in str(exc) else f"bad --review-band {review_band!r}: use lo,hi", 2)
    if not 0.0 <= lo < hi <= 1.0:
        fail(f"bad --review-band {review_band!r}: needs 0 <= lo < hi <= 1", 2)
    try:   # the config checks every value (the library gets the same checks): one line, exit 2
        cfg = rr.RedactConfig(threshold=threshold, pad=pad_v, style=style, shape=shape, color=color_v,
                              jpeg_quality=quality, max_pixels=max_pixels, review=review, review_band=(lo, hi),
                              verify=verify, strict=strict, dry_run=dry_run, force=force,
                              verify_rounds=rr.DEFAULT_VERIFY_ROUNDS if verify_rounds is None else verify_rounds,
                              audit_noisy=audit_noisy)
    except ValueError as exc:
        field, _, rest = str(exc).partition(" ")
        option = {"jpeg_quality": "quality"}.get(field, field.lstrip("-").replace("_", "-"))
        fail(f"--{option} {rest}", 2)
    if style != "fill":
        st.console.print(f"[bold yellow]warning:[/] --style {style} is reversible: blurred or pixelated text and faces "
                         "can be reconstructed. Use the default opaque fill for anything sensitive.", highlight=False)
    return cfg


def _render(c: Console, summary: RedactSummary, verify: bool) -> None:
    """The result table, failures, the --verify audit and where the audit trail is."""
    dry_run, results, review_info = summary.would_redact is not None, summary.results, summary.review
    audit_dir, input, output = Path(summary.audit), summary.input, summary.output
    s = summary.as_dict()
    if not s["images"] and not s["failed"] and s["detector"] == "":
        # the no-op summary of a finished --archive run (redact_tree), not any run with nothing to do
        c.print(f"nothing to redact in {input}: an earlier run moved its originals to the archive "
                f"(outputs in {output})", highlight=False)
        return
    if dry_run:
        _render_dry_run(c, results)
    t = titled(f"redact {input} -> {output}", show_header=True)
    t.add_column("result")
    t.add_column("images", justify="right")
    for key in ("redacted", "no_text_found", "skipped", "held_for_review", "waiting_review", "dry_run", "failed"):
        if s[key] or key in ("redacted", "failed"):
            t.add_row("  of which no text found" if key == "no_text_found" else key.replace("_", " "), str(s[key]))
    if s.get("archived"):   # (it was in summary.json and --json only)
        t.add_row("originals archived", str(s["archived"]))
    c.print(t)
    _render_notices(c, s, results, dry_run, audit_dir)
    _render_audit(c, s, verify, dry_run)
    if review_info:
        _render_review(c, review_info)
    c.print(f"{s['boxes']} boxes, {s['images_per_s']} images/s, {s['seconds']}s, "
            f"detector {s['detector']}{_describe_model(s.get('model') or {})}"
            + ("" if dry_run else f"; audit trail in {audit_dir}"), highlight=False, soft_wrap=True)


def _render_dry_run(c: Console, results: list) -> None:
    """What a dry run would redact, image by image."""
    t = titled("dry run: what would be redacted", show_header=True)
    t.add_column("image")
    t.add_column("pages", justify="right")
    t.add_column("boxes", justify="right")
    t.add_column("scores")
    for r in sorted(results, key=lambda r: r.rel):
        sc = [x for page in r.scores for x in page]
        t.add_row(plain(r.rel), str(r.pages), str(r.n_boxes) if r.status != "failed" else f"failed: {r.reason}",
                  f"{min(sc):.2f}-{max(sc):.2f}" if sc else "")
    c.print(t)


def _render_notices(c: Console, s: dict, results: list, dry_run: bool, audit_dir: Path) -> None:
    """What needs the user: ignored entries, images waiting for review, an early stop, failures."""
    if s["ignored_non_images"]:
        names = s["ignored_files"]
        c.print(f"[yellow]ignored[/] {s['ignored_non_images']} entr(ies) not named as images, or hidden (not redacted, not in "
                f"the output): {plain(', '.join(names[:5]))}{' ...' if s['ignored_non_images'] > 5 else ''} "
                + ("(--json lists them)" if dry_run else f"(all in {audit_dir / 'redact.log'})"), highlight=False,
                soft_wrap=True)
    if s["waiting_review"]:   # held, but no reviewed label yet: the task may never have reached Label Studio
        c.print(f"{s['waiting_review']} image(s) wait for review: label them in Label Studio (if their tasks "
                "are not there, a push failed at `--review` time: rerun that `--review` command, which pushes them "
                "as held), then `pull` and rerun `--from-review`", highlight=False, soft_wrap=True)
        skipped = sorted(r.rel for r in results if r.status == "waiting_review" and "skipped" in r.detail)
        if skipped:
            c.print(f"{len(skipped)} of them the reviewer skipped (label them, or redact them without --review): "
                    + plain(", ".join(skipped[:5])) + (" ..." if len(skipped) > 5 else ""), highlight=False, soft_wrap=True)
    if s.get("stopped_early"):
        c.print("[red]stopped[/] at the first failure (--fail-fast): the other images were not processed; fix it, or "
                "rerun without --fail-fast (finished images are skipped)", highlight=False, soft_wrap=True)
    for line in s["errors"][:50]:
        c.print(f"[red]failed[/] {plain(line)}", highlight=False, soft_wrap=True)
    if len(s["errors"]) > 50:
        c.print(f"... and {len(s['errors']) - 50} more (see {audit_dir / 'manifest.csv'})")


def _render_audit(c: Console, s: dict, verify: bool, dry_run: bool) -> None:
    """What the legibility audit covered and still reads, or that nothing read the outputs back."""
    read = ": " + ", ".join(repr(x["text"]) for x in s["legible"][:10]) if s["legible"] else ""
    if verify:
        covered = s["audit_covered"]
        style = s["settings"].get("style", "fill")
        c.print((f"verify: covered {covered} string(s) the detector missed and OCR could still read; " if covered else "verify: ")
                + f"OCR reads {s['remaining_text']} legible string(s) outside the covered areas" + read
                + ("" if style == "fill" else
                   f" (the {_DONE.get(style, style)} areas are not audited: that style is reversible)"),
                highlight=False)
    elif not dry_run and s["redacted"]:
        audited = s["audited"]
        if audited:
            c.print(f"audited {audited} image(s) too noisy for the detector's small-text search: covered "
                    f"{s['audit_covered']} string(s) OCR could still read; OCR reads {s['remaining_text']} "
                    "legible string(s) outside the covered areas" + read, highlight=False, soft_wrap=True)
        # the detector alone can miss text (bench_redact's microscopy and edge labels were legible
        # until passes were added for each kind it missed); say so where users read the result
        c.print(("not verified: nothing read the other outputs back" if audited else
                 "not verified: nothing read the outputs back")
                + " (--verify has OCR read each one and cover what it still reads)", highlight=False, soft_wrap=True)


def _render_review(c: Console, review_info: dict) -> None:
    """What `--review` held, pushed and found already labelled."""
    audit = review_info.get("audit_covered", 0)
    there, done = review_info.get("already_in_label_studio", 0), review_info.get("already_labelled", 0)
    c.print(f"review: {review_info.get('held', 0)} held"
            + (f", {audit} redacted with text the detector missed (the audit covered it)" if audit else "")
            + f", {review_info.get('pushed', 0)} new task(s) in Label Studio"
            + (f", {there} already there" if there else "")
            + (f" (push failed: {review_info['push_error']})" if review_info.get("push_error") else "")
            + (f"; {done} already labelled: `--from-review` uses those labels" if done else ""))


_DONE = {"blur": "blurred", "pixelate": "pixelated"}


def _describe_model(model: dict) -> str:
    """' (validation coverage 0.904 at the budget, stock 0.854, this workspace's val split, 40 images;
    1x + 2x on small-text cells)'."""
    parts = []
    if model.get("validation_coverage") is not None:
        stock = model.get("stock_validation_coverage")
        where = f", {model['validation_source']}" if model.get("validation_source") else ""
        parts.append(f"validation coverage {model['validation_coverage']:.3f} at the budget"
                     + (f", stock {stock:.3f}" if stock is not None else "") + where)
    passes = model.get("passes")
    if passes:
        first, extra = f"{passes['scales'][0]:g}x", [f"{s:g}x" for s in passes["scales"][1:]]
        where = {"small": " on small-text cells", "image": ""}.get(passes.get("refine") or "", "")
        side = f" (images up to {passes['scale_max_side']} px)" if passes.get("scale_max_side") else ""
        large = f", large text at {passes['large_text_side']} px" if passes.get("large_text_side") else ""
        e_scale = float(passes.get("edge_scale") or 1.0)   # depth in px at the strips' scale: shown in image px
        edges = f", edge strips {passes['edge_strip'] / e_scale:g} px deep at {e_scale:g}x" if passes.get("edge_strip") else ""
        colour = ", coloured text on grey images" if passes.get("colour_text") else ""
        faint = ", faint text on pages" if passes.get("faint_text") else ""
        crossed = ", text crossing text" if passes.get("crossed_text") else ""
        parts.append((f"one {first} pass" if not extra else f"{first} + {' + '.join(extra)}{where}{side}")
                     + large + edges + colour + faint + crossed)
    return f" ({'; '.join(parts)})" if parts else ""

