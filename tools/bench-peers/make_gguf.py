#!/usr/bin/env python3
"""Writes an InternLM2 model as a GGUF for llama.cpp, the way llama.cpp's own converter does
for InternLM2ForCausalLM (wqkv split into q, k, v; q and k rows permuted for its RoPE
layout), without torch: the weights are read with numpy from the memory-mapped shards.

    PYTHONPATH=<llama.cpp>/gguf-py python make_gguf.py HF_DIR OUT.gguf
        an HF checkpoint (bf16/f16/f32 safetensors, tokenizer.model) as F16; `llama-quantize
        --pure OUT.gguf Q4_0.gguf Q4_0` then makes an all-Q4_0 file
    PYTHONPATH=<llama.cpp>/gguf-py python make_gguf.py --q4 PUYU_Q4_DIR OUT.gguf
        a puyu q4 folder as Q4_0, bit for bit the same weights: puyu's q4 is Q4_0's
        arithmetic (crate/src/quant.rs), only the nibbles sit in another order, and whole rows
        move when q and k are permuted, so no block is requantized
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


def q4_tensors(folder: Path):
    """name -> numpy array, from a puyu folder (manifest.json): q4 matrices as Q4_0 blocks
    (uint8 [rows, cols / 32 · 18]), f32 and f16 ones as they are."""
    m = json.loads((folder / "manifest.json").read_text())
    shards = [np.memmap(folder / s["file"], dtype=np.uint8, mode="r") for s in m["shards"]]
    by_name = {t["name"]: t for t in m["tensors"]}

    def blob(part, key):
        span = part[key]
        return shards[part["shard"]][span["offset"] : span["offset"] + span["len"]]

    def get(name):
        t = by_name[name]
        shape, quant, parts = t["shape"], t["quant"], t["parts"]
        if quant in ("f32", "f16"):
            dtype = np.float32 if quant == "f32" else np.float16
            return np.concatenate([blob(p, "data").view(dtype) for p in parts]).reshape(shape)
        if quant != "q4":
            raise SystemExit(f"{name}: {quant} not handled (q4, f16 and f32 are)")
        rows, cols = shape
        groups = cols // 32
        data = np.concatenate([blob(p, "data") for p in parts]).reshape(rows, groups, 16)
        scales = np.concatenate([blob(p, "scales") for p in parts]).reshape(rows, groups, 2)
        # puyu: weight k of a group is nibble k % 2 of byte k / 2 (low first). Q4_0: byte j
        # holds weight j (low nibble) and weight j + 16 (high).
        q = np.empty((rows, groups, 32), dtype=np.uint8)
        q[..., 0::2] = data & 15
        q[..., 1::2] = data >> 4
        qs = q[..., :16] | (q[..., 16:] << 4)
        return np.concatenate([scales, qs], axis=2).reshape(rows, groups * 18)

    return by_name.keys(), get


def permute(w, n_head):
    """llama.cpp's row order for RoPE'd projections (its LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(hf: Path, out: Path, q4: bool):
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
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if q4 else gguf.LlamaFileType.MOSTLY_F16)

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

    names, get = q4_tensors(hf) if q4 else tensors(hf)
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)

    def matrix(name, x):
        """Q4_0 blocks (uint8 rows) as they are; anything else as F16."""
        if x.dtype == np.uint8:
            w.add_tensor(name, np.ascontiguousarray(x), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float16))

    matrix("token_embd.weight", get("model.tok_embeddings.weight"))
    for l in range(c["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        # Rows only move: a row is h values, or h / 32 Q4_0 blocks.
        qkv = get(p + "attention.wqkv.weight")
        row = qkv.shape[1]
        qkv = qkv.reshape(nkv, per_kv + 2, hd, row)
        q = permute(qkv[:, :per_kv].reshape(-1, row), nh)
        k = permute(qkv[:, -2].reshape(-1, row), nkv)
        v = qkv[:, -1].reshape(-1, row)
        w.add_tensor(b + "attn_norm.weight", f32(get(p + "attention_norm.weight")))
        matrix(b + "attn_q.weight", q)
        matrix(b + "attn_k.weight", k)
        matrix(b + "attn_v.weight", v)
        matrix(b + "attn_output.weight", get(p + "attention.wo.weight"))
        w.add_tensor(b + "ffn_norm.weight", f32(get(p + "ffn_norm.weight")))
        matrix(b + "ffn_gate.weight", get(p + "feed_forward.w1.weight"))
        matrix(b + "ffn_up.weight", get(p + "feed_forward.w3.weight"))
        matrix(b + "ffn_down.weight", get(p + "feed_forward.w2.weight"))
    w.add_tensor("output_norm.weight", f32(get("model.norm.weight")))
    out_name = "output.weight" if "output.weight" in names else "model.tok_embeddings.weight"
    matrix("output.weight", get(out_name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    q4 = args[:1] == ["--q4"]
    if q4:
        args = args[1:]
    if len(args) != 2:
        raise SystemExit(__doc__)
    main(Path(args[0]), Path(args[1]), q4)
