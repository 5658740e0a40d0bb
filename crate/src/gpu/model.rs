//! InternLM2 on the GPU: weights from a puyu model folder in GPU buffers, a KV cache sized
//! from the requested context, and the forward pass as one command encoder per step.
//!
//! First version: the f32 path (no shader-f16, no subgroups), kernels written for clarity;
//! every op matches the CPU reference (`crate::reference`) op for op. Buffers and bind groups
//! are made once; a step only writes its tokens, RoPE table and parameters, then dispatches.

use std::collections::HashMap;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model_dir::{BlobId, Manifest};
use crate::quant::Quant;
use crate::rope::Rope;

use super::{preprocess::preprocess, shaders, Gpu};

/// Uniform parameter slots are this far apart (the usual min_uniform_buffer_offset_alignment).
const SLOT: u64 = 256;

/// What a kernel binding is.
#[derive(Clone, Copy)]
enum Bind {
    Read,
    Write,
    Uniform,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Rows [row0, row0 + rows) of the embedding (one buffer of it).
    Embed { row0: u32, rows: u32 },
    Norm,
    /// Rows [row0, row0 + rows) of a matrix with `total` rows (one buffer of it).
    Matmul { row0: u32, rows: u32, total: u32, cols: u32, row_per_lane: bool },
    Rope,
    Scores,
    Softmax,
    Mix,
    SiluMul,
    /// Greedy choice over the last logit row.
    Argmax,
}

/// One dispatch; its parameters live in slot `index` of the params buffer.
struct Step {
    op: Op,
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
}

/// A weight tensor in GPU buffers: split by rows into chunks when it is larger than one
/// storage binding may be (InternLM2-7B's output matrix is 213 MB at 4 bits; many devices
/// bind at most 128 MiB).
struct Weight {
    quant: Quant,
    rows: usize,
    chunks: Vec<WeightChunk>,
}

struct WeightChunk {
    row0: usize,
    rows: usize,
    data: wgpu::Buffer,
    scales: wgpu::Buffer,
}

/// How the matrix products are scheduled (see matmul.wgsl).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Chosen from the adapter.
    #[default]
    Auto,
    RowPerLane,
    Workgroup,
}

/// Sizes and choices for [`GpuModel::new`].
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// KV-cache capacity in tokens.
    pub context: usize,
    /// Most tokens per dispatch sequence (longer inputs run in chunks; also the most logit rows).
    pub chunk: usize,
    /// Split weights into buffers of at most this many bytes (default: the device's
    /// storage-binding limit; tests force a small one).
    pub weight_binding_limit: Option<u64>,
    pub matmul: Schedule,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { context: 4096, chunk: 128, weight_binding_limit: None, matmul: Schedule::Auto }
    }
}

/// The model on the GPU with one sequence's KV cache.
pub struct GpuModel {
    gpu: Gpu,
    pub config: ModelConfig,
    /// Tokens one dispatch sequence handles (longer inputs run in chunks).
    pub chunk: usize,
    /// KV-cache capacity in tokens.
    pub context: usize,
    steps: Vec<Step>,
    /// Index of the first step of the final norm and output, which run on the logit rows only.
    head: usize,
    params: wgpu::Buffer,
    tokens: wgpu::Buffer,
    cos_sin: wgpu::Buffer,
    x: wgpu::Buffer,
    x_last: wgpu::Buffer,
    logits: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Greedy sampling on the GPU: the argmax kernel, its output, and a 4-byte readback.
    argmax: Step,
    chosen: wgpu::Buffer,
    chosen_staging: wgpu::Buffer,
    /// Tokens in the cache.
    pub len: usize,
    rope: Rope,
}

