//! `puyu bench`: prompt processing and generation speed of the GPU engine, repeated, with the
//! median and spread, the load time and the GPU memory the model holds.
//!
//! A run prefills `prompt_tokens` fixed pseudo-random ids (the first token and the time to it
//! come from that step: the GPU picks the token and 4 bytes come back) and then decodes
//! `gen_tokens` tokens one step at a time. Tokens are picked greedily, or with sampling
//! settings (`puyu bench --sample`: `puyu run`'s defaults, whose draw costs more than an
//! argmax). The KV cache is emptied between repeats; an untimed warm-up step first compiles
//! the pipelines.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::model::{GpuModel, Memory};
use crate::sampling::{Sampler, SamplingParams};

/// Median, min and max of a set of figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub adapter: String,
    pub backend: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    /// How tokens were picked: "greedy", or the sampling settings.
    pub sampling: String,
    /// Opening the folder and uploading the weights, seconds.
    pub load_s: f64,
    pub prefill_tokens_per_s: Spread,
    pub decode_tokens_per_s: Spread,
    pub time_to_first_token_ms: Spread,
    pub memory_bytes: Memory,
    /// Weight bytes a decode step reads × median decode tokens/s, GB/s.
    pub decode_weight_gb_per_s: f64,
    /// This adapter's buffer-copy bandwidth (bytes read + written per second), GB/s.
    pub copy_gb_per_s: f64,
    /// decode_weight_gb_per_s / copy_gb_per_s: how close decode is to the bandwidth roofline.
    pub roofline_fraction: f64,
    /// With `--profile`: GPU time by dispatch of the last repeat's prompt and decode steps
    /// (totals; `steps` of each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::gpu::profile::Profile>,
}

/// The adapter's memory bandwidth as a buffer copy achieves it: bytes read plus bytes written
/// per second, over copies of up to 256 MiB in one submission after a warm-up copy (the
/// roofline decode is compared against): 4 of them, or as many as take 50 ms where 4 take
/// less (a GPU copies 256 MiB in a tenth of a millisecond, and the submission's own latency
/// would otherwise count as copying time).
pub fn copy_bandwidth(gpu: &crate::gpu::Gpu) -> Result<f64> {
    let dev = &gpu.device;
    let bytes = (256u64 << 20).min(dev.limits().max_buffer_size / 4 * 4);
    let buffer = |usage| dev.create_buffer(&wgpu::BufferDescriptor { label: Some("copy bandwidth"), size: bytes, usage, mapped_at_creation: false });
    let (src, dst) = (buffer(wgpu::BufferUsages::COPY_SRC), buffer(wgpu::BufferUsages::COPY_DST));
    let wait = || dev.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| crate::error::Error::Gpu(e.to_string()));
    let copy = |times: usize| {
        let mut enc = dev.create_command_encoder(&Default::default());
        for _ in 0..times {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        }
        gpu.queue.submit([enc.finish()]);
    };
    let time = |times: usize| -> Result<f64> {
        let start = Instant::now();
        copy(times);
        wait()?;
        Ok(start.elapsed().as_secs_f64())
    };
    copy(1);
    wait()?;
    let mut times = 4;
    let mut seconds = time(times)?;
    if seconds < 0.05 {
        times = ((times as f64 * 0.05 / seconds).ceil() as usize).min(1024);
        seconds = time(times)?;
    }
    Ok(2.0 * times as f64 * bytes as f64 / seconds)
}

/// The prompt of a benchmark: ids spread over the vocabulary, <s> first.
pub fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    let span = (vocab as u64).saturating_sub(300).max(1);
    (0..len as u64).map(|i| if i == 0 { 1 } else { (259 + (i * 7919) % span) as u32 }).collect()
}

/// How `sampling` picks tokens, in words ("greedy" at temperature 0).
pub fn describe_sampling(sampling: &SamplingParams) -> String {
    let p = sampling;
    if p.temperature == 0.0 {
        return "greedy".into();
    }
    let penalty = if p.repeat_penalty == 1.0 { String::new() } else { format!(", repeat penalty {}", p.repeat_penalty) };
    format!("temperature {}, top-k {}, top-p {}{penalty}", p.temperature, p.top_k, p.top_p)
}

