"""`db`: PP-OCR's own DB text detector as a trainable torch network, and back to ONNX.

The PP-OCRv4 detection model in the `rapidocr-onnxruntime` wheel keeps its weights in
`Constant` nodes and has no graph initializers, so `onnx2torch` cannot convert it as shipped.
`fixed_onnx` moves every single-output `Constant` tensor into `graph.initializer` (named as
the node's output) and drops the node; the result converts to a `torch.fx.GraphModule` whose
probability map matches onnxruntime's (see tests/test_dbnet.py). The fixed ONNX is written
once to the user cache, keyed by the source model's sha256; nothing is ever downloaded.

Inference of a tuned network does not get its own code path: `export_onnx` writes an ONNX with
the original input name and dynamic sides, and `DBDetector` runs it through exactly the pre-
and post-processing of `ppocr` (`pipeline.detectors.ppocr.PPOCRDetector`); validation while training scores the exported
network too (what the bundle will run, and faster than the torch forward).

Network input: BGR, `(x / 255 - 0.5) / 0.5`, NCHW, sides multiples of 32. Output: the DB
probability map (sigmoid), N x 1 x H x W at input resolution; the threshold branch was dropped
when PaddleOCR exported the model.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


from pipeline.detectors.graph import constants_to_initializers
from pipeline.detectors.ppocr import PPOCRConfig, PPOCRDetector, config_version, default_model_path
from pipeline.io import cache_dir, sha256_bytes, sha256_file, sha256_json

log = logging.getLogger(__name__)

OPSET = 17


def fixed_onnx(source: str | Path | None = None) -> Path:
    """The convertible copy of `source` (default: the stock PP-OCRv4 detector), cached once."""
    import onnx

    from pipeline.io import atomic_write_bytes

    src = Path(source) if source else default_model_path()
    data = src.read_bytes()
    out = cache_dir() / f"ppocr-det-{sha256_bytes(data)[:16]}-initializers.onnx"
    if out.exists():
        return out
    model = onnx.load_from_string(data)
    moved = constants_to_initializers(model)
    log.info("%s: moved %d constants into initializers -> %s", src.name, moved, out)
    atomic_write_bytes(out, model.SerializeToString())
    return out


def input_name(source: str | Path | None = None) -> str:
    import onnx

    model = onnx.load(str(Path(source) if source else default_model_path()), load_external_data=False)
    return model.graph.input[0].name


def build_net(source: str | Path | None = None) -> Any:
    """The trainable network (torch.fx.GraphModule, float32, train mode) from an ONNX model."""
    from onnx2torch import convert

    net = convert(str(fixed_onnx(source)))
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def net_from_onnx_bytes(data: bytes) -> Any:
    """The network of an in-memory ONNX (e.g. a bundle's model.onnx, already initializer-based)."""
    import onnx
    from onnx2torch import convert

    model = onnx.load_from_string(data)
    if any(n.op_type == "Constant" for n in model.graph.node):
        constants_to_initializers(model)
    return convert(model)


def export_onnx_bytes(net: Any, name: str = "x", sample_side: int = 64) -> bytes:
    """ONNX of `net` (opset 17, dynamic batch and sides, input called `name` like the original)."""
    import torch

    was_training = net.training
    net.eval()
    x = torch.zeros(1, 3, sample_side, sample_side)
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # onnx2torch's Resize traces its constant scales: expected
            torch.onnx.export(net, x, buf, opset_version=OPSET, input_names=[name], output_names=["maps"],
                              dynamic_axes={name: {0: "n", 2: "h", 3: "w"}, "maps": {0: "n", 2: "h", 3: "w"}},
                              dynamo=False)
    finally:
        net.train(was_training)
    return buf.getvalue()


def export_onnx(net: Any, path: str | Path, name: str = "x") -> Path:
    from pipeline.io import atomic_write_bytes

    atomic_write_bytes(path, export_onnx_bytes(net, name))
    return Path(path)


THRESHOLDS = ("thresh", "box_thresh", "unclip_ratio")   # what a bundle selected on validation


def passes_version(model_version: str, config: PPOCRConfig, overrides: dict[str, float] | None = None) -> str:
    """A tuned model's detector version: the model's own, plus a short hash of the pass options
    (scales, refinement, tiling) that differ from one plain pass, so outputs made with other
    passes never look up to date (redact's settings hash); plus one of the thresholds a user set
    in place of the bundle's selection (`-o unclip_ratio=2`), when any."""
    version = config_version(model_version, config, skip=THRESHOLDS)
    if overrides:
        version += "+t" + sha256_json(overrides)[:8]
    return version


class DBDetector(PPOCRDetector):
    """A tuned DB network (ONNX bytes or path) run exactly like `ppocr`, under its own version
    (`model_version`; `version` adds the pass options when they are not one plain pass)."""

    name = "db"

    def __init__(self, config: PPOCRConfig | None = None, *, version: str, model_bytes: bytes | None = None,
                 info: dict[str, Any] | None = None, overrides: dict[str, float] | None = None,
                 cache_graph: bool = True, **options: object) -> None:
        super().__init__(config, model_bytes=model_bytes, cache_graph=cache_graph, **options)
        self.model_version = version
        self.overrides = dict(overrides or {})   # thresholds set in place of the bundle's selection
        self.version = passes_version(version, self.config, self.overrides)
        self.info = dict(info or {})   # bundle facts for reports (validation coverage, thresholds)

    def with_options(self, **changes: Any) -> "DBDetector":
        other = super().with_options(**changes)
        other.overrides = {k: getattr(other.config, k) for k in self.overrides}
        other.overrides.update({k: changes[k] for k in THRESHOLDS if k in changes})
        other.version = passes_version(self.model_version, other.config, other.overrides)
        return other  # type: ignore[return-value]


@dataclass(frozen=True)
class DBModelConfig:
    """What a db bundle's config.json records about its network: the post-processing settings
    selected on validation, and which stock model it was tuned from."""

    thresh: float = 0.3
    box_thresh: float = 0.3
    unclip_ratio: float = 1.6
    input_name: str = "x"
    base: str = "ppocr-v4-det"
    base_sha256: str = ""
    classes: tuple[str, ...] = ("text",)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DBModelConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "classes" in kw:
            kw["classes"] = tuple(kw["classes"])
        return cls(**kw)

    def ppocr_config(self, **options: Any) -> PPOCRConfig:
        """PPOCRConfig with these thresholds, unless `options` set them; `options` are PPOCRConfig
        fields (threads, scales...), checked as `ppocr` checks them. Unknown names are a
        ValueError: a typo (`-o box_tresh=0.9`) used to run with the bundle's value and exit 0."""
        allowed = {f.name for f in fields(PPOCRConfig)} - {"model_path"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown db option(s): {', '.join(unknown)} (options: {', '.join(sorted(allowed))})")
        kw = {k: v for k, v in options.items() if v is not None}
        if "scales" in kw:
            kw["scales"] = tuple(float(s) for s in (kw["scales"] if isinstance(kw["scales"], (list, tuple))
                                                    else [kw["scales"]]))
        picked = {"thresh": self.thresh, "box_thresh": self.box_thresh, "unclip_ratio": self.unclip_ratio}
        return PPOCRConfig(**{**picked, **kw})

    def overrides(self, options: dict[str, Any]) -> dict[str, float]:
        """The thresholds `options` set to other values than the bundle's selection."""
        return {k: options[k] for k in THRESHOLDS if options.get(k) is not None and options[k] != getattr(self, k)}


def stock_sha256() -> str:
    return sha256_file(default_model_path())
