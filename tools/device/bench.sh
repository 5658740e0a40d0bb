#!/usr/bin/env bash
# Issue 8's real-GPU figures in one call on a lent machine (after tools/device/prepare.sh
# here): for each shape named (default 7b), a random-weight q4 model written there, then
#   - puyu bench: prefill and decode tokens/s (medians), the copy bandwidth and decode's
#     fraction of the bandwidth roofline (bench.json);
#   - one more run with --profile, apart so that its timestamp queries do not weigh on the
#     timed runs: GPU time by kind of dispatch (profile.txt);
#   - the kernel lab at that shape (kernels.txt);
#   - llama.cpp's llama-bench (Vulkan) on the same weights, bit for bit (make_gguf.py --q4),
#     when prepare.sh packed it (llama.json), and a table of the two.
# $OUT (which the device tool brings back, at most 8 files) gets per shape <shape>.md (the
# table, the profile, the kernel lab) and <shape>.json (both engines' raw results), and
# log.txt: the adapters, and each step with its exit status and time. Each step has a time
# limit so that the whole stays inside one 10-minute call; a step that fails is logged and the
# rest go on.
#
#   bash tools/device/bench.sh [7b] [1_8b] …     (PROMPT, GEN, REPEAT: 64, 32, 3; ONLY: the kernel lab's --only)
# Locally (lavapipe, a smoke test; PYTHON: one with numpy and sentencepiece, as the device has):
#   OUT=/tmp/dev PROMPT=8 GEN=4 REPEAT=1 ONLY=w2 PYTHON=~/.cache/puyu-peers/venv/bin/python bash tools/device/bench.sh 1_8b
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
OUT=${OUT:-$root/device-out}
prompt=${PROMPT:-64} gen=${GEN:-32} repeat=${REPEAT:-3}
kit=$root/.device
puyu=$kit/puyu
[ -x "$puyu" ] || puyu=$root/target/release/puyu
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)} WGPU_VALIDATION=0
chmod 700 "$XDG_RUNTIME_DIR"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt" >&2; }
# step NAME SECONDS OUTFILE CMD…: runs CMD with a time limit, its stdout to OUTFILE.
step() {
  local name=$1 limit=$2 out=$3 t0=$SECONDS rc
  shift 3
  timeout "$limit" "$@" > "$out" 2>> "$OUT/log.txt"
  rc=$?
  log "$name: exit $rc in $((SECONDS - t0)) s"
  return $rc
}

# The Vulkan loader and NVIDIA's driver manifest (the device tool's README).
if ! ldconfig -p | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  log "unpacked the Vulkan loader"
fi
work=$(mktemp -d)
step info 60 "$work/info.txt" "$puyu" info
if ! grep -q "(Vulkan, DiscreteGpu)" "$work/info.txt" && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  step "info with VK_DRIVER_FILES" 60 "$work/info.txt" "$puyu" info
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv >> "$work/info.txt" 2>&1
tee -a "$OUT/log.txt" < "$work/info.txt" >&2

llama=""
if [ -x "$kit/llama/llama-bench" ]; then
  if LD_LIBRARY_PATH=$kit/llama timeout 60 "$kit/llama/llama-bench" --help > /dev/null 2>> "$OUT/log.txt"; then
    llama=$kit/llama/llama-bench
  else
    log "llama-bench does not start here: puyu only"
  fi
fi

for shape in "${@:-7b}"; do
  dir=$work/$shape
  model=$work/random-$shape
  mkdir -p "$dir"
  rm -rf "$model" "$model.gguf"
  step "$shape: write the random q4 model" 300 "$dir/write.txt" "$puyu" dev write-random "$shape" "$model" --quant q4 || continue
  step "$shape: bench" 240 "$dir/bench.json" "$puyu" bench --model "$model" --prompt-tokens "$prompt" --gen-tokens "$gen" --repeat "$repeat" --json
  step "$shape: bench --profile" 180 "$dir/profile.txt" "$puyu" bench --model "$model" --prompt-tokens "$prompt" --gen-tokens "$gen" --repeat 1 --profile
  step "$shape: kernel lab" 180 "$dir/kernels.txt" "$puyu" bench --kernels "$shape" --prompt-tokens "$prompt" ${ONLY:+--only "$ONLY"}
  if [ -n "$llama" ]; then
    step "$shape: Q4_0 GGUF of the same weights" 300 "$dir/gguf.txt" \
      env PYTHONPATH="$kit/gguf-py" "${PYTHON:-python3}" tools/bench-peers/make_gguf.py --q4 "$model" "$model.gguf" &&
    step "$shape: llama-bench" 240 "$dir/llama.json" env LD_LIBRARY_PATH="$kit/llama" GGML_VK_VISIBLE_DEVICES=0 \
      "$llama" -m "$model.gguf" -p "$prompt" -n "$gen" -r "$repeat" -ngl 99 -o json
    rm -f "$model.gguf"
  fi
  { python3 tools/device/summary.py "$dir"
    for f in profile kernels; do printf '\n## %s\n\n```\n' "$f"; cat "$dir/$f.txt"; printf '```\n'; done
  } > "$OUT/$shape.md"
  python3 tools/device/summary.py --json "$dir" > "$OUT/$shape.json"
  cat "$OUT/$shape.md" >&2
  rm -rf "$model"
done
rm -rf "$work"
log "done"
