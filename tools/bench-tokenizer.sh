#!/usr/bin/env bash
# Encoding speed of puyu's tokenizer beside Python sentencepiece 0.2.0 on the same text (the
# tokenizer corpus repeated to ~2 MB), both single-threaded, median of 5.
#   PYTHON=/path/to/venv/python (with sentencepiece==0.2.0) tools/bench-tokenizer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
text=$(mktemp)
trap 'rm -f "$text"' EXIT
"$PYTHON" - "$text" <<'PY'
import json, sys
corpus = json.load(open("tests/fixtures/tokenizer-corpus.json"))["corpus"]
block = "\n".join(e["text"] for e in corpus)
open(sys.argv[1], "w", newline="").write(block * max(1, 2_000_000 // len(block.encode())))
PY
cargo build --release -q -p puyu
echo "puyu:          $(RAYON_NUM_THREADS=1 ./target/release/puyu dev bench-tokenizer "$text")"
"$PYTHON" - "$text" <<'PY'
import json, statistics, sys, time
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="crate/assets/internlm2-tokenizer/tokenizer.model")
text = open(sys.argv[1], newline="").read()  # keep \r\n as it is
rates = []
for _ in range(5):
    t = time.perf_counter(); n = len(sp.encode(text)); rates.append(n / (time.perf_counter() - t))
print("sentencepiece: " + json.dumps({"tokens": n, "median_tokens_per_s": round(statistics.median(rates)),
      "min": round(min(rates)), "max": round(max(rates)), "version": spm.__version__}))
PY
