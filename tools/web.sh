#!/usr/bin/env bash
# The browser side in one command.
#   bash tools/web.sh build   the wasm engine into pkg/wasm/ (wasm-bindgen --target web) and
#                             the bundled tiny model (q4) into www/models/tiny-q4/
#   bash tools/web.sh serve   build, then serve the demo on http://127.0.0.1:${PORT:-8080}/www/
#   bash tools/web.sh test    build, then the facade's unit tests and the Chromium tests
# Needs: the wasm32-unknown-unknown target, wasm-bindgen-cli at the Cargo.lock version,
# Node.js; `test` also Debian's chromium (see .ci/run, which installs all of it).
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
  echo "web: building the wasm engine (release)"
  cargo build --locked --quiet --release --target wasm32-unknown-unknown -p puyu-web
  wasm-bindgen --target web --out-dir pkg/wasm --out-name puyu_wasm \
    target/wasm32-unknown-unknown/release/puyu_web.wasm
  echo "web: writing the bundled tiny model (q4) to www/models/tiny-q4/"
  cargo build --locked --quiet -p puyu --bin puyu
  local tmp
  tmp=$(mktemp -d)
  target/debug/puyu dev write-tiny tiny "$tmp/hf" 2>/dev/null
  target/debug/puyu convert "$tmp/hf" www/models/tiny-q4 --quant q4 --force >/dev/null 2>&1
  rm -rf "$tmp"
  cat > www/models/index.json <<'JSON'
{ "models": [ { "name": "tiny (bundled random-weight InternLM2, q4)", "url": "models/tiny-q4/" } ] }
JSON
}

case "${1:-serve}" in
  build) build ;;
  serve)
    build
    exec node tools/serve.mjs --port "${PORT:-8080}"
    ;;
  test)
    build
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    node --test pkg/test/ tests/browser/
    ;;
  *) echo "usage: bash tools/web.sh build|serve|test" >&2; exit 2 ;;
esac
