#!/usr/bin/env python3
"""The table of one shape's run of tools/device/bench.sh: puyu's bench.json beside
llama-bench's llama.json (when there), as Markdown; with --json, the two results as one JSON
object instead.

    python3 tools/device/summary.py [--json] OUT/7b
"""
import json
import statistics
import sys
from pathlib import Path


def read(d: Path, name: str):
    try:
        return json.loads((d / name).read_text())
    except (OSError, ValueError):
        return None


args = sys.argv[1:]
if args[:1] == ["--json"]:
    d = Path(args[1])
    print(json.dumps({"puyu": read(d, "bench.json"), "llama.cpp": read(d, "llama.json")}, indent=1))
    sys.exit()
d = Path(args[0])
p = read(d, "bench.json")
if p is None:
    raise SystemExit(f"{d.name}: no puyu result (bench.json missing or unreadable)")
pp, tg = p["prefill_tokens_per_s"], p["decode_tokens_per_s"]
spread = lambda s: f'{s["median"]:.1f} ({s["min"]:.1f}–{s["max"]:.1f})'
mem = p["memory_bytes"]
print(f'\n{d.name}, q4, {p["prompt_tokens"]}-token prompt, {p["gen_tokens"]} generated, {p["repeat"]} runs, on {p["adapter"]} ({p["backend"]})\n')
print("| engine | prefill tok/s | decode tok/s |")
print("|---|---|---|")
print(f"| puyu | {spread(pp)} | {spread(tg)} |")
try:
    runs = read(d, "llama.json")
    # llama-bench: one entry for the prompt test, one for generation; avg_ts over its repeats.
    ll_pp = statistics.median(r["avg_ts"] for r in runs if r["n_prompt"] > 0)
    ll_tg = statistics.median(r["avg_ts"] for r in runs if r["n_gen"] > 0)
    on = f'{runs[0]["backends"]} on {runs[0]["gpu_info"]}'
    print(f"| llama.cpp ({on}), Q4_0 of the same weights | {ll_pp:.1f} | {ll_tg:.1f} |")
    print(f"| puyu / llama.cpp | {pp['median'] / ll_pp:.2f}× | {tg['median'] / ll_tg:.2f}× |")
except (TypeError, KeyError, IndexError, statistics.StatisticsError):  # no or partial llama.cpp result
    pass
print(
    f'\ndecode reads {p["decode_weight_gb_per_s"]:.0f} GB/s of weights; a buffer copy moves {p["copy_gb_per_s"]:.0f} GB/s '
    f'(read + written): {100 * p["roofline_fraction"]:.0f}% of the roofline. Load {p["load_s"]:.1f} s; '
    f'GPU memory {mem["weights"] / 1e6:.0f} MB weights + {mem["kv_cache"] / 1e6:.1f} MB KV + {mem["scratch"] / 1e6:.1f} MB scratch.'
)
