//! The whole model on the GPU (lavapipe in CI) against the CPU reference on the very same
//! q4/q8/f16 model folder. Tolerance: logits NMSE ≤ 1e-5 at every position (the GPU sums in
//! a different order and computes exp/rsqrt in f32, and with shader-f16 keeps the KV cache
//! in f16, which alone gives ~1e-7; everything else is the same arithmetic), and 32 greedy
//! tokens identical. Each check runs on the adapter's features and on the portable path
//! (no shader-f16, no subgroups), as Chromium's SwiftShader would.

mod common;

use std::path::Path;

use puyu::convert::{convert, ConvertOptions};
use puyu::gpu::model::{Activations, GpuModel, GpuOptions, Schedule, WeightStorage};
use puyu::gpu::FeatureWish;
use puyu::model_dir::ModelDir;
use puyu::quant::Quant;
use puyu::tiny::{TinySpec, TINY, TINY_NTK};

fn gpu_model(dir: &ModelDir, options: GpuOptions) -> GpuModel {
    gpu_model_with(dir, options, FeatureWish::default())
}

fn gpu_model_with(dir: &ModelDir, options: GpuOptions, wish: FeatureWish) -> GpuModel {
    let gpu = pollster::block_on(puyu::gpu::Gpu::open(wgpu::Backends::all(), wish))
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    GpuModel::new(gpu, dir.config.clone(), &dir.manifest, |b| dir.blob(b), &options).unwrap()
}

/// All logits of a chunk in one go (so these tests run prefill chunks of `chunk` tokens), on
/// f32 activations (the reference's arithmetic; 8-bit ones have their own test).
fn sized(context: usize, chunk: usize) -> GpuOptions {
    GpuOptions { context, chunk, logit_rows: chunk, activations: Activations::F32, ..Default::default() }
}

fn folder(spec: TinySpec, quant: Quant, root: &Path) -> ModelDir {
    let hf = root.join("hf");
    spec.write_hf_dir(&hf).unwrap();
    let out = root.join(format!("{quant}"));
    convert(&hf, &out, &ConvertOptions { quant, ..Default::default() }, |_, _| {}).unwrap();
    ModelDir::open(&out, false).unwrap()
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    num / den
}

/// On the adapter's features and on the portable path.
fn check(spec: TinySpec, quant: Quant, chunk: usize) {
    for wish in [FeatureWish::default(), FeatureWish::PORTABLE] {
        check_with(spec, quant, sized(256, chunk), wish)
    }
}

fn check_with(spec: TinySpec, quant: Quant, options: GpuOptions, wish: FeatureWish) {
    let chunk = options.chunk;
    let root = tempfile::tempdir().unwrap();
    let dir = folder(spec, quant, root.path());
    let cpu = puyu::reference::Model::load(dir.config.clone(), &dir).unwrap();
    let mut gpu = gpu_model_with(&dir, options, wish);
    let vocab = dir.config.vocab_size;
    let (_, prompt) = common::Golden::load(spec.name).ids("prompt_ids");

    let want = cpu.forward(&mut cpu.new_session(), &prompt).unwrap();
    let got = pollster::block_on(gpu.forward(&prompt, true)).unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for pos in 0..prompt.len() {
        let r = pos * vocab..(pos + 1) * vocab;
        let e = nmse(&got[r.clone()], &want[r]);
        worst = worst.max(e);
        assert!(e <= 1e-5, "{} {quant}: position {pos}: NMSE {e:.2e}", spec.name);
    }
    eprintln!("{} {quant} (chunk {chunk}, {wish:?}): worst position NMSE {worst:.2e}", spec.name);

    // Greedy decoding, one token per step on both.
    gpu.reset();
    let mut session = cpu.new_session();
    let mut c_logits = cpu.forward(&mut session, &prompt).unwrap()[(prompt.len() - 1) * vocab..].to_vec();
    let mut g_logits = pollster::block_on(gpu.forward(&prompt, false)).unwrap();
    for step in 0..32 {
        let (c, g) = (puyu::reference::argmax(&c_logits), puyu::reference::argmax(&g_logits));
        assert_eq!(g, c, "{} {quant}: greedy token {step}", spec.name);
        assert!(nmse(&g_logits, &c_logits) <= 1e-5);
        c_logits = cpu.forward(&mut session, &[c]).unwrap();
        g_logits = pollster::block_on(gpu.forward(&[g], false)).unwrap();
    }
}

