#!/usr/bin/env bash
# `make demo`: the whole loop on data/samples/ in the default workspace (./data) with a local
# Label Studio: harvest, synth, a short train, pre-annotate, rank, push, curate, report.
# Rerunning it is safe: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TL=".venv/bin/textloop"
export TEXTLOOP_WORKSPACE="${TEXTLOOP_WORKSPACE:-data}"
PORT="${DEMO_PORT:-8080}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "harvest data/samples into $TEXTLOOP_WORKSPACE"
$TL harvest data/samples

step "Label Studio on 127.0.0.1:$PORT (local server from .venv-ls; credentials from .env)"
$TL studio up --port "$PORT"
export LABEL_STUDIO_URL="http://127.0.0.1:$PORT"
$TL studio init

step "synthetic training data (procedural backgrounds, real fonts, exact ink boxes)"
$TL synth --name default --images "${DEMO_SYNTH_IMAGES:-120}"

step "a short training run on CPU (a real run wants more: see README 'train')"
models=$($TL --json status | .venv/bin/python -c 'import json,sys; print(len(json.load(sys.stdin)["models"]))')
if [ "$models" = "0" ]; then
  # Registered, not promoted: a few minutes of CPU training is far from ppocr's quality, and the
  # current model is what redact uses. `textloop iterate` promotes a model once it is not worse.
  $TL train --run demo --restart --epochs 2 --steps-per-epoch "${DEMO_STEPS:-40}" --budget-minutes "${DEMO_TRAIN_MINUTES:-4}"
else
  echo "a model is already registered; skipping (textloop train to train more)"
fi

step "pre-annotate every image with the current model and with ppocr"
$TL predict
$TL predict --detector ppocr

step "rank the unlabelled images (uncertainty; committee = ppocr)"
$TL rank --strategy uncertainty --top 8

step "push the next batch to Label Studio with pre-annotations"
$TL push --strategy uncertainty --top 8

step "curate: duplicates, outliers, label noise (report only)"
$TL curate
$TL report

step "redact the samples with the current model; OCR reads every output and covers what it can still read (--verify)"
$TL redact data/samples "$TEXTLOOP_WORKSPACE/redacted" --verify

step "status"
$TL status

cat <<MSG

Label the pushed images at $LABEL_STUDIO_URL (user and password: LABEL_STUDIO_USERNAME /
LABEL_STUDIO_PASSWORD in .env). Then run one round of the loop:

    LABEL_STUDIO_URL=$LABEL_STUDIO_URL .venv/bin/textloop iterate

Reports: $TEXTLOOP_WORKSPACE/reports/ (open report.html, or notebooks/curation.ipynb).
Redacted samples: $TEXTLOOP_WORKSPACE/redacted/ (audit trail in $TEXTLOOP_WORKSPACE/redacted.audit/)
Stop Label Studio:                       .venv/bin/textloop studio down
MSG
