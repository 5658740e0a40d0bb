//! The async generation engine in wasm32 (run in Node by wasm-bindgen-test-runner, see
//! .ci/run): the tiny model's greedy continuation of its golden prompt equals the ids that
//! HF transformers produced (the golden fixture). Node has no WebGPU, so this runs the CPU
//! engine through the same `generate` the GPU engine uses in the browser.
#![cfg(target_arch = "wasm32")]

use std::ops::ControlFlow;

use puyu::generate::{generate, CpuSession, FinishReason, GenerateOptions};
use puyu::sampling::SamplingParams;
use wasm_bindgen_test::wasm_bindgen_test;

const GOLDEN: &[u8] = include_bytes!("../../tests/fixtures/golden-tiny.safetensors");

fn ids(st: &safetensors::SafeTensors, name: &str) -> Vec<u32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

#[wasm_bindgen_test]
async fn greedy_generation_in_wasm_matches_the_golden_ids() {
    let st = safetensors::SafeTensors::deserialize(GOLDEN).unwrap();
    let (prompt, want) = (ids(&st, "prompt_ids"), ids(&st, "greedy_ids"));
    let model = puyu::tiny_reference(&puyu::tiny::TINY).unwrap();
    let tokenizer = puyu::Tokenizer::from_sentencepiece(puyu::tiny::TOKENIZER_MODEL).unwrap();
    let options = GenerateOptions { max_tokens: 8, stop_ids: vec![], stop_strings: vec![], sampling: SamplingParams::greedy() };
    let mut streamed = Vec::new();
    let out = generate(&mut CpuSession::new(&model), &tokenizer, &prompt, &options, |id, _| {
        streamed.push(id);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.ids, want[..8]);
    assert_eq!(streamed, out.ids);
}
