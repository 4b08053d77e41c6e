#!/usr/bin/env python
"""Quantise a DB text detector (stock PP-OCRv4 or a tuned bundle's ONNX) to int8 with
onnxruntime's static quantisation, calibrated on training-like crops, and write the ONNX.

Calibration: `--n` crops of 640x640 (padded when smaller) taken from synthetic overlays
(`pipeline.synth`) and devset half A images (`formats.split_halves`, the half the detection
benchmark trains on), preprocessed exactly as `PPOCRDetector` does. QDQ format, per-channel
weights, uint8 activations. Measure it with:

    .venv/bin/python scripts/quantize_db.py --out /tmp/ppocr-int8.onnx
    .venv/bin/python scripts/bench_redact.py --skip-throughput --pads 10% --skip-leak \
        --quality-detectors ppocr,ppocr-int8 --int8-model /tmp/ppocr-int8.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def calibration_crops(devset: Path, n: int, side: int = 640, seed: int = 0) -> list[np.ndarray]:
    """Float32 NCHW network inputs: crops of synthetic and devset half-A images."""
    import cv2

    from pipeline.formats import read_devset, split_halves
    from pipeline.imaging import load_rgb
    from pipeline.synth import SynthConfig, synth_image

    rng = np.random.default_rng(seed)
    images = [synth_image(i, SynthConfig(seed=4242)).image for i in range(n // 2)]
    half_a, _ = split_halves(list(read_devset(devset)))
    for k in rng.choice(len(half_a), size=min(len(half_a), n - len(images)), replace=False):
        images.append(load_rgb(half_a[int(k)][0]))
    out = []
    for im in images:
        h, w = im.shape[:2]
        scale = min(max(1.0, 736 / min(w, h)), 4.0)   # PPOCRConfig.min_side: what inference sees
        im = cv2.resize(im, (max(32, int(w * scale)), max(32, int(h * scale))))
        h, w = im.shape[:2]
        y0 = int(rng.integers(0, max(1, h - side + 1)))
        x0 = int(rng.integers(0, max(1, w - side + 1)))
        crop = np.zeros((side, side, 3), np.uint8)
        part = im[y0:y0 + side, x0:x0 + side]
        crop[:part.shape[0], :part.shape[1]] = part
        bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        x = (bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
        out.append(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return out


def quantize(source: Path | None, out: Path, crops: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pipeline.detectors.dbnet import fixed_onnx, input_name

    name = input_name(source)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(crops)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x}

    import onnx
    from onnx import version_converter

    with tempfile.TemporaryDirectory() as tmp:
        pre, up = Path(tmp) / "pre.onnx", Path(tmp) / "opset13.onnx"
        model = onnx.load(str(fixed_onnx(source)))
        if model.opset_import[0].version < 13:   # per-channel DequantizeLinear needs opset 13
            model = version_converter.convert_version(model, 13)
        onnx.save(model, str(up))
        quant_pre_process(str(up), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="float ONNX (default: the stock PP-OCRv4 detector)")
    ap.add_argument("--set", type=Path, default=ROOT.parent / "shared" / "data" / "devset")
    ap.add_argument("--n", type=int, default=24, help="calibration crops")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    crops = calibration_crops(args.set, args.n)
    quantize(args.model, args.out, crops)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) from {len(crops)} calibration crops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
