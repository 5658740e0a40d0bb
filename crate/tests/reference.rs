//! Properties of the CPU reference that need no external fixture: prefill and decode agree,
//! checkpoints in every supported layout give the same model, and bad checkpoints give
//! named errors.

mod common;

use common::{keep, max_abs_diff, rewrite};
use half::{bf16, f16};
use puyu::tiny::{TINY, TINY_NTK};
use puyu::{Checkpoint, Error};
use safetensors::Dtype;

fn prompt(n: usize) -> Vec<u32> {
    // BOS then a deterministic walk over the vocabulary.
    std::iter::once(1).chain((1..n as u32).map(|i| (i * 7919 + 13) % 92544)).collect()
}

/// Prefill-all, prefill-then-decode and chunked prefill produce the same logits at every
/// position. Each token's arithmetic is the same whatever the batch, so they agree to
/// rounding; 1e-5 absolute on logits of magnitude ~10 is the bound the issue sets.
#[test]
fn prefill_and_decode_agree() {
    for spec in [TINY, TINY_NTK] {
        let model = puyu::tiny_reference(&spec).unwrap();
        let vocab = model.config.vocab_size;
        // Stay within max_position_embeddings (64 for tiny-ntk): past it, HF's dynamic NTK
        // gives each forward call its own base, so the split changes results by design.
        let tokens = prompt(60);
        let all = model.forward(&mut model.new_session(), &tokens).unwrap();

        let mut s = model.new_session();
        let mut stepped = model.forward(&mut s, &tokens[..25]).unwrap();
        for &t in &tokens[25..] {
            stepped.extend(model.forward(&mut s, &[t]).unwrap());
        }
        assert_eq!(s.len, tokens.len());
        let d = max_abs_diff(&all, &stepped);
        assert!(d <= 1e-5, "{}: prefill vs decode differ by {d}", spec.name);

        let mut s = model.new_session();
        let mut chunked = Vec::new();
        for chunk in tokens.chunks(17) {
            chunked.extend(model.forward(&mut s, chunk).unwrap());
        }
        let d = max_abs_diff(&all, &chunked);
        assert!(d <= 1e-5, "{}: chunked prefill differs by {d}", spec.name);
        assert_eq!(all.len(), tokens.len() * vocab);
    }
}

/// Past max_position_embeddings the split matters (the NTK base depends on each call's
/// total length): a check that the scaling is live in the reference at all.
#[test]
fn ntk_makes_the_split_matter_past_max_position() {
    let model = puyu::tiny_reference(&TINY_NTK).unwrap();
    let vocab = model.config.vocab_size;
    let tokens = prompt(80);
    let all = model.forward(&mut model.new_session(), &tokens).unwrap();
    let mut s = model.new_session();
    model.forward(&mut s, &tokens[..79]).unwrap();
    let last = model.forward(&mut s, &tokens[79..]).unwrap();
    let d = max_abs_diff(&all[79 * vocab..], &last);
    assert!(d > 1e-3, "dynamic NTK had no effect ({d})");
}

fn write_dir(weights: &[u8], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    dir
}

fn last_logits(model: &puyu::reference::Model) -> Vec<f32> {
    model.forward(&mut model.new_session(), &prompt(12)).unwrap()
}

/// BF16, F16 and F32 files and a sharded checkpoint all load as the same model.
#[test]
fn every_supported_layout_loads() {
    let bytes = TINY.safetensors();
    let want = last_logits(&puyu::tiny_reference(&TINY).unwrap());
    let to_f32 = rewrite(&bytes, |_, t| {
        let v: Vec<u8> = t.data.chunks_exact(2)
            .flat_map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
            .collect();
        Some((Dtype::F32, t.shape.to_vec(), v))
    });
    let dir = write_dir(&to_f32, &TINY.config_json());
    let got = last_logits(&puyu::load_hf_reference(dir.path()).unwrap());
    assert_eq!(got, want, "bf16 → f32 is exact, so the logits are identical");

    let to_f16 = rewrite(&bytes, |_, t| {
        let v: Vec<u8> = t.data.chunks_exact(2)
            .flat_map(|b| f16::from_f32(bf16::from_le_bytes([b[0], b[1]]).to_f32()).to_le_bytes())
            .collect();
        Some((Dtype::F16, t.shape.to_vec(), v))
    });
    let dir = write_dir(&to_f16, &TINY.config_json());
    let got = last_logits(&puyu::load_hf_reference(dir.path()).unwrap());
    // bf16's 8 mantissa bits fit f16's 11, so only weights below f16's normal range
    // (|w| < 6.1e-5, stored as subnormals with an absolute error ≤ 3e-8) change: the logits
    // move by far less than 1e-4.
    let d = max_abs_diff(&got, &want);
    assert!(d > 0.0 && d <= 1e-4, "f16 copy differs by {d}");

    // Two shards and an index, as HF writes large checkpoints.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), TINY.config_json()).unwrap();
    let in_first = |name: &str| name.contains("layers.0.") || name.contains("tok_embeddings");
    let first = rewrite(&bytes, |n, t| if in_first(n) { keep(t) } else { None });
    let second = rewrite(&bytes, |n, t| if in_first(n) { None } else { keep(t) });
    std::fs::write(dir.path().join("model-00001-of-00002.safetensors"), &first).unwrap();
    std::fs::write(dir.path().join("model-00002-of-00002.safetensors"), &second).unwrap();
    let ckpt = Checkpoint::from_bytes("x", bytes.clone()).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = ckpt
        .names()
        .into_iter()
        .map(|n| {
            let shard = if in_first(n) { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
            (n.to_string(), serde_json::Value::from(shard))
        })
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let got = last_logits(&puyu::load_hf_reference(dir.path()).unwrap());
    assert_eq!(got, want);

    // An index that puts a tensor in the wrong shard is named as such.
    let mut bad = index.clone();
    bad["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(dir.path().join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = puyu::load_hf_reference(dir.path()).err().unwrap();
    assert!(matches!(&err, Error::ShardIndex { reason, .. } if reason.contains("model.norm.weight")), "{err}");

    // A shard the index names but the folder lacks.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = puyu::load_hf_reference(dir.path()).err().unwrap();
    assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("model-00002-of-00002.safetensors")), "{err}");
}

