"""Exact rewrites of a DB network's ONNX graph that make onnxruntime run it faster.

PP-OCRv4's detector (PP-LCNetV3 backbone) follows each convolution with a learnable affine
block (`x * s + b`, two scalars), a hardswish written out as four ops (`x * clip(x + 3, 0, 6)
/ 6`), and another affine block; onnxruntime fuses none of them, so a third of a 1024x768 pass (one
thread, AVX2) went to element-wise ops over full feature maps, and another tenth to the layout
changes around them.
`fold` rewrites, each exactly (up to float rounding, ~3e-5 on the probability map):

- Conv -> Mul/Add by a constant scalar or per-channel vector: into the conv's weights and bias;
- `x * s + b` -> 1x1 Conv (no padding, one group) that is its only reader: into that conv
  (a padded conv is left alone: its zero padding would become `b`);
- `x * clip(x + 3, 0, 6) / 6` -> `x * HardSigmoid(x)` (onnxruntime fuses that into the conv);
- any other `x * s + b` (before a padded depthwise conv) -> a 1x1 depthwise Conv, which stays in
  onnxruntime's blocked (NCHWc) layout instead of leaving it for two element-wise ops.

`scripts/bench_graph.py` (a 1024x768 input, AVX2 host, median of 25): one pass 0.62 -> 0.49
CPU-s on one thread, 1.01 -> 0.63 on two.

The same graph comes out of `torch.onnx.export` of a tuned network (with `Constant` and
`Identity` nodes around the parameters, resolved first), so stock and tuned models both gain.

Importing `onnx` alone takes ~1.6 s, so the folded copy is kept in the user cache (`io.cache_dir`,
keyed by the source's sha256 and `FOLD_VERSION`): after the first run a detector starts without it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FOLD_VERSION = 1   # bump when a rule changes: cached folded copies are then made again


def constants_to_initializers(model: Any) -> int:
    """In place: every single-output `Constant` node becomes a graph initializer named as its
    output; returns how many were moved. Nodes with other attribute kinds are left alone."""
    from onnx import numpy_helper

    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1 and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            tensor = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), name=node.output[0])
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


class _Graph:
    """The node list and float initializers of a model, with the lookups the rules need."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.nodes = list(model.graph.node)
        self.init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}
        self._n = 0
        self.readers: dict[str, list[Any]] = {}

    def index(self) -> None:
        self.readers = {}
        for n in self.nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)

    def sole_reader(self, name: str) -> Any | None:
        nxt = self.readers.get(name, [])
        return nxt[0] if len(nxt) == 1 and name not in self.outputs else None

    def scalar(self, name: str, value: float | None = None) -> float | None:
        a = self.init.get(name)
        if a is None or a.size != 1 or a.dtype != np.float32:
            return None
        v = float(a.reshape(-1)[0])
        return v if value is None or abs(v - value) < 1e-6 else None

    def vector(self, name: str, channels: int) -> np.ndarray | None:
        """A float32 constant that broadcasts over NCHW as one value per channel (or a scalar)."""
        a = self.init.get(name)
        if a is None or a.dtype != np.float32:
            return None
        if a.size == 1 and a.ndim <= 4:
            return np.full(channels, float(a.reshape(-1)[0]), np.float32)
        if a.size == channels and 3 <= a.ndim <= 4 and a.shape[-3:] == (channels, 1, 1):
            return a.reshape(channels)
        return None

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}__folded{self._n}"

    def new_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.init[name] = value.astype(np.float32)
        return name

    def save(self) -> Any:
        from onnx import numpy_helper

        graph = self.model.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        used = {i for n in self.nodes for i in n.input} | self.outputs
        del graph.initializer[:]
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in self.init.items() if k in used)
        return self.model