/// Times `repeat` runs of prefill + decode on `engine`, picking tokens as `sampling` says
/// (each run from the same seed).
pub fn run(engine: &mut GpuModel, prompt_tokens: usize, gen_tokens: usize, repeat: usize, sampling: &SamplingParams) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let ids = prompt(prompt_tokens.max(1), engine.config.vocab_size);
    // Picks the token after `tokens`; `history` holds the prompt and the tokens so far.
    let step = |engine: &mut GpuModel, sampler: &mut Sampler, history: &mut Vec<u32>, tokens: &[u32]| -> Result<u32> {
        let next = pollster::block_on(engine.forward_sample(tokens, sampler, history))?;
        history.push(next);
        Ok(next)
    };
    // Warm-up, untimed: the first use of each pipeline compiles it on some drivers.
    engine.reset();
    let (mut sampler, mut history) = (Sampler::new(sampling.clone()), ids.clone());
    let next = step(engine, &mut sampler, &mut history, &ids[..ids.len().min(2)])?;
    step(engine, &mut sampler, &mut history, &[next])?;
    let (mut prefill, mut decode, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        engine.reset();
        let (mut sampler, mut history) = (Sampler::new(sampling.clone()), ids.clone());
        let start = Instant::now();
        let mut next = step(engine, &mut sampler, &mut history, &ids)?;
        let first = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..gen_tokens {
            next = step(engine, &mut sampler, &mut history, &[next])?;
        }
        let gen = start.elapsed().as_secs_f64();
        prefill.push(ids.len() as f64 / first);
        ttft.push(first * 1e3);
        if gen_tokens > 0 {
            decode.push(gen_tokens as f64 / gen);
        }
    }
    if decode.is_empty() {
        decode.push(0.0);
    }
    Ok((prefill, decode, ttft))
}

/// One kernel timing of `puyu bench --kernels`.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub variant: String,
    /// e.g. "4096x2048 T=1".
    pub shape: String,
    pub ms: f64,
    /// Weight (and KV) bytes read per second, GB/s.
    pub gb_per_s: f64,
    pub gflop_per_s: f64,
}