/// The q4 products on 8-bit activations (the default on CPU adapters) against the f32
/// reference, teacher-forced with the reference's greedy tokens for 32 steps. Each product's
/// input is rounded to steps of 1/127 of its 32-value block's largest magnitude, which moves
/// the tiny random models' logits by an NMSE of ~1e-4 at the first position and up to 2.2e-3
/// further on (the error compounds through the layers; lavapipe); the bound is 5e-3. The greedy pick
/// must agree wherever the reference's top-2 margin exceeds 4 times the RMS error of a
/// difference of two logits at that position (closer calls may flip, as with llama.cpp's
/// q8_0 products: a margin of 2.7% of the logits' spread did here).
#[test]
fn int8_activations_track_the_reference() {
    for spec in [TINY, TINY_NTK] {
        let root = tempfile::tempdir().unwrap();
        let dir = folder(spec, Quant::Q4, root.path());
        let cpu = puyu::reference::Model::load(dir.config.clone(), &dir).unwrap();
        let vocab = dir.config.vocab_size;
        let (_, prompt) = common::Golden::load(spec.name).ids("prompt_ids");
        // 8-bit everywhere, and in untiled products only (prefill's tiled products on f32;
        // with tiles of 1, prefill is untiled and 8-bit too); the last with the browser's 8
        // rows a lane in one-token products.
        let cases = [
            (FeatureWish::default(), Activations::Int8, 8, 4),
            (FeatureWish::PORTABLE, Activations::Int8, 4, 4),
            (FeatureWish::PORTABLE, Activations::Int8Decode, 1, 4),
            (FeatureWish::PORTABLE, Activations::Int8Decode, 8, 8),
        ];
        for (wish, activations, prefill_tile, rows_per_lane) in cases {
            let options = GpuOptions { activations, prefill_tile: Some(prefill_tile), rows_per_lane: Some(rows_per_lane), matmul: Schedule::RowPerLane, ..sized(256, 64) };
            let mut gpu = gpu_model_with(&dir, options, wish);
            assert!(gpu.activations == activations && gpu.describe().contains("8-bit activations"));
            let compare = |got: &[f32], want: &[f32], at: &str, bound: f64| {
                let e = nmse(got, want);
                assert!(e <= bound, "{} {activations:?} {at}: NMSE {e:.2e}", spec.name);
                let (c, g) = (puyu::reference::argmax(want), puyu::reference::argmax(got));
                let mut sorted = want.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let mse = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / want.len() as f64;
                let margin = (sorted[0] - sorted[1]) as f64;
                if margin > 4.0 * (2.0 * mse).sqrt() {
                    assert_eq!(g, c, "{} {at}: margin {margin}, RMS error {}", spec.name, mse.sqrt());
                }
                e
            };
            let want = cpu.forward(&mut cpu.new_session(), &prompt).unwrap();
            let got = pollster::block_on(gpu.forward(&prompt, true)).unwrap();
            let mut worst = 0f64;
            for pos in 0..prompt.len() {
                let r = pos * vocab..(pos + 1) * vocab;
                // Int8Decode prefills in tiles on f32: the f32 path's bound.
                let bound = if activations == Activations::Int8Decode && prefill_tile > 1 { 1e-5 } else { 5e-3 };
                worst = worst.max(compare(&got[r.clone()], &want[r], &format!("position {pos}"), bound));
            }
            gpu.reset();
            let mut session = cpu.new_session();
            let mut c_logits = cpu.forward(&mut session, &prompt).unwrap()[(prompt.len() - 1) * vocab..].to_vec();
            let mut g_logits = pollster::block_on(gpu.forward(&prompt, false)).unwrap();
            for step in 0..32 {
                worst = worst.max(compare(&g_logits, &c_logits, &format!("step {step}"), 5e-3));
                let c = puyu::reference::argmax(&c_logits);
                c_logits = cpu.forward(&mut session, &[c]).unwrap();
                g_logits = pollster::block_on(gpu.forward(&[c], false)).unwrap();
            }
            eprintln!("{} {activations:?}, tiles of {prefill_tile} ({wish:?}): worst NMSE {worst:.2e}", spec.name);
        }
    }
}

#[test]
fn tiny_q4_on_gpu() {
    check(TINY, Quant::Q4, 64);
}

