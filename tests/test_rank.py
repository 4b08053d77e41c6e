from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.boxes import Detections
from pipeline.rank import (RankConfig, committee_score, kcenter_greedy, match_f1, order_by, ranking_table,
                           select_diverse, tta_score, uncertainty_score)
from tests.fakes import FakeDetector

W, H = 200, 100


def det(boxes, scores) -> Detections:
    return Detections(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float))


def test_one_uncertain_box_outranks_confident_boxes() -> None:
    uncertain = det([[10, 10, 60, 30]], [0.5])
    confident = det([[10, 10, 60, 30], [80, 40, 150, 60], [5, 70, 40, 90]], [0.99, 0.99, 0.99])
    assert uncertainty_score(uncertain, W, H) > uncertainty_score(confident, W, H)


@pytest.mark.parametrize("case", [
    # (description, a, b) where a must outrank b
    ("more uncertain boxes", det([[0, 0, 20, 10], [30, 0, 50, 10]], [0.5, 0.5]), det([[0, 0, 20, 10]], [0.5])),
    ("larger uncertain box", det([[0, 0, 150, 80]], [0.5]), det([[0, 0, 15, 8]], [0.5])),
    ("closer to the band's middle", det([[0, 0, 20, 10]], [0.5]), det([[0, 0, 20, 10]], [0.75])),
    ("empty is not certain", det([], []), det([[0, 0, 20, 10]], [0.99])),
])
def test_uncertainty_orderings(case) -> None:
    _, a, b = case
    assert uncertainty_score(a, W, H) > uncertainty_score(b, W, H)


def test_committee_zero_for_identical_and_high_for_disjoint() -> None:
    a = det([[10, 10, 60, 30], [80, 40, 150, 60]], [0.9, 0.6])
    assert committee_score(a, a, W, H) == 0.0
    assert match_f1(a, a) == 1.0
    b = det([[160, 70, 190, 95]], [0.9])
    assert committee_score(a, b, W, H) == pytest.approx(1.0)
    assert committee_score(det([], []), det([], []), W, H) == 0.0


def test_tta_score_zero_when_stable() -> None:
    a = det([[10, 10, 60, 30]], [0.9])
    assert tta_score(a, [a, a]) == 0.0
    assert tta_score(a, [det([], [])]) == 1.0


def test_diversity_never_picks_two_near_duplicates() -> None:
    order = ["a", "a_copy", "b", "a_resized", "c"]
    groups = {"a": "dup-1", "a_copy": "dup-1", "a_resized": "dup-1", "b": "", "c": "dup-2"}
    assert select_diverse(order, groups, k=3) == ["a", "b", "c"]