#[test]
fn bad_checkpoints_give_named_errors() {
    let bytes = TINY.safetensors();
    let config = TINY.config_json();
    let load = |weights: &[u8], config: &str| {
        let dir = write_dir(weights, config);
        puyu::load_hf_reference(dir.path()).err().expect("should fail")
    };

    let missing = rewrite(&bytes, |n, t| if n == "model.layers.1.ffn_norm.weight" { None } else { keep(t) });
    let err = load(&missing, &config);
    assert!(matches!(&err, Error::MissingTensor { name } if name == "model.layers.1.ffn_norm.weight"), "{err}");
    assert!(err.to_string().contains("model.layers.1.ffn_norm.weight"));

    let reshaped = rewrite(&bytes, |n, t| {
        if n == "model.layers.0.attention.wo.weight" {
            Some((t.dtype, vec![32, 128], t.data.to_vec()))
        } else {
            keep(t)
        }
    });
    let err = load(&reshaped, &config);
    assert!(
        matches!(&err, Error::WrongShape { name, expected, actual }
            if name == "model.layers.0.attention.wo.weight" && expected == &[64, 64] && actual == &[32, 128]),
        "{err}"
    );

    let retyped = rewrite(&bytes, |n, t| {
        if n == "model.norm.weight" {
            Some((Dtype::I16, t.shape.to_vec(), t.data.to_vec()))
        } else {
            keep(t)
        }
    });
    let err = load(&retyped, &config);
    assert!(matches!(&err, Error::WrongDtype { name, dtype } if name == "model.norm.weight" && dtype == "I16"), "{err}");

    let err = load(&bytes[..bytes.len() - 1000], &config);
    assert!(matches!(&err, Error::TruncatedFile { file, .. } if file == "model.safetensors"), "{err}");

    let yarn = config.replace("\"type\": \"dynamic\"", "\"type\": \"yarn\"");
    assert_ne!(yarn, config);
    let err = load(&bytes, &yarn);
    assert!(matches!(&err, Error::UnsupportedRopeScaling { kind } if kind == "yarn"), "{err}");

    // A config that disagrees with the weights is caught at the first tensor it affects.
    let wider = config.replace("\"intermediate_size\": 192", "\"intermediate_size\": 256");
    assert_ne!(wider, config);
    assert!(matches!(load(&bytes, &wider), Error::WrongShape { .. }));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    assert!(matches!(puyu::load_hf_reference(dir.path()), Err(Error::NoWeights { .. })));
    let err = puyu::load_hf_reference(&dir.path().join("nope")).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn out_of_vocabulary_and_empty_inputs_are_errors() {
    let model = puyu::tiny_reference(&TINY).unwrap();
    let mut s = model.new_session();
    assert!(matches!(model.forward(&mut s, &[1, 92544]), Err(Error::TokenOutOfRange { id: 92544, .. })));
    assert!(matches!(model.forward(&mut s, &[]), Err(Error::EmptyInput)));
    assert_eq!(s.len, 0, "a failed call leaves the session as it was");
}

/// The sharded, streamed writer used for the big random checkpoints makes the same model as
/// the in-memory one (same draws in the same order), read through model.safetensors.index.json.
#[test]
fn sharded_writer_makes_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    TINY.write_hf_sharded(dir.path(), |_, _| {}).unwrap();
    assert!(dir.path().join("model.safetensors.index.json").exists());
    let a = last_logits(&puyu::load_hf_reference(dir.path()).unwrap());
    let b = last_logits(&puyu::tiny_reference(&TINY).unwrap());
    assert_eq!(a, b);
}