def _other(node: Any, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _conv_bias(g: _Graph, conv: Any, channels: int) -> np.ndarray | None:
    if len(conv.input) > 2 and conv.input[2]:
        return g.init.get(conv.input[2])
    return np.zeros(channels, np.float32)


def _drop_identities(g: _Graph) -> int:
    """`Identity(initializer)` -> the initializer itself (torch.onnx.export writes these)."""
    alias = {n.output[0]: n.input[0] for n in g.nodes
             if n.op_type == "Identity" and n.input[0] in g.init and n.output[0] not in g.outputs}
    if not alias:
        return 0
    g.nodes = [n for n in g.nodes if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in g.nodes:
        n.input[:] = [alias.get(i, i) for i in n.input]
    return len(alias)


def _affine_after_conv(g: _Graph) -> bool:
    for conv in g.nodes:
        if conv.op_type != "Conv" or conv.input[1] not in g.init:
            continue
        op = g.sole_reader(conv.output[0])
        if op is None or op.op_type not in ("Mul", "Add") or len(op.input) != 2:
            continue
        w = g.init[conv.input[1]]
        v = g.vector(_other(op, conv.output[0]), w.shape[0])
        b = _conv_bias(g, conv, w.shape[0])
        if v is None or b is None:
            continue
        if op.op_type == "Mul":
            w, b = w * v.reshape(-1, *[1] * (w.ndim - 1)), b * v
        else:
            b = b + v
        conv.input[:] = [conv.input[0], g.new_const(conv.input[1], w), g.new_const(conv.output[0] + "_bias", b)]
        conv.output[0] = op.output[0]
        g.nodes.remove(op)
        return True
    return False


def _pointwise(conv: Any, x: str, g: _Graph) -> bool:
    from onnx import helper

    if conv.op_type != "Conv" or conv.input[0] != x or conv.input[1] not in g.init:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return (g.init[conv.input[1]].shape[2:] == (1, 1) and attrs.get("group", 1) == 1
            and not any(attrs.get("pads", [])) and auto_pad in (b"NOTSET", "NOTSET", b"VALID", "VALID"))


def _affine_before_pointwise(g: _Graph) -> bool:
    for mul in g.nodes:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for x in mul.input:
            s = g.scalar(_other(mul, x))
            if s is not None and x not in g.init:
                break
        else:
            continue
        add = g.sole_reader(mul.output[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        b = g.scalar(_other(add, mul.output[0]))
        convs = g.readers.get(add.output[0], [])
        if b is None or not convs or add.output[0] in g.outputs or not all(_pointwise(c, add.output[0], g) for c in convs):
            continue
        biases = [_conv_bias(g, c, g.init[c.input[1]].shape[0]) for c in convs]
        if any(bias is None for bias in biases):   # a computed bias: leave all of them as they are
            continue
        for conv, bias in zip(convs, biases):
            w = g.init[conv.input[1]]
            conv.input[:] = [x, g.new_const(conv.input[1], w * s),
                             g.new_const(conv.output[0] + "_bias", bias + b * w.sum(axis=(1, 2, 3)))]
        g.nodes.remove(mul)
        g.nodes.remove(add)
        return True
    return False


def _hardswish(g: _Graph) -> bool:
    from onnx import helper

    for add in g.nodes:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        x = next((i for i in add.input if g.scalar(_other(add, i), 3.0) is not None and i not in g.init), None)
        clip = g.sole_reader(add.output[0]) if x is not None else None
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3 \
                or g.scalar(clip.input[1], 0.0) is None or g.scalar(clip.input[2], 6.0) is None:
            continue
        mul = g.sole_reader(clip.output[0])
        if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
            continue
        div = g.sole_reader(mul.output[0])
        if div is None or div.input[0] != mul.output[0] or not (
                (div.op_type == "Div" and g.scalar(div.input[1], 6.0) is not None)
                or (div.op_type == "Mul" and g.scalar(div.input[1], 1 / 6) is not None)):
            continue
        gate = g.fresh(x + "_hardsigmoid")
        at = g.nodes.index(add)
        for n in (add, clip, mul, div):
            g.nodes.remove(n)
        g.nodes[at:at] = [helper.make_node("HardSigmoid", [x], [gate], alpha=1.0 / 6.0, beta=0.5),
                          helper.make_node("Mul", [x, gate], [div.output[0]])]
        return True
    return False


def _channels(model: Any) -> dict[str, int]:
    """Channel count (dim 1) of every 4-D float tensor whose channels shape inference can tell."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4 and dims[1].HasField("dim_value"):
            out[vi.name] = int(dims[1].dim_value)
    return out


def _affine_as_conv(g: _Graph, channels: dict[str, int]) -> bool:
    from onnx import helper

    for mul in g.nodes:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        x = next((i for i in mul.input if i not in g.init and g.scalar(_other(mul, i)) is not None), None)
        if x is None or x not in channels:
            continue
        add = g.sole_reader(mul.output[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2 or g.scalar(_other(add, mul.output[0])) is None:
            continue
        c = channels[x]
        s, b = g.scalar(_other(mul, x)), g.scalar(_other(add, mul.output[0]))
        w = g.new_const(x + "_affine_w", np.full((c, 1, 1, 1), s, np.float32))
        bias = g.new_const(x + "_affine_b", np.full(c, b, np.float32))
        at = g.nodes.index(mul)
        g.nodes.remove(mul)
        g.nodes.remove(add)
        g.nodes.insert(at, helper.make_node("Conv", [x, w, bias], [add.output[0]], group=c, kernel_shape=[1, 1]))
        return True
    return False


def fold(model: Any) -> dict[str, int]:
    """Rewrite `model` (onnx.ModelProto) in place; returns how many of each rewrite were made."""
    constants_to_initializers(model)
    g = _Graph(model)
    counts = {"identities": _drop_identities(g), "affine_after_conv": 0, "affine_before_pointwise": 0,
              "hardswish": 0, "affine_as_conv": 0}
    rules = (("affine_after_conv", _affine_after_conv), ("affine_before_pointwise", _affine_before_pointwise),
             ("hardswish", _hardswish))
    changed = True
    while changed:
        changed = False
        for key, rule in rules:
            g.index()
            while rule(g):
                counts[key] += 1
                changed = True
                g.index()
    channels = _channels(g.save())
    g.index()
    while _affine_as_conv(g, channels):
        counts["affine_as_conv"] += 1
        g.index()
    g.save()
    return counts


def fold_bytes(data: bytes) -> bytes:
    """The serialized ONNX `data` with `fold` applied, made now and kept nowhere: for a network
    scored once while training (a 20-minute run would otherwise leave a 4.7 MB graph in the user
    cache, and in `folded_bytes`' memo, per validation). A graph the rules cannot read (someone's
    own ONNX) is logged and returned as it is: the rewrites are a speed-up, never a condition
    for running."""
    try:
        import onnx

        model = onnx.load_from_string(data)
        counts = fold(model)
        out = model.SerializeToString()
    except Exception as exc:  # noqa: BLE001 - any failure: run the graph as given
        log.warning("ONNX graph not folded (%s: %s); running it as given", type(exc).__name__, exc)
        return data
    log.debug("folded the DB graph: %s", counts)
    return out


@functools.lru_cache(maxsize=4)
def folded_bytes(data: bytes) -> bytes:
    """`fold_bytes` of `data`, kept in the user cache (`io.cache_dir`) and read from there when
    an earlier run made it: what a detector's session loads."""
    from pipeline.io import atomic_write_bytes, cache_dir, sha256_bytes

    cached = cache_dir() / f"db-folded-v{FOLD_VERSION}-{sha256_bytes(data)[:24]}.onnx"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    out = fold_bytes(data)
    if out is data:
        return data
    try:
        atomic_write_bytes(cached, out)
    except OSError as exc:   # a read-only home: fold again next time
        log.debug("folded graph not cached at %s: %s", cached, exc)
    return out
