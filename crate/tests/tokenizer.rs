//! The tokenizer against the reference: the published and SentencePiece-made ids in
//! golden.json, and a corpus of varied strings encoded by Python sentencepiece 0.2.0 from
//! the same tokenizer.model (tools/make-tokenizer-corpus.py).

mod common;

use std::sync::OnceLock;

use puyu::Tokenizer;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap())
}

fn golden() -> serde_json::Value {
    let path = common::repo_root().join("crate/assets/internlm2-tokenizer/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn golden_encodings() {
    let t = tokenizer();
    for e in golden()["encode"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(e["ids"].clone()).unwrap();
        assert_eq!(t.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(t.decode(&want, false).unwrap(), text);
        let mut with_bos = vec![1];
        with_bos.extend(&want);
        assert_eq!(t.encode(text, true).unwrap(), with_bos);
    }
}

fn corpus() -> Vec<(String, Vec<u32>)> {
    let path = common::repo_root().join("tests/fixtures/tokenizer-corpus.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["corpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["text"].as_str().unwrap().to_string(), serde_json::from_value(e["ids"].clone()).unwrap()))
        .collect()
}

/// Every corpus string encodes to exactly the ids sentencepiece gave, and decodes back.
#[test]
fn corpus_matches_sentencepiece() {
    let t = tokenizer();
    let corpus = corpus();
    assert!(corpus.len() >= 2000, "corpus has {} strings", corpus.len());
    let mut failures = Vec::new();
    for (text, want) in &corpus {
        let got = t.encode(text, false).unwrap();
        if &got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // U+2581 is SentencePiece's escape for a space: it decodes as one, in the
        // reference too (sentencepiece decodes "▁" to " "), so compare with it unescaped.
        assert_eq!(t.decode(&got, false).unwrap(), text.replace('▁', " "), "decode(encode(x)) != x");
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), corpus.len(), failures[..failures.len().min(10)].join("\n"));
}

/// Written as tokenizer.json and read back, the tokenizer encodes and decodes the same.
#[test]
fn tokenizer_json_round_trip() {
    let t = tokenizer();
    let json = t.to_json().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), &json).unwrap();
    let back = Tokenizer::open(dir.path()).unwrap();
    assert_eq!(back.vocab_size(), 92544);
    for (text, want) in corpus().iter().step_by(3) {
        assert_eq!(&back.encode(text, false).unwrap(), want, "{text:?}");
    }
    for (id, name) in puyu::tokenizer::CHAT_TOKENS {
        assert_eq!(back.token_to_id(name), Some(id));
        assert_eq!(back.encode(name, false).unwrap(), vec![id], "{name} is atomic");
    }
    // A model folder without tokenizer.json falls back to tokenizer.model; a file path works.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.model"), puyu::tiny::TOKENIZER_MODEL).unwrap();
    let from_model = Tokenizer::open(dir.path()).unwrap();
    assert_eq!(from_model.encode("你好 world", true).unwrap(), t.encode("你好 world", true).unwrap());
    assert!(Tokenizer::open(&dir.path().join("tokenizer.model")).is_ok());
}

#[test]
fn bad_tokenizer_files_are_named_errors() {
    for bytes in [&b"not a model"[..], b"{\"truncated\": ", &puyu::tiny::TOKENIZER_MODEL[..1000]] {
        let err = Tokenizer::from_bytes(bytes).err().expect("must fail");
        assert!(matches!(err, puyu::Error::Tokenizer(_)), "{err}");
    }
}

/// Streaming equals decoding everything at once, and text of real strings streams out with
/// no U+FFFD: a character split over byte-fallback tokens is held until it is complete.
#[test]
fn streaming_decode_equals_full_decode() {
    let t = tokenizer();
    for (text, ids) in corpus() {
        let mut stream = t.stream(false);
        let mut out = String::new();
        for &id in &ids {
            if let Some(chunk) = stream.push(id).unwrap() {
                assert!(!chunk.contains('\u{FFFD}') || text.contains('\u{FFFD}'), "{text:?}: {chunk:?}");
                out.push_str(&chunk);
            }
        }
        out.extend(stream.finish());
        assert_eq!(out, text.replace('▁', " "));
    }
}

/// Property test over random id sequences (dense in byte-fallback and special tokens, so
/// that invalid UTF-8 runs happen): the stream always concatenates to `decode`.
#[test]
fn streaming_decode_property() {
    let t = tokenizer();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for _ in 0..2000 {
        let len = 1 + next(24) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| match next(10) {
                0..=4 => 3 + next(256) as u32,      // byte fallback
                5 => [0, 1, 2, 92538, 92542, 92543][next(6) as usize],
                6 => 92352 + next(192) as u32,      // user-defined
                _ => next(92544) as u32,
            })
            .collect();
        for skip in [false, true] {
            let mut stream = t.stream(skip);
            let mut out = String::new();
            for &id in &ids {
                out.extend(stream.push(id).unwrap());
            }
            out.extend(stream.finish());
            assert_eq!(out, t.decode(&ids, skip).unwrap(), "ids {ids:?}, skip_special {skip}");
        }
    }
}

/// The published conversation of golden.json renders to exactly its text and ids (HF's
/// apply_chat_template: no system prompt, no generation prompt).
#[test]
fn golden_chat_template() {
    use puyu::chat::{Message, System, Template};
    let t = tokenizer();
    for case in golden()["chat"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let template = Template { system: System::None, add_generation_prompt: false, ..Default::default() };
        assert_eq!(template.render(&messages), case["rendered"].as_str().unwrap());
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(template.encode(t, &messages).unwrap(), want);
    }
}

/// Tool and interpreter turns encode with the chat tokens as single ids.
#[test]
fn tool_turns_use_the_chat_token_ids() {
    use puyu::chat::{Channel, Message, Template, ToolCall};
    let t = tokenizer();
    let mut call = Message::assistant("");
    call.tool_calls.push(ToolCall { name: "f".into(), arguments: serde_json::json!({}) });
    let msgs = [Message::user("x"), call, Message::environment(Channel::Interpreter, "1")];
    let ids = Template::default().encode(t, &msgs).unwrap();
    for id in [1, 92543, 92542, 92541, 92538, 92540, 92539] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1, "one BOS");
}
