"""Batch redaction: folders of images in, the same tree out with every text region covered.

- `core`: pure pixel operations (pad boxes, fill / blur / pixelate a native pixel array);
- `codec`: decode every page upright, encode a fresh file of the same format (ICC only);
- `run`: planning, one image end to end (`Redactor`), resume, sidecars, manifest, log;
- `ray_engine`: the same `Redactor` on Ray Data actors (`--engine ray`);
- `review`: hold uncertain images for Label Studio and finish them with reviewed boxes.
"""

from pipeline.redact.core import Pad, apply_redaction, fill_value, parse_color, redaction_boxes
from pipeline.redact.run import DEFAULT_PAD, DEFAULT_THRESHOLD, Item, RedactConfig, Redactor, Result, plan, run_local

__all__ = ["Pad", "apply_redaction", "fill_value", "parse_color", "redaction_boxes", "DEFAULT_PAD",
           "DEFAULT_THRESHOLD", "Item", "RedactConfig", "Redactor", "Result", "plan", "run_local"]