def test_kcenter_covers_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    emb = np.concatenate([c + rng.normal(0, 0.1, (20, 2)) for c in centers])
    chosen = kcenter_greedy(emb, 3, candidates=range(len(emb)))
    assert sorted(i // 20 for i in chosen) == [0, 1, 2]


def test_ranking_table_has_every_strategy_and_reason() -> None:
    images = [{"id": "x", "width": W, "height": H}, {"id": "y", "width": W, "height": H}]
    model = {"x": det([[10, 10, 60, 30]], [0.5]), "y": det([[10, 10, 60, 30]], [0.99])}
    df = ranking_table(images, model, RankConfig(), committee={"x": det([], []), "y": model["y"]})
    assert order_by(df, "uncertainty") == ["x", "y"]
    assert order_by(df, "committee") == ["x", "y"]
    assert set(df.columns) >= {"score_uncertainty", "score_committee", "score_tta", "score_random", "reason"}
    with pytest.raises(ValueError, match="tta"):
        order_by(df, "tta")
    assert "0.2-0.8" in df.set_index("image_id").loc["x", "reason"]
    by_committee = ranking_table(images, model, RankConfig(), committee={"x": det([], []), "y": model["y"]},
                                 strategy="committee").set_index("image_id")["reason"]
    assert by_committee["x"].startswith("detectors disagree")      # the committee's own signal leads
    assert by_committee["y"].startswith("detectors mostly agree")
    assert ranking_table(images, model, strategy="random")["reason"].str.startswith("random pick").all()


# --- the workspace stage: real catalog, real files, real duplicate engine ------------------------

def BoxesByBrightness() -> FakeDetector:
    """A deterministic stand-in model: uncertain boxes on bright images, confident on dark ones."""
    return FakeDetector(lambda im: det([[2, 2, 30, 12]], [0.5 if im.mean() > 128 else 0.99]), version="fake-v1")


def test_rank_workspace_writes_table_and_diverse_batch(tmp_path) -> None:
    from pipeline.curate.testdata import text_page
    from pipeline.harvest import harvest
    from pipeline.rank import RankRun, batch_from_ranking, load_ranking, rank_workspace
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    bright, _ = text_page(1, size=(192, 144), kind="paper")
    bright.save(src / "bright.png")
    bright.resize((173, 130)).save(src / "bright_small.jpg", quality=75)   # near-duplicate of bright
    text_page(2, size=(192, 144), kind="paper")[0].save(src / "other_bright.png")
    text_page(3, size=(192, 144), kind="micro")[0].save(src / "dark.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])

    ranked = rank_workspace(ws, BoxesByBrightness(), RankRun(strategy="uncertainty", top=2, committee=None))
    df = ranked.frame
    assert ranked.errors == [] and ranked.run.strategy == "uncertainty"
    names = dict(zip(df["image_id"], df["original_name"]))
    batch = [names[i] for i in batch_from_ranking(load_ranking(ws), "uncertainty", 2)]
    assert "dark.png" not in batch
    assert not {"bright.png", "bright_small.jpg"} <= set(batch)      # never both near-duplicates
    assert "other_bright.png" in batch
    import csv

    with open(ws.reports_dir / "ranking.csv", newline="") as f:   # ranks a spreadsheet sorts on: 1, 2, then empty
        ranks = [r["batch_rank"] for r in csv.DictReader(f)]
    assert ranks == ["1", "2", "", ""]
    with ws.catalog() as cat:  # predictions are stored, so push sends exactly what was ranked
        assert cat.scalar("SELECT COUNT(*) FROM predictions WHERE model_version = 'fake-v1'") == 4
        assert cat.scalar("SELECT status FROM iterations WHERE step = 'rank'") == "done"
    again = rank_workspace(ws, BoxesByBrightness(), RankRun(strategy="uncertainty", top=2, committee=None)).frame
    assert again["image_id"].tolist() == df["image_id"].tolist()       # idempotent
    from pipeline.studio.push import read_ranking

    # `push --strategy ranked` follows whatever strategy rank picked its batch by
    assert read_ranking(ws, "ranked") == read_ranking(ws, "uncertainty")
    assert read_ranking(ws, "ranked")[2] == "uncertainty"
    # once one of the near-duplicates is labelled, the other is not worth a label: not in the
    # batch, and last in push's order (a walkthrough got three copies of one image to label)
    ids = {n: i for i, n in names.items()}
    with ws.catalog() as cat:
        cat.set_status(ids["bright.png"], "labelled")
    third = rank_workspace(ws, BoxesByBrightness(), RankRun(strategy="uncertainty", top=2, committee=None)).frame
    copy = third[third["image_id"] == ids["bright_small.jpg"]].iloc[0]
    assert bool(copy["duplicate_of_labelled"]) and pd.isna(copy["batch_rank"])   # not in the batch
    order = batch_from_ranking(load_ranking(ws), "uncertainty", 3)
    assert order[-1] == ids["bright_small.jpg"] and names[order[0]] == "other_bright.png"
    # a stored copy damaged after its predictions were stored is not ranked on them (it led the
    # batch, and push then failed on it): it is skipped, named by its file name
    with ws.catalog() as cat:
        stored = ws.abspath(cat.image(ids["other_bright.png"])["path"])
    stored.write_bytes(b"")
    fourth = rank_workspace(ws, BoxesByBrightness(), RankRun(strategy="uncertainty", top=2, committee=None))
    assert ids["other_bright.png"] not in set(fourth.frame["image_id"])
    assert [(i, "other_bright.png" in e and "harvested as" in e) for i, e in fourth.errors] == [(ids["other_bright.png"], True)]


def test_a_rank_that_fails_is_logged_as_failed_with_its_error(tmp_path, monkeypatch) -> None:
    """`status` must not show a crashed rank as still running."""
    import pipeline.rank as rank
    from pipeline.curate.testdata import text_page
    from pipeline.harvest import harvest
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    text_page(1, size=(96, 72), kind="paper")[0].save(src / "a.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(rank, "pick_batch", broken)
    with pytest.raises(OSError):
        rank.rank_workspace(ws, BoxesByBrightness(), rank.RankRun(strategy="uncertainty", top=1, committee=None))
    with ws.catalog() as cat:
        row = cat.last_iteration()
    assert (row["step"], row["status"]) == ("rank", "failed")
    assert "OSError: disk full" in row["metrics"]


@pytest.mark.parametrize("requested, expected", [
    ("auto", "uncertainty"),        # measured at least as good as committee in both AL simulations
    ("committee", "committee"),     # an explicit choice wins
    ("random", "random"),
])
def test_auto_strategy(requested: str, expected: str) -> None:
    from pipeline.rank import choose_strategy

    assert choose_strategy(requested) == expected


def test_plan_rank_drops_a_committee_that_is_the_model_itself() -> None:
    """`rank` and `iterate` share this rule: ppocr against ppocr disagrees nowhere, so no committee
    is run; a different detector is run as the committee (its scores in the table), auto ranks by
    uncertainty either way."""
    from types import SimpleNamespace

    from pipeline.rank import plan_rank

    ppocr, model = SimpleNamespace(version="ppocr-v4"), SimpleNamespace(version="fasterrcnn-1")
    run, second = plan_rank(ppocr, SimpleNamespace(version="ppocr-v4"), "auto", top=5)
    assert (run.strategy, run.committee, second, run.top) == ("uncertainty", None, None, 5)
    run, second = plan_rank(model, ppocr, "auto")
    assert (run.strategy, run.committee, second) == ("uncertainty", "ppocr-v4", ppocr)
    with pytest.raises(ValueError, match="is the model itself"):
        plan_rank(ppocr, ppocr, "committee")     # asked for explicitly: say why it cannot be done


def test_committee_strategy_with_the_model_as_committee_names_the_real_cause() -> None:
    """`--strategy committee --committee ppocr` with ppocr as the model used to say "needs a
    committee detector" although one was given: the error now says it is the model itself; with
    no committee at all it says to give one. `iterate` (which does not load a committee equal to
    the model's name) gets the same message."""
    from types import SimpleNamespace

    from pipeline.rank import RankOptions

    ppocr = SimpleNamespace(version="ppocr-v4-det")
    opts = RankOptions(strategy="committee", committee="ppocr")
    for second in (SimpleNamespace(version="ppocr-v4-det"), None):
        with pytest.raises(ValueError) as err:
            opts.plan(ppocr, second)
        assert str(err.value).startswith("--committee ppocr is the model itself (ppocr-v4-det); a committee "
                                         "needs a second, different detector")
    with pytest.raises(ValueError, match="needs a second detector: give --committee"):
        RankOptions(strategy="committee", committee=None).plan(ppocr, None)


def test_rank_cli_committee_equal_to_the_model_is_one_line_exit_2(tmp_path, fake) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    assert CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "init"]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "rank", "--strategy", "committee",
                                 "--committee", "ppocr"])
    assert r.exit_code == 2, r.output
    assert "--committee ppocr is the model itself" in " ".join(r.output.split())


