"""The exact graph rewrites (`pipeline.detectors.graph`): the DB network computes the same map
with fewer, cheaper ops, on the stock model, and on hand-made graphs whose borders would show a
wrong fold."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.detectors.graph import fold, fold_bytes, folded_bytes
from pipeline.detectors.ppocr import PPOCRDetector, default_model_path, preprocess
from tests.test_ppocr import render


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def ops(data: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def test_stock_model_folds_to_the_same_probability_map_with_fewer_ops() -> None:
    data = default_model_path().read_bytes()
    folded = folded_bytes(data)
    before, after = ops(data), ops(folded)
    # the affine blocks and the written-out hardswish are gone
    assert after["Clip"] == 0 and after["Div"] == 0
    assert after["Add"] + after["Mul"] < (before["Add"] + before["Mul"]) / 2
    assert after["Conv"] > before["Conv"] - 1   # convs are kept (and a few affine blocks become 1x1 convs)

    arr, _ = render("LOT 2024-117 / 37.5 C", (416, 160), (24, 60), px=30)
    x = preprocess(arr[..., ::-1])
    ref, out = run(data, x), run(folded, x)
    assert np.abs(out - ref).max() < 1e-4
    assert (ref > 0.3).sum() > 500      # the text is there, and found the same way
    assert ((out > 0.3) != (ref > 0.3)).sum() == 0


def test_the_detector_runs_the_folded_graph_and_finds_the_same_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.detectors.ppocr as ppocr

    arr, _ = render("SPECIMEN 7781-B", (480, 180), (30, 70), px=32)
    loaded: list[bytes] = []
    monkeypatch.setattr(ppocr, "folded_bytes", lambda data: loaded.append(folded_bytes(data)) or loaded[-1])
    (a,) = PPOCRDetector().detect([arr])
    assert len(loaded) == 1 and ops(loaded[0])["Div"] == 0    # the session got the folded graph
    monkeypatch.setattr(ppocr, "folded_bytes", lambda data: data)
    (b,) = PPOCRDetector().detect([arr])
    assert len(a) == len(b) >= 1
    assert np.abs(a.boxes - b.boxes).max() <= 1.0


def test_a_network_scored_while_training_is_folded_without_filling_the_user_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every epoch's validation exports the current weights; each folded copy is 4.7 MB, and a
    bundle's graph (kept) is the only one worth finding again in the cache."""
    from pipeline.detectors.dbnet import DBDetector

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = default_model_path().read_bytes()
    folded_bytes.cache_clear()
    arr, _ = render("SPECIMEN 7781-B", (480, 180), (30, 70), px=32)
    (a,) = DBDetector(version="epoch", model_bytes=data, cache_graph=False).detect([arr])
    assert len(a) >= 1 and not list(tmp_path.rglob("db-folded-*")) and folded_bytes.cache_info().currsize == 0
    once = fold_bytes(data)
    assert ops(once)["Div"] == 0 and folded_bytes(data) == once and len(list(tmp_path.rglob("db-folded-*"))) == 1
    folded_bytes.cache_clear()


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def toy_model(rng: np.random.Generator) -> onnx.ModelProto:
    """conv3x3 -> *s+b -> hardswish -> *s+b -> padded depthwise conv -> *s+b -> 1x1 conv, in the
    shapes PP-LCNetV3 writes them (scalars as initializers and as Constant nodes)."""
    c = 4
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["s0", "c0"], ["m0"]),
        helper.make_node("Add", ["m0", "t0"], ["a0"]),
        helper.make_node("Constant", [], ["three"], value=_init("v3", np.array(3.0))),
        helper.make_node("Add", ["a0", "three"], ["h0"]),
        helper.make_node("Clip", ["h0", "zero", "six"], ["h1"]),
        helper.make_node("Mul", ["a0", "h1"], ["h2"]),
        helper.make_node("Div", ["h2", "six"], ["hs"]),
        helper.make_node("Mul", ["hs", "s1"], ["m1"]),
        helper.make_node("Add", ["m1", "t1"], ["a1"]),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=c),
        helper.make_node("Mul", ["s2", "c1"], ["m2"]),
        helper.make_node("Add", ["m2", "t2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Mul", ["r2", "s3"], ["m3"]),
        helper.make_node("Add", ["m3", "t3"], ["a3"]),
        helper.make_node("Conv", ["a3", "wp"], ["y"], kernel_shape=[1, 1]),
    ]
    inits = [
        _init("w0", rng.normal(size=(c, 3, 3, 3))), _init("b0", rng.normal(size=c)),
        _init("wd", rng.normal(size=(c, 1, 3, 3))), _init("bd", rng.normal(size=c)),
        _init("wp", rng.normal(size=(2, c, 1, 1))),
        _init("zero", np.array(0.0)), _init("six", np.array(6.0)),
        *[_init(f"s{i}", [rng.uniform(0.5, 2)]) for i in range(4)],
        *[_init(f"t{i}", [rng.uniform(-2, 2)]) for i in range(4)],
    ]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_each_rewrite_is_exact_at_the_borders_too() -> None:
    """A fold into a padded conv would be wrong only at the edge pixels (its zero padding would
    become the affine block's offset): compare every pixel of a small map."""
    rng = np.random.default_rng(7)
    model = toy_model(rng)
    data = model.SerializeToString()
    folded = onnx.load_from_string(data)
    counts = fold(folded)
    onnx.checker.check_model(folded)
    assert counts["affine_after_conv"] == 4        # two convs, each * s + b
    assert counts["hardswish"] == 1
    assert counts["affine_before_pointwise"] == 1  # into the 1x1 conv
    assert counts["affine_as_conv"] == 1           # before the padded depthwise conv: kept apart
    x = rng.normal(size=(1, 3, 9, 7)).astype(np.float32) * 3
    ref, out = run(data, x), run(folded.SerializeToString(), x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_a_graph_the_rules_do_not_know_runs_as_given(caplog: pytest.LogCaptureFixture) -> None:
    assert folded_bytes(b"not an onnx model") == b"not an onnx model"
    assert "not folded" in caplog.text
    rng = np.random.default_rng(1)
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])]),
        opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(folded_bytes(plain.SerializeToString()), x), np.maximum(x, 0))


