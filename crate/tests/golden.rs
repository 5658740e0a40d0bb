//! The CPU reference against logits from an independent implementation (HF transformers'
//! Llama on the split wqkv, see tools/reference_dump.py), on both tiny checkpoints.
//!
//! Tolerance: max |Δlogit| ≤ 1e-3. Both sides compute in f32 from the same bf16 weights and
//! differ only in summation order (≈1e-6 relative on logits of magnitude ~10), so 1e-3 is
//! two orders of magnitude of headroom, yet far below the smallest top-1 margin the dump
//! tool recorded (0.0089), so the greedy tokens must agree exactly.

mod common;

use common::{max_abs_diff, Golden};
use puyu::reference::{argmax, log_sum_exp};
use puyu::tiny::{TinySpec, TINY, TINY_NTK};
use sha2::{Digest, Sha256};

const TOL: f32 = 1e-3;

fn check(spec: TinySpec, model: &puyu::reference::Model, weights_sha: &str) {
    let golden = Golden::load(spec.name);
    assert_eq!(
        golden.metadata("model_sha256"),
        weights_sha,
        "the tiny generator no longer makes the checkpoint the fixture was computed from; \
         if that is intended, rerun tools/make-golden.sh"
    );
    let vocab = model.config.vocab_size;
    let (_, prompt) = golden.ids("prompt_ids");
    let (shape, sample_ids) = golden.ids("sample_ids");
    let (_, sample_logits) = golden.f32("sample_logits");
    let (_, lse) = golden.f32("logsumexp");
    let (_, last) = golden.f32("last_logits");
    let k = shape[1];
    assert_eq!(shape[0], prompt.len());

    let mut session = model.new_session();
    let logits = model.forward(&mut session, &prompt).unwrap();
    let mut worst = 0f32;
    for pos in 0..prompt.len() {
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        for j in 0..k {
            let id = sample_ids[pos * k + j] as usize;
            worst = worst.max((row[id] - sample_logits[pos * k + j]).abs());
        }
        let d = (log_sum_exp(row) as f32 - lse[pos]).abs();
        assert!(d <= TOL, "{}: logsumexp at position {pos} off by {d}", spec.name);
    }
    assert!(worst <= TOL, "{}: max |Δlogit| over prompt positions {worst}", spec.name);
    let d_last = max_abs_diff(&logits[(prompt.len() - 1) * vocab..], &last);
    assert!(d_last <= TOL, "{}: last position, max |Δlogit| {d_last}", spec.name);
    eprintln!("{}: prompt max |Δlogit| {worst:.2e}, last position {d_last:.2e}", spec.name);

    // Greedy decoding, one token per step through the KV cache.
    let (_, want) = golden.ids("greedy_ids");
    let (_, g_ids) = golden.ids("greedy_sample_ids");
    let (_, g_logits) = golden.f32("greedy_sample_logits");
    let (_, g_lse) = golden.f32("greedy_logsumexp");
    let mut got = Vec::new();
    let mut next = argmax(&logits[(prompt.len() - 1) * vocab..]);
    let mut worst = 0f32;
    for step in 0..want.len() {
        got.push(next);
        let row = model.forward(&mut session, &[next]).unwrap();
        for j in 0..k {
            let id = g_ids[step * k + j] as usize;
            worst = worst.max((row[id] - g_logits[step * k + j]).abs());
        }
        let d = (log_sum_exp(&row) as f32 - g_lse[step]).abs();
        assert!(d <= TOL, "{}: decode step {step}: logsumexp off by {d}", spec.name);
        next = argmax(&row);
    }
    assert_eq!(got, want, "{}: greedy continuation", spec.name);
    assert!(worst <= TOL, "{}: decode steps, max |Δlogit| {worst}", spec.name);
    eprintln!("{}: decode max |Δlogit| {worst:.2e}, {} greedy tokens equal", spec.name, want.len());
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tiny_matches_transformers() {
    let bytes = TINY.safetensors();
    let sha = sha256_hex(&bytes);
    let model = puyu::tiny_reference(&TINY).unwrap();
    check(TINY, &model, &sha);
}

/// The NTK checkpoint through the on-disk HF folder path (config.json + mmap'd safetensors):
/// its 100-token prompt and 32 decode steps all run past max_position_embeddings = 64, so
/// the base is recomputed at every step, as HF does.
#[test]
fn tiny_ntk_matches_transformers_from_an_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    TINY_NTK.write_hf_dir(dir.path()).unwrap();
    let sha = sha256_hex(&std::fs::read(dir.path().join("model.safetensors")).unwrap());
    let model = puyu::load_hf_reference(dir.path()).unwrap();
    check(TINY_NTK, &model, &sha);
}
