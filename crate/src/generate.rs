//! Generation, the same for every engine and target: prefill, then sample and decode one
//! token at a time, streaming text, until a stop id, a stop string, max tokens, or the
//! caller says stop. It is async so that the browser (where GPU readbacks must be awaited)
//! and native code (`pollster::block_on`, or [`generate_blocking`]) share it.

use std::ops::ControlFlow;

use crate::error::Result;
use crate::reference::{Model, Session};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// A model with its KV cache, as generation sees it: tokens in, next-token logits out.
#[allow(async_fn_in_trait)] // used single-threaded (the browser) or blocked on (native)
pub trait Forward {
    /// Runs `tokens` after the cache; returns the logits of the last one.
    async fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Runs `tokens` after the cache and picks the next token with `sampler` (`history`: the
    /// tokens so far, for the penalty). The GPU samples there and reads back only the id.
    async fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        Ok(sampler.sample(&self.forward_last(tokens).await?, history))
    }
    /// Tokens in the cache.
    fn cached_tokens(&self) -> usize;
    /// How many tokens the cache holds at most (`None`: no limit).
    fn context(&self) -> Option<usize>;
}

/// The CPU reference with one sequence.
pub struct CpuSession<'a> {
    pub model: &'a Model,
    pub session: Session,
}

impl<'a> CpuSession<'a> {
    pub fn new(model: &'a Model) -> Self {
        CpuSession { model, session: model.new_session() }
    }
}

impl Forward for CpuSession<'_> {
    async fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.forward_with(&mut self.session, tokens, false)
    }
    fn cached_tokens(&self) -> usize {
        self.session.len
    }
    fn context(&self) -> Option<usize> {
        None
    }
}

impl Forward for crate::gpu::model::GpuModel {
    async fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward(tokens, false).await
    }
    async fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        crate::gpu::model::GpuModel::forward_sample(self, tokens, sampler, history).await
    }
    fn cached_tokens(&self) -> usize {
        self.len
    }
    fn context(&self) -> Option<usize> {
        Some(self.context)
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Token ids that end the reply (not emitted as text).
    pub stop_ids: Vec<u32>,
    /// Strings that end the reply (the text before them is emitted, they are not).
    pub stop_strings: Vec<String>,
    pub sampling: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id or stop string.
    Stop,
    /// max_tokens reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Every sampled id, the stop id included.
    pub ids: Vec<u32>,
    /// The emitted text.
    pub text: String,
    pub finish: FinishReason,
}

/// One step of a generation: the sampled id and the text it completes (possibly empty: a
/// token may end inside a UTF-8 sequence, or begin what could be a stop string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

/// A generation as an async iterator: each [`Generator::next`] runs one step (the prompt
/// first, then one token) and returns its token; `None` once a stop id, a stop string,
/// max tokens or [`Generator::cancel`] has ended it. The JS streaming API and [`generate`]
/// are both built on this.
pub struct Generator<'a, M: Forward> {
    model: &'a mut M,
    options: GenerateOptions,
    sampler: Sampler,
    stream: crate::tokenizer::DecodeStream<'a>,
    stops: StopStrings,
    /// The prompt, then every sampled id (for the penalty).
    history: Vec<u32>,
    /// Tokens to run next: the prompt, then the last sampled id.
    feed: Vec<u32>,
    ids: Vec<u32>,
    finish: Option<FinishReason>,
    done: bool,
}

impl<'a, M: Forward> Generator<'a, M> {
    /// Prepares to run `prompt` after what `model` holds. Fails with
    /// [`crate::Error::ContextFull`] before any work when the cache, the prompt and
    /// `max_tokens` would not fit the context.
    pub fn new(model: &'a mut M, tokenizer: &'a Tokenizer, prompt: &[u32], options: &GenerateOptions) -> Result<Self> {
        if let Some(context) = model.context() {
            // The last sampled token is never fed back, hence − 1.
            let needed = model.cached_tokens() + prompt.len() + options.max_tokens.saturating_sub(1);
            if needed > context {
                return Err(crate::Error::ContextFull { needed, context });
            }
        }
        Ok(Generator {
            model,
            options: options.clone(),
            sampler: Sampler::new(options.sampling.clone()),
            stream: tokenizer.stream(true),
            stops: StopStrings::new(&options.stop_strings),
            history: prompt.to_vec(),
            feed: prompt.to_vec(),
            ids: Vec::new(),
            finish: None,
            done: options.max_tokens == 0,
        })
    }

