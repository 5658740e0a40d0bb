#!/usr/bin/env python3
"""Golden logits for a tiny InternLM2 checkpoint, from an independent implementation.

The checkpoint (written by `puyu dev write-tiny NAME DIR`) is loaded into HF transformers'
*Llama* after splitting the packed `wqkv` the way InternLM's `tools/convert2llama.py` does;
Llama shares nothing with puyu's code, so agreement means both are right. Runs on the CPU in
float32 (the bf16 weights are upcast, exactly as puyu does).

Writes a small safetensors fixture (the full logits at every position would be ~40 MB):
  prompt_ids      [P]       i32   BOS + real text tokens (from the golden tokenizer fixture)
  sample_ids      [P, K]    i32   per position: the reference's top-16 ids + random ids
  sample_logits   [P, K]    f32   the logits at those ids
  logsumexp       [P]       f32   log Σ exp(logits) over the whole vocabulary
  last_logits     [V]       f32   every logit of the last prompt position
  prompt_nll      [P-1]     f32   −log p(token i+1 | tokens ≤ i), as `puyu perplexity` reports
  greedy_ids      [N]       i32   greedy continuation (KV cache, one token per step)
  greedy_sample_ids/_logits [N, K] the logits of each decode step at sampled ids
  greedy_logsumexp [N]      f32
and in the metadata the sha256 of model.safetensors it was computed from.

Needs torch, "transformers<4.50", safetensors, numpy (a venv; CI never runs this):
  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch "transformers<4.50" safetensors numpy
  tools/make-golden.sh   # or by hand:
  /tmp/ref/bin/python tools/reference_dump.py CKPT_DIR OUT.safetensors --prompt-len 100
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

TOP = 16  # reference top-k kept at every position
K = 512  # ids sampled per position in all


def llama_from_internlm2(ckpt_dir):
    cfg = json.load(open(os.path.join(ckpt_dir, "config.json")))
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    hd = hidden // nh
    groups = nh // nkv
    scaling = cfg.get("rope_scaling")
    rope_scaling = None
    if scaling:
        rope_scaling = {"rope_type": scaling["type"], "factor": float(scaling["factor"])}
    lcfg = LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=float(cfg["rope_theta"]),
        rope_scaling=rope_scaling,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    src = {k: v.float() for k, v in load_file(os.path.join(ckpt_dir, "model.safetensors")).items()}
    sd = {
        "model.embed_tokens.weight": src["model.tok_embeddings.weight"],
        "model.norm.weight": src["model.norm.weight"],
        "lm_head.weight": src["output.weight"],
    }
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{i}.", f"model.layers.{i}."
        # convert2llama.py: rows of wqkv are [nkv, G+2, hd, H] -> q (G heads), k, v per group.
        wqkv = src[p + "attention.wqkv.weight"].reshape(nkv, groups + 2, hd, hidden)
        wq, wk, wv = torch.split(wqkv, [groups, 1, 1], dim=1)
        sd[q + "self_attn.q_proj.weight"] = wq.reshape(-1, hidden)
        sd[q + "self_attn.k_proj.weight"] = wk.reshape(-1, hidden)
        sd[q + "self_attn.v_proj.weight"] = wv.reshape(-1, hidden)
        sd[q + "self_attn.o_proj.weight"] = src[p + "attention.wo.weight"]
        sd[q + "input_layernorm.weight"] = src[p + "attention_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = src[p + "ffn_norm.weight"]
        sd[q + "mlp.gate_proj.weight"] = src[p + "feed_forward.w1.weight"]
        sd[q + "mlp.up_proj.weight"] = src[p + "feed_forward.w3.weight"]
        sd[q + "mlp.down_proj.weight"] = src[p + "feed_forward.w2.weight"]
    model = LlamaForCausalLM(lcfg).float().eval()
    model.load_state_dict(sd, strict=True)
    return model, cfg


def prompt_ids(golden_path, length):
    """BOS, then the golden tokenizer fixture's encodings of real text, cycled to `length`."""
    golden = json.load(open(golden_path))
    pool = [i for e in golden["encode"] for i in e["ids"]]
    ids = [1]
    while len(ids) < length:
        ids.extend(pool[: length - len(ids)])
    return ids


def sampled(logits, rng):
    """Top-16 ids of each row plus random ids, K in all, sorted."""
    v = logits.shape[-1]
    ids, vals = [], []
    for row in logits:
        top = torch.topk(row, TOP).indices.tolist()
        chosen = set(top)
        while len(chosen) < K:
            chosen.update(rng.integers(0, v, K - len(chosen)).tolist())
        sel = sorted(chosen)
        ids.append(sel)
        vals.append(row[sel].tolist())
    return torch.tensor(ids, dtype=torch.int32), torch.tensor(vals, dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--greedy", type=int, default=32)
    ap.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "..", "crate", "assets",
                                                     "internlm2-tokenizer", "golden.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(1234)
    model, cfg = llama_from_internlm2(args.checkpoint)
    sha = hashlib.sha256(open(os.path.join(args.checkpoint, "model.safetensors"), "rb").read()).hexdigest()

    ids = prompt_ids(args.golden, args.prompt_len)
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        logits = out.logits[0].float()
        s_ids, s_vals = sampled(logits, rng)
        lse = torch.logsumexp(logits.double(), dim=-1).float()
        nll = torch.nn.functional.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]), reduction="none")

        # Greedy decode, one token per step through the KV cache (as puyu decodes).
        past = out.past_key_values
        nxt = int(torch.argmax(logits[-1]))
        greedy, step_logits, margins = [], [], []
        for _ in range(args.greedy):
            greedy.append(nxt)
            o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = o.past_key_values
            row = o.logits[0, -1].float()
            step_logits.append(row)
            top2 = torch.topk(row, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(row))
        step_logits = torch.stack(step_logits)
        g_ids, g_vals = sampled(step_logits, rng)
        g_lse = torch.logsumexp(step_logits.double(), dim=-1).float()

    top1_margin = torch.topk(logits, 2, dim=-1).values
    pos_margin = float((top1_margin[:, 0] - top1_margin[:, 1]).min())
    spread = float(logits.std(dim=-1).mean())
    print(f"{args.checkpoint}: prompt {len(ids)} tokens, logit std {spread:.2f}, "
          f"min top-1 margin {pos_margin:.4f} (prompt), {min(margins):.4f} (greedy)", file=sys.stderr)
    print(f"greedy: {greedy}", file=sys.stderr)

    save_file(
        {
            "prompt_ids": torch.tensor(ids, dtype=torch.int32),
            "sample_ids": s_ids,
            "sample_logits": s_vals,
            "logsumexp": lse,
            "last_logits": logits[-1].contiguous(),
            "prompt_nll": nll.float(),
            "greedy_ids": torch.tensor(greedy, dtype=torch.int32),
            "greedy_sample_ids": g_ids,
            "greedy_sample_logits": g_vals,
            "greedy_logsumexp": g_lse,
        },
        args.out,
        metadata={
            "model_sha256": sha,
            "reference": f"transformers {transformers.__version__} LlamaForCausalLM (eager, float32), "
                         f"torch {torch.__version__}",
            "min_greedy_margin": f"{min(margins):.6f}",
            "config": json.dumps(cfg, sort_keys=True),
        },
    )


if __name__ == "__main__":
    main()