def test_the_folded_copy_is_cached_so_a_later_detector_starts_without_onnx(tmp_path) -> None:
    """Making the folded graph imports `onnx` (~1.6 s); a later process reads the cached copy, and
    a damaged cached copy still gives a working detector (the graph as shipped, and a warning)."""
    import os
    import subprocess
    import sys

    from pipeline.detectors.graph import FOLD_VERSION

    code = (
        "import sys, logging, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from pipeline.detectors.ppocr import PPOCRDetector\n"
        "from tests.test_ppocr import render\n"
        "arr, _ = render('LOT 2024-117', (360, 140), (20, 50), px=30)\n"
        "(d,) = PPOCRDetector(threads=1).detect([arr])\n"
        "print(len(d), 'onnx' in sys.modules)\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    repo = Path(__file__).resolve().parents[1]

    def run_once() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True, timeout=300)

    first = run_once()
    assert first.returncode == 0, first.stderr
    cached = list((tmp_path / "cache" / "textloop").glob(f"db-folded-v{FOLD_VERSION}-*.onnx"))
    assert len(cached) == 1 and ops(cached[0].read_bytes())["Div"] == 0
    second = run_once()
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == [first.stdout.split()[0], "False"]   # same finds, no onnx import
    assert int(first.stdout.split()[0]) >= 1
    cached[0].write_bytes(b"damaged")
    third = run_once()
    assert third.returncode == 0, third.stderr
    assert third.stdout.split()[0] == first.stdout.split()[0] and "did not load" in third.stderr
