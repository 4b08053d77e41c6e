from __future__ import annotations

import numpy as np
import pytest

from pipeline.boxes import Detections
from pipeline.rank import (RankConfig, committee_score, kcenter_greedy, match_f1, order_by, ranking_table,
                           select_diverse, tta_score, uncertainty_score)

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
    hashes = {"a": 0b1111_0000, "a_copy": 0b1111_0000, "a_resized": 0b1111_0001, "b": 0xFFFF_0000, "c": 0x0F0F_0F0F}
    picked = select_diverse(order, hashes, k=3, max_distance=2)
    assert picked == ["a", "b", "c"]


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
