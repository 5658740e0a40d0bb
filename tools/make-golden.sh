#!/usr/bin/env bash
# Regenerates tests/fixtures/golden-*.safetensors: writes each tiny checkpoint with puyu, then
# computes its logits with HF transformers (tools/reference_dump.py). Needs a Python with
# torch, "transformers<4.50", safetensors and numpy: set PYTHON (default: python3).
# Run only when the tiny checkpoints change; CI never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo build --release -q -p puyu
for spec in "tiny 64" "tiny-ntk 100"; do
  set -- $spec
  ./target/release/puyu dev write-tiny "$1" "$scratch/$1"
  "$PYTHON" tools/reference_dump.py "$scratch/$1" "tests/fixtures/golden-$1.safetensors" --prompt-len "$2"
done
