//! Choosing the next token from logits: repetition penalty, greedy, temperature, top-k,
//! top-p, seeded. This CPU version is the reference the GPU sampler will be checked against,
//! so every step is defined exactly (order of operations, ties, the random stream).

use crate::reference::argmax;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Logits of recently seen tokens are divided by this when positive, multiplied when
    /// negative (llama.cpp / HF CTRL-style); 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// InternLM2-Chat's published generation settings (temperature 0.8, top-p 0.8).
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.8,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks the ranges; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!("repeat_penalty must be > 0, got {}", self.repeat_penalty));
        }
        Ok(())
    }
}

/// One choice as a GPU makes it (see shaders/sample.wgsl): the settings, the distinct
/// recent tokens for the penalty, and the uniform number drawn from the sampler's stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draw {
    pub temperature: f32,
    /// 0 keeps all.
    pub top_k: u32,
    pub top_p: f32,
    pub penalty: f32,
    /// Distinct recent tokens the penalty applies to (empty when it is off).
    pub recent: Vec<u32>,
    /// Uniform in [0, 1) (0 when greedy: nothing is drawn).
    pub u: f32,
}

impl Draw {
    /// Greedy, no penalty.
    pub fn greedy() -> Draw {
        Draw { penalty: 1.0, top_p: 1.0, ..Default::default() }
    }
}

/// A sampler with its own random stream (one per generation).
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let state = params.seed;
        Sampler { params, state }
    }

    /// The next uniform number in [0, 1) (SplitMix64, top 24 bits: exactly representable
    /// in f32, so a GPU can reproduce it).
    fn uniform(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The distinct tokens among the last `repeat_last_n` of `history`, most recent first
    /// (none when the penalty is off).
    fn recent(&self, history: &[u32]) -> Vec<u32> {
        if self.params.repeat_penalty == 1.0 {
            return Vec::new();
        }
        let mut seen = std::collections::HashSet::new();
        history.iter().rev().take(self.params.repeat_last_n).copied().filter(|&t| seen.insert(t)).collect()
    }

    /// The next choice for a GPU to make: what [`Sampler::sample`] would do with the same
    /// logits, advancing the random stream the same way.
    pub fn gpu_draw(&mut self, history: &[u32]) -> Draw {
        let p = &self.params;
        let (temperature, top_k, top_p, penalty) = (p.temperature, p.top_k.min(u32::MAX as usize) as u32, p.top_p, p.repeat_penalty);
        let recent = self.recent(history);
        let u = if temperature == 0.0 { 0.0 } else { self.uniform() };
        Draw { temperature, top_k, top_p, penalty, recent, u }
    }

    /// Picks a token from `logits` given the tokens so far (`history`, for the penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        for t in self.recent(history) {
            if let Some(l) = logits.get_mut(t as usize) {
                let penalty = self.params.repeat_penalty;
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
        let p = &self.params;
        if p.temperature == 0.0 {
            return argmax(&logits);
        }

        // Candidates by logit, highest first, ties by lower id.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
        };
        let k = if p.top_k == 0 { order.len() } else { p.top_k.min(order.len()) };
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_logit);
            order.truncate(k);
        }
        order.sort_by(by_logit);

        // Softmax at the temperature, over the candidates.
        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&t| ((logits[t as usize] - max) / p.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);

        // Nucleus: the shortest prefix reaching top_p (at least one token).
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.uniform() * mass;
        for i in 0..keep {
            r -= probs[i];
            if r < 0.0 {
                return order[i];
            }
        }
        order[keep - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, repeat_penalty: 1.0, repeat_last_n: 64, seed: 42 }
    }

    #[test]
    fn greedy_is_argmax() {
        let logits = [0.1, 3.0, -1.0, 2.9];
        assert_eq!(Sampler::new(SamplingParams::greedy()).sample(&logits, &[]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0, 5.0, 4.9, -3.0, 4.8];
        let mut s = Sampler::new(params(1.0, 2, 1.0));
        for _ in 0..200 {
            assert!([1, 2].contains(&s.sample(&logits, &[])));
        }
        // p(1) ≈ 0.36 alone is below 0.5, so the nucleus is {1, 2}.
        let mut s = Sampler::new(params(1.0, 0, 0.5));
        for _ in 0..200 {
            assert!([1, 2].contains(&s.sample(&logits, &[])));
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // Two tokens, logits differ by ln 3 at temperature 1: 3:1.
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(params(1.0, 0, 1.0));
        let ones = (0..20_000).filter(|_| s.sample(&logits, &[]) == 1).count();
        let frac = ones as f64 / 20_000.0;
        // Binomial sd at n=20000, p=0.75 is 0.003: 5 sd.
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
    }

    #[test]
    fn seeded_streams_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0, 0, 1.0) });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn repeat_penalty_demotes_seen_tokens() {
        let logits = [2.0, 1.9, -1.0];
        let p = SamplingParams { repeat_penalty: 1.5, ..SamplingParams::greedy() };
        assert_eq!(Sampler::new(p.clone()).sample(&logits, &[]), 0);
        assert_eq!(Sampler::new(p).sample(&logits, &[0, 0]), 1);
    }

    #[test]
    fn validation_names_the_option() {
        assert!(params(-1.0, 0, 1.0).validate().unwrap_err().contains("temperature"));
        assert!(params(1.0, 0, 0.0).validate().unwrap_err().contains("top_p"));
        assert!(params(1.0, 0, 1.0).validate().is_ok());
    }
}
