//! The InternLM2 forward pass on the CPU, in plain f32: slow, obvious, and the oracle that
//! every GPU kernel and the whole GPU model are checked against.
//!
//! InternLM2 is a Llama-style decoder with these traits (see `docs/internlm2.md` of the project):
//! - one packed `wqkv` projection, its rows grouped by KV head: `[Q_gG … Q_gG+G−1 | K_g | V_g]`;
//! - grouped-query attention (G query heads per KV head), no biases, no qk-norm;
//! - RoPE rotate-half over all 128 dims, with dynamic NTK scaling ([`crate::rope`]);
//! - RMSNorm with a plain weight, SwiGLU feed-forward, untied output matrix, no logit scaling.
//!
//! Shapes: T new tokens, P tokens already cached, H hidden, I intermediate, V vocab,
//! nh heads, nkv KV heads, hd head dim. Matrices are row-major `[out, in]`: y = x·Wᵀ.

use crate::checkpoint::WeightSource;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::rope::Rope;

/// One decoder layer's weights, as f32.
pub struct LayerWeights {
    pub attention_norm: Vec<f32>, // [H]
    pub wqkv: Vec<f32>,           // [(nh + 2·nkv)·hd, H], grouped by KV head
    pub wo: Vec<f32>,             // [H, nh·hd]
    pub ffn_norm: Vec<f32>,       // [H]
    pub w1: Vec<f32>,             // [I, H]  gate
    pub w3: Vec<f32>,             // [I, H]  up
    pub w2: Vec<f32>,             // [H, I]  down
}

pub struct Weights {
    pub tok_embeddings: Vec<f32>, // [V, H]
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,   // [H]
    pub output: Vec<f32>, // [V, H]
}

impl Weights {
    /// Reads every tensor by its HF name, checking its shape against the config.
    pub fn load(c: &ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let layers = (0..c.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}.");
                let t = |name: &str, shape: &[usize]| src.f32_tensor(&format!("{p}{name}"), shape);
                Ok(LayerWeights {
                    attention_norm: t("attention_norm.weight", &[h])?,
                    wqkv: t("attention.wqkv.weight", &[c.qkv_rows(), h])?,
                    wo: t("attention.wo.weight", &[h, c.num_heads * c.head_dim])?,
                    ffn_norm: t("ffn_norm.weight", &[h])?,
                    w1: t("feed_forward.w1.weight", &[i, h])?,
                    w3: t("feed_forward.w3.weight", &[i, h])?,
                    w2: t("feed_forward.w2.weight", &[h, i])?,
                })
            })
            .collect::<Result<_>>()?;
        let tok_embeddings = src.f32_tensor("model.tok_embeddings.weight", &[v, h])?;
        let output = if c.tie_word_embeddings && !src.contains("output.weight") {
            tok_embeddings.clone()
        } else {
            src.f32_tensor("output.weight", &[v, h])?
        };
        Ok(Weights {
            tok_embeddings,
            layers,
            norm: src.f32_tensor("model.norm.weight", &[h])?,
            output,
        })
    }
}

/// The KV cache and RoPE state of one sequence.
#[derive(Clone)]
pub struct Session {
    /// Tokens processed so far (P).
    pub len: usize,
    rope: Rope,
    /// Per layer: `[P, nkv, hd]`, keys stored already rotated.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
}

impl Model {
    pub fn load(config: ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        let weights = Weights::load(&config, src)?;
        Ok(Model { config, weights })
    }

    pub fn new_session(&self) -> Session {
        Session {
            len: 0,
            rope: Rope::new(&self.config),
            k_cache: vec![Vec::new(); self.config.num_layers],
            v_cache: vec![Vec::new(); self.config.num_layers],
        }
    }

    /// Runs `tokens` after what `session` holds and returns the logits of every new
    /// position, `[T, V]` row-major. A prefill is one call with many tokens; a decode step
    /// is a call with one.
    pub fn forward(&self, session: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_with(session, tokens, true)
    }

