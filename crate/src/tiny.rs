//! Tiny random InternLM2 checkpoints in exact HF layout, generated deterministically from a
//! seed: the bundled default model and the subject of the golden tests.
//!
//! They keep the real 92544-token vocabulary and tokenizer, so with it they are tens of MB;
//! rather than commit them, tests regenerate them and the golden logits (made once by
//! `tools/reference_dump.py` with HF transformers) record the sha256 of the weights file.
//!
//! Weights are scaled so that predictions are far from uniform (logits with a spread of
//! several units, attention that prefers some positions): a near-uniform model hides bugs.
//! The generator uses only IEEE +,−,× on f64, so every platform makes the same bytes.

use std::collections::HashMap;

use half::bf16;
use safetensors::{tensor::TensorView, Dtype};

use crate::config::ModelConfig;

/// The real InternLM2 `tokenizer.model` (Apache-2.0, see assets/internlm2-tokenizer/NOTICE.md).
pub const TOKENIZER_MODEL: &[u8] = include_bytes!("../assets/internlm2-tokenizer/tokenizer.model");

/// The shape and seed of a tiny checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct TinySpec {
    pub name: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    /// `rope_scaling = {"type": "dynamic", "factor": f}`.
    pub dynamic_factor: f64,
    pub seed: u64,
}

pub const VOCAB: usize = 92544;

/// The default tiny model: real-config RoPE (θ=1e6, dynamic ×2 past 32768), 2 layers.
pub const TINY: TinySpec = TinySpec {
    name: "tiny",
    hidden: 64,
    intermediate: 192,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    max_position_embeddings: 32768,
    rope_theta: 1e6,
    dynamic_factor: 2.0,
    seed: 0x5eed_0001,
};

/// A tiny model whose trained context is only 64 tokens, so that a 100-token prompt runs
/// under dynamic NTK scaling (θ=10000 makes the change of base visible in the logits).
pub const TINY_NTK: TinySpec = TinySpec {
    name: "tiny-ntk",
    hidden: 128,
    intermediate: 256,
    layers: 3,
    heads: 4,
    kv_heads: 2,
    max_position_embeddings: 64,
    rope_theta: 10000.0,
    dynamic_factor: 2.0,
    seed: 0x5eed_0002,
};

pub const ALL: [TinySpec; 2] = [TINY, TINY_NTK];

/// Random checkpoints with the real shapes, for measuring speed and memory without real
/// weights (written with [`TinySpec::write_hf_sharded`]; never committed).
pub const REAL_SHAPES: [TinySpec; 3] = [
    TinySpec { name: "1_8b", hidden: 2048, intermediate: 8192, layers: 24, heads: 16, kv_heads: 8, max_position_embeddings: 32768, rope_theta: 1e6, dynamic_factor: 2.0, seed: 0x5eed_1008 },
    TinySpec { name: "7b", hidden: 4096, intermediate: 14336, layers: 32, heads: 32, kv_heads: 8, max_position_embeddings: 32768, rope_theta: 1e6, dynamic_factor: 2.0, seed: 0x5eed_7000 },
    TinySpec { name: "20b", hidden: 6144, intermediate: 16384, layers: 48, heads: 48, kv_heads: 8, max_position_embeddings: 32768, rope_theta: 1e6, dynamic_factor: 2.0, seed: 0x5eed_2000 },
];

impl TinySpec {
    pub fn by_name(name: &str) -> Option<TinySpec> {
        ALL.into_iter().find(|s| s.name == name)
    }

