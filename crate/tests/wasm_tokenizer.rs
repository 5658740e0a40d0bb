//! The tokenizer in wasm32 (run in Node by wasm-bindgen-test-runner, see .ci/run): the same
//! conversion from tokenizer.model and the same golden ids as natively.
#![cfg(target_arch = "wasm32")]

use puyu::chat::{Message, System, Template};
use puyu::Tokenizer;
use wasm_bindgen_test::wasm_bindgen_test;

const GOLDEN: &str = include_str!("../assets/internlm2-tokenizer/golden.json");

#[wasm_bindgen_test]
fn golden_ids_in_wasm() {
    let t = Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap();
    let golden: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let cases = golden["encode"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for e in cases {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(e["ids"].clone()).unwrap();
        assert_eq!(t.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(t.decode(&want, false).unwrap(), text);
    }
    for case in golden["chat"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let template = Template { system: System::None, add_generation_prompt: false, ..Default::default() };
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(template.encode(&t, &messages).unwrap(), want);
    }
    // And through tokenizer.json, as a web page would load it.
    let json = t.to_json().unwrap();
    let back = Tokenizer::from_json(json.as_bytes()).unwrap();
    assert_eq!(back.encode("你好，世界！", true).unwrap(), vec![1, 77230, 60353, 68339, 60477]);
}
