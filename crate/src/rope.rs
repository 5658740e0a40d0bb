//! Rotary position embedding as InternLM2 does it: rotate-half (NeoX) over all head dims,
//! with dynamic NTK scaling that recomputes the base from the total sequence length.
//!
//! HF's `InternLM2DynamicNTKScalingRotaryEmbedding` recomputes its frequencies whenever a
//! forward call sees a total length L (cache + new tokens) above the longest it has cached,
//! which starts at `max_position_embeddings`. The new base then *sticks*: shorter lengths
//! later reuse it, and keys already in the KV cache keep the rotation they were given.
//! [`Rope`] holds that state for one sequence (one KV cache).

use crate::config::{ModelConfig, RopeScaling};

/// `base' = base · (factor·L/max_pos − (factor−1))^(hd/(hd−2))`, the dynamic-NTK base for a
/// total length `len` (meaningful only when `len > max_pos`).
pub fn ntk_base(base: f64, factor: f64, len: usize, max_pos: usize, head_dim: usize) -> f64 {
    let hd = head_dim as f64;
    base * ((factor * len as f64 / max_pos as f64) - (factor - 1.0)).powf(hd / (hd - 2.0))
}

/// The rotary frequencies of one sequence.
#[derive(Clone, Debug)]
pub struct Rope {
    head_dim: usize,
    theta: f64,
    scaling: RopeScaling,
    max_pos: usize,
    /// Longest total length the frequencies were computed for (HF's `max_seq_len_cached`).
    cached_len: usize,
    base: f64,
    /// `1 / base^(2i/hd)` for i < hd/2, divided by the linear factor if any.
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let mut rope = Rope {
            head_dim: config.head_dim,
            theta: config.rope_theta,
            scaling: config.rope_scaling,
            max_pos: config.max_position_embeddings,
            cached_len: config.max_position_embeddings,
            base: config.rope_theta,
            inv_freq: Vec::new(),
        };
        rope.set_base(config.rope_theta);
        rope
    }

    /// The base in use now (the dynamic-NTK one once the sequence has outgrown max_pos).
    pub fn base(&self) -> f64 {
        self.base
    }

    /// Call before each forward step with the total length after it (cache + new tokens).
    pub fn update(&mut self, total_len: usize) {
        if let RopeScaling::Dynamic { factor } = self.scaling {
            if total_len > self.cached_len {
                self.cached_len = total_len;
                self.set_base(ntk_base(
                    self.theta,
                    factor,
                    total_len,
                    self.max_pos,
                    self.head_dim,
                ));
            }
        }
    }

    fn set_base(&mut self, base: f64) {
        let hd = self.head_dim as f64;
        let linear = match self.scaling {
            RopeScaling::Linear { factor } => factor,
            _ => 1.0,
        };
        self.base = base;
        self.inv_freq = (0..self.head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / hd) / linear)
            .collect();
    }

    /// (cos, sin) of each pair's angle at `pos`, as `apply` uses them (the GPU's RoPE table).
    pub fn cos_sin(&self, pos: usize) -> impl Iterator<Item = (f32, f32)> + '_ {
        self.inv_freq.iter().map(move |&f| {
            let (sin, cos) = (pos as f64 * f).sin_cos();
            (cos as f32, sin as f32)
        })
    }

    /// Rotates one head vector `x` (length head_dim) to position `pos`:
    /// for j < hd/2, the pair (x_j, x_{j+hd/2}) turns by angle pos·inv_freq[j].
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        debug_assert_eq!(x.len(), self.head_dim);
        for (j, &f) in self.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f64 * f).sin_cos();
            let (a, b) = (x[j] as f64, x[j + half] as f64);
            x[j] = (a * cos - b * sin) as f32;
            x[j + half] = (b * cos + a * sin) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntk_base_matches_the_worked_examples() {
        // internlm2.md: factor 2, max_pos 32768, base 1e6.
        let b = ntk_base(1e6, 2.0, 65536, 32768, 128);
        assert!((b / 3.0528e6 - 1.0).abs() < 1e-4, "{b}");
        let b = ntk_base(1e6, 2.0, 200_000, 32768, 128);
        assert!((b / 1.1645e7 - 1.0).abs() < 1e-4, "{b}");
    }

    fn config(scaling: RopeScaling) -> ModelConfig {
        ModelConfig {
            vocab_size: 10,
            hidden_size: 64,
            intermediate_size: 64,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: scaling,
            tie_word_embeddings: false,
            bos_token_id: 1,
            eos_token_ids: vec![2],
        }
    }

    #[test]
    fn dynamic_base_grows_and_sticks() {
        let mut rope = Rope::new(&config(RopeScaling::Dynamic { factor: 2.0 }));
        rope.update(64);
        assert_eq!(rope.base(), 10000.0, "no change up to max_pos");
        rope.update(100);
        let grown = rope.base();
        assert_eq!(grown, ntk_base(10000.0, 2.0, 100, 64, 16));
        rope.update(80);
        assert_eq!(rope.base(), grown, "a shorter length keeps the grown base");
        rope.update(101);
        assert!(rope.base() > grown);
    }

    #[test]
    fn rotation_is_rotate_half_and_keeps_the_norm() {
        let rope = Rope::new(&config(RopeScaling::None));
        let orig: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut x = orig.clone();
        rope.apply(&mut x, 0);
        assert_eq!(x, orig, "position 0 is the identity");
        rope.apply(&mut x, 5);
        // Pair j=0 (frequency 1) turns by 5 radians.
        let (s, c) = 5f64.sin_cos();
        let want0 = orig[0] as f64 * c - orig[8] as f64 * s;
        assert!((x[0] as f64 - want0).abs() < 1e-6);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-5);

        // Linear scaling by 2 at position 10 equals plain RoPE at position 5.
        let lin = Rope::new(&config(RopeScaling::Linear { factor: 2.0 }));
        let mut y = orig.clone();
        lin.apply(&mut y, 10);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
