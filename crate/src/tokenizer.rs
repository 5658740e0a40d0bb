//! InternLM2's tokenizer, identical to the reference SentencePiece model.
//!
//! InternLM2 ships only a SentencePiece `tokenizer.model`; the `tokenizers` crate wants a
//! `tokenizer.json`. [`Tokenizer::from_sentencepiece`] builds the one from the other the way
//! HF's `SpmConverter` does for InternLM2:
//! - BPE over the pieces, byte fallback on, merges derived from the piece scores
//!   ([`merges_from_scores`]);
//! - normalizer `Replace(' ', '▁')` (the model has an identity normalizer and no dummy prefix);
//! - decoder `Replace('▁', ' ')` + `ByteFallback` + `Fuse`;
//! - control pieces (`<s>`, `</s>`) as special added tokens, user-defined pieces (full-width
//!   letters, `——`, `[UNUSED_TOKEN_n]`) as atomic added tokens, and the six chat tokens that
//!   InternLM2-Chat renames (`<|plugin|>` … `<|im_start|>`, ids 92538–92543) as special.
//!
//! The result can be written out as `tokenizer.json` and read back with
//! [`Tokenizer::from_json`]; both encode and decode alike.

use std::collections::HashMap;

use prost::Message;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use crate::error::{Error, Result};

/// The ids InternLM2-Chat gives its six chat tokens, with their names.
pub const CHAT_TOKENS: [(u32, &str); 6] = [
    (92538, "<|plugin|>"),
    (92539, "<|interpreter|>"),
    (92540, "<|action_end|>"),
    (92541, "<|action_start|>"),
    (92542, "<|im_end|>"),
    (92543, "<|im_start|>"),
];
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const IM_START: u32 = 92543;
pub const IM_END: u32 = 92542;
pub const ACTION_START: u32 = 92541;
pub const ACTION_END: u32 = 92540;

/// The parts of SentencePiece's `ModelProto` (sentencepiece_model.proto) that we read.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// UNIGRAM=1, BPE=2, WORD=3, CHAR=4.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
    }

    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const BPE: i32 = 2;
}

/// The InternLM2 tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// For streaming decode: what each id contributes (text, or one byte-fallback byte).
    pieces: Vec<Piece>,
}

/// What one token id decodes to, before fusing.
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Byte(u8),
    /// Control and chat tokens: their text unless special tokens are skipped.
    Special(String),
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Tokenizer(reason.into())
}

