"""Box geometry in `pipeline.boxes`: Detections' clip/translate/nms and the vectorised helpers
that evaluation, ranking, label-noise and legibility share."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.boxes import (Detections, cxcywh_norm_to_xyxy, greedy_match, inside_fraction, iou_matrix, line_bridges, nms,
                            xywh_to_xyxy, xyxy_to_cxcywh_norm, xyxy_to_xywh)
from pipeline.legibility import covered_fraction


def test_translate_moves_boxes_and_quads():
    d = Detections.from_quads([[[0, 0], [10, 0], [10, 5], [0, 5]]], [0.5])
    t = d.translate(100, 20)
    assert t.boxes.tolist() == [[100, 20, 110, 25]]
    assert t.quads[0, 2].tolist() == [110, 25]
    assert d.boxes.tolist() == [[0, 0, 10, 5]]   # a new object; the original is unchanged


def test_clip_clips_boxes_and_leaves_quads():
    d = Detections.from_quads([[[-5, 0], [10, 0], [10, 5], [-5, 5]]], [0.5])
    c = d.clip(8, 4)
    assert c.boxes.tolist() == [[0, 0, 8, 4]]
    assert c.quads[0, 0].tolist() == [-5, 0]


def test_nms_keeps_the_best_of_each_overlapping_group_per_label():
    d = Detections([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]],
                   [0.8, 0.9, 0.7, 0.1], [0, 0, 1, 0])
    kept = d.nms(0.5)
    assert kept.scores.tolist() == [0.9, 0.7, 0.1]          # sorted by score; label 1 is not suppressed
    assert len(d.nms(0.5, per_label=False)) == 2
    assert nms(np.zeros((0, 4)), []).tolist() == []


def test_greedy_match_is_one_to_one_best_score_first():
    ious = np.array([[0.6, 0.7], [0.0, 0.9], [0.55, 0.0]])
    # prediction 1 (best score) takes target 1; prediction 0 then takes target 0; prediction 2 finds none free
    assert greedy_match(ious, [0.5, 0.9, 0.4], 0.5).tolist() == [0, 1, -1]
    assert greedy_match(ious, [0.5, 0.9, 0.4], 0.5, eligible=[False, True]).tolist() == [-1, 1, -1]
    assert greedy_match(np.zeros((2, 0)), [0.1, 0.2]).tolist() == [-1, -1]


def test_inside_fraction_counts_outward_rounded_pixels():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    got = inside_fraction([[0, 0, 10, 10], [4.5, 0, 5.5, 1], [20, 20, 30, 30]], mask)
    assert got.tolist() == [0.5, 0.5, 1.0]   # [4.5, 5.5] touches pixels 4 and 5; off-image: `empty`
    assert inside_fraction([[20, 20, 30, 30]], mask, empty=0.0).tolist() == [0.0]


def test_inside_fraction_is_the_same_count_for_small_boxes_and_for_boxes_covering_the_image():
    """Small boxes are counted one by one, large sets through an integral image: both must give
    each box's exact share, whichever path a page of words or a full-image grid takes."""
    rng = np.random.default_rng(3)
    mask = rng.random((120, 90)) < 0.4
    small = np.array([[x, y, x + rng.uniform(1, 9), y + rng.uniform(1, 9)]
                      for x, y in rng.uniform(-5, 95, (20, 2))])          # per-box path
    large = np.concatenate([small, [[-10, -10, 200, 200], [0.5, 0.5, 89.5, 119.5]]])   # integral path
    expect = []
    for x0, y0, x1, y1 in np.asarray(large):
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(90, int(np.ceil(x1))), min(120, int(np.ceil(y1)))
        expect.append(mask[r0:r1, c0:c1].mean() if c1 > c0 and r1 > r0 else 1.0)
    assert np.allclose(inside_fraction(small, mask), expect[:len(small)])
    assert np.allclose(inside_fraction(large, mask), expect)


def test_legibility_never_writes_off_a_reading_outside_the_mask_as_covered():
    """The three copies disagreed on a box with no pixel in the image: evaluation and label noise
    counted it as covered (nothing to cover), legibility as not covered. One function, `empty`
    chosen by the caller: a reading is never dropped as covered on no evidence."""
    mask = np.ones((10, 10), bool)
    assert covered_fraction(mask, (20, 20, 30, 30)) == 0.0
    assert covered_fraction(mask, (2, 2, 4, 4)) == 1.0


def test_format_conversions_round_trip():
    b = np.array([[1.0, 2.0, 11.0, 7.0]])
    assert xyxy_to_xywh(b).tolist() == [[1, 2, 10, 5]]
    assert np.allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b)
    assert np.allclose(xyxy_to_cxcywh_norm(b, 20, 10), [[0.3, 0.45, 0.5, 0.5]])
    assert np.allclose(cxcywh_norm_to_xyxy(xyxy_to_cxcywh_norm(b, 20, 10), 20, 10), b)


def test_iou_matrix_shape_and_values():
    assert iou_matrix([[0, 0, 2, 2]], [[1, 0, 3, 2], [5, 5, 6, 6]]).tolist() == [pytest.approx([1 / 3, 0.0])]


