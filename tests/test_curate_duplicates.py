"""Both curation engines on a generated pool with planted problems (fastdup for real, via its venv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.curate.duplicates import DuplicateConfig, FastdupUnavailable, ImageRef, fastdup_python, find_duplicates
from pipeline.curate.testdata import make_pool

FASTDUP_OK = fastdup_python().exists()


def _refs(pool, test_split_for: str) -> list[ImageRef]:
    return [ImageRef(p.name, p, "test" if p.name == test_split_for else "train") for p in pool.files]


def _check_planted(report, pool, strict: bool) -> None:
    im = report.images.set_index("image_id")
    a, b = pool.exact
    assert im.loc[a, "is_exact_duplicates_issue"] and im.loc[b, "is_exact_duplicates_issue"]
    assert im.loc[a, "cluster_id"] == im.loc[b, "cluster_id"] != ""
    c, d = pool.near
    assert im.loc[c, "is_near_duplicates_issue"] and im.loc[d, "is_near_duplicates_issue"]
    assert im.loc[c, "nearest_duplicate"] == d
    assert im.loc[pool.outlier, "is_outlier_issue"]
    # the planted outlier is the most outlying image
    assert report.images.sort_values("outlier_score").iloc[0]["image_id"] == pool.outlier
    assert im.loc[pool.broken, "is_broken_issue"] and not im.drop(index=pool.broken)["is_broken_issue"].any()
    # the near pair straddles train/test: reported as a cross-split group
    pairs = report.pairs
    cross = pairs[pairs["cross_split"]]
    assert {c, d} in [{r.image_a, r.image_b} for r in cross.itertuples()]
    assert report.summary()["cross_split_groups"] >= 1
    if strict:  # the permissive engine is exact on this pool: nothing else is flagged
        flagged = set(im.index[im["is_exact_duplicates_issue"] | im["is_near_duplicates_issue"]])
        assert flagged == {a, b, c, d}
        assert set(im.index[im["is_outlier_issue"]]) == {pool.outlier}
    # scores follow the cleanvision convention: lower = more severe, within [0, 1]
    for col in ("exact_duplicates_score", "near_duplicates_score", "outlier_score"):
        vals = report.images[col].dropna()
        assert ((vals >= 0) & (vals <= 1 + 1e-9)).all()


def test_permissive_engine_finds_planted_problems(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool", n=24, seed=0)
    report = find_duplicates(_refs(pool, pool.near[1]), DuplicateConfig(engine="permissive"))
    assert len(report.images) == len(pool.files)
    _check_planted(report, pool, strict=True)


def test_permissive_catches_harder_near_duplicates(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool", n=16, seed=3, near_scale=0.5, near_quality=40, broken=False)
    report = find_duplicates(_refs(pool, ""), DuplicateConfig())
    im = report.images.set_index("image_id")
    assert im.loc[pool.near[1], "nearest_duplicate"] == pool.near[0]


@pytest.mark.skipif(not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)")
def test_fastdup_engine_finds_planted_problems(tmp_path: Path, monkeypatch) -> None:
    # telemetry stays off even when the caller's environment does not say so: fastdup's Sentry
    # init writes ~/.token when SENTRY_OPT_OUT is unset, so a fake HOME shows whether it ran
    monkeypatch.delenv("SENTRY_OPT_OUT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    pool = make_pool(tmp_path / "pool", n=24, seed=0)
    report = find_duplicates(_refs(pool, pool.near[1]), DuplicateConfig(engine="fastdup"))
    assert not (tmp_path / "home" / ".token").exists()
    assert report.engine == "fastdup"
    assert len(report.images) == len(pool.files)
    _check_planted(report, pool, strict=False)
    assert "fastdup_outlier" in report.images.columns


@pytest.mark.skipif(not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)")
def test_the_fastdup_worker_asks_no_server_anything(monkeypatch) -> None:
    """`import fastdup` looked up pypi.org and opened port 443 (its version check) on every
    curate run. In the worker's environment, with the worker's own preamble, importing it
    resolves no host name at all."""
    import subprocess

    from pipeline.curate import duplicates as dup

    for key in ("FASTDUP_PRODUCTION", "SENTRY_OPT_OUT"):
        monkeypatch.delenv(key, raising=False)     # not even the caller's environment says so
    worker = Path(dup.__file__).with_name("fastdup_worker.py")
    code = ("import runpy, socket, sys\n"
            "asked = []\n"
            "real = socket.getaddrinfo\n"
            "socket.getaddrinfo = lambda host, *a, **k: (asked.append(host), real(host, *a, **k))[1]\n"
            f"runpy.run_path({str(worker)!r}, run_name='preamble')\n"
            "import fastdup\n"
            "print('asked', asked)\n")
    r = subprocess.run([str(fastdup_python()), "-c", code], env=dup.worker_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "asked []" in r.stdout, (r.stdout[-500:], r.stderr[-500:])


def test_fastdup_missing_interpreter_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TEXTLOOP_FASTDUP_PYTHON", str(tmp_path / "nope" / "python"))
    pool = make_pool(tmp_path / "pool", n=4, broken=False)
    with pytest.raises(FastdupUnavailable, match="fastdup interpreter not found"):
        find_duplicates(_refs(pool, ""), DuplicateConfig(engine="fastdup"))


def test_unknown_engine_rejected() -> None:
    with pytest.raises(ValueError, match="unknown curation engine"):
        DuplicateConfig(engine="magic")


def test_engines_are_a_registry(tmp_path: Path, monkeypatch) -> None:
    """`find_duplicates` dispatches by name through `ENGINES` (no if/else): a registered engine
    is used, an unknown name is refused naming the known ones."""
    import numpy as np

    from pipeline.curate import duplicates as dup

    assert set(dup.ENGINES) == {"permissive", "fastdup"}
    with pytest.raises(ValueError, match="permissive, fastdup"):
        DuplicateConfig(engine="nonesuch")
    seen = []

    def fake(images, cfg, progress=None):
        seen.append(cfg.engine)
        ids = [im.image_id for im in images]
        return dup._Features({}, {i: i for i in ids}, [], ids, np.eye(len(ids), 3, dtype=np.float32))

    monkeypatch.setitem(dup.ENGINES, "fake", fake)
    pool = make_pool(tmp_path / "pool")
    report = find_duplicates(_refs(pool, pool.near[1]), DuplicateConfig(engine="fake"))
    assert seen == ["fake"] and report.engine == "fake" and not report.images["is_exact_duplicates_issue"].any()


def test_a_skipped_image_is_named_by_its_file_name(tmp_path: Path, caplog) -> None:
    """curate warned "f70b24d2...: skipped (too_small)": the hash the user never saw. The
    warning now leads with the name the image was harvested under."""
    import logging

    from pipeline.curate.duplicates import DuplicateConfig, ImageRef, find_duplicates
    from tests.imagegen import noise_image

    good = tmp_path / "good.png"
    noise_image(1, (64, 48)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a PNG")
    refs = [ImageRef("a" * 64, good, "train", "good.png"), ImageRef("b" * 64, bad, "train", "scan 17.png")]
    with caplog.at_level(logging.WARNING, logger="textloop"):
        find_duplicates(refs, DuplicateConfig())
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("scan 17.png (bbbbbbbbbbbb): skipped"))
    # the shared reason, not Pillow's "cannot identify image file <_io.BufferedReader name=7>"
    assert "not_an_image: cannot identify image data" in line and "BufferedReader" not in line, line


@pytest.mark.parametrize("engine", ["permissive", pytest.param("fastdup", marks=pytest.mark.skipif(
    not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)"))])
def test_exact_means_every_page_and_the_alpha_too(tmp_path: Path, engine: str) -> None:
    """From a walkthrough: transparent images with different words in their alpha (colour all
    black), and TIFFs alike on page 1 but not on page 2, were "exact duplicates" (similarity 1.0)
    and `--apply` excluded them. The same pixels in another format still are exact."""
    import numpy as np
    from PIL import Image, ImageDraw

    def alpha_word(word: str) -> Image.Image:
        a = Image.new("L", (96, 48), 0)
        ImageDraw.Draw(a).text((8, 16), word, fill=255)
        im = Image.new("RGBA", (96, 48), (0, 0, 0, 0))
        im.putalpha(a)
        return im

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)) for _ in range(3)]
    alpha_word("JONES").save(tmp_path / "a1.png")
    alpha_word("ALPHA").save(tmp_path / "a2.png")
    noise[0].save(tmp_path / "p1.tif", save_all=True, append_images=[noise[1]])
    noise[0].save(tmp_path / "p2.tif", save_all=True, append_images=[noise[2]])
    noise[0].save(tmp_path / "same.png")
    noise[0].save(tmp_path / "same.bmp")
    noise[0].convert("RGBA").save(tmp_path / "opaque.png")      # an alpha that hides nothing
    names = ["a1.png", "a2.png", "p1.tif", "p2.tif", "same.png", "same.bmp", "opaque.png"]
    refs = [ImageRef(n, tmp_path / n, "train", n) for n in names]
    im = find_duplicates(refs, DuplicateConfig(engine=engine)).images.set_index("image_id")
    exact = set(im.index[im["is_exact_duplicates_issue"]])
    if engine == "permissive":
        assert exact == {"same.png", "same.bmp", "opaque.png"}, im[["is_exact_duplicates_issue", "cluster_id"]]
    else:   # fastdup pairs by its embedding: whichever of these it pairs, only equal pixels are exact
        assert exact <= {"same.png", "same.bmp", "opaque.png"}, im[["is_exact_duplicates_issue", "cluster_id"]]


@pytest.mark.skipif(not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)")
def test_fastdup_does_not_call_a_good_gif_corrupt(tmp_path: Path) -> None:
    """fastdup reports valid GIFs as ERROR_CORRUPT_IMAGE; the reason said "corrupt" of an image
    harvest had decoded. It now says that Pillow reads it and fastdup did not compare it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    names = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / f"n{i}.png")
        names.append(f"n{i}.png")
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).convert("P").save(tmp_path / "g.gif")
    names.append("g.gif")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    names.append("bad.png")
    im = find_duplicates([ImageRef(n, tmp_path / n, "train", n) for n in names],
                         DuplicateConfig(engine="fastdup")).images.set_index("image_id")
    assert im.loc["g.gif", "is_broken_issue"] and "Pillow decodes it" in im.loc["g.gif", "broken_reason"]
    assert im.loc["bad.png", "is_broken_issue"] and "Pillow" not in str(im.loc["bad.png", "broken_reason"])