    /// The HF `config.json` of this checkpoint.
    pub fn config_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"
            },
            "vocab_size": VOCAB,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": self.rope_theta,
            "rope_scaling": {"type": "dynamic", "factor": self.dynamic_factor},
            "hidden_act": "silu",
            "bias": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "puyu_tiny": {"name": self.name, "seed": self.seed}
        });
        serde_json::to_string_pretty(&v).expect("serialisable")
    }

    pub fn config(&self) -> ModelConfig {
        ModelConfig::from_json_str(&self.config_json()).expect("tiny configs are valid")
    }

    /// Every tensor in generation order: (HF name, shape, centre, spread); values are
    /// centre + spread·N(0,1), drawn in this order from one stream.
    fn tensor_specs(&self) -> Vec<(String, Vec<usize>, f64, f64)> {
        let (h, i) = (self.hidden, self.intermediate);
        let hd = h / self.heads;
        let qkv_rows = (self.heads + 2 * self.kv_heads) * hd;
        let inv = |n: usize| 1.0 / (n as f64).sqrt();

        // (name, shape, how its values are drawn): centre + spread·N(0,1).
        let mut specs: Vec<(String, Vec<usize>, f64, f64)> =
            vec![("model.tok_embeddings.weight".into(), vec![VOCAB, h], 0.0, 1.0)];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            specs.extend([
                (format!("{p}attention_norm.weight"), vec![h], 1.0, 0.2),
                (format!("{p}attention.wqkv.weight"), vec![qkv_rows, h], 0.0, 1.5 * inv(h)),
                (format!("{p}attention.wo.weight"), vec![h, h], 0.0, inv(h)),
                (format!("{p}ffn_norm.weight"), vec![h], 1.0, 0.2),
                (format!("{p}feed_forward.w1.weight"), vec![i, h], 0.0, inv(h)),
                (format!("{p}feed_forward.w3.weight"), vec![i, h], 0.0, inv(h)),
                (format!("{p}feed_forward.w2.weight"), vec![h, i], 0.0, inv(i)),
            ]);
        }
        specs.push(("model.norm.weight".into(), vec![h], 1.0, 0.2));
        // Logit spread ≈ 4·|norm|: the top token stands well clear of the 92543 others.
        specs.push(("output.weight".into(), vec![VOCAB, h], 0.0, 4.0 * inv(h)));
        specs
    }

    /// The weights as a bf16 safetensors file, in HF tensor names.
    pub fn safetensors(&self) -> Vec<u8> {
        let mut rng = Rng(self.seed);
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensor_specs()
            .into_iter()
            .map(|(name, shape, centre, spread)| {
                let n: usize = shape.iter().product();
                let bytes = (0..n)
                    .flat_map(|_| {
                        bf16::from_f64(centre + spread * rng.normal()).to_le_bytes()
                    })
                    .collect();
                (name, shape, bytes)
            })
            .collect();
        let views = data.iter().map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::BF16, shape.clone(), bytes).expect("sizes agree");
            (name.as_str(), view)
        });
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(views, Some(meta)).expect("serialisable")
    }

    /// Writes an HF checkpoint folder: config.json, model.safetensors, tokenizer.model.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_hf_dir(&self, dir: &std::path::Path) -> crate::Result<()> {
        use crate::error::Error;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
        };
        write("config.json", self.config_json().as_bytes())?;
        write("model.safetensors", &self.safetensors())?;
        write("tokenizer.model", TOKENIZER_MODEL)?;
        Ok(())
    }

    /// Writes an HF folder as HF does for big models: bf16 shards of at most 2 GiB and
    /// `model.safetensors.index.json`, generating each tensor while writing (memory stays
    /// small even for the 20B shape).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_hf_sharded(&self, dir: &std::path::Path, mut progress: impl FnMut(u64, u64)) -> crate::Result<()> {
        use crate::error::Error;
        use std::io::Write;
        const MAX_SHARD: u64 = 2 << 30;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let specs = self.tensor_specs();
        // Group tensors into shards by size.
        let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
        let mut used = 0u64;
        for (t, (_, shape, _, _)) in specs.iter().enumerate() {
            let bytes = shape.iter().product::<usize>() as u64 * 2;
            if used + bytes > MAX_SHARD && !shards.last().expect("one").is_empty() {
                shards.push(Vec::new());
                used = 0;
            }
            shards.last_mut().expect("one").push(t);
            used += bytes;
        }
        let total: u64 = specs.iter().map(|(_, s, _, _)| s.iter().product::<usize>() as u64 * 2).sum();
        let (mut done, mut rng) = (0u64, Rng(self.seed));
        let mut weight_map = serde_json::Map::new();
        for (s, members) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards.len());
            let header = crate::model_dir::header_bytes(members.iter().map(|&t| {
                let (name, shape, _, _) = &specs[t];
                (name.as_str(), "BF16", shape.as_slice(), shape.iter().product::<usize>() as u64 * 2)
            }));
            let path = dir.join(&file);
            let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            out.write_all(&header).map_err(|e| Error::io(&path, e))?;
            for &t in members {
                let (name, shape, centre, spread) = &specs[t];
                weight_map.insert(name.clone(), file.clone().into());
                let n: usize = shape.iter().product();
                let mut buf = Vec::with_capacity(1 << 20);
                for k in 0..n {
                    buf.extend_from_slice(&bf16::from_f64(centre + spread * rng.normal()).to_le_bytes());
                    if buf.len() >= 1 << 20 || k + 1 == n {
                        out.write_all(&buf).map_err(|e| Error::io(&path, e))?;
                        done += buf.len() as u64;
                        progress(done, total);
                        buf.clear();
                    }
                }
            }
            out.flush().map_err(|e| Error::io(&path, e))?;
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
        };
        write("model.safetensors.index.json", index.to_string().as_bytes())?;
        write("config.json", self.config_json().as_bytes())?;
        write("tokenizer.model", TOKENIZER_MODEL)?;
        Ok(())
    }
}

impl TinySpec {
    /// For each tensor: (its index in generation order, centre, spread).
    pub fn draws(&self) -> std::collections::HashMap<String, (usize, f64, f64)> {
        self.tensor_specs().into_iter().enumerate().map(|(t, (name, _, c, s))| (name, (t, c, s))).collect()
    }
}

/// Rows `rows` (of `cols` values) of tensor number `tensor` of a random model, as bf16
/// values in f32: centre + spread·N(0,1) from a stream seeded by (seed, tensor, first row),
/// so any block of rows can be drawn alone (`puyu dev write-random SHAPE DIR --quant q4`
/// draws them block by block straight into a puyu folder).
pub fn random_rows(seed: u64, tensor: usize, centre: f64, spread: f64, rows: std::ops::Range<usize>, cols: usize) -> Vec<f32> {
    let mut rng = Rng(seed ^ (tensor as u64).wrapping_mul(0xa076_1d64_78bd_642f) ^ (rows.start as u64).wrapping_mul(0xe703_7ed1_a0b4_28db));
    (0..rows.len() * cols).map(|_| bf16::from_f64(centre + spread * rng.normal()).to_f32()).collect()
}

/// SplitMix64, with normals from a sum of four uniforms (Irwin–Hall, rescaled to unit
/// variance): only +,−,× on f64, so the stream is identical on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn normal(&mut self) -> f64 {
        // Sum of 4 U(0,1) has mean 2, variance 1/3.
        const SQRT3: f64 = 1.732_050_807_568_877_2;
        let s = self.uniform() + self.uniform() + self.uniform() + self.uniform();
        (s - 2.0) * SQRT3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = Rng(7);
        let xs: Vec<f64> = (0..100_000).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }

    #[test]
    fn configs_parse() {
        for spec in ALL {
            let c = spec.config();
            assert_eq!(c.vocab_size, VOCAB);
            assert_eq!(c.num_kv_heads * 2, c.num_heads);
        }
    }
}