impl GpuModel {
    /// Uploads a model: `blob(id)` gives the bytes of each manifest blob.
    pub fn new(
        gpu: Gpu,
        config: ModelConfig,
        manifest: &Manifest,
        blob: impl Fn(BlobId) -> Option<Vec<u8>>,
        options: &GpuOptions,
    ) -> Result<GpuModel> {
        let GpuOptions { context, chunk, .. } = *options;
        let weight_limit = options
            .weight_binding_limit
            .unwrap_or(gpu.device.limits().max_storage_buffer_binding_size as u64);
        // Lanes of CPU drivers (lavapipe, SwiftShader) are SIMD slots of one core: there a
        // lane per row wins; on GPUs a workgroup per row keeps memory reads coalesced.
        let row_per_lane = match options.matmul {
            Schedule::Auto => gpu.adapter_info.device_type == wgpu::DeviceType::Cpu,
            Schedule::RowPerLane => true,
            Schedule::Workgroup => false,
        };
        let c = &config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let limits = gpu.device.limits();
        let max_binding = limits.max_storage_buffer_binding_size as u64;
        // The score scratch [nh, chunk, context] must fit one binding.
        let chunk = chunk.min((max_binding / (nh * context * 4).max(1) as u64).max(1) as usize).max(1);
        let dev = &gpu.device;

        let storage = |label: &str, bytes: u64| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let upload = |label: &str, bytes: &[u8]| -> wgpu::Buffer {
            let buf = storage(label, bytes.len() as u64);
            let whole = bytes.len() / 4 * 4;
            gpu.queue.write_buffer(&buf, 0, &bytes[..whole]);
            if whole < bytes.len() {
                let mut tail = bytes[whole..].to_vec();
                tail.resize(4, 0);
                gpu.queue.write_buffer(&buf, whole as u64, &tail);
            }
            buf
        };
        let weight = |name: &str| -> Result<Weight> {
            let (t, entry) = manifest.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
            let (rows, cols) = crate::model_dir::matrix_dims(&entry.shape);
            // The whole tensor, parts (shard splits) joined.
            let (mut data, mut scales) = (Vec::new(), Vec::new());
            for p in 0..entry.parts.len() {
                let get = |s| {
                    blob(BlobId { tensor: t, part: p, scales: s })
                        .ok_or_else(|| Error::ManifestInvalid { reason: format!("`{name}` was not loaded") })
                };
                data.extend(get(false)?);
                if entry.quant.has_scales() {
                    scales.extend(get(true)?);
                }
            }
            // Rows per buffer: within the limit, and even, so that a chunk's f16 scales start
            // on a u32 word.
            let (d_row, s_row) = (entry.quant.data_bytes_per_row(cols), entry.quant.scale_bytes_per_row(cols));
            let per = (weight_limit / d_row.max(s_row).max(1) as u64) as usize / 2 * 2;
            if per == 0 {
                return Err(Error::Gpu(format!("one row of `{name}` exceeds the {weight_limit}-byte binding limit")));
            }
            let chunks = (0..rows)
                .step_by(per)
                .map(|row0| {
                    let n = per.min(rows - row0);
                    WeightChunk {
                        row0,
                        rows: n,
                        data: upload(name, &data[row0 * d_row..(row0 + n) * d_row]),
                        scales: if s_row > 0 { upload(name, &scales[row0 * s_row..(row0 + n) * s_row]) } else { storage("no scales", 4) },
                    }
                })
                .collect();
            Ok(Weight { quant: entry.quant, rows, chunks })
        };

        let f = 4u64;
        let tokens = storage("tokens", chunk as u64 * 4);
        let cos_sin = storage("cos_sin", (chunk * hd) as u64 * f);
        let x = storage("x", (chunk * h) as u64 * f);
        let xn = storage("xn", (chunk * h) as u64 * f);
        let qkv = storage("qkv", (chunk * c.qkv_rows()) as u64 * f);
        let q = storage("q", (chunk * nh * hd) as u64 * f);
        let attn = storage("attn", (chunk * nh * hd) as u64 * f);
        let scores = storage("scores", (nh * chunk * context) as u64 * f);
        let gate = storage("gate", (chunk * i) as u64 * f);
        let up = storage("up", (chunk * i) as u64 * f);
        let act = storage("act", (chunk * i) as u64 * f);
        let x_last = storage("x_last", (chunk * h) as u64 * f);
        let logits = storage("logits", (chunk * v) as u64 * f);
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits readback"),
            size: (chunk * v) as u64 * f,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let norm = |name: &str| -> Result<wgpu::Buffer> {
            let mut w = weight(name)?;
            Ok(w.chunks.remove(0).data)
        };

        let mut pipelines = Pipelines::default();
        let mut steps: Vec<StepSpec> = Vec::new();
        // Built first so the borrows below can refer to them.
        let embedding = weight("model.tok_embeddings.weight")?;
        let mut layers = Vec::new();
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}.");
            layers.push((
                norm(&format!("{p}attention_norm.weight"))?,
                weight(&format!("{p}attention.wqkv.weight"))?,
                weight(&format!("{p}attention.wo.weight"))?,
                norm(&format!("{p}ffn_norm.weight"))?,
                weight(&format!("{p}feed_forward.w1.weight"))?,
                weight(&format!("{p}feed_forward.w3.weight"))?,
                weight(&format!("{p}feed_forward.w2.weight"))?,
                storage("k cache", (context * nkv * hd) as u64 * f),
                storage("v cache", (context * nkv * hd) as u64 * f),
            ));
        }
        let final_norm = norm("model.norm.weight")?;
        let output = weight("output.weight")?;

        let attn_layout = [Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Uniform];
        let norm_layout = [Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];
        let ew_layout = [Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];

        let embed = pipelines.get(dev, "embed", shaders::EMBED, "embed", &[quant_define(embedding.quant)?], &[Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Uniform])?;
        for c in &embedding.chunks {
            steps.push((Op::Embed { row0: c.row0 as u32, rows: c.rows as u32 }, embed.clone(), vec![&tokens, &c.data, &c.scales, &x]));
        }
        for (an, wqkv, wo, fnorm, w1, w3, w2, kc, vc) in &layers {
            steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x, an, &xn]));
            push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &xn, wqkv, &qkv, h, false)?;
            steps.push((Op::Rope, pipelines.get(dev, "rope", shaders::ROPE, "rope_kv", &[], &[Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Write, Bind::Uniform])?, vec![&qkv, &cos_sin, &q, kc, vc]));
            for (op, entry) in [(Op::Scores, "scores"), (Op::Softmax, "softmax"), (Op::Mix, "mix")] {
                steps.push((op, pipelines.get(dev, "attention", shaders::ATTENTION, entry, &[], &attn_layout)?, vec![&q, kc, vc, &scores, &attn]));
            }
            push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &attn, wo, &x, nh * hd, true)?;
            steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x, fnorm, &xn]));
            push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &xn, w1, &gate, h, false)?;
            push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &xn, w3, &up, h, false)?;
            steps.push((Op::SiluMul, pipelines.get(dev, "elementwise", shaders::ELEMENTWISE, "silu_mul", &[], &ew_layout)?, vec![&gate, &up, &act]));
            push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &act, w2, &x, i, true)?;
        }
        // The last rows of x are copied to x_last before these (see `step`).
        let head = steps.len();
        steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x_last, &final_norm, &xn]));
        push_matmul(dev, &mut pipelines, row_per_lane, &mut steps, &xn, &output, &logits, h, false)?;

        // The argmax step is not in `steps`: it runs only when asked, in the last slot.
        let argmax_pipeline = pipelines.get(dev, "sample", shaders::SAMPLE, "argmax", &[], &[Bind::Read, Bind::Write, Bind::Uniform])?;
        let chosen = storage("chosen", 4);
        let chosen_staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("chosen readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (steps.len() + 1) as u64 * SLOT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let argmax_slot = steps.len() as u64;
        let argmax_bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("argmax"),
            layout: &argmax_pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: logits.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: chosen.as_entire_binding() },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: argmax_slot * SLOT,
                        size: wgpu::BufferSize::new(16),
                    }),
                },
            ],
        });
        let argmax = Step { op: Op::Argmax, pipeline: argmax_pipeline, bind: argmax_bind };
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(s, (op, pipeline, buffers))| {
                let mut entries: Vec<wgpu::BindGroupEntry> = buffers
                    .iter()
                    .enumerate()
                    .map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() })
                    .collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: buffers.len() as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: s as u64 * SLOT,
                        size: wgpu::BufferSize::new(32),
                    }),
                });
                let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                Step { op, pipeline, bind }
            })
            .collect();
        Ok(GpuModel {
            rope: Rope::new(&config),
            gpu,
            config,
            chunk,
            context,
            steps,
            head,
            params,
            tokens,
            cos_sin,
            x,
            x_last,
            logits,
            staging,
            argmax,
            chosen,
            chosen_staging,
            len: 0,
        })
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.adapter_info
    }

    /// Empties the KV cache (a new conversation).
    pub fn reset(&mut self) {
        self.len = 0;
        self.rope = Rope::new(&self.config);
    }

    /// Runs `tokens` after the cache, like [`crate::reference::Model::forward`]; returns the
    /// logits of every new position when `all_logits`, else of the last one only.
    pub async fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.run(tokens, all_logits, false).await
    }

    /// Runs `tokens` after the cache and returns the id of the most likely next token, chosen
    /// on the GPU: only 4 bytes come back.
    pub async fn forward_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        self.run(tokens, false, true).await?;
        let id = self.gpu.read_mapped_u32(&self.chosen_staging, 4).await?;
        Ok(id[0])
    }

    /// The chunk loop of both: logits of every token (`all_logits`), of the last one, or,
    /// with `greedy`, none read back (the argmax of the last row is left in `chosen_staging`).
    async fn run(&mut self, tokens: &[u32], all_logits: bool, greedy: bool) -> Result<Vec<f32>> {
        self.check(tokens)?;
        // One RoPE table for the whole call, as HF computes it per forward call.
        self.rope.update(self.len + tokens.len());
        let vocab = self.config.vocab_size;
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let last = n + 1 == chunks.len();
            let rows = if all_logits { chunk.len() } else { usize::from(last) };
            self.step(chunk, rows, greedy && last);
            if rows > 0 && !greedy {
                out.extend(self.read_logits(rows * vocab).await?);
            }
            self.len += chunk.len();
        }
        Ok(out)
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        if self.len + tokens.len() > self.context {
            return Err(Error::ContextFull { needed: self.len + tokens.len(), context: self.context });
        }
        Ok(())
    }

    /// Encodes and submits one chunk; the logits of its last `rows` tokens land in `logits`
    /// and are copied for reading, or, with `greedy`, the argmax of the last row is.
    fn step(&mut self, tokens: &[u32], rows: usize, greedy: bool) {
        let c = &self.config;
        let t = tokens.len() as u32;
        let pos0 = self.len as u32;
        let ctx = pos0 + t;
        let (h, hd) = (c.hidden_size as u32, c.head_dim as u32);
        let q = &self.gpu.queue;
        q.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
        let table: Vec<f32> = (0..tokens.len())
            .flat_map(|k| self.rope.cos_sin(self.len + k))
            .flat_map(|(cos, sin)| [cos, sin])
            .collect();
        q.write_buffer(&self.cos_sin, 0, bytemuck::cast_slice(&table));

        let last = self.head; // the final norm and output run on `rows` rows
        let mut params = vec![0u8; (self.steps.len() + 1) * SLOT as usize];
        for (s, step) in self.steps.iter().enumerate() {
            let n = if s >= last { rows as u32 } else { t };
            let p: [u32; 8] = match step.op {
                Op::Embed { row0, rows } => [h, n, row0, rows, 0, 0, 0, 0],
                Op::Norm => [h, n, (c.rms_norm_eps as f32).to_bits(), 0, 0, 0, 0, 0],
                Op::Matmul { row0, rows, total, cols, .. } => [rows, cols, n, total, row0, 0, 0, 0],
                Op::Rope => [c.num_heads as u32, c.num_kv_heads as u32, hd, n, pos0, 0, 0, 0],
                Op::Scores | Op::Softmax | Op::Mix => [
                    c.num_heads as u32, c.num_kv_heads as u32, hd, n, pos0, ctx,
                    (1.0 / (hd as f32).sqrt()).to_bits(), 0,
                ],
                Op::SiluMul => [n * c.intermediate_size as u32, 0, 0, 0, 0, 0, 0, 0],
                Op::Argmax => unreachable!("not in steps"),
            };
            let at = s * SLOT as usize;
            params[at..at + 32].copy_from_slice(bytemuck::cast_slice(&p));
        }
        let at = self.steps.len() * SLOT as usize;
        let last_row = (rows.max(1) - 1) as u32;
        params[at..at + 8].copy_from_slice(bytemuck::cast_slice(&[c.vocab_size as u32, last_row]));
        q.write_buffer(&self.params, 0, &params);

        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        for (s, step) in self.steps.iter().enumerate() {
            if s == last {
                if rows == 0 {
                    break;
                }
                let row_bytes = h as u64 * 4;
                enc.copy_buffer_to_buffer(&self.x, (t as u64 - rows as u64) * row_bytes, &self.x_last, 0, rows as u64 * row_bytes);
            }
            let n = if s >= last { rows as u32 } else { t };
            let groups = match step.op {
                Op::Embed { .. } => [h.div_ceil(64), n, 1],
                Op::Norm => [n, 1, 1],
                Op::Matmul { rows, row_per_lane, .. } => {
                    let g = if row_per_lane { rows.div_ceil(64) } else { rows };
                    [g.min(65535), g.div_ceil(65535), n]
                }
                Op::Rope => [(hd / 2).div_ceil(64), c.kv_group() as u32 + 2, c.num_kv_heads as u32 * n],
                Op::Scores => [ctx.div_ceil(64), n, c.num_heads as u32],
                Op::Softmax => [n, c.num_heads as u32, 1],
                Op::Mix => [hd.div_ceil(64), n, c.num_heads as u32],
                Op::SiluMul => {
                    let g = (n * c.intermediate_size as u32).div_ceil(64);
                    [g.min(65535), g.div_ceil(65535), 1]
                }
                Op::Argmax => unreachable!("not in steps"),
            };
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if greedy {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.argmax.pipeline);
            pass.set_bind_group(0, &self.argmax.bind, &[]);
            pass.dispatch_workgroups(1, 1, 1);
            drop(pass);
            enc.copy_buffer_to_buffer(&self.chosen, 0, &self.chosen_staging, 0, 4);
        } else if rows > 0 {
            let bytes = (rows * c.vocab_size * 4) as u64;
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
        }
        q.submit([enc.finish()]);
    }

    async fn read_logits(&self, n: usize) -> Result<Vec<f32>> {
        self.gpu.read_mapped(&self.staging, (n * 4) as u64).await
    }
}