/// q4 matrices in storage buffers and in textures (the default on CPU adapters, so most
/// tests here run on those), in both matmul schedules, against the reference.
#[test]
fn q4_weights_in_buffers_and_textures() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    for weight_storage in [WeightStorage::Buffer, WeightStorage::Texture] {
        for matmul in [Schedule::RowPerLane, Schedule::Workgroup] {
            let options = GpuOptions { weight_storage, matmul, ..sized(256, 64) };
            let gpu = gpu_model(&dir, options.clone());
            assert_eq!(gpu.describe().contains("q4 weights in textures"), weight_storage == WeightStorage::Texture, "{}", gpu.describe());
            check_with(TINY, Quant::Q4, options, FeatureWish::PORTABLE);
        }
    }
}

#[test]
fn tiny_f16_on_gpu() {
    check(TINY, Quant::F16, 64);
}

/// Prefill matrix products untiled and tiled by 4 (the default on f32 activations, 8, runs in
/// every other test), with chunks of 30 (the 64-token prompt runs as 30 + 30 + 4: token counts that are
/// not multiples of the tile).
#[test]
fn prefill_tiles() {
    for prefill_tile in [1, 4] {
        check_with(TINY, Quant::Q4, GpuOptions { prefill_tile: Some(prefill_tile), ..sized(256, 30) }, FeatureWish::PORTABLE);
    }
}

/// The 100-token prompt runs past max_position_embeddings = 64 (dynamic NTK), in chunks of
/// 32 that share the call's RoPE base, as the reference computes it in one go.
#[test]
fn tiny_ntk_q4_on_gpu_in_chunks() {
    check(TINY_NTK, Quant::Q4, 32);
}

/// Weights split by rows over many buffers, as on a device whose storage bindings are too
/// small for a tensor: a forced 4 KiB limit cuts the embedding and output into 740 buffers
/// each and the stacked w1/w3 into three; the logits are the same.
#[test]
fn split_buffers_give_the_same_logits() {
    check_with(TINY, Quant::Q4, GpuOptions { weight_binding_limit: Some(4096), ..sized(256, 64) }, FeatureWish::default());
}

/// Every token's logits through a logits buffer of 3 rows (the default keeps 8: [rows, V]
/// logits and their readback are the largest scratch buffers): the all-logits run of the
/// 64-token prompt goes in chunks of 3 tokens and gives the same logits.
#[test]
fn few_logit_rows_give_the_same_logits() {
    check_with(TINY, Quant::Q4, GpuOptions { logit_rows: 3, ..sized(256, 64) }, FeatureWish::PORTABLE);
}

/// Both matmul schedules, whichever the adapter would pick (lavapipe: a lane per row); the
/// lane-per-row one with 1, 2 and 8 rows per lane too (the default is 4; 8 in the browser);
/// the workgroup one with subgroup reductions and with shared memory.
#[test]
fn both_matmul_schedules() {
    for rows_per_lane in [1, 2, 4, 8] {
        check_with(TINY, Quant::Q8, GpuOptions { matmul: Schedule::RowPerLane, rows_per_lane: Some(rows_per_lane), ..sized(256, 64) }, FeatureWish::default());
    }
    for wish in [FeatureWish::default(), FeatureWish::PORTABLE] {
        check_with(TINY, Quant::Q8, GpuOptions { matmul: Schedule::Workgroup, ..sized(256, 64) }, wish);
    }
}

/// Both attention schedules, whichever the adapter would pick (lavapipe: a lane per query in
/// steps of several tokens, a lane per KV split in decode): prompts in chunks of 7 tokens, so
/// that the lane-per-query kernel also runs after cached tokens, f16 and f32 KV caches.
#[test]
fn both_attention_schedules() {
    check_with(TINY, Quant::Q4, GpuOptions { attention: Schedule::RowPerLane, ..sized(256, 7) }, FeatureWish::default());
    check_with(TINY, Quant::Q4, GpuOptions { attention: Schedule::Workgroup, ..sized(256, 7) }, FeatureWish::PORTABLE);
}

#[test]
fn context_overflow_is_a_named_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let mut gpu = gpu_model(&dir, sized(8, 8));
    pollster::block_on(gpu.forward(&[1, 2, 3, 4, 5], false)).unwrap();
    let err = pollster::block_on(gpu.forward(&[6, 7, 8, 9], false)).unwrap_err();
    assert!(matches!(err, puyu::Error::ContextFull { needed: 9, context: 8 }), "{err}");
    assert_eq!(gpu.len, 5, "a refused step leaves the cache as it was");
    assert!(pollster::block_on(gpu.forward(&[6, 7, 8], false)).is_ok());
}

