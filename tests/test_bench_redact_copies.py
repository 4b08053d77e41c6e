"""bench_redact's lossless devset copies stay in its work folder, whatever the image paths say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_redact.py"


def _load():
    """scripts/bench_redact.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_redact", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_copies_of_images_outside_the_set_stay_under_work(tmp_path: Path) -> None:
    mod = _load()
    elsewhere = tmp_path / "photos" / "a.jpg"          # a record pointing out of its source folder
    elsewhere.parent.mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(elsewhere)
    src = tmp_path / "x" / "set" / "scene"
    src.mkdir(parents=True)
    rec = {"image": "../../../photos/a.jpg", "width": 30, "height": 20, "boxes": [[2, 2, 10, 8]]}
    (src / "boxes.jsonl").write_text(json.dumps(rec) + "\n")
    root, recs = mod.lossless_copies(tmp_path / "x" / "set", tmp_path / "work")
    (rel, _), = recs
    copy = root / rel
    assert copy.is_file() and copy.resolve().is_relative_to((tmp_path / "work").resolve())
    assert not (tmp_path / "photos" / "a.png").exists()          # nothing written beside the original


def test_two_images_with_the_same_name_get_two_copies(tmp_path: Path) -> None:
    mod = _load()
    src = tmp_path / "set" / "scene"
    for i, folder in enumerate(("images", "more")):
        (src / folder).mkdir(parents=True)
        Image.fromarray(np.full((20, 30, 3), 50 + 100 * i, np.uint8)).save(src / folder / "a.jpg")
    recs = [{"image": f"{f}/a.jpg", "width": 30, "height": 20, "boxes": []} for f in ("images", "more")]
    (src / "boxes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    root, out = mod.lossless_copies(tmp_path / "set", tmp_path / "work")
    rels = [rel for rel, _ in out]
    assert len(set(rels)) == 2 and rels[0] == "scene/images/a.png"
    assert [int(np.asarray(Image.open(root / r))[0, 0, 0]) for r in rels] == [50, 150]


def test_two_bundles_with_the_same_file_name_keep_two_results() -> None:
    """Every benchmark run writes its model as bundle.zip: two of them must not share a result row."""
    mod = _load()
    labels: list[str] = []
    for name in ("default", "/runs/a/bundle.zip", "/runs/b/bundle.zip", "/runs/b/bundle.zip@1"):
        labels.append(mod.unique_label(name, labels))
    assert labels == ["default", "bundle", "bundle#2", "/runs/b/bundle.zip@1"]


def test_gaps_split_lost_coverage_and_over_redaction_by_where_they_are() -> None:
    """A found word with an uncovered edge, a missed word, fill hugging a label and fill far away."""
    from pipeline.boxes import union_mask
    from pipeline.formats import LabelledImage

    mod = _load()
    rec = LabelledImage("a.png", 100, 60, boxes=[[10, 10, 30, 20], [60, 10, 80, 20]])
    red = np.zeros((60, 100), bool)
    red[10:20, 10:28] = True        # word 1: 18 of 20 columns covered -> 20 px uncovered at a found word
    red[20:22, 10:30] = True        # 2 rows of fill just under word 1: near
    red[50:55, 0:10] = True         # 50 px far from any label
    g = mod.gaps(red, rec, union_mask(rec.boxes, 100, 60))
    assert g == {"uncovered_missed": 200, "uncovered_margins": 20, "over_near": 40, "over_far": 50}


def _two_labels(tmp_path: Path, cover: int):
    """bench_redact loaded, and a.png with a date and an ID in src/ and, in out/, the same with
    label `cover` under magenta: (module, texts, their boxes)."""
    from PIL import ImageDraw, ImageFont

    from pipeline.synth import available_fonts

    mod = _load()
    font = ImageFont.truetype(str(available_fonts()[0]), 40)
    img = Image.new("RGB", (640, 240), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    texts, boxes = ["14/09/2008", "Sample 4711"], []
    for text, y in zip(texts, (30, 140)):
        draw.text((40, y), text, fill=(20, 20, 20), font=font)
        boxes.append(list(draw.textbbox((40, y), text, font=font)))
    for d in ("src", "out"):
        (tmp_path / d).mkdir()
    img.save(tmp_path / "src" / "a.png")
    x0, y0, x1, y1 = boxes[cover]
    draw.rectangle((x0 - 4, y0 - 4, x1 + 4, y1 + 4), fill=mod.MAGENTA)
    img.save(tmp_path / "out" / "a.png")
    return mod, texts, np.array(boxes, float)


def test_overlay_leak_counts_overlays_still_read_in_the_output(tmp_path: Path) -> None:
    """Real OCR: of two readable overlays, the one the output left uncovered is the leak."""
    from pipeline.legibility import Reader

    mod, texts, boxes = _two_labels(tmp_path, cover=0)   # the date covered, the ID left
    r = SimpleNamespace(boxes=boxes, texts=texts, kinds=["timestamp", "sample_id"], polys=[(), ()])
    readable: dict[str, list[int]] = {}
    lk = mod.overlay_leak([(tmp_path / "src" / "a.png", r)], tmp_path / "out", Reader(), readable)
    assert readable == {"a.png": [0, 1], f"a.png#in_place.{mod.IN_PLACE_REVISION}": [0, 1]}
    assert lk["readable"] == 2 and lk["leaked"] == 1 and lk["leaked_texts"] == ["a.png: Sample 4711"]
    assert lk["by_kind"]["timestamp"]["leaked"] == 0 and lk["by_kind"]["sample_id"]["leaked"] == 1
    # the in-place judge (each overlay's own crop read) agrees here
    assert lk["readable_in_place"] == 2 and lk["leaked_in_place"] == 1
    assert lk["leaked_in_place_texts"] == ["a.png: Sample 4711"]
    # a second output of the same original is judged without reading the original again
    reads: list[int] = []
    reader = Reader()
    real = reader.read_quads
    reader.read_quads = lambda im, q: reads.append(len(q)) or real(im, q)
    assert mod.overlay_leak([(tmp_path / "src" / "a.png", r)], tmp_path / "out", reader, readable)["leaked_in_place"] == 1
    assert reads == [2]   # the output's two crops only


def test_devset_leak_names_the_words_ocr_still_reads(tmp_path: Path) -> None:
    # the devset's read-back listed the texts read in place but not those OCR read: a funsd word
    # counted as leaked could not be found
    from pipeline.legibility import Reader

    mod, texts, boxes = _two_labels(tmp_path, cover=1)   # the ID covered, the date left
    rec = SimpleNamespace(source="forms", boxes=boxes, texts=texts, ignore=np.zeros(2, bool), polys=[])
    lk = mod.leak(tmp_path / "out", tmp_path / "src", [("a.png", rec)], Reader(), tmp_path)["forms"]
    assert lk["leaked_words"] == 1 and lk["leaked_texts"] == ["a.png: 14/09/2008"]
    assert lk["leaked_in_place_texts"] == ["a.png: 14/09/2008"]


def test_edge_labels_lie_where_their_kind_says() -> None:
    """The edge-label set's labels are cut by, touch, or stay the stated px inside their edge,
    one edge after another: what its per-kind coverage is reported by."""
    mod = _load()
    recs = mod.edge_label_set(12)
    assert {r.kinds[0] for r in recs} <= {mod.edge_cut_kind(c) for c in mod.EDGE_CUTS}
    for i, r in enumerate(recs):
        h, w = r.ink.shape
        ys, xs = np.nonzero(r.ink == 1)
        gap = {"top": ys.min(), "bottom": h - 1 - ys.max(), "left": xs.min(), "right": w - 1 - xs.max()}
        edge = ("top", "bottom", "left", "right")[(i // 3) % 4]
        kind = r.kinds[0]
        assert r.boxes.tolist() == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
        if kind.endswith("inside"):
            assert abs(gap[edge] - int(kind.split()[0])) <= 2, (i, kind, gap)   # glyph extents vary a px or two
        else:
            assert gap[edge] == 0, (i, kind, gap)                             # its ink reaches the edge
        assert min(g for e, g in gap.items() if e != edge) > 0                # and no other edge


def test_the_small_set_is_patch_sized_with_overlays_on_every_image() -> None:
    """The small-image set is what its row says: micrographs 128-384 px wide, each with the
    microscopy overlays whose ink the coverage is measured on (a few hard negatives with none),
    the same images on every run."""
    mod = _load()
    recs = mod.small_image_set(8)
    for r in recs:
        h, w = r.ink.shape
        assert mod.SMALL_WIDTHS[0] <= w <= mod.SMALL_WIDTHS[1] and max(w, h) <= 2 * mod.SMALL_WIDTHS[1], (w, h)
        assert r.image.shape[:2] == (h, w)
        assert len(r.kinds) == len(r.boxes) and all((r.ink == k + 1).any() for k in range(len(r.kinds)))
    assert sum(len(r.kinds) >= 2 for r in recs) >= 6
    assert all(np.array_equal(a.image, b.image) for a, b in zip(recs, mod.small_image_set(8)))


def test_the_verify_audit_reads_the_fill_users_get() -> None:
    """A measuring run fills with magenta; its `--verify` audit must read the output as users see
    it (black fill), or it leaves what OCR reads beside black."""
    mod = _load()

    class Seen:
        version, min_chars = "r1", 3

        def __init__(self) -> None:
            self.views: list = []

        def read_views(self, views):
            self.views += views
            return ["read"]

        def read_on(self, rgb, shapes, covered=None, view=0):    # as the audit calls it, and read_lines
            self.views.append(rgb)
            return [view]

        read_lines = read_on

    inner = Seen()
    wrapped = mod.UsersFillReader(inner)
    view = np.full((2, 3, 3), 200, np.uint8)
    view[0, 0] = mod.MAGENTA
    grey = np.full((2, 3), 7, np.uint8)   # a one-channel view is left as it is
    assert wrapped.read_views([view, grey]) == ["read"] and wrapped.version == "r1" and wrapped.min_chars == 3
    assert inner.views[0][0, 0].tolist() == list(mod.DEFAULT_FILL) and (inner.views[0][1] == 200).all()
    assert inner.views[1] is grey and view[0, 0].tolist() == list(mod.MAGENTA)   # the output itself is untouched
    for read in (wrapped.read_on, wrapped.read_lines):      # the audit's reads beside covers see the users' fill too
        assert read(view, None, None, view=2) == [2] and inner.views[-1][0, 0].tolist() == list(mod.DEFAULT_FILL)


def test_ground_truth_is_read_in_place_on_its_polygon_where_it_has_one() -> None:
    mod = _load()
    boxes = np.array([[10, 10, 110, 40], [0, 0, 100, 100], [5, 5, 25, 15]], float)
    tilted = (0.0, 50.0, 50.0, 0.0, 100.0, 50.0, 50.0, 100.0)      # a diamond inside the second box
    q = mod.gt_quads(boxes, [(), tilted, None])
    np.testing.assert_allclose(q[0], [[10, 10], [110, 10], [110, 40], [10, 40]])   # upright: its box
    np.testing.assert_allclose(sorted(map(tuple, q[1])), sorted([(0, 50), (50, 0), (100, 50), (50, 100)]), atol=1e-3)
    np.testing.assert_allclose(q[2], [[5, 5], [25, 5], [25, 15], [5, 15]])
    assert mod.gt_quads(boxes[:1]).shape == (1, 4, 2)                             # no polygons at all


def test_the_faint_set_holds_faint_words_a_viewer_reads(tmp_path: Path) -> None:
    """The benchmark's faint pages: each counted word is 4-20 levels off its paper, beside
    full-contrast text, and the recogniser reads it in place in the original (a set whose words
    nobody reads would pass its leak goal by measuring nothing)."""
    from pipeline.legibility import Reader, spells

    mod = _load()
    cases = mod.make_faint_set(tmp_path, n=3)
    reader, read, total = Reader(), 0, 0
    for name, mask, words, boxes in cases:
        grey = np.asarray(Image.open(tmp_path / name).convert("L")).astype(int)
        paper = int(np.bincount(grey.ravel()).argmax())
        assert (np.abs(grey - paper) > 200).any()                     # ordinary text on the page too
        for m_box in boxes.astype(int):
            x0, y0, x1, y1 = m_box
            step = np.abs(grey[y0:y1, x0:x1][mask[y0:y1, x0:x1]] - paper).max()
            assert 3 <= step <= 22, (name, step)                      # ... and the words faint
        quads = np.array([[[a - 4, b - 4], [c + 4, b - 4], [c + 4, d + 4], [a - 4, d + 4]] for a, b, c, d in boxes], float)
        rgb = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        read += sum(spells(w, [t]) for w, (t, _) in zip(words, reader.read_quads(rgb, quads)))
        total += len(words)
    assert read >= 0.8 * total, (read, total)


def test_the_watermark_set_puts_readable_watermarks_on_the_photos(tmp_path: Path) -> None:
    """The benchmark's watermark set: every photo of a (here generated) devset gets each kind of
    watermark, its glyphs lie inside the turned quad the judges read, and the recogniser reads
    the watermark there in the original (a set nobody reads measures nothing)."""
    from pipeline.boxes import quads_mask
    from pipeline.legibility import Reader, spells

    mod = _load()
    rng = np.random.default_rng(0)
    for src in ("icdar2015", "msra_td500", "negatives_skimage"):
        (tmp_path / "devset" / src / "images").mkdir(parents=True)
        photo = (100 + 30 * rng.standard_normal((600, 800, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(photo).save(tmp_path / "devset" / src / "images" / "a.jpg")
    cases = mod.make_watermark_set(tmp_path / "devset", tmp_path / "wm", per_source=1)
    assert len(cases) == 3 * len(mod.WATERMARKS)
    reader, read = Reader(), 0
    for name, mask, words, boxes, polys in cases:
        quad = np.asarray(polys[0], float).reshape(1, 4, 2)
        inside = quads_mask(quad, mask.shape[1], mask.shape[0])
        assert mask.any() and inside[mask].mean() > 0.97, name       # the glyphs lie in the quad
        x0, y0, x1, y1 = boxes[0]
        assert quad[0, :, 0].min() == x0 and quad[0, :, 1].max() == y1
        rgb = np.asarray(Image.open(tmp_path / "wm" / name).convert("RGB"))
        read += spells(words[0], [reader.read_quads(rgb, quad)[0][0]])
    assert read >= 0.6 * len(cases), read
