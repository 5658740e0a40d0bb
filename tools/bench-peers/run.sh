#!/usr/bin/env bash
# puyu against llama.cpp's Vulkan backend on the same adapter and the same random weights,
# side by side in one run, with the ratios (issue 8; ../shared/docs/peers.md).
#
#   bash tools/bench-peers/run.sh [tiny|1_8b|7b] [--prompt 64] [--gen 32] [--repeat 3] [--browser]
#
# With --browser the same weights run in Chromium instead: puyu's bench page against wllama
# (llama.cpp in wasm, from npm) — see browser.mjs.
#
# Everything it builds or writes stays in ${PUYU_PEERS_CACHE:-~/.cache/puyu-peers} and is
# reused by later runs (never committed):
#  - llama.cpp from the llama-cpp-python sdist on PyPI (it vendors llama.cpp), built with
#    Vulkan: llama-bench (~5 minutes once; needs cmake, ninja, glslc and the Vulkan headers
#    from Debian, installed if missing);
#  - the random checkpoint of the shape (`puyu dev write-random`, bf16 HF), as a puyu q4
#    folder (`puyu convert`), and that folder as an all-Q4_0 GGUF (make_gguf.py --q4: the same
#    blocks bit for bit, only reordered; byte-identical to `llama-quantize --pure … Q4_0` of
#    the bf16 checkpoint, checked on the tiny model);
#  - a Python venv with numpy and sentencepiece for make_gguf.py.
# The two engines then run alternately, `--repeat` times each; medians are compared.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shape=tiny prompt=64 gen=32 repeat=3 browser=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prompt) prompt=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --browser) browser=1; shift ;;
    tiny|1_8b|7b|20b) shape=$1; shift ;;
    *) echo "usage: $0 [tiny|1_8b|7b] [--prompt N] [--gen N] [--repeat N] [--browser]" >&2; exit 2 ;;
  esac
done
cache=${PUYU_PEERS_CACHE:-$HOME/.cache/puyu-peers}
version=0.3.36 # llama-cpp-python, vendoring llama.cpp
src=$cache/llama_cpp_python-$version/vendor/llama.cpp
build=$cache/llama.cpp-build-$version
mkdir -p "$cache"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)} WGPU_VALIDATION=0
chmod 700 "$XDG_RUNTIME_DIR"

# ---- llama.cpp -------------------------------------------------------------------------
if [ ! -x "$build/bin/llama-bench" ]; then
  need=()
  for p in cmake ninja-build glslc libvulkan-dev spirv-headers glslang-tools python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  if [ ! -d "$src" ]; then
    echo "peers: fetching llama-cpp-python $version (sdist) from PyPI"
    python3 - "$cache" "$version" <<'PY'
import io, json, sys, tarfile, urllib.parse, urllib.request
cache, version = sys.argv[1], sys.argv[2]
index = "https://pypi.org/pypi/llama-cpp-python/json"
meta = json.load(urllib.request.urlopen(index))
(sdist,) = [u for u in meta["releases"][version] if u["packagetype"] == "sdist"]
url = urllib.parse.urljoin(index, sdist["url"])
data = urllib.request.urlopen(url).read()
tarfile.open(fileobj=io.BytesIO(data)).extractall(cache)
PY
    # Debian 12's Vulkan headers (1.3.239) lack VK_EXT_layer_settings, used only to set up
    # validation layers: build without it there.
    python3 - "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
start = s.index("    VkBool32 enable_best_practice = layer_settings;")
end = s.index("&layer_setting_info);", start) + len("&layer_setting_info);")
block = s[start:end]
plain = "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);"
s = s[:start] + "#ifdef VK_EXT_layer_settings\n" + block + "\n#else\n" + plain + "\n#endif" + s[end:]
open(p, "w").write(s)
PY
  fi
  echo "peers: building llama.cpp (Vulkan): llama-bench"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_VULKAN=ON -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target llama-bench >/dev/null
fi

# ---- the same random weights for both ---------------------------------------------------
cargo build --locked --quiet --release -p puyu --bin puyu
puyu=$root/target/release/puyu
models=$cache/models
hf=$models/$shape-hf q4=$models/$shape-q4 gguf=$models/$shape-q4_0.gguf
mkdir -p "$models"
if [ ! -f "$hf/config.json" ]; then
  echo "peers: writing the random $shape checkpoint"
  if [ "$shape" = tiny ]; then "$puyu" dev write-tiny tiny "$hf"; else "$puyu" dev write-random "$shape" "$hf"; fi
fi
[ -f "$q4/manifest.json" ] || "$puyu" convert "$hf" "$q4" --quant q4 --force
if [ ! -f "$gguf" ]; then
  if [ ! -x "$cache/venv/bin/python" ]; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install --quiet numpy sentencepiece pyyaml
  fi
  echo "peers: writing the q4 folder as a Q4_0 GGUF"
  PYTHONPATH=$src/gguf-py "$cache/venv/bin/python" "$here/make_gguf.py" --q4 "$q4" "$gguf"
fi

# ---- side by side ----------------------------------------------------------------------
if [ "$browser" = 1 ]; then
  bash "$root/tools/web.sh" build
  [ -d "$root/tests/browser/node_modules/playwright-core" ] ||
    (cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
  exec node "$here/browser.mjs" "$q4" "$gguf" --prompt "$prompt" --gen "$gen" --repeat "$repeat"
fi
out=$(mktemp -d)
for r in $(seq "$repeat"); do
  echo "peers: run $r/$repeat: llama.cpp Vulkan" >&2
  GGML_VK_VISIBLE_DEVICES=0 "$build/bin/llama-bench" -m "$gguf" -p "$prompt" -n "$gen" -r 1 -ngl 99 -t "$(nproc)" -o json \
    > "$out/llama-$r.json" 2>"$out/llama-$r.err" || { cat "$out/llama-$r.err" >&2; exit 1; }
  echo "peers: run $r/$repeat: puyu" >&2
  "$puyu" bench --model "$q4" --prompt-tokens "$prompt" --gen-tokens "$gen" --repeat 1 --json > "$out/puyu-$r.json"
done
python3 - "$out" "$repeat" "$shape" "$prompt" "$gen" <<'PY'
import json, statistics, sys
out, repeat, shape, prompt, gen = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
ll_pp, ll_tg, pu_pp, pu_tg, adapter, ll_on = [], [], [], [], "", ""
for r in range(1, repeat + 1):
    for t in json.load(open(f"{out}/llama-{r}.json")):
        (ll_pp if t["n_prompt"] > 0 else ll_tg).append(t["avg_ts"])
        ll_on = f'{t["backends"]} on {t["gpu_info"]}, {t["n_gpu_layers"]} layers offloaded'

    p = json.load(open(f"{out}/puyu-{r}.json"))
    pu_pp.append(p["prefill_tokens_per_s"]["median"]); pu_tg.append(p["decode_tokens_per_s"]["median"]); adapter = p["adapter"]
m = statistics.median
rng = lambda xs: f"{m(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"
print(f"\n{shape}, q4 / Q4_0 (--pure), {prompt}-token prompt, {gen} generated, {repeat} alternating runs each, on {adapter}\n")
print("| engine | prefill tok/s | decode tok/s |")
print("|---|---|---|")
print(f"| llama.cpp ({ll_on}) | {rng(ll_pp)} | {rng(ll_tg)} |")
print(f"| puyu | {rng(pu_pp)} | {rng(pu_tg)} |")
print(f"| puyu / llama.cpp | {m(pu_pp) / m(ll_pp):.2f}× | {m(pu_tg) / m(ll_tg):.2f}× |")
PY
rm -rf "$out"