/// Times the matrix products of a layer of `config` (and its output matrix) at q4, for
/// decode (T = 1) and prefill (T = `prefill`), in each schedule and tile the adapter can run,
/// and decode attention over `ctx` keys.
pub fn kernels(gpu: &crate::gpu::Gpu, config: &crate::ModelConfig, prefill: usize, ctx: usize, only: Option<&str>) -> Result<Vec<KernelRow>> {
    use crate::gpu::lab::{self, Buf, Launch};
    use crate::gpu::shaders;
    use crate::quant::Quant;

    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let mut rows = Vec::new();
    // (name, output rows, cols, GLU: w1 and w3 stacked, SwiGLU fused — what the engine runs)
    let matrices = [
        ("wqkv", config.qkv_rows(), h, false),
        ("wo", h, config.num_heads * config.head_dim, false),
        ("w1", i, h, false),
        ("w1+w3 GLU", i, h, true),
        ("w2", h, i, false),
        ("output", v, h, false),
    ];
    let mut schedules = vec!["ROW_PER_LANE", "ROW_PER_LANE+ROWS2", "ROW_PER_LANE+ROWS2+ROWS4", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8", ""];
    // The products on 8-bit activations.
    schedules.extend(["ROW_PER_LANE+ROWS2+XQ8", "ROW_PER_LANE+ROWS2+ROWS4+XQ8", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8"]);
    // The weights as texels (the engine's choice on CPU adapters, with 8 rows a lane).
    schedules.extend(["ROW_PER_LANE+ROWS2+ROWS4+ROWS8+TEXELS", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8+TEXELS"]);
    let max_texture = gpu.device.limits().max_texture_dimension_2d as usize;
    if gpu.subgroups {
        schedules.push("SUBGROUPS");
    }
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    for (name, n_rows, cols, glu) in matrices.into_iter().filter(|(n, ..)| wanted(&format!("matmul {n}"))) {
        let w_rows = if glu { 2 * n_rows } else { n_rows };
        // Weights need not be meaningful to be timed: a fixed byte pattern.
        let data = vec![0x5au8; Quant::Q4.data_bytes_per_row(cols) * w_rows];
        let scales: Vec<u8> = (0..Quant::Q4.scale_bytes_per_row(cols) * w_rows / 2).flat_map(|_| half::f16::from_f32(0.01).to_le_bytes()).collect();
        for (tokens, tiles) in [(1usize, &[1u32][..]), (prefill, &[1, 4, 8][..])] {
            let x = vec![0.5f32; tokens * cols];
            let xq = crate::quant::quantize_activations(&x);
            let y = vec![0f32; tokens * n_rows];
            // GLU pairs rows in a lane: at least 2 per lane.
            // A texture holds at most max_texture rows (the engine splits bigger matrices).
            for &schedule in schedules.iter().filter(|s| (!glu || **s != "ROW_PER_LANE") && !(s.contains("TEXELS") && w_rows > max_texture)) {
                for &tile in tiles {
                    let mut defines = vec!["Q4"];
                    if glu {
                        defines.push("GLU");
                    }
                    defines.extend(schedule.split('+').filter(|d| !d.is_empty()));
                    defines.extend([if tile == 4 { "TILE4" } else if tile == 8 { "TILE8" } else { "" }].into_iter().filter(|d| !d.is_empty()));
                    let r = n_rows as u32;
                    let per_lane = [("ROWS8", 8), ("ROWS4", 4), ("ROWS2", 2)].iter().find(|(d, _)| schedule.contains(d)).map_or(1, |&(_, n)| n);
                    let outputs_per_lane = if glu { per_lane / 2 } else { per_lane };
                    let g = if schedule.starts_with("ROW_PER_LANE") { r.div_ceil(64 * outputs_per_lane) } else { r };
                    let input: &[u8] = if schedule.contains("XQ8") { bytemuck::cast_slice(&xq) } else { bytemuck::cast_slice(&x) };
                    let launch = Launch {
                        source: shaders::MATMUL,
                        entry: "matmul",
                        defines: &defines,
                        buffers: vec![Buf::In(input), if schedule.contains("TEXELS") { Buf::Texels(&data, cols as u32 / 32) } else { Buf::In(&data) }, Buf::In(&scales), Buf::Out(bytemuck::cast_slice(&y))],
                        params: [r, cols as u32, tokens as u32, r, 0, 0, 0, 0],
                        groups: [g.min(65535), g.div_ceil(65535), (tokens as u32).div_ceil(tile)],
                    };
                    let s = lab::time(gpu, &launch, 3)?;
                    let bytes = (data.len() + scales.len()) as f64;
                    rows.push(KernelRow {
                        kernel: format!("matmul {name}"),
                        variant: if defines.len() > 1 { defines[1..].join("+") } else { "WORKGROUP".into() },
                        shape: format!("{w_rows}x{cols} T={tokens}"),
                        ms: s * 1e3,
                        gb_per_s: bytes / s / 1e9,
                        gflop_per_s: 2.0 * (w_rows * cols * tokens) as f64 / s / 1e9,
                    });
                }
            }
        }
    }
    if !wanted("attention attend") {
        return Ok(rows);
    }
    // Attention: decode over a long cache, split over workgroups as the engine splits it
    // and a lane per split (CPU adapters); a prompt of `prefill` tokens on an empty cache and
    // after ctx − prefill tokens, a workgroup per query (then the combine) and a lane per query
    // (CPU adapters, within llvmpipe's loop budget).
    let (nh, nkv, hd) = (config.num_heads, config.num_kv_heads, config.head_dim);
    let kv_bytes = if gpu.f16 { 2 } else { 4 };
    let cache = vec![0u8; ctx * nkv * hd * kv_bytes];
    let defines: &[&str] = if gpu.f16 { &["KV_F16"] } else { &[] };
    let f16 = if gpu.f16 { " KV_F16" } else { "" };
    let scale = (1.0 / (hd as f32).sqrt()).to_bits();
    let mut shapes = vec![(1, ctx - 1)];
    if prefill > 1 && prefill <= ctx {
        shapes.extend([(prefill, 0), (prefill, ctx - prefill)]);
    }
    for (t, pos0) in shapes {
        let keys = pos0 + t;
        let (splits, split_len) = crate::gpu::model::kv_splits(t, keys, nh, 128.max(t));
        let q = vec![0.1f32; t * nh * hd];
        let part = vec![0f32; t * nh * splits as usize * (hd + 2)];
        let out = vec![0f32; t * nh * hd];
        let launch = |entry, groups| Launch {
            source: shaders::ATTENTION,
            entry,
            defines,
            buffers: vec![Buf::In(bytemuck::cast_slice(&q)), Buf::In(&cache), Buf::In(&cache), Buf::Out(bytemuck::cast_slice(&part)), Buf::Out(bytemuck::cast_slice(&out))],
            params: [nh as u32, nkv as u32, hd as u32, t as u32, pos0 as u32, splits, split_len, scale],
            groups,
        };
        let mut variants = vec![(format!("{splits} split(s), combine{f16}"), lab::time(gpu, &launch("attend", [splits, t as u32, nh as u32]), 3)? + lab::time(gpu, &launch("combine", [t as u32, nh as u32, 1]), 3)?)];
        // The lane kernels: a lane per query (one split here) or per split in decode.
        let lanes = match t {
            1 => crate::gpu::model::lane_splits(keys, hd).map(|sp| ("attend_split_lanes", sp, [nh as u32, 1, 1])),
            _ => crate::gpu::model::rows_splits(keys, hd, 1).map(|sp| ("attend_rows", sp, [t.div_ceil(64) as u32, nh as u32, 1])),
        };
        if let Some((entry, (splits, split_len), groups)) = lanes {
            let mut l = launch(entry, groups);
            l.params[5..7].copy_from_slice(&[splits, split_len]);
            let mut s = lab::time(gpu, &l, 3)?;
            if t == 1 {
                l.entry = "combine";
                l.groups = [1, nh as u32, 1];
                s += lab::time(gpu, &l, 3)?;
            }
            let variant = if t == 1 { format!("lane per split ({splits}), combine{f16}") } else { format!("lane per query{f16}") };
            variants.push((variant, s));
        }
        // Causal: query i reads pos0 + i + 1 keys.
        let pairs = (t * pos0 + t * (t + 1) / 2) as f64;
        for (variant, s) in variants {
            rows.push(KernelRow {
                kernel: "attention attend".into(),
                variant,
                shape: format!("nh {nh} nkv {nkv} hd {hd} keys {keys} T={t}"),
                ms: s * 1e3,
                gb_per_s: 2.0 * (keys * nkv * hd * kv_bytes) as f64 / s / 1e9,
                gflop_per_s: 4.0 * pairs * (nh * hd) as f64 / s / 1e9,
            });
        }
    }
    Ok(rows)
}