    /// As [`Model::forward`], but with `all_logits` false only the last position's logits
    /// are computed (a long prefill then skips T−1 vocabulary-sized products).
    pub fn forward_with(&self, session: &mut Session, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let (t_new, p) = (tokens.len(), session.len);
        if t_new == 0 {
            return Err(Error::EmptyInput);
        }
        let w = &self.weights;

        // x: [T, H], the embedding rows.
        let mut x = Vec::with_capacity(t_new * h);
        for &id in tokens {
            let row = id as usize;
            if row >= c.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab: c.vocab_size,
                });
            }
            x.extend_from_slice(&w.tok_embeddings[row * h..(row + 1) * h]);
        }

        // HF computes the RoPE table once per forward call, for the total length.
        session.rope.update(p + t_new);

        for (l, lw) in w.layers.iter().enumerate() {
            // ---- attention ----
            let xn = rms_norm(&x, &lw.attention_norm, c.rms_norm_eps);
            let qkv = matmul(&xn, &lw.wqkv, h); // [T, (nh + 2·nkv)·hd]
            let mut q = vec![0f32; t_new * nh * hd]; // [T, nh, hd]
            for t in 0..t_new {
                let row = &qkv[t * c.qkv_rows()..(t + 1) * c.qkv_rows()];
                let (qs, ks, vs) = split_qkv(c, row);
                for (n, head) in qs.into_iter().enumerate() {
                    let dst = &mut q[(t * nh + n) * hd..(t * nh + n + 1) * hd];
                    dst.copy_from_slice(head);
                    session.rope.apply(dst, p + t);
                }
                for (k, v) in ks.into_iter().zip(vs) {
                    let start = session.k_cache[l].len();
                    session.k_cache[l].extend_from_slice(k);
                    session.rope.apply(&mut session.k_cache[l][start..], p + t);
                    session.v_cache[l].extend_from_slice(v);
                }
            }
            let attn = attention(&q, &session.k_cache[l], &session.v_cache[l], (nh, nkv, hd), p);
            add_in_place(&mut x, &matmul(&attn, &lw.wo, nh * hd));

            // ---- feed-forward: w2(silu(w1·n) ⊙ w3·n) ----
            let xn = rms_norm(&x, &lw.ffn_norm, c.rms_norm_eps);
            let gate = matmul(&xn, &lw.w1, h);
            let up = matmul(&xn, &lw.w3, h);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();
            add_in_place(&mut x, &matmul(&act, &lw.w2, c.intermediate_size));
        }
        debug_assert_eq!(session.k_cache[0].len(), (p + t_new) * nkv * hd);
        session.len = p + t_new;

        let rows = if all_logits { &x[..] } else { &x[(t_new - 1) * h..] };
        let xn = rms_norm(rows, &w.norm, c.rms_norm_eps);
        Ok(matmul(&xn, &w.output, h))
    }
}

/// Splits one token's packed qkv row (`[nkv, G+2, hd]`) into its nh query heads (in head
/// order), nkv key heads and nkv value heads.
fn split_qkv<'a>(c: &ModelConfig, row: &'a [f32]) -> (Vec<&'a [f32]>, Vec<&'a [f32]>, Vec<&'a [f32]>) {
    let (g, hd) = (c.kv_group(), c.head_dim);
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for group in row.chunks_exact((g + 2) * hd) {
        let heads: Vec<&[f32]> = group.chunks_exact(hd).collect();
        q.extend_from_slice(&heads[..g]);
        k.push(heads[g]);
        v.push(heads[g + 1]);
    }
    (q, k, v)
}

/// Causal GQA attention of T new queries (positions p..p+T) over the cache (positions
/// 0..p+T). q: `[T, nh, hd]`, k/v cache: `[p+T, nkv, hd]` → `[T, nh·hd]`; `heads` is
/// (nh, nkv, hd).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], heads: (usize, usize, usize), p: usize) -> Vec<f32> {
    let (nh, nkv, hd) = heads;
    let t_new = q.len() / (nh * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; t_new * nh * hd];
    let mut scores = Vec::new();
    for t in 0..t_new {
        let visible = p + t + 1; // causal: the token sees itself and everything before
        for n in 0..nh {
            let kv = n / (nh / nkv);
            let qh = &q[(t * nh + n) * hd..(t * nh + n + 1) * hd];
            scores.clear();
            scores.extend((0..visible).map(|s| {
                let kh = &k[(s * nkv + kv) * hd..(s * nkv + kv + 1) * hd];
                dot(qh, kh) * scale
            }));
            softmax_in_place(&mut scores);
            let o = &mut out[(t * nh + n) * hd..(t * nh + n + 1) * hd];
            for (s, &w) in scores.iter().enumerate() {
                let vh = &v[(s * nkv + kv) * hd..(s * nkv + kv + 1) * hd];
                for (o, &vv) in o.iter_mut().zip(vh) {
                    *o += w * vv;
                }
            }
        }
    }
    out
}

/// `w ⊙ x / sqrt(mean(x²) + eps)` for each row of x (rows of length w.len()).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.len()) {
        let mean_sq = row.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / row.len() as f64;
        let inv = (1.0 / (mean_sq + eps).sqrt()) as f32;
        out.extend(row.iter().zip(w).map(|(&a, &g)| g * (a * inv)));
    }
    out
}

/// y = x·Wᵀ for x `[T, k]` and W `[n, k]` → `[T, n]`.
pub fn matmul(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let n = w.len() / k;
    let mut y = Vec::with_capacity(x.len() / k * n);
    for xr in x.chunks_exact(k) {
        y.extend(w.chunks_exact(k).map(|wr| dot(xr, wr)));
    }
    y
}

/// Dot product with eight partial sums (so the compiler vectorises it; the order is fixed,
/// so results are deterministic).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// `log Σ exp(x)`, in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}