    /// Runs the next step; `None` when the generation has ended.
    pub async fn next(&mut self) -> Result<Option<Token>> {
        if self.done {
            return Ok(None);
        }
        if self.finish.is_none() && self.ids.len() == self.options.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() {
            // Length or cancel: whatever was held back (a partial stop string, an unfinished
            // byte run) is text after all.
            self.done = true;
            let rest = self.stream.finish().unwrap_or_default();
            let (mut text, _) = self.stops.feed(&rest);
            text.push_str(&self.stops.flush());
            return Ok(match self.ids.last() {
                Some(&id) if !text.is_empty() => Some(Token { id, text }),
                _ => None,
            });
        }
        let feed = std::mem::take(&mut self.feed);
        let id = self.model.forward_sample(&feed, &mut self.sampler, &self.history).await?;
        self.ids.push(id);
        self.history.push(id);
        self.feed = vec![id];
        if self.options.stop_ids.contains(&id) {
            (self.finish, self.done) = (Some(FinishReason::Stop), true);
            return Ok(None);
        }
        let piece = self.stream.push(id)?.unwrap_or_default();
        let (text, stopped) = self.stops.feed(&piece);
        if stopped {
            (self.finish, self.done) = (Some(FinishReason::Stop), true);
        }
        Ok(Some(Token { id, text }))
    }

    /// Ends the generation after the token already returned (the next call to `next`
    /// returns any held-back text, then `None`). Nothing more runs on the model.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Cancelled);
        }
    }

    /// Every sampled id so far, a stop id included.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Why it ended (`None` while it runs).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        if self.done { self.finish } else { None }
    }
}

/// Runs `prompt` after what `model` holds, then generates. `on_token` sees each sampled id
/// with the text it completes (possibly empty); returning `Break` cancels after that token.
/// Fails with [`crate::Error::ContextFull`] before any work when the cache, the prompt and
/// `max_tokens` would not fit the context.
pub async fn generate(
    model: &mut impl Forward,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut g = Generator::new(model, tokenizer, prompt, options)?;
    let mut text = String::new();
    while let Some(token) = g.next().await? {
        text.push_str(&token.text);
        if on_token(token.id, &token.text).is_break() {
            g.cancel();
        }
    }
    Ok(Generation { ids: g.ids.clone(), text, finish: g.finish_reason().unwrap_or(FinishReason::Length) })
}

/// [`generate`], waited for on this thread (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn generate_blocking(
    model: &mut impl Forward,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<Generation> {
    pollster::block_on(generate(model, tokenizer, prompt, options, on_token))
}

/// Finds stop strings in streamed text, holding back any tail that could begin one.
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: &[String]) -> Self {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns what can be emitted and whether a stop string was reached (the
    /// text before it is emitted, the rest dropped).
    pub fn feed(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        (out, false)
    }

    /// Ends the stream: what was held back is text after all.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStrings::new(&stops);
        let mut out = String::new();
        for c in chunks {
            let (t, stopped) = s.feed(c);
            out.push_str(&t);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&s.flush());
        (out, false)
    }

    #[test]
    fn stop_strings_split_across_chunks() {
        assert_eq!(run(&["<|im_end|>"], &["Hello", " wor", "ld<|im", "_end|>tail"]), ("Hello world".into(), true));
        assert_eq!(run(&["END"], &["aEN", "Xb"]), ("aENXb".into(), false));
        assert_eq!(run(&["END"], &["aEN"]), ("aEN".into(), false), "a partial stop at the end is text");
        assert_eq!(run(&["xyz", "b"], &["aab", "c"]), ("aa".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["你好"], &["说你", "好吗"]), ("说".into(), true));
    }
}