/// A dispatch to be: what it computes, its pipeline, and its buffers in binding order (the
/// parameter slot comes last).
type StepSpec<'b> = (Op, wgpu::ComputePipeline, Vec<&'b wgpu::Buffer>);

/// y = x·Wᵀ (+ y when `add`): one step per buffer of W.
#[allow(clippy::too_many_arguments)]
fn push_matmul<'b>(
    dev: &wgpu::Device,
    pl: &mut Pipelines,
    row_per_lane: bool,
    steps: &mut Vec<StepSpec<'b>>,
    x: &'b wgpu::Buffer,
    w: &'b Weight,
    y: &'b wgpu::Buffer,
    cols: usize,
    add: bool,
) -> Result<()> {
    let mut defs = vec![quant_define(w.quant)?];
    if add {
        defs.push("ADD");
    }
    if row_per_lane {
        defs.push("ROW_PER_LANE");
    }
    let binds = [Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];
    let pipeline = pl.get(dev, "matmul", shaders::MATMUL, "matmul", &defs, &binds)?;
    for c in &w.chunks {
        let op = Op::Matmul { row0: c.row0 as u32, rows: c.rows as u32, total: w.rows as u32, cols: cols as u32, row_per_lane };
        steps.push((op, pipeline.clone(), vec![x, &c.data, &c.scales, y]));
    }
    Ok(())
}

