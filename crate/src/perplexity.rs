//! Per-token negative log-likelihood of a token sequence under a model.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::reference::{log_sum_exp, Model};

/// The `--json` output of `puyu perplexity` (a contract): `nll[i]` is −log p(token i+1 |
/// tokens 0..=i), so there are `tokens − 1` of them.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tokens: usize,
    pub nll: Vec<f64>,
    pub mean_nll: f64,
    pub ppl: f64,
}

impl Report {
    /// From the logits of every position (`[n, vocab]`) and the n tokens they came from.
    pub fn from_logits(logits: &[f32], tokens: &[u32], vocab: usize) -> Report {
        let nll: Vec<f64> = tokens[1..]
            .iter()
            .enumerate()
            .map(|(i, &next)| {
                let row = &logits[i * vocab..(i + 1) * vocab];
                log_sum_exp(row) - row[next as usize] as f64
            })
            .collect();
        let mean_nll = nll.iter().sum::<f64>() / nll.len() as f64;
        Report {
            tokens: tokens.len(),
            nll,
            mean_nll,
            ppl: mean_nll.exp(),
        }
    }
}

/// Scores `tokens` with the CPU reference in one prefill.
pub fn cpu(model: &Model, tokens: &[u32]) -> Result<Report> {
    if tokens.len() < 2 {
        return Err(Error::TooFewTokens {
            what: "perplexity",
            needed: 2,
            got: tokens.len(),
        });
    }
    let mut session = model.new_session();
    let logits = model.forward(&mut session, tokens)?;
    Ok(Report::from_logits(&logits, tokens, model.config.vocab_size))
}
