#!/usr/bin/env python3
"""Writes an HF InternLM2 checkpoint (bf16/f16/f32 safetensors, tokenizer.model) as an F16
GGUF for llama.cpp, the way llama.cpp's own converter does for InternLM2ForCausalLM (wqkv
split into q, k, v; q and k rows permuted for its RoPE layout), without torch: the weights
are read with numpy from the memory-mapped shards. `llama-quantize --pure` then makes the
all-Q4_0 file that matches puyu's q4.

    PYTHONPATH=<llama.cpp>/gguf-py python make_gguf.py HF_DIR OUT.gguf
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from sentencepiece import SentencePieceProcessor


def tensors(hf: Path):
    """name -> numpy f32 array, read lazily from every safetensors shard."""
    out = {}
    for f in sorted(hf.glob("*.safetensors")):
        raw = np.memmap(f, dtype=np.uint8, mode="r")
        (n,) = struct.unpack("<Q", bytes(raw[:8]))
        header = json.loads(bytes(raw[8 : 8 + n]))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            out[name] = (raw, 8 + n + a, 8 + n + b, t["dtype"], t["shape"])
    def get(name):
        raw, a, b, dtype, shape = out[name]
        data = raw[a:b]
        if dtype == "BF16":
            x = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            x = data.view(np.float16).astype(np.float32)
        elif dtype == "F32":
            x = data.view(np.float32)
        else:
            raise SystemExit(f"{name}: dtype {dtype} not handled")
        return x.reshape(shape)
    return out.keys(), get


def permute(w, n_head):
    """llama.cpp's row order for RoPE'd projections (its LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(hf: Path, out: Path):
    c = json.loads((hf / "config.json").read_text())
    h, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, per_kv = h // nh, nh // nkv
    w = gguf.GGUFWriter(str(out), "internlm2")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(h)
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(c.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(hf / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(c["vocab_size"]):
        piece = sp.IdToPiece(i)
        text = piece.encode("utf-8")
        if text == b"\x00":
            text = "🐉".encode("utf-8")  # as llama.cpp's converter: C++ would read it as empty
        t = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = gguf.TokenType.CONTROL
        elif sp.IsUnused(i) or piece.startswith("[UNUSED"):
            t = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            t = gguf.TokenType.BYTE
        tokens.append(text)
        scores.append(sp.GetScore(i))
        types.append(t)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(c.get("bos_token_id", 1))
    w.add_eos_token_id(c.get("eos_token_id", 2))
    w.add_add_bos_token(True)

    names, get = tensors(hf)
    f16 = lambda x: np.ascontiguousarray(x, dtype=np.float16)
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)
    w.add_tensor("token_embd.weight", f16(get("model.tok_embeddings.weight")))
    for l in range(c["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        qkv = get(p + "attention.wqkv.weight").reshape(nkv, per_kv + 2, hd, h)
        q = permute(qkv[:, :per_kv].reshape(-1, h), nh)
        k = permute(qkv[:, -2].reshape(-1, h), nkv)
        v = qkv[:, -1].reshape(-1, h)
        w.add_tensor(b + "attn_norm.weight", f32(get(p + "attention_norm.weight")))
        w.add_tensor(b + "attn_q.weight", f16(q))
        w.add_tensor(b + "attn_k.weight", f16(k))
        w.add_tensor(b + "attn_v.weight", f16(v))
        w.add_tensor(b + "attn_output.weight", f16(get(p + "attention.wo.weight")))
        w.add_tensor(b + "ffn_norm.weight", f32(get(p + "ffn_norm.weight")))
        w.add_tensor(b + "ffn_gate.weight", f16(get(p + "feed_forward.w1.weight")))
        w.add_tensor(b + "ffn_up.weight", f16(get(p + "feed_forward.w3.weight")))
        w.add_tensor(b + "ffn_down.weight", f16(get(p + "feed_forward.w2.weight")))
    w.add_tensor("output_norm.weight", f32(get("model.norm.weight")))
    out_name = "output.weight" if "output.weight" in names else "model.tok_embeddings.weight"
    w.add_tensor("output.weight", f16(get(out_name)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