fn quant_define(q: Quant) -> Result<&'static str> {
    match q {
        Quant::Q4 => Ok("Q4"),
        Quant::Q8 => Ok("Q8"),
        Quant::F16 => Ok("F16"),
        Quant::F32 => Err(Error::Gpu("f32 matrices are not supported on the GPU".into())),
    }
}

/// Compiled pipelines, by (file, entry point, defines).
#[derive(Default)]
struct Pipelines {
    cache: HashMap<String, wgpu::ComputePipeline>,
}

impl Pipelines {
    fn get(
        &mut self,
        dev: &wgpu::Device,
        file: &str,
        source: &str,
        entry: &str,
        defines: &[&str],
        binds: &[Bind],
    ) -> Result<wgpu::ComputePipeline> {
        let key = format!("{file}:{entry}:{}", defines.join(","));
        if let Some(p) = self.cache.get(&key) {
            return Ok(p.clone());
        }
        let code = preprocess(source, defines).map_err(Error::Gpu)?;
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&key),
            source: wgpu::ShaderSource::Wgsl(code.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
            .iter()
            .enumerate()
            .map(|(b, kind)| wgpu::BindGroupLayoutEntry {
                binding: b as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match kind {
                    Bind::Read | Bind::Write => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: matches!(kind, Bind::Read) },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Bind::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&key), entries: &entries });
        let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&key),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        self.cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
