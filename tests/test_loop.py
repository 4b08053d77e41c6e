from __future__ import annotations

import math

import pytest

from pipeline.loop import promotion_decision

CUR = {"text_coverage": 0.90, "f1": 0.60, "over_redaction": 0.05}


@pytest.mark.parametrize("candidate, promote, regressed", [
    ({"text_coverage": 0.92, "f1": 0.61, "over_redaction": 0.05}, True, []),
    ({"text_coverage": 0.898, "f1": 0.60, "over_redaction": 0.05}, True, []),          # within tolerance
    ({"text_coverage": 0.85, "f1": 0.70, "over_redaction": 0.04}, False, ["text_coverage"]),
    ({"text_coverage": 0.95, "f1": 0.50, "over_redaction": 0.05}, False, ["f1"]),
    ({"text_coverage": 0.95, "f1": 0.65, "over_redaction": 0.20}, False, ["over_redaction"]),
    ({"text_coverage": 0.95, "f1": math.nan, "over_redaction": 0.05}, True, []),      # undefined: not compared
])
def test_promotion_rule(candidate, promote, regressed) -> None:
    ok, regressions = promotion_decision(candidate, CUR, tolerance=0.005)
    assert ok == promote
    assert [r.split(":")[0] for r in regressions] == regressed


def test_first_model_is_promoted() -> None:
    assert promotion_decision({"text_coverage": 0.1, "f1": 0.1}, None) == (True, [])
