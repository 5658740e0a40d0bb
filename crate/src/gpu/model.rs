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
    Embed,
    Norm,
    Matmul { rows: u32, cols: u32 },
    Rope,
    Scores,
    Softmax,
    Mix,
    SiluMul,
}

/// One dispatch; its parameters live in slot `index` of the params buffer.
struct Step {
    op: Op,
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
}

struct Weight {
    quant: Quant,
    data: wgpu::Buffer,
    scales: wgpu::Buffer,
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
    params: wgpu::Buffer,
    tokens: wgpu::Buffer,
    cos_sin: wgpu::Buffer,
    x: wgpu::Buffer,
    x_last: wgpu::Buffer,
    logits: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Tokens in the cache.
    pub len: usize,
    rope: Rope,
}

impl GpuModel {
    /// Uploads a model: `blob(id)` gives the bytes of each manifest blob. `context` is the KV
    /// capacity; `chunk` the most tokens per dispatch sequence (also the most logit rows).
    pub fn new(
        gpu: Gpu,
        config: ModelConfig,
        manifest: &Manifest,
        blob: impl Fn(BlobId) -> Option<Vec<u8>>,
        context: usize,
        chunk: usize,
    ) -> Result<GpuModel> {
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
        let upload = |label: &str, mut bytes: Vec<u8>| -> Result<wgpu::Buffer> {
            if bytes.len() as u64 > max_binding {
                return Err(Error::Gpu(format!(
                    "`{label}` is {} bytes, over this device's {max_binding}-byte storage binding limit \
                     (splitting large tensors across buffers is not implemented yet)",
                    bytes.len()
                )));
            }
            bytes.resize(bytes.len().next_multiple_of(4).max(4), 0);
            let buf = storage(label, bytes.len() as u64);
            gpu.queue.write_buffer(&buf, 0, &bytes);
            Ok(buf)
        };
        let weight = |name: &str| -> Result<Weight> {
            let (t, entry) = manifest.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
            if entry.parts.len() != 1 {
                return Err(Error::Gpu(format!("`{name}` is split into parts; not supported on the GPU yet")));
            }
            let get = |scales| {
                blob(BlobId { tensor: t, part: 0, scales })
                    .ok_or_else(|| Error::ManifestInvalid { reason: format!("`{name}` was not loaded") })
            };
            Ok(Weight {
                quant: entry.quant,
                data: upload(name, get(false)?)?,
                scales: if entry.quant.has_scales() { upload(name, get(true)?)? } else { storage("no scales", 4) },
            })
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
        let norm = |name: &str| -> Result<wgpu::Buffer> { Ok(weight(name)?.data) };

        let mut pipelines = Pipelines::default();
        let mut steps: Vec<(Op, wgpu::ComputePipeline, Vec<&wgpu::Buffer>)> = Vec::new();
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

        let matmul = |pl: &mut Pipelines, w: &Weight, add: bool| -> Result<wgpu::ComputePipeline> {
            let mut defs = vec![quant_define(w.quant)?];
            if add {
                defs.push("ADD");
            }
            pl.get(dev, "matmul", shaders::MATMUL, "matmul", &defs, &[Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Uniform])
        };
        let attn_layout = [Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Uniform];
        let norm_layout = [Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];
        let ew_layout = [Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];

        steps.push((
            Op::Embed,
            pipelines.get(dev, "embed", shaders::EMBED, "embed", &[quant_define(embedding.quant)?], &[Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Uniform])?,
            vec![&tokens, &embedding.data, &embedding.scales, &x],
        ));
        for (an, wqkv, wo, fnorm, w1, w3, w2, kc, vc) in &layers {
            let (qkv_rows, hq) = (c.qkv_rows() as u32, (nh * hd) as u32);
            steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x, an, &xn]));
            steps.push((Op::Matmul { rows: qkv_rows, cols: h as u32 }, matmul(&mut pipelines, wqkv, false)?, vec![&xn, &wqkv.data, &wqkv.scales, &qkv]));
            steps.push((Op::Rope, pipelines.get(dev, "rope", shaders::ROPE, "rope_kv", &[], &[Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Write, Bind::Uniform])?, vec![&qkv, &cos_sin, &q, kc, vc]));
            for (op, entry) in [(Op::Scores, "scores"), (Op::Softmax, "softmax"), (Op::Mix, "mix")] {
                steps.push((op, pipelines.get(dev, "attention", shaders::ATTENTION, entry, &[], &attn_layout)?, vec![&q, kc, vc, &scores, &attn]));
            }
            steps.push((Op::Matmul { rows: h as u32, cols: hq }, matmul(&mut pipelines, wo, true)?, vec![&attn, &wo.data, &wo.scales, &x]));
            steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x, fnorm, &xn]));
            steps.push((Op::Matmul { rows: i as u32, cols: h as u32 }, matmul(&mut pipelines, w1, false)?, vec![&xn, &w1.data, &w1.scales, &gate]));
            steps.push((Op::Matmul { rows: i as u32, cols: h as u32 }, matmul(&mut pipelines, w3, false)?, vec![&xn, &w3.data, &w3.scales, &up]));
            steps.push((Op::SiluMul, pipelines.get(dev, "elementwise", shaders::ELEMENTWISE, "silu_mul", &[], &ew_layout)?, vec![&gate, &up, &act]));
            steps.push((Op::Matmul { rows: h as u32, cols: i as u32 }, matmul(&mut pipelines, w2, true)?, vec![&act, &w2.data, &w2.scales, &x]));
        }
        // The last rows of x are copied to x_last before these (see `encode`).
        steps.push((Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, vec![&x_last, &final_norm, &xn]));
        steps.push((Op::Matmul { rows: v as u32, cols: h as u32 }, matmul(&mut pipelines, &output, false)?, vec![&xn, &output.data, &output.scales, &logits]));

        let params = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: steps.len() as u64 * SLOT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
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
            params,
            tokens,
            cos_sin,
            x,
            x_last,
            logits,
            staging,
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
        // One RoPE table for the whole call, as HF computes it per forward call.
        self.rope.update(self.len + tokens.len());
        let vocab = c.vocab_size;
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let last = n + 1 == chunks.len();
            let rows = if all_logits { chunk.len() } else if last { 1 } else { 0 };
            self.step(chunk, rows);
            if rows > 0 {
                out.extend(self.read_logits(rows * vocab).await?);
            }
            self.len += chunk.len();
        }
        Ok(out)
    }

    /// Encodes and submits one chunk; the logits of its last `rows` tokens land in `logits`.
    fn step(&mut self, tokens: &[u32], rows: usize) {
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

        let last = self.steps.len() - 2; // the final norm and output run on `rows` rows
        let mut params = vec![0u8; self.steps.len() * SLOT as usize];
        for (s, step) in self.steps.iter().enumerate() {
            let n = if s >= last { rows as u32 } else { t };
            let p: [u32; 8] = match step.op {
                Op::Embed => [h, n, 0, 0, 0, 0, 0, 0],
                Op::Norm => [h, n, (c.rms_norm_eps as f32).to_bits(), 0, 0, 0, 0, 0],
                Op::Matmul { rows, cols } => [rows, cols, n, 0, 0, 0, 0, 0],
                Op::Rope => [c.num_heads as u32, c.num_kv_heads as u32, hd, n, pos0, 0, 0, 0],
                Op::Scores | Op::Softmax | Op::Mix => [
                    c.num_heads as u32, c.num_kv_heads as u32, hd, n, pos0, ctx,
                    (1.0 / (hd as f32).sqrt()).to_bits(), 0,
                ],
                Op::SiluMul => [n * c.intermediate_size as u32, 0, 0, 0, 0, 0, 0, 0],
            };
            let at = s * SLOT as usize;
            params[at..at + 32].copy_from_slice(bytemuck::cast_slice(&p));
        }
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
                Op::Embed => [h.div_ceil(64), n, 1],
                Op::Norm => [n, 1, 1],
                Op::Matmul { rows, .. } => [rows.min(65535), rows.div_ceil(65535), n],
                Op::Rope => [(hd / 2).div_ceil(64), c.kv_group() as u32 + 2, c.num_kv_heads as u32 * n],
                Op::Scores => [ctx.div_ceil(64), n, c.num_heads as u32],
                Op::Softmax => [n, c.num_heads as u32, 1],
                Op::Mix => [hd.div_ceil(64), n, c.num_heads as u32],
                Op::SiluMul => {
                    let g = (n * c.intermediate_size as u32).div_ceil(64);
                    [g.min(65535), g.div_ceil(65535), 1]
                }
            };
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if rows > 0 {
            let bytes = (rows * c.vocab_size * 4) as u64;
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
        }
        q.submit([enc.finish()]);
    }

    async fn read_logits(&self, n: usize) -> Result<Vec<f32>> {
        self.gpu.read_mapped(&self.staging, (n * 4) as u64).await
    }
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