def test_iterate_rejects_an_unknown_strategy_before_any_work() -> None:
    from pipeline.loop import IterateConfig
    from pipeline.rank import RankOptions

    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        IterateConfig(rank=RankOptions(strategy="best"))
    assert IterateConfig().rank.strategy == "auto"


def test_rank_cli_with_real_ppocr_resolves_auto_and_writes_the_batch(tmp_path) -> None:
    """`textloop rank` end to end on real files with the real ppocr: with no trained model the
    model *is* ppocr, so auto ranks by uncertainty without a committee; the table push reads
    records that strategy."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.curate.testdata import text_page
    from pipeline.harvest import harvest
    from pipeline.rank import load_ranking
    from pipeline.studio.push import read_ranking
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    for i, kind in enumerate(("paper", "paper", "micro")):
        text_page(10 + i, size=(320, 240), kind=kind)[0].save(src / f"p{i}.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "--json", "rank", "--top", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["strategy"] == "uncertainty" and data["committee"] is None and data["pool"] == 3
    assert len(data["batch"]) == 2
    df = load_ranking(ws)
    assert set(df["batch_strategy"]) == {"uncertainty"}
    assert read_ranking(ws, "ranked")[2] == "uncertainty"
    bad = CliRunner().invoke(app, ["--workspace", str(ws.root), "rank", "--strategy", "best"])
    assert bad.exit_code == 2 and "unknown strategy 'best'" in bad.output


def test_an_interrupted_rank_says_what_is_kept(tmp_path, monkeypatch) -> None:
    """Ctrl-C in `rank` exited 130 without a word."""
    from typer.testing import CliRunner

    import pipeline.cli.rank as cli_rank
    from pipeline.cli.app import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_rank, "rank_images", interrupted)
    assert CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "init"]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "rank"])
    assert r.exit_code == 130 and "interrupted; the ranking was not written" in " ".join(r.stderr.split()), r.output


def test_rank_on_a_workspace_with_nothing_to_label_does_not_suggest_a_push(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    assert CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "init"]).exit_code == 0
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "rank"])
    assert r.exit_code == 0 and "nothing to push" in r.output and "textloop push" not in r.output, r.output


def test_rank_with_tta_runs_the_real_detector_on_flipped_and_rescaled_views(tmp_path) -> None:
    """`rank --strategy tta`: stock ppocr against itself on real images; every image gets a
    score in [0, 1] and the batch is the most unstable first."""
    from pipeline.curate.testdata import text_page
    from pipeline.harvest import harvest
    from pipeline.rank import RankOptions, rank_images
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        text_page(i, size=(320, 240), kind="paper")[0].save(src / f"p{i}.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    res = rank_images(ws, RankOptions(strategy="tta", tta=True, committee=None, top=2), detector="ppocr")
    s = res.frame["score_tta"]
    assert len(s) == 3 and s.between(0, 1).all(), s
    assert list(res.batch["score_tta"]) == sorted(s, reverse=True)[:2]


def test_a_stored_copy_damaged_since_harvest_is_named_by_its_file(tmp_path) -> None:
    """A stored image overwritten at the same size was `skipped 42999850: corrupt: ...`, and the
    duplicate search warned with the bare hash: both name the file now, once."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.curate.testdata import text_page
    from pipeline.harvest import harvest
    from pipeline.workspace import Workspace

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        text_page(20 + i, size=(320, 240), kind="paper")[0].save(src / f"page{i}.png")
    ws = Workspace.open(tmp_path / "ws")
    harvest(ws, [str(src)])
    with ws.catalog() as cat:
        row = next(r for r in cat.images() if r["original_name"] == "page1.png")
    stored = ws.abspath(row["path"])
    data = stored.read_bytes()
    stored.write_bytes(data[:100] + bytes(len(data) - 100))     # same size: only decoding finds it
    res = CliRunner().invoke(app, ["--workspace", str(ws.root), "rank", "--top", "2"])
    assert res.exit_code == 0, res.output
    skipped = [line for line in res.output.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and f"skipped {row['id'][:8]}: page1.png: " in skipped[0], res.output
