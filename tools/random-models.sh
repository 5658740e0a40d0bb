#!/usr/bin/env bash
# Random-weight InternLM2 models with the real shapes, written straight into puyu q4 folders
# (no bf16 checkpoint in between), for measuring speed and memory at real sizes without real
# weights. Never commit them.
#
#   tools/random-models.sh OUT_DIR [1_8b 7b 20b]     (default: 1_8b)
#
# Sizes: 1_8b ≈ 1.0 GB (about a minute), 7b ≈ 4.4 GB, 20b ≈ 11.6 GB. Then, for example:
#   puyu bench --model OUT_DIR/random-1_8b-q4 --prompt-tokens 64 --gen-tokens 16
set -euo pipefail
out=${1:?usage: tools/random-models.sh OUT_DIR [1_8b 7b 20b]}
shift
shapes=("${@:-1_8b}")
cd "$(dirname "$0")/.."
cargo build --release --locked -p puyu
mkdir -p "$out"
for shape in "${shapes[@]}"; do
  target/release/puyu dev write-random "$shape" "$out/random-$shape-q4" --quant q4
done
