#!/usr/bin/env bash
# Packs what tools/device/bench.sh needs on a lent GPU machine (the `device` tool: one H200,
# no Rust toolchain, no network) into ignored folders of the checkout, which a `run` call
# carries: .device/ (the stripped release CLI; llama.cpp's llama-bench with its libraries and
# gguf-py, when tools/bench-peers/run.sh has built them) and .gl/ (the Vulkan loader, as
# Debian packages to unpack there).
#
#   bash tools/device/prepare.sh
#
# then call the device tool's `run` with carry [".device", ".gl"] and the command
# `bash tools/device/bench.sh 7b 1_8b` (it prints what it measured; files come back in $OUT).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
kit=.device
rm -rf "$kit" .gl
mkdir -p "$kit" .gl

cargo build --locked --quiet --release -p puyu --bin puyu
cp target/release/puyu "$kit/puyu"
strip "$kit/puyu"

# llama.cpp (Vulkan) from tools/bench-peers/run.sh's cache: its SPIR-V shaders are compiled in,
# so the binary built here runs on any Vulkan driver. Built with GGML_NATIVE for this machine's
# CPU; bench.sh checks that it starts there and goes on without it if not.
cache=${PUYU_PEERS_CACHE:-$HOME/.cache/puyu-peers}
build=$(ls -d "$cache"/llama.cpp-build-* 2>/dev/null | tail -1 || true)
src=$(ls -d "$cache"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | tail -1 || true)
if [ -n "$build" ] && [ -x "$build/bin/llama-bench" ] && [ -n "$src" ]; then
  mkdir -p "$kit/llama"
  cp -L "$build/bin/llama-bench" "$build"/bin/lib*.so.0 "$build/bin/libllama-bench-impl.so" "$kit/llama/"
  cp -L "$(ldconfig -p | awk '/libgomp.so.1 .*x86-64/ {print $NF; exit}')" "$kit/llama/"
  strip "$kit"/llama/*
  cp -r "$src/gguf-py" "$kit/gguf-py"
else
  echo "prepare: no llama.cpp build in $cache (run tools/bench-peers/run.sh once to make one); puyu only" >&2
fi

# The Vulkan loader, in case the machine has none (the device tool's README).
(cd .gl && apt-get download libvulkan1 >/dev/null)

for p in /.device/ /.gl/; do
  grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude
done
du -sh "$kit" .gl
echo "prepare: now run, carrying [\".device\", \".gl\"]: bash tools/device/bench.sh 7b 1_8b"