def _form(path: Path, name: str, number: int, size: tuple[int, int] = (640, 480)) -> Path:
    """One filled-in copy of a consent form: the same layout, this person's name, date and ID."""
    from PIL import Image, ImageDraw

    from tests.imagegen import text_font

    font = text_font(18)
    im = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(im)
    d.rectangle([20, 20, size[0] - 20, size[1] - 20], outline=(0, 0, 0), width=2)
    d.text((40, 40), "PATIENT CONSENT FORM", fill=(0, 0, 0), font=font)
    for k, y in enumerate(range(100, 420, 50)):
        d.line([(40, y + 25), (600, y + 25)], fill=(120, 120, 120))
        d.text((40, y), f"Field {k}:", fill=(0, 0, 0), font=font)
    d.text((160, 100), name, fill=(0, 0, 150), font=font)
    d.text((160, 150), f"19{60 + number}-0{number % 9 + 1}-1{number % 10}", fill=(0, 0, 150), font=font)
    d.text((160, 200), f"ID {100234 + number * 9173}", fill=(0, 0, 150), font=font)
    im.save(path)
    return path


@pytest.mark.parametrize("engine", ["permissive", pytest.param("fastdup", marks=pytest.mark.skipif(
    not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)"))])
def test_filled_in_copies_of_one_form_are_not_duplicates_but_its_resized_copy_is(tmp_path: Path, engine: str) -> None:
    """Five copies of one form with other names were one near-duplicate group, so `--apply`
    labelled one and excluded four, each with its own text to find. Aligned, their pixels
    differ in the fields: `content_differs` pairs, no group; a resized and recompressed copy of
    one of them is still its near duplicate."""
    from PIL import Image

    names = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dmitri Ivanov", "Eve Okafor"]
    files = [_form(tmp_path / f"form{i}.png", n, 7 * i) for i, n in enumerate(names)]
    Image.open(files[0]).resize((480, 360)).save(tmp_path / "form0_copy.jpg", quality=60)
    files.append(tmp_path / "form0_copy.jpg")
    report = find_duplicates([ImageRef(p.name, p) for p in files], DuplicateConfig(engine=engine))
    kinds = {frozenset((r.image_a, r.image_b)): r.kind for r in report.pairs.itertuples()}
    forms = [p.name for p in files[:5]]
    assert not any(kinds.get(frozenset((a, b))) == "near" for a in forms for b in forms if a < b), kinds
    assert report.summary()["content_differs_pairs"] >= 1
    groups = report.clusters.groupby("cluster_id")["image_id"].apply(set).tolist()
    assert all(len(g & set(forms)) <= 1 for g in groups), groups
    if engine == "permissive":   # fastdup's own similarity leaves this copy below its 0.96
        assert kinds.get(frozenset(("form0.png", "form0_copy.jpg"))) == "near", kinds
        assert groups == [{"form0.png", "form0_copy.jpg"}], groups


@pytest.mark.parametrize("engine", ["permissive", pytest.param("fastdup", marks=pytest.mark.skipif(
    not FASTDUP_OK, reason="no .venv-fastdup (make install-fastdup)"))])
def test_transparent_images_with_other_text_are_not_near_duplicates(tmp_path: Path, engine: str) -> None:
    """Black text on transparent black pixels was an all-black picture once alpha was dropped:
    two such images with other words were near duplicates (similarity 1.0) and `--apply`
    excluded one. Compared as a viewer shows them (over white, and over black for white text),
    they differ; a copy of one is still its near duplicate."""
    from PIL import Image, ImageDraw

    from tests.imagegen import text_font

    def transparent(path: Path, text: str, ink: tuple[int, int, int]) -> Path:
        im = Image.new("RGBA", (320, 120), ink + (0,))
        ImageDraw.Draw(im).text((10, 40), text, fill=ink + (255,), font=text_font(22))
        im.save(path)
        return path

    files = [transparent(tmp_path / "black_a.png", "PATIENT: JOHN DOE", (0, 0, 0)),
             transparent(tmp_path / "black_b.png", "ID 99812 2023-04-01", (0, 0, 0)),
             transparent(tmp_path / "white_a.png", "PATIENT: JOHN DOE", (255, 255, 255)),
             transparent(tmp_path / "white_b.png", "ID 99812 2023-04-01", (255, 255, 255))]
    Image.open(files[0]).resize((300, 112)).save(tmp_path / "black_a_copy.png")
    files.append(tmp_path / "black_a_copy.png")
    report = find_duplicates([ImageRef(p.name, p) for p in files], DuplicateConfig(engine=engine))
    near = {frozenset((r.image_a, r.image_b)) for r in report.pairs.itertuples() if r.kind in ("near", "exact")}
    for a, b in (("black_a.png", "black_b.png"), ("white_a.png", "white_b.png")):
        assert frozenset((a, b)) not in near, report.pairs
    groups = report.clusters.groupby("cluster_id")["image_id"].apply(set).tolist()
    assert not any({"black_a.png", "black_b.png"} <= g or {"white_a.png", "white_b.png"} <= g for g in groups), groups
    if engine == "permissive":
        assert frozenset(("black_a.png", "black_a_copy.png")) in near, report.pairs


def test_content_check_aligns_a_cropped_copy_and_sees_a_changed_field(tmp_path: Path) -> None:
    """A copy cropped by a few percent, resized and recompressed has the same content (the check
    aligns it first); the same form with another name in one field does not."""
    from PIL import Image

    from pipeline.curate.duplicates import _grey_small, content_differs

    a = _form(tmp_path / "a.png", "Alice Martin", 1)
    b = _form(tmp_path / "b.png", "Alan Turing", 1)             # another name in one field
    Image.open(a).crop((19, 10, 640, 480)).resize((480, 352)).save(tmp_path / "a_copy.jpg", quality=50)
    ga, gb, gc = (_grey_small(p)[0] for p in (a, b, tmp_path / "a_copy.jpg"))
    assert content_differs(ga, gc) is False and content_differs(gc, ga) is False
    assert content_differs(ga, gb) is True


def test_the_content_check_reads_16_bit_pages_as_every_stage_does(tmp_path: Path) -> None:
    """Its greys come from `imaging.load_rgb` (shrunk on decode): a 16-bit microscopy page whose
    values sit in 0-4095 was one flat white by Pillow's own 16->8 bit conversion, so two such
    pages with other labels could never differ."""
    import numpy as np
    from PIL import Image

    from pipeline.curate.duplicates import _grey_small, content_differs

    def page(label_x: int) -> Path:
        a = np.full((300, 400), 1000, np.uint16)
        a[40:60, label_x:label_x + 120] = 4000          # a bright label, 12-bit data
        p = tmp_path / f"p{label_x}.png"
        Image.fromarray(a).save(p)
        return p

    (g1,), (g2,) = _grey_small(page(20)), _grey_small(page(250))
    assert g1.shape == (300, 400) and g1.max() - g1.min() > 100
    assert content_differs(g1, g2) is True
    big = tmp_path / "big.jpg"
    Image.new("RGB", (2048, 1536), (90, 90, 90)).save(big)
    assert [g.shape for g in _grey_small(big)] == [(384, 512)]