impl Tokenizer {
    /// Converts a SentencePiece `tokenizer.model` (InternLM2's: BPE, byte fallback, no dummy
    /// prefix, identity normalizer). Any other kind of model is refused with a named error.
    pub fn from_sentencepiece(bytes: &[u8]) -> Result<Tokenizer> {
        let model = proto::ModelProto::decode(bytes)
            .map_err(|e| bad(format!("tokenizer.model is not a SentencePiece model: {e}")))?;
        let trainer = model.trainer_spec.clone().unwrap_or_default();
        if trainer.model_type != Some(proto::BPE) {
            return Err(bad(format!(
                "tokenizer.model is a SentencePiece model of type {:?}; InternLM2's is BPE (2)",
                trainer.model_type
            )));
        }
        if trainer.byte_fallback != Some(true) {
            return Err(bad("tokenizer.model has no byte fallback; InternLM2's has"));
        }
        let norm = model.normalizer_spec.clone().unwrap_or_default();
        if norm.add_dummy_prefix.unwrap_or(true) || norm.remove_extra_whitespaces.unwrap_or(true) {
            return Err(bad(
                "tokenizer.model adds a dummy prefix or removes whitespace; InternLM2's does neither",
            ));
        }
        if !matches!(norm.name.as_deref(), Some("identity") | None) {
            return Err(bad(format!(
                "tokenizer.model uses the `{}` normalizer; InternLM2's is identity",
                norm.name.unwrap_or_default()
            )));
        }
        if model.pieces.len() <= CHAT_TOKENS[5].0 as usize {
            return Err(bad(format!(
                "tokenizer.model has {} pieces; InternLM2's has 92544",
                model.pieces.len()
            )));
        }

        // The vocabulary, with the chat tokens under their chat names.
        let chat: HashMap<u32, &str> = CHAT_TOKENS.into_iter().collect();
        let mut vocab: Vec<(String, f32, i32)> = Vec::with_capacity(model.pieces.len());
        for (id, p) in model.pieces.iter().enumerate() {
            let text = match chat.get(&(id as u32)) {
                Some(name) => name.to_string(),
                None => p.piece.clone().ok_or_else(|| bad(format!("piece {id} has no text")))?,
            };
            let kind = p.r#type.unwrap_or(proto::NORMAL);
            vocab.push((text, p.score.unwrap_or(0.0), kind));
        }
        let unk = vocab
            .iter()
            .find(|(_, _, k)| *k == proto::UNKNOWN)
            .map(|(t, _, _)| t.clone())
            .ok_or_else(|| bad("tokenizer.model has no unknown piece"))?;

        let merges = merges_from_scores(&vocab);
        let ids: tokenizers::models::bpe::Vocab = vocab
            .iter()
            .enumerate()
            .map(|(i, (t, _, _))| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(ids, merges)
            .unk_token(unk)
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| bad(format!("building BPE: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let replace = Replace::new(" ", "▁").map_err(|e| bad(e.to_string()))?;
        inner.with_normalizer(Some(NormalizerWrapper::Replace(replace)))
            .map_err(|e| bad(e.to_string()))?;
        let unspace = Replace::new("▁", " ").map_err(|e| bad(e.to_string()))?;
        inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
            DecoderWrapper::Replace(unspace),
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
        ]))));

        // Control and user-defined pieces are matched whole in the raw text, in id order;
        // control pieces and the chat tokens are special.
        let added: Vec<AddedToken> = vocab
            .iter()
            .enumerate()
            .filter(|(_, (_, _, k))| *k == proto::CONTROL || *k == proto::USER_DEFINED)
            .map(|(id, (t, _, k))| {
                let special = *k == proto::CONTROL || chat.contains_key(&(id as u32));
                AddedToken::from(t.clone(), special).normalized(false)
            })
            .collect();
        inner.add_tokens(added).map_err(|e| bad(e.to_string()))?;
        Tokenizer::wrap(inner)
    }

    /// Reads a `tokenizer.json` (as written by [`Tokenizer::to_json`]).
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| bad(format!("tokenizer.json: {e}")))?;
        Tokenizer::wrap(inner)
    }

    /// Reads either format, telling them apart by content (JSON starts with `{`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Tokenizer::from_json(bytes),
            _ => Tokenizer::from_sentencepiece(bytes),
        }
    }

    /// Opens a tokenizer from a model folder (`tokenizer.json`, else `tokenizer.model`) or a
    /// path to either file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Tokenizer> {
        let file = if path.is_dir() {
            let json = path.join("tokenizer.json");
            if json.exists() {
                json
            } else {
                path.join("tokenizer.model")
            }
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        Tokenizer::from_bytes(&bytes)
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Result<Tokenizer> {
        let size = inner.get_vocab_size(true) as u32;
        let special: std::collections::HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let pieces = (0..size)
            .map(|id| {
                let token = inner
                    .id_to_token(id)
                    .ok_or_else(|| bad(format!("id {id} has no token")))?;
                Ok(if special.contains(&id) {
                    Piece::Special(token)
                } else if let Some(byte) = byte_piece(&token) {
                    Piece::Byte(byte)
                } else {
                    Piece::Text(token.replace('▁', " "))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Tokenizer { inner, pieces })
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| bad(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Encodes `text`, with `<s>` first when `bos` is set. Special tokens written in the text
    /// (`<|im_start|>`, `<s>`…) become their ids, as in HF.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| bad(format!("encoding: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if bos {
            ids.push(BOS);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text (special tokens included as their names unless skipped).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| bad(format!("decoding: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special,
            bytes: Vec::new(),
        }
    }
}

/// `<0xAB>` → 0xAB.
fn byte_piece(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Turns ids into text as they arrive, emitting text only once it is complete: a run of
/// byte-fallback tokens is held until it ends, then emitted as its UTF-8 text, or as one
/// U+FFFD per byte if it is not valid UTF-8 (what `decode` does with the whole sequence, so
/// the concatenated stream always equals `decode` of all ids).
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// The current run of byte-fallback bytes.
    bytes: Vec<u8>,
}

impl DecodeStream<'_> {
    /// Adds one id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let piece = self
            .tokenizer
            .pieces
            .get(id as usize)
            .ok_or(Error::TokenOutOfRange {
                id,
                vocab: self.tokenizer.pieces.len(),
            })?;
        let text = match piece {
            Piece::Byte(b) => {
                self.bytes.push(*b);
                return Ok(None);
            }
            Piece::Text(t) => t.as_str(),
            // A skipped token is not there at all: a byte run continues across it.
            Piece::Special(_) if self.skip_special => return Ok(None),
            Piece::Special(t) => t.as_str(),
        };
        let mut out = self.flush_bytes();
        out.push_str(text);
        Ok((!out.is_empty()).then_some(out))
    }

    /// Ends the stream: returns what is still held back.
    pub fn finish(&mut self) -> Option<String> {
        let out = self.flush_bytes();
        (!out.is_empty()).then_some(out)
    }

    fn flush_bytes(&mut self) -> String {
        let run = std::mem::take(&mut self.bytes);
        match String::from_utf8(run) {
            Ok(s) => s,
            Err(e) => "\u{FFFD}".repeat(e.into_bytes().len()),
        }
    }
}

/// BPE merges from SentencePiece piece scores, as HF's `SentencePieceExtractor` makes them:
/// every split of every piece into two pieces of the vocabulary is a merge; merges are ordered
/// by the score of the merged piece (highest first), then by the lengths (in characters) of
/// the left and right parts (longest first), and otherwise kept in vocabulary order (by piece
/// id, then by the ids of the left and right parts).
pub fn merges_from_scores(vocab: &[(String, f32, i32)]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, (t, _, _))| (t.as_str(), i))
        .collect();
    // (score, left chars, right chars, left, right)
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (piece, score, _) in vocab {
        let mut local = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (*score, l.chars().count(), r.chars().count(), l, r)),
        );
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
    });
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}