def test_line_bridges_span_the_gap_between_fragments_of_one_line_only() -> None:
    old = np.array([[0, 100, 50, 112], [200, 300, 260, 314]], float)           # two covered pieces
    new = np.array([[86, 101, 120, 113],       # same line as old[0], 36 px = 3 line heights to its right
                    [300, 100, 340, 112],      # same line, 250 px away: another phrase
                    [60, 140, 90, 152],        # the next line down
                    [180, 302, 230, 316]])     # overlaps old[1]: no gap to span
    b = line_bridges(new, old)
    np.testing.assert_allclose(b, [[50, 101, 86, 113]])    # the gap, as tall as the lower box (a tie: the new one)
    np.testing.assert_allclose(line_bridges(new[:1], [[150, 100, 200, 112]]), [[120, 101, 150, 113]])  # rightwards
    # a short line beside a tall box: the bridge is the line's height, the reach 4 x the line's height
    np.testing.assert_allclose(line_bridges([[0, 0, 10, 10]], [[20, 2, 40, 200]]), [[10, 0, 20, 10]])
    assert line_bridges([[0, 0, 10, 10]], [[60, 2, 80, 200]]).shape == (0, 4)

    assert line_bridges(new, old, max_gap=2.0).shape == (0, 4)
    assert line_bridges(np.zeros((0, 4)), old).shape == (0, 4)


def test_longest_uncovered_run_sees_words_in_a_line_not_their_area() -> None:
    """A detector's line box over word labels is covered by them, though they are much thinner
    (by area the line would be half uncovered); the gap where a word was left out is the run."""
    from pipeline.boxes import longest_uncovered_run

    line = [0, 0, 100, 20]
    words = [[5, 6, 30, 14], [33, 6, 58, 14], [82, 6, 98, 14]]      # thin word boxes, one word missing
    assert np.allclose(longest_uncovered_run(line, words), [58, 0, 82, 20])
    assert np.allclose(longest_uncovered_run(line, []), line)
    run = longest_uncovered_run(line, [[0, 2, 100, 18]])
    assert run[2] - run[0] == 0                                      # all covered
    assert np.allclose(longest_uncovered_run(line, [[40, 18, 60, 60]]), line)   # the next line down: not in line
    assert np.allclose(longest_uncovered_run([0, 0, 20, 100], [[2, 0, 18, 40]]), [0, 40, 20, 100])  # vertical line


def test_centre_inside_asks_where_a_box_is_centred_not_whether_it_overlaps() -> None:
    from pipeline.boxes import centre_inside

    line = np.array([[0.0, 10.0, 100.0, 30.0]])
    boxes = np.array([[90.0, 12.0, 140.0, 28.0],    # overlaps the line's end, centred beyond it
                      [40.0, 15.0, 60.0, 25.0],     # a word of the line
                      [40.0, 40.0, 60.0, 50.0]])    # below it
    assert centre_inside(boxes, line).tolist() == [False, True, False]
    assert centre_inside(boxes, None).tolist() == [False] * 3 and centre_inside(np.zeros((0, 4)), line).shape == (0,)


def test_end_strips_continue_a_line_beyond_its_ends_up_to_the_edge_or_the_next_cover() -> None:
    from pipeline.boxes import end_strips, quad_to_xyxy, strip_part, xyxy_to_quad

    line = xyxy_to_quad([[100.0, 50.0, 200.0, 60.0]])    # 10 px tall
    strips, lengths, thick = end_strips(line, 4.0, 400, 100)
    assert lengths.tolist() == [40.0, 40.0] and thick.tolist() == [10.0, 10.0]
    assert quad_to_xyxy(strips).tolist() == [[200, 50, 240, 60], [60, 50, 100, 60]]   # after, before
    near = [strip_part(strips[k], lengths[k], after=k == 0, a=0.0, b=15.0) for k in (0, 1)]
    assert quad_to_xyxy(np.array(near)).tolist() == [[200, 50, 215, 60], [85, 50, 100, 60]]   # from the cover out
    # cut by the image's edge, and by the next cover along the midline (not by one above the line)
    covered = np.zeros((100, 400), bool)
    covered[52:58, 225:230] = True
    covered[30:45, 205:215] = True
    strips, lengths, _ = end_strips(xyxy_to_quad([[10.0, 50.0, 200.0, 60.0]]), 4.0, 400, 100, covered)
    assert lengths.tolist() == [25.0, 10.0]
    # a one-letter cover, taller than wide, continues left and right; a turned line along itself
    _, lengths, thick = end_strips(xyxy_to_quad([[100.0, 40.0, 112.0, 60.0]]), 2.0, 400, 100)
    assert thick.tolist() == [20.0, 20.0] and lengths.tolist() == [40.0, 40.0]
    turned = np.array([[[100.0, 100.0], [170.7, 170.7], [163.6, 177.8], [92.9, 107.1]]])   # 45 degrees, 10 px thick
    strips, lengths, thick = end_strips(turned, 2.0, 1000, 1000)
    step = strips[0, 1] - strips[0, 0]
    assert np.allclose(thick, 10.0, atol=0.1) and np.allclose(lengths, 20.0, atol=0.2)
    assert np.allclose(step / np.linalg.norm(step), [2 ** -0.5, 2 ** -0.5], atol=1e-3)
    assert np.allclose(strips[0, 0], turned[0, 1], atol=0.2)    # starts where the line ends