/// The generation contract on the GPU engine: max tokens, stop strings, cancellation between
/// steps, and the context check before any work.
#[test]
fn generation_on_the_gpu() {
    use puyu::generate::{generate_blocking as generate, FinishReason, Forward, GenerateOptions};
    use puyu::sampling::SamplingParams;
    use std::ops::ControlFlow;

    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let tokenizer = puyu::Tokenizer::open(&dir.dir).unwrap();
    // The f32 path: its tokens equal the reference's exactly (an f16 KV cache flips this
    // prompt's second token, whose top-2 margin is 0.0009).
    let mut gpu = gpu_model_with(&dir, sized(64, 64), FeatureWish::PORTABLE);
    let prompt = tokenizer.encode("书生·浦语 is", true).unwrap();
    let options = |max_tokens, stop: &[&str]| GenerateOptions {
        max_tokens,
        stop_ids: vec![2],
        stop_strings: stop.iter().map(|s| s.to_string()).collect(),
        sampling: SamplingParams::greedy(),
    };
    let go = |gpu: &mut GpuModel, opts: &GenerateOptions, cancel_at: usize| {
        gpu.reset();
        let mut n = 0;
        generate(gpu, &tokenizer, &prompt, opts, |_, _| {
            n += 1;
            if n == cancel_at { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
    };

    let err = go(&mut gpu, &options(100, &[]), 0).unwrap_err();
    assert!(matches!(err, puyu::Error::ContextFull { needed, context: 64 } if needed == prompt.len() + 99), "{err}");
    assert_eq!(gpu.cached_tokens(), 0, "refused before any work");

    let full = go(&mut gpu, &options(12, &[]), 0).unwrap();
    assert_eq!((full.ids.len(), full.finish), (12, FinishReason::Length));
    // Greedy picks on the GPU (argmax kernel, 4 bytes read back) equal the reference's.
    let cpu = puyu::reference::Model::load(dir.config.clone(), &dir).unwrap();
    let mut session = puyu::generate::CpuSession::new(&cpu);
    let on_cpu = generate(&mut session, &tokenizer, &prompt, &options(12, &[]), |_, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(full.ids, on_cpu.ids);
    assert_eq!(gpu.cached_tokens(), prompt.len() + 11);
    assert_eq!(full.text, tokenizer.decode(&full.ids, true).unwrap());

    // A stop string from the middle of that text: the reply ends just before it.
    let chars: Vec<char> = full.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let stopped = go(&mut gpu, &options(12, &[&stop]), 0).unwrap();
    assert_eq!(stopped.finish, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..cut]);

    let cancelled = go(&mut gpu, &options(12, &[]), 3).unwrap();
    assert_eq!((cancelled.ids.len(), cancelled.finish), (3, FinishReason::Cancelled));
    assert_eq!(cancelled.ids[..], full.ids[..3]);
    assert_eq!(gpu.cached_tokens(), prompt.len() + 2, "nothing runs after the cancel");
}

/// A 4096-token context: prefill 4095 tokens in chunks, then one decode step whose attention
/// spans all 4096 positions; its logits match the CPU reference.
#[test]
fn decode_at_4096_tokens() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let cpu = puyu::reference::Model::load(dir.config.clone(), &dir).unwrap();
    let mut gpu = gpu_model(&dir, sized(4096, 256));
    let tokens: Vec<u32> = std::iter::once(1).chain((1..4096u32).map(|i| 259 + (i * 7919) % 92000)).collect();
    let mut session = cpu.new_session();
    cpu.forward_with(&mut session, &tokens[..4095], false).unwrap();
    let want = cpu.forward(&mut session, &tokens[4095..]).unwrap();
    pollster::block_on(gpu.forward(&tokens[..4095], false)).unwrap();
    let got = pollster::block_on(gpu.forward(&tokens[4095..], false)).unwrap();
    let e = nmse(&got, &want);
    eprintln!("decode at position 4095: NMSE {e:.2e}");
    assert!(e <= 1e-5, "NMSE {e:.2e}");
    assert_eq!(puyu::reference::argmax(&got), puyu::reference::argmax(&want));
}

/// A second turn reuses the first turn's KV cache: only its new tokens are processed, and
/// its reply equals what a fresh model gives for the whole conversation at once.
#[test]
fn second_turn_reuses_the_cache() {
    use puyu::generate::{generate_blocking as generate, Forward, GenerateOptions};
    use puyu::sampling::SamplingParams;
    use std::ops::ControlFlow;

    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let tokenizer = puyu::Tokenizer::open(&dir.dir).unwrap();
    let mut gpu = gpu_model(&dir, sized(128, 64));
    let opts = |max_tokens| GenerateOptions { max_tokens, stop_ids: vec![], stop_strings: vec![], sampling: SamplingParams::greedy() };
    let go = |gpu: &mut GpuModel, prompt: &[u32], n| generate(gpu, &tokenizer, prompt, &opts(n), |_, _| ControlFlow::Continue(())).unwrap();

    let turn1 = tokenizer.encode("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n", true).unwrap();
    let reply1 = go(&mut gpu, &turn1, 6);
    let cached = gpu.cached_tokens();
    assert_eq!(cached, turn1.len() + 5, "the last sampled token is not fed yet");

    // The next turn starts with that token, then the new text.
    let mut turn2 = vec![*reply1.ids.last().unwrap()];
    turn2.extend(tokenizer.encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n", false).unwrap());
    let reply2 = go(&mut gpu, &turn2, 4);
    assert_eq!(gpu.cached_tokens(), cached + turn2.len() + 3, "only the new tokens were processed");

    let mut whole = turn1.clone();
    whole.extend(&reply1.ids[..5]);
    whole.extend(&turn2);
    gpu.reset();
    let fresh = go(&mut gpu, &whole, 4);
    assert_eq!(reply2.ids, fresh.ids);
}

/// Sampling on the GPU (temperature, top-k, top-p, repetition penalty, seeded) draws the same
/// tokens as the CPU sampler over the reference's logits, reading back 4 bytes per token.
#[test]
fn seeded_sampling_on_the_gpu_matches_the_cpu() {
    use puyu::generate::{generate_blocking as generate, CpuSession, GenerateOptions};
    use puyu::sampling::SamplingParams;
    use std::ops::ControlFlow;

    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let tokenizer = puyu::Tokenizer::open(&dir.dir).unwrap();
    let cpu = puyu::reference::Model::load(dir.config.clone(), &dir).unwrap();
    let mut gpu = gpu_model_with(&dir, sized(64, 64), FeatureWish::PORTABLE);
    let prompt = tokenizer.encode("书生·浦语 is", true).unwrap();
    let mut distinct = std::collections::HashSet::new();
    for seed in [1, 2, 3] {
        let sampling = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.9, repeat_penalty: 1.1, repeat_last_n: 64, seed };
        let opts = GenerateOptions { max_tokens: 12, stop_ids: vec![], stop_strings: vec![], sampling };
        gpu.reset();
        let on_gpu = generate(&mut gpu, &tokenizer, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
        let on_cpu = generate(&mut CpuSession::new(&cpu), &tokenizer, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();
        assert_eq!(on_gpu.ids, on_cpu.ids, "seed {seed}");
        distinct.insert(on_gpu.ids);
    }
    assert_eq!(distinct.len(), 3, "different seeds draw different replies");
}

/// The iterator form: `Generator::next` yields the same tokens as the callback form, and a
/// cancel ends it with nothing more run on the GPU.
#[test]
fn generator_iterates_and_cancels() {
    use puyu::generate::{generate_blocking, FinishReason, Forward, GenerateOptions, Generator};
    use puyu::sampling::SamplingParams;
    use std::ops::ControlFlow;

    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let tokenizer = puyu::Tokenizer::open(&dir.dir).unwrap();
    let mut gpu = gpu_model(&dir, sized(64, 64));
    let prompt = tokenizer.encode("书生·浦语 is", true).unwrap();
    let opts = GenerateOptions { max_tokens: 6, stop_ids: vec![], stop_strings: vec![], sampling: SamplingParams::greedy() };
    let whole = generate_blocking(&mut gpu, &tokenizer, &prompt, &opts, |_, _| ControlFlow::Continue(())).unwrap();

    gpu.reset();
    let mut g = Generator::new(&mut gpu, &tokenizer, &prompt, &opts).unwrap();
    let mut ids = Vec::new();
    while let Some(t) = pollster::block_on(g.next()).unwrap() {
        ids.push(t.id);
        if ids.len() == 4 {
            g.cancel();
        }
    }
    assert_eq!(g.finish_reason(), Some(FinishReason::Cancelled));
    // The held-back text after the cancel may come as one more token with the last id.
    assert_eq!(ids[..4], whole.ids[..4]);
    assert!(ids.len() == 4 || (ids.len() == 5 && ids[4] == ids[3]), "{ids:?}");
    drop(g);
    assert_eq!(gpu.cached_tokens(), prompt.len() + 3, "nothing ran after the cancel");
}

/// A KV cache too big for one storage binding is a named error before any allocation, and a
/// lost device (destroyed here) fails the next step with DeviceLost instead of a panic.
#[test]
fn device_limits_and_loss_are_named_errors() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let gpu = pollster::block_on(puyu::gpu::Gpu::new(wgpu::Backends::all())).unwrap();
    // 3 M tokens × 2 KV heads × 16 dims × 2 bytes = 192 MB per layer > lavapipe's 128 MiB.
    let err = GpuModel::new(gpu, dir.config.clone(), &dir.manifest, |b| dir.blob(b), &sized(3_000_000, 64)).err().unwrap();
    assert!(matches!(err, puyu::Error::DeviceLimits { limit: "max_storage_buffer_binding_size", .. }), "{err}");

    let mut gpu = gpu_model(&dir, sized(64, 64));
    pollster::block_on(gpu.forward(&[1, 2, 3], false)).unwrap();
    gpu.gpu().device.destroy();
    let _ = gpu.gpu().device.poll(wgpu::PollType::wait_indefinitely());
    let err = pollster::block_on(gpu.forward(&[4], false)).unwrap_err();
    assert!(matches!(err, puyu::Error::DeviceLost { .. }), "{err}");
}

/// Weights streamed shard by shard in pieces of awkward sizes (1, 3, 5, 4093 bytes… as a
/// browser's fetch chunks may be), into a model with small shards (tensors split across
/// shards) and small buffers (tensors split across buffers), give bit-identical logits to
/// whole-blob uploads, with the q4 matrices in buffers and in textures (whose rows cut by a
/// piece wait for their other bytes); a stream that stops early is the named IncompleteModel
/// error.
#[test]
fn streamed_upload_in_odd_pieces_equals_whole_blobs() {
    for storage in [WeightStorage::Buffer, WeightStorage::Texture] {
        streamed_upload(storage);
    }
}

fn streamed_upload(weight_storage: WeightStorage) {
    use puyu::model_dir::ShardStream;
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    TINY.write_hf_dir(&hf).unwrap();
    let out = root.path().join("q4");
    convert(&hf, &out, &ConvertOptions { max_shard_bytes: 96 << 10, ..Default::default() }, |_, _| {}).unwrap();
    let dir = ModelDir::open(&out, false).unwrap();
    assert!(dir.manifest.shards.len() >= 3, "the test wants several shards");
    assert!(dir.manifest.tensors.iter().any(|t| t.parts.len() > 1), "the test wants a tensor split across shards");
    let options = GpuOptions { weight_binding_limit: Some(4096), weight_storage, ..sized(64, 64) };
    let (_, prompt) = common::Golden::load(TINY.name).ids("prompt_ids");
    let open = || pollster::block_on(puyu::gpu::Gpu::open(wgpu::Backends::all(), FeatureWish::PORTABLE)).unwrap();

    let mut whole = GpuModel::new(open(), dir.config.clone(), &dir.manifest, |b| dir.blob(b), &options).unwrap();
    let want = pollster::block_on(whole.forward(&prompt, true)).unwrap();

    let stream = |stop_early: bool| -> puyu::Result<Vec<f32>> {
        let (mut model, mut writer) = GpuModel::allocate(open(), dir.config.clone(), &dir.manifest, &options)?;
        let sizes = [1usize, 3, 5, 4093, 2, 70_001, 7];
        for s in 0..dir.manifest.shards.len() {
            let bytes = dir.shard_bytes(s);
            let end = if stop_early && s == 1 { bytes.len() / 2 } else { bytes.len() };
            let mut shard = ShardStream::new(&dir.manifest, s, true);
            let (mut pos, mut k) = (0, 0);
            while pos < end {
                let next = (pos + sizes[k % sizes.len()]).min(end);
                shard.push(&bytes[pos..next], |b, off, piece| writer.write(&dir.manifest, b, off, piece))?;
                (pos, k) = (next, k + 1);
            }
            if !stop_early {
                shard.finish()?;
            }
        }
        writer.finish()?;
        pollster::block_on(model.forward(&prompt, true))
    };
    let got = stream(false).unwrap();
    assert!(got == want, "streamed weights must give exactly the same logits");
    match stream(true) {
        Err(puyu::Error::IncompleteModel { tensors, first }) => {
            assert!(tensors > 0, "{first}");
            eprintln!("stopped early: {tensors} tensors incomplete, first `{first}`");
        }
        other => panic!("expected IncompleteModel, got {:?}", other.map(|l| l.len())),
    }
}

/// Timestamp queries on every pass: the latest prompt and decode steps, by kind of dispatch,
/// on a real driver (lavapipe has timestamp-query; a missing one fails here, not skips).
#[test]
fn profile_times_every_dispatch() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(TINY, Quant::Q4, root.path());
    let layers = dir.config.num_layers;
    let plain = gpu_model_with(&dir, sized(64, 16), FeatureWish::PORTABLE);
    assert!(!plain.gpu().timestamps, "timestamps are only requested when asked for");
    let mut gpu = gpu_model_with(&dir, sized(64, 16), FeatureWish { timestamps: true, ..FeatureWish::PORTABLE });
    assert!(gpu.gpu().timestamps, "the adapter has no timestamp-query: {}", gpu.describe());
    assert_eq!(gpu.profile(), &puyu::gpu::profile::Profile::default(), "nothing has run yet");

    let next = pollster::block_on(gpu.forward_greedy(&[1, 300, 301, 302, 303])).unwrap();
    pollster::block_on(gpu.forward_greedy(&[next])).unwrap();
    let p = gpu.profile().clone();
    let (prefill, decode) = (p.prefill.expect("a prompt step ran"), p.decode.expect("a decode step ran"));
    assert_eq!((prefill.steps, prefill.tokens, decode.steps, decode.tokens), (1, 5, 1, 1));
    let per_layer = ["attention_norm", "wqkv", "rope", "attend", "combine", "wo", "ffn_norm", "w1+w3", "w2"];
    // On a CPU adapter the prompt's attention runs a lane per query and needs no combine.
    let lanes = gpu.adapter_info().device_type == wgpu::DeviceType::Cpu;
    for (step, prompt) in [(&prefill, true), (&decode, false)] {
        let per_layer: Vec<&str> = per_layer.into_iter().filter(|&n| !(prompt && lanes && n == "combine")).collect();
        let names: Vec<&str> = step.rows.iter().map(|r| r.name).collect();
        let want: Vec<&str> = ["embed"].into_iter().chain(per_layer.iter().copied()).chain(["final_norm", "output", "sample"]).collect();
        assert_eq!(names, want);
        for r in &step.rows {
            // A greedy draw is two passes: 512 lanes' bests, then the best of those.
            // The output matrix (92,544 rows) in textures is split by the texture height limit.
            let max_rows = gpu.gpu().device.limits().max_texture_dimension_2d as usize / 2 * 2;
            let output = if gpu.weights_in_textures() { dir.config.vocab_size.div_ceil(max_rows) } else { 1 };
            let n = if per_layer.contains(&r.name) { layers } else if r.name == "sample" { 2 } else if r.name == "output" { output } else { 1 };
            assert_eq!(r.dispatches, n, "{}", r.name);
            assert!(r.ms.is_finite() && r.ms >= 0.0, "{}: {} ms", r.name, r.ms);
        }
        // Passes run one after another: their sum fits in the first-to-last span (1 µs of
        // slack for rounding of the tick conversion), and some time was measured.
        let busy: f64 = step.rows.iter().map(|r| r.ms).sum();
        assert!(busy > 0.0 && busy <= step.wall_ms + 1e-3, "passes {busy} ms, span {} ms", step.wall_ms);
    }
    // More steps add to their own kind; emptying the cache empties the profile.
    pollster::block_on(gpu.forward_greedy(&[5, 6])).unwrap();
    let p = gpu.profile().clone();
    assert_eq!(p.prefill.as_ref().map(|s| (s.steps, s.tokens)), Some((2, 7)));
    assert_eq!(p.prefill.unwrap().rows.iter().find(|r| r.name == "w2").unwrap().dispatches, 2 * layers);
    assert_eq!(p.decode.as_ref(), Some(&decode));
    gpu.reset();
    assert_eq!(gpu.profile(), &puyu::gpu::profile::Profile::default());
}
