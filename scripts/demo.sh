#!/usr/bin/env bash
# `make demo`: the main job on data/samples/ in the default workspace (./data).
set -euo pipefail
cd "$(dirname "$0")/.."
TL=".venv/bin/textloop"
export TEXTLOOP_WORKSPACE="${TEXTLOOP_WORKSPACE:-data}"

echo "== harvest data/samples into $TEXTLOOP_WORKSPACE"
$TL harvest data/samples
echo "== status"
$TL status
