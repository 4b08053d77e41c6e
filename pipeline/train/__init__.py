"""Training text detectors on CPU: `db` (PP-OCR's own network, fine-tuned; the default) and
`fasterrcnn` (torchvision, from scratch).

  data.py        samples, polygons, augmentation (shared)
  engine.py      TrainConfig, the loop, checkpoint/resume/budget/Ctrl-C (shared)
  db.py          DB targets (shrunk kernels), loss, batches, the db hooks
  fasterrcnn.py  Faster R-CNN batches, validation, the fasterrcnn hooks
  select.py      selection at an over-redaction budget; the comparison with stock ppocr
  workspace.py   the workspace stage (train, bundle, register, promote by the rule)
"""

from pipeline.train.data import Sample, augment, samples_from_devset, samples_from_jsonl, workspace_samples
from pipeline.train.db import DBRecipe
from pipeline.train.engine import ARCHS, ResumeRefused, TrainConfig, TrainingError, TrainResult, losses_of, peak_rss_mb, train
from pipeline.train.fasterrcnn import make_batch, validate
from pipeline.train.select import PromotionCheck
from pipeline.train.workspace import (CheckpointExists, PromotionRefused, TrainSummary, check_promotion, promote_checked,
                                      resolve_parent, save_result, train_run, train_workspace, workspace_training_data)

__all__ = ["ARCHS", "CheckpointExists", "DBRecipe", "TrainSummary", "train_run", "PromotionCheck", "PromotionRefused", "Sample", "TrainConfig", "TrainResult",
           "ResumeRefused", "TrainingError", "augment", "check_promotion", "losses_of", "make_batch", "peak_rss_mb",
           "promote_checked", "resolve_parent", "samples_from_devset", "samples_from_jsonl", "save_result", "train",
           "train_workspace", "validate", "workspace_samples", "workspace_training_data"]
