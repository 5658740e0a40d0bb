//! InternLM2 on the GPU: weights from a puyu model folder in GPU buffers, a KV cache sized
//! from the requested context, and the forward pass as one command encoder per step.
//!
//! Every op matches the CPU reference (`crate::reference`) op for op. Activations are f32;
//! the KV cache is f16 when the device has shader-f16, else f32. Buffers and bind groups are
//! made once; a step only writes its tokens, RoPE table and parameters, then dispatches, and
//! reads back either logits or (sampling on the GPU) one token id.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model_dir::{BlobId, Manifest};
use crate::quant::Quant;
use crate::rope::Rope;
use crate::sampling::{Draw, Sampler};

use super::pipelines::{Bind, Pipelines};
use super::profile::{Profile, Profiler};
use super::sampler::{self, GpuSampler};
use super::weights::{Dest, Target, WeightWriter};
use super::{shaders, Gpu};

/// Uniform parameter slots are this far apart (the usual min_uniform_buffer_offset_alignment).
const SLOT: u64 = 256;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Rows [row0, row0 + rows) of the embedding (one buffer of it).
    Embed { row0: u32, rows: u32 },
    Norm,
    /// Rows [row0, row0 + rows) of a matrix with `total` rows (one buffer of it).
    /// `per_lane`: output rows per lane in the lane-per-row schedule, 0 in the workgroup one.
    Matmul { row0: u32, rows: u32, total: u32, cols: u32, per_lane: u32 },
    /// Rows of `cols` activations to 8-bit integers for the integer q4 products (quantize.wgsl);
    /// `single`: only in steps whose products are not token-tiled (the tiled ones read f32 x).
    Quantize { cols: u32, single: bool },
    Rope,
    /// Attention over one KV split per workgroup (see attention.wgsl), then the splits merged;
    /// or a lane per query or per split ([`LaneAttention`]).
    Attend,
    Combine,
}

/// One dispatch; its parameters live in the params slot of its index. Matrix products also
/// have a token-tiled pipeline for steps of several tokens (prefill), with its own bind group
/// when it reads another input (f32 x where one-token steps read 8-bit x).
struct Step {
    /// What the profile calls it ("wqkv", "attend", …).
    name: &'static str,
    op: Op,
    pipeline: wgpu::ComputePipeline,
    tiled: Option<(wgpu::ComputePipeline, Option<wgpu::BindGroup>)>,
    bind: wgpu::BindGroup,
}

/// How a step's attention is split over the KV range: (splits, keys per split) for `tokens`
/// queries over `ctx` keys, with at most `part_rows` (tokens × splits) partial rows.
pub fn kv_splits(tokens: usize, ctx: usize, heads: usize, part_rows: usize) -> (u32, u32) {
    // Enough workgroups to fill a GPU (~128) without exceeding the partials buffer.
    let most = 128usize.div_ceil(tokens * heads).clamp(1, (part_rows / tokens).max(1));
    let split_len = ctx.div_ceil(most).next_multiple_of(64);
    (ctx.div_ceil(split_len) as u32, split_len as u32)
}

/// Keys one lane of attention.wgsl's lane kernels may walk at head dim `hd`. llvmpipe ends
/// a shader invocation's loops after 65,535 iterations in all (silently: the output is left
/// unwritten); a lane spends about hd/4 before and after its key loop and hd/2 + 1 in each
/// block of 8 keys. Measured on llvmpipe at hd 128: 7,500 keys ran, 7,931 did not; the bound
/// counts 3 a block and stops at 60,000 (7,152 keys at hd 128).
pub fn lane_keys(hd: usize) -> usize {
    (60_000 - hd / 2 - 2) / (hd / 2 + 3) * 8
}

/// How `attend_rows` (a lane per query, in steps of several tokens) splits `keys` keys so that
/// no lane walks more than [`lane_keys`]: (splits, keys per split, a multiple of 8); none where
/// it cannot run (head dim not a multiple of 4) or would need more than `most` splits.
pub fn rows_splits(keys: usize, hd: usize, most: usize) -> Option<(u32, u32)> {
    if hd % 4 != 0 || keys == 0 {
        return None;
    }
    let splits = keys.div_ceil(lane_keys(hd));
    if splits > most {
        return None;
    }
    let split_len = keys.div_ceil(splits).next_multiple_of(8);
    Some((keys.div_ceil(split_len) as u32, split_len as u32))
}

/// How `attend_split_lanes` (decode) splits `keys` keys over its 64 lanes: (splits, keys per
/// split, whole blocks of 8); none where a split would be longer than a lane may walk.
pub fn lane_splits(keys: usize, hd: usize) -> Option<(u32, u32)> {
    let split_len = keys.div_ceil(64).next_multiple_of(8).max(8);
    (hd % 4 == 0 && split_len <= lane_keys(hd)).then(|| (keys.div_ceil(split_len) as u32, split_len as u32))
}

/// The lane kernels of attention.wgsl, which CPU adapters run instead of `attend`: a lane per
/// query in steps of several tokens (no combine after it), a lane per KV split in decode.
struct LaneAttention {
    rows: wgpu::ComputePipeline,
    splits: wgpu::ComputePipeline,
}

/// A weight tensor in GPU buffers: split by rows into chunks when it is larger than one
/// storage binding may be (InternLM2-7B's output matrix is 213 MB at 4 bits; many devices
/// bind at most 128 MiB). The feed-forward's w1 and w3 are stacked: each chunk holds its
/// rows of w1, then the same rows of w3 (the fused GLU product reads both from one binding).
struct Weight {
    quant: Quant,
    /// Rows of one tensor.
    rows: usize,
    chunks: Vec<WeightChunk>,
}

/// Rows [row0, row0 + rows) of each stacked tensor, block after block.
struct WeightChunk {
    row0: usize,
    rows: usize,
    data: ChunkData,
    scales: wgpu::Buffer,
}

/// Where a chunk's weights (without their scales) are.
enum ChunkData {
    Buffer(wgpu::Buffer),
    /// q4 groups as the texels of an rgba32uint texture, [rows, K/32] (see [`WeightStorage`]).
    Texels(wgpu::Texture, wgpu::TextureView),
}

impl ChunkData {
    fn binding(&self) -> wgpu::BindingResource<'_> {
        match self {
            ChunkData::Buffer(b) => b.as_entire_binding(),
            ChunkData::Texels(_, view) => wgpu::BindingResource::TextureView(view),
        }
    }
}

/// How the matrix products (matmul.wgsl), or attention (attention.wgsl), are scheduled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Chosen from the adapter: a lane per row on CPU adapters, a workgroup per row on GPUs.
    #[default]
    Auto,
    /// A lane per output row (of a product; a query's row in attention).
    RowPerLane,
    Workgroup,
}

/// What the q4 matrix products multiply the weights with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activations {
    /// 8-bit on CPU adapters (where unpacking weights is most of the work) when the
    /// lane-per-row schedule runs; f32 elsewhere.
    #[default]
    Auto,
    /// f32, as the reference computes.
    F32,
    /// 8-bit integers with a scale per 32 values (llama.cpp's q8_0), summed in integers.
    Int8,
    /// 8-bit in one-token steps (decode), f32 in the tiled products of prefill.
    Int8Decode,
}

impl std::str::FromStr for Activations {
    type Err = String;

    /// The names the CLI, the JS options and the JSON reports use.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Activations::Auto),
            "f32" => Ok(Activations::F32),
            "int8" => Ok(Activations::Int8),
            "int8-decode" => Ok(Activations::Int8Decode),
            _ => Err(format!("activations must be auto, f32, int8 or int8-decode, not `{s}`")),
        }
    }
}

/// Where the q4 matrices of the products live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightStorage {
    /// Textures on CPU adapters, storage buffers on GPUs.
    #[default]
    Auto,
    Buffer,
    /// rgba32uint textures, a texel per 32-weight group and a texel row per weight row:
    /// CPU drivers fetch a texel with one 16-byte load per lane, where a storage buffer's vec4
    /// is four 4-byte gathers, each with a branch per lane on SwiftShader (one-token products
    /// 16–28% faster there, 1.8× on lavapipe; prefill's tiles gain nothing).
    Texture,
}

impl std::str::FromStr for WeightStorage {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(WeightStorage::Auto),
            "buffer" => Ok(WeightStorage::Buffer),
            "texture" => Ok(WeightStorage::Texture),
            _ => Err(format!("weight storage must be auto, buffer or texture, not `{s}`")),
        }
    }
}

/// Sizes and choices for [`GpuModel::new`].
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// KV-cache capacity in tokens.
    pub context: usize,
    /// Most tokens per dispatch sequence (longer inputs run in chunks).
    pub chunk: usize,
    /// Most logit rows one dispatch sequence computes: all-logits runs (perplexity, tests)
    /// go in chunks of this many tokens. The [rows, vocab] logits and their readback are the
    /// largest scratch buffers (92,544 floats a row), so this stays small.
    pub logit_rows: usize,
    /// Split weights into buffers of at most this many bytes (default: the device's
    /// storage-binding limit; tests force a small one).
    pub weight_binding_limit: Option<u64>,
    pub matmul: Schedule,
    /// Attention: a lane per query in steps of several tokens and per KV split in decode, or a
    /// workgroup per query and split.
    pub attention: Schedule,
    /// Tokens per matrix-product tile in steps of several tokens: 1, 4 or 8; `None`: 8 (a
    /// weight unpacked once serves 8 tokens).
    pub prefill_tile: Option<u32>,
    /// Rows each lane computes in the lane-per-row schedule: 1, 2, 4 or 8, at most what a
    /// matrix fills; `None`: 8 (against 4 on SwiftShader: w2's one-token product ~10% faster,
    /// its 64-token tiles 25–45%).
    pub rows_per_lane: Option<u32>,
    pub activations: Activations,
    /// Where the q4 matrices of the products live (the embedding stays in buffers).
    pub weight_storage: WeightStorage,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { context: 4096, chunk: 128, logit_rows: 8, weight_binding_limit: None, matmul: Schedule::Auto, attention: Schedule::Auto, prefill_tile: None, rows_per_lane: None, activations: Activations::Auto, weight_storage: WeightStorage::Auto }
    }
}

/// GPU memory the model allocated, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    pub weights: u64,
    /// Weight bytes one decode step reads: all but the embedding table (of which it reads
    /// one row) — the numerator of the bandwidth roofline.
    pub decode_read: u64,
    pub kv_cache: u64,
    /// Activations, attention partials, sampling scratch, readback buffers.
    pub scratch: u64,
}

/// The model on the GPU with one sequence's KV cache.
pub struct GpuModel {
    gpu: Gpu,
    pub config: ModelConfig,
    /// Tokens one dispatch sequence handles (longer inputs run in chunks).
    pub chunk: usize,
    /// Logit rows one dispatch sequence computes at most.
    logit_rows: usize,
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
    /// Sampling on the GPU over the last logit row, and its 4-byte readback.
    sampler: GpuSampler,
    chosen_staging: wgpu::Buffer,
    /// Rows of the attention partials buffer (tokens × splits).
    part_rows: usize,
    lane_attention: Option<LaneAttention>,
    prefill_tile: u32,
    /// What the q4 products multiply with (never `Auto`: the choice made for the adapter).
    pub activations: Activations,
    /// Whether q4 matrices are in textures ([`WeightStorage`]).
    texels: bool,
    pub memory: Memory,
    /// Tokens in the cache.
    pub len: usize,
    rope: Rope,
    /// Timestamps of every pass, when the device was opened with them.
    profiler: Option<Profiler>,
    profile: Profile,
}

impl GpuModel {
    /// Uploads a model: `blob(id)` gives the bytes of each manifest blob.
    pub fn new<B: AsRef<[u8]>>(
        gpu: Gpu,
        config: ModelConfig,
        manifest: &Manifest,
        blob: impl Fn(BlobId) -> Option<B>,
        options: &GpuOptions,
    ) -> Result<GpuModel> {
        let (model, mut writer) = GpuModel::allocate(gpu, config, manifest, options)?;
        for id in manifest.blob_ids() {
            if let Some(bytes) = blob(id) {
                writer.write(manifest, id, 0, bytes.as_ref())?;
            }
        }
        writer.finish()?;
        Ok(model)
    }

    /// Makes the buffers, pipelines and bind groups of a model; its weights are then written
    /// with the returned [`WeightWriter`], piece by piece as they arrive (the browser's
    /// download stream, or a memory-mapped shard), before the first forward pass.
    pub fn allocate(gpu: Gpu, config: ModelConfig, manifest: &Manifest, options: &GpuOptions) -> Result<(GpuModel, WeightWriter)> {
        let GpuOptions { context, chunk, .. } = *options;
        let weight_limit = options
            .weight_binding_limit
            .unwrap_or(gpu.device.limits().max_storage_buffer_binding_size);
        // Lanes of CPU drivers (lavapipe, SwiftShader) are SIMD slots of one core: there a
        // lane per row wins; on GPUs a workgroup per row keeps memory reads coalesced.
        let row_per_lane = match options.matmul {
            Schedule::Auto => gpu.adapter_info.device_type == wgpu::DeviceType::Cpu,
            Schedule::RowPerLane => true,
            Schedule::Workgroup => false,
        };
        let cpu = gpu.adapter_info.device_type == wgpu::DeviceType::Cpu;
        // The lane attention kernels read K and V 4 dims at a time.
        let lane_attention = config.head_dim % 4 == 0
            && match options.attention {
                Schedule::Auto => cpu,
                Schedule::RowPerLane => true,
                Schedule::Workgroup => false,
            };
        let activations = match options.activations {
            Activations::Auto if !(cpu && row_per_lane) => Activations::F32,
            Activations::Auto => Activations::Int8,
            Activations::F32 => Activations::F32,
            _ if !row_per_lane => return Err(Error::Gpu("8-bit activations need the lane-per-row schedule".into())),
            a => a,
        };
        let int8 = activations != Activations::F32;
        let texels = match options.weight_storage {
            WeightStorage::Auto => cpu,
            WeightStorage::Buffer => false,
            WeightStorage::Texture => true,
        };
        let c = &config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        if hd > 256 {
            return Err(Error::Gpu(format!("head_dim {hd} is over the attention kernel's 256")));
        }
        let rows_per_lane = match options.rows_per_lane {
            Some(n) if ![1, 2, 4, 8].contains(&n) => return Err(Error::Gpu(format!("rows_per_lane must be 1, 2, 4 or 8, not {n}"))),
            Some(n) => n,
            None => 8,
        };
        let prefill_tile = match options.prefill_tile {
            Some(t) if ![1, 4, 8].contains(&t) => return Err(Error::Gpu(format!("prefill_tile must be 1, 4 or 8, not {t}"))),
            Some(t) => t,
            None => 8,
        };
        let limits = gpu.device.limits();
        let max_binding = limits.max_storage_buffer_binding_size;
        let chunk = chunk.max(1);
        // The logits [logit_rows, V] must fit one binding.
        let logit_rows = options.logit_rows.clamp(1, chunk).min((max_binding / (v * 4).max(1) as u64).max(1) as usize);
        // Partials: tokens × splits rows; the lane-per-query attention splits past `lane_keys`.
        let part_rows = match lane_attention {
            true => chunk.max(64) * context.div_ceil(lane_keys(hd)),
            false => chunk.max(64),
        };
        let kv_bytes = if gpu.f16 { 2 } else { 4 };
        // Each layer's K (and V) cache is one binding.
        let kv_layer = (context as u64).saturating_mul((nkv * hd * kv_bytes) as u64);
        if kv_layer > max_binding.min(limits.max_buffer_size) {
            return Err(Error::DeviceLimits {
                limit: "max_storage_buffer_binding_size",
                what: format!("a {context}-token KV cache ({kv_bytes}-byte values, per layer)"),
                needed: kv_layer,
                available: max_binding.min(limits.max_buffer_size),
            });
        }
        let kv_define: &[&str] = if gpu.f16 { &["KV_F16"] } else { &[] };
        let dev = &gpu.device;

        // Every byte allocated, for the memory report.
        let allocated = std::cell::Cell::new(0u64);
        let storage = |label: &str, bytes: u64| {
            allocated.set(allocated.get() + bytes.max(4).next_multiple_of(4));
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let writer = std::cell::RefCell::new(WeightWriter::new(gpu.queue.clone(), manifest));
        let max_texture = limits.max_texture_dimension_2d as usize;
        // The tensors `names` (one, or w1 and w3 of the same shape) stacked in one set of
        // buffers; q4 matrices in textures instead when `texels` (and their rows fit one).
        let stacked = |names: &[&str], texels: bool| -> Result<Weight> {
            let (t, entry) = manifest.tensor(names[0]).ok_or_else(|| Error::MissingTensor { name: names[0].into() })?;
            let mut tensors = vec![t];
            for name in &names[1..] {
                let (t2, e2) = manifest.tensor(name).ok_or_else(|| Error::MissingTensor { name: (*name).into() })?;
                if e2.shape != entry.shape {
                    return Err(Error::WrongShape { name: (*name).into(), expected: entry.shape.clone(), actual: e2.shape.clone() });
                }
                if e2.quant != entry.quant {
                    let reason = format!("`{name}` is {} but `{}` is {}: they share buffers and must match", e2.quant, names[0], entry.quant);
                    return Err(Error::ManifestInvalid { reason });
                }
                tensors.push(t2);
            }
            let k = names.len();
            let (rows, cols) = crate::model_dir::matrix_dims(&entry.shape);
            // Rows per buffer (of each stacked tensor): within the limit, and even, so that a
            // block's f16 scales start on a u32 word.
            let (d_row, s_row) = (entry.quant.data_bytes_per_row(cols), entry.quant.scale_bytes_per_row(cols));
            let groups = cols / 32;
            let texels = texels && entry.quant == Quant::Q4 && groups <= max_texture && k * 2 <= max_texture;
            let mut per = (weight_limit / (k * d_row.max(s_row)).max(1) as u64) as usize / 2 * 2;
            if texels {
                // A texture holds at most max_texture rows.
                per = per.min(max_texture / k / 2 * 2);
            }
            if per == 0 {
                return Err(Error::Gpu(format!("{k} row(s) of `{}` exceed the {weight_limit}-byte binding limit", names[0])));
            }
            let chunks: Vec<WeightChunk> = (0..rows)
                .step_by(per)
                .map(|row0| {
                    let n = per.min(rows - row0);
                    let data = if texels {
                        let texture = dev.create_texture(&super::texels_descriptor(Some(names[0]), groups as u32, (k * n) as u32, wgpu::TextureUsages::COPY_DST));
                        allocated.set(allocated.get() + (k * n * d_row) as u64);
                        let view = texture.create_view(&Default::default());
                        ChunkData::Texels(texture, view)
                    } else {
                        ChunkData::Buffer(storage(names[0], (k * n * d_row) as u64))
                    };
                    WeightChunk { row0, rows: n, data, scales: storage(names[0], (k * n * s_row) as u64) }
                })
                .collect();
            for (b, (&t, name)) in tensors.iter().zip(names).enumerate() {
                let targets = |scales: bool| -> Vec<Target> {
                    let row = if scales { s_row } else { d_row };
                    let dest = |c: &WeightChunk| match (&c.data, scales) {
                        (ChunkData::Buffer(data), false) => Dest::Buffer(data.clone()),
                        (ChunkData::Texels(texture, _), false) => Dest::Texels(texture.clone()),
                        (_, true) => Dest::Buffer(c.scales.clone()),
                    };
                    chunks.iter().map(|c| Target { row0: c.row0, rows: c.rows, dest: dest(c), offset: (b * c.rows * row) as u64 }).collect()
                };
                writer.borrow_mut().add_tensor(t, name, d_row, s_row, targets(false), targets(true));
            }
            Ok(Weight { quant: entry.quant, rows, chunks })
        };
        let weight = |name: &str| stacked(&[name], false);
        let matrix = |name: &str| stacked(&[name], texels);

        let f = 4u64;
        let weights_start = allocated.get();
        let norm = |name: &str| -> Result<wgpu::Buffer> {
            match weight(name)?.chunks.remove(0).data {
                ChunkData::Buffer(b) => Ok(b),
                ChunkData::Texels(..) => Err(Error::Gpu(format!("`{name}` is a vector, not a matrix in a texture"))),
            }
        };

        let mut pipelines = Pipelines::default();
        let per_lane = if row_per_lane { rows_per_lane } else { 0 };
        let kernel = MatmulKernel { per_lane, subgroups: gpu.subgroups, tile: prefill_tile, int8_single: int8, int8_tiles: activations == Activations::Int8 };
        let mut steps: Vec<StepSpec> = Vec::new();
        // Built first so the borrows below can refer to them.
        let embedding = weight("model.tok_embeddings.weight")?;
        let embedding_bytes: u64 = embedding.chunks.iter().map(|c| c.scales.size() + if let ChunkData::Buffer(b) = &c.data { b.size() } else { 0 }).sum();
        let mut layers = Vec::new();
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}.");
            layers.push((
                norm(&format!("{p}attention_norm.weight"))?,
                matrix(&format!("{p}attention.wqkv.weight"))?,
                matrix(&format!("{p}attention.wo.weight"))?,
                norm(&format!("{p}ffn_norm.weight"))?,
                stacked(&[&format!("{p}feed_forward.w1.weight"), &format!("{p}feed_forward.w3.weight")], texels)?,
                matrix(&format!("{p}feed_forward.w2.weight"))?,
                // Whole vec4s: attention.wgsl reads the caches 4 values at a time.
                storage("k cache", ((context * nkv * hd * kv_bytes) as u64).next_multiple_of(16)),
                storage("v cache", ((context * nkv * hd * kv_bytes) as u64).next_multiple_of(16)),
            ));
        }
        let final_norm = norm("model.norm.weight")?;
        let output = matrix("output.weight")?;
        // Whether any matrix went to textures (q4 ones do when `texels`): w2 of each layer, the output.
        let in_texture = |w: &Weight| matches!(w.chunks[0].data, ChunkData::Texels(..));
        let texels_used = layers.iter().any(|l| in_texture(&l.5)) || in_texture(&output);
        let kv_cache = 2 * (c.num_layers * context * nkv * hd * kv_bytes) as u64;
        let weights_bytes = allocated.get() - weights_start - kv_cache;

        let tokens = storage("tokens", chunk as u64 * 4);
        let cos_sin = storage("cos_sin", (chunk * hd) as u64 * f);
        let x = storage("x", (chunk * h) as u64 * f);
        let xn = storage("xn", (chunk * h) as u64 * f);
        let qkv = storage("qkv", (chunk * c.qkv_rows()) as u64 * f);
        let q = storage("q", (chunk * nh * hd) as u64 * f);
        let attn = storage("attn", (chunk * nh * hd) as u64 * f);
        let part = storage("attention partials", (part_rows * nh * (hd + 2)) as u64 * f);
        let act = storage("act", (chunk * i) as u64 * f);
        // The input of the q4 products as 8-bit integers: 48 bytes per 32 values.
        let xq = storage("activations q8", if int8 { (chunk * h.max(nh * hd).max(i) / 32 * 48) as u64 } else { 4 });
        let x_last = storage("x_last", (logit_rows * h) as u64 * f);
        let logits = storage("logits", (logit_rows * v) as u64 * f);
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits readback"),
            size: (logit_rows * v) as u64 * f,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        allocated.set(allocated.get() + staging.size());

        let attn_layout = [Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Uniform];
        let norm_layout = [Bind::Read, Bind::Read, Bind::Write, Bind::Uniform];

        let embed = pipelines.get(dev, "embed", shaders::EMBED, "embed", &[quant_define(embedding.quant)?], &[Bind::Read, Bind::Read, Bind::Read, Bind::Write, Bind::Uniform])?;
        for c in &embedding.chunks {
            steps.push(("embed", Op::Embed { row0: c.row0 as u32, rows: c.rows as u32 }, embed.clone(), None, vec![tokens.as_entire_binding(), c.data.binding(), c.scales.as_entire_binding(), x.as_entire_binding()]));
        }
        for (an, wqkv, wo, fnorm, w13, w2, kc, vc) in &layers {
            steps.push(("attention_norm", Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, None, bound(&[&x, an, &xn])));
            push_matmul(dev, &mut pipelines, kernel, &mut steps, "wqkv", (&xn, &xq), wqkv, &qkv, h, Epilogue::Store)?;
            steps.push(("rope", Op::Rope, pipelines.get(dev, "rope", shaders::ROPE, "rope_kv", kv_define, &[Bind::Read, Bind::Read, Bind::Write, Bind::Write, Bind::Write, Bind::Uniform])?, None, bound(&[&qkv, &cos_sin, &q, kc, vc])));
            for (op, entry) in [(Op::Attend, "attend"), (Op::Combine, "combine")] {
                steps.push((entry, op, pipelines.get(dev, "attention", shaders::ATTENTION, entry, kv_define, &attn_layout)?, None, bound(&[&q, kc, vc, &part, &attn])));
            }
            push_matmul(dev, &mut pipelines, kernel, &mut steps, "wo", (&attn, &xq), wo, &x, nh * hd, Epilogue::Add)?;
            steps.push(("ffn_norm", Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, None, bound(&[&x, fnorm, &xn])));
            push_matmul(dev, &mut pipelines, kernel, &mut steps, "w1+w3", (&xn, &xq), w13, &act, h, Epilogue::Glu)?;
            push_matmul(dev, &mut pipelines, kernel, &mut steps, "w2", (&act, &xq), w2, &x, i, Epilogue::Add)?;
        }
        // The lane kernels of CPU adapters (same bindings: they run with the attend steps' groups).
        let lane_attention = match lane_attention {
            true => Some(LaneAttention {
                rows: pipelines.get(dev, "attention", shaders::ATTENTION, "attend_rows", kv_define, &attn_layout)?,
                splits: pipelines.get(dev, "attention", shaders::ATTENTION, "attend_split_lanes", kv_define, &attn_layout)?,
            }),
            false => None,
        };
        // The last rows of x are copied to x_last before these (see `step`).
        let head = steps.len();
        steps.push(("final_norm", Op::Norm, pipelines.get(dev, "norm", shaders::NORM, "rms_norm", &[], &norm_layout)?, None, bound(&[&x_last, &final_norm, &xn])));
        push_matmul(dev, &mut pipelines, kernel, &mut steps, "output", (&xn, &xq), &output, &logits, h, Epilogue::Store)?;

        // Sampling is not in `steps`: it runs only when asked.
        let sampler = GpuSampler::new(&gpu, &logits, v, context)?;
        allocated.set(allocated.get() + sampler.bytes());
        let chosen_staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("chosen readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: steps.len() as u64 * SLOT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let slot = |s: usize| wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &params,
            offset: s as u64 * SLOT,
            size: wgpu::BufferSize::new(32),
        });
        let bind = |layout: &wgpu::BindGroupLayout, resources: &[wgpu::BindingResource], s: usize| {
            let mut entries: Vec<wgpu::BindGroupEntry> = resources
                .iter()
                .enumerate()
                .map(|(b, resource)| wgpu::BindGroupEntry { binding: b as u32, resource: resource.clone() })
                .collect();
            entries.push(wgpu::BindGroupEntry { binding: resources.len() as u32, resource: slot(s) });
            dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
        };
        let steps: Vec<Step> = steps
            .into_iter()
            .enumerate()
            .map(|(s, (name, op, pipeline, tiled, buffers))| Step {
                name,
                op,
                bind: bind(&pipeline.get_bind_group_layout(0), &buffers, s),
                pipeline,
                tiled: tiled.map(|(p, own): (wgpu::ComputePipeline, Option<Vec<wgpu::BindingResource>>)| {
                    let own = own.map(|b| bind(&p.get_bind_group_layout(0), &b, s));
                    (p, own)
                }),
            })
            .collect();
        let profiler = Profiler::new(&gpu, steps.len() + sampler::MAX_PASSES);
        let model = GpuModel {
            rope: Rope::new(&config),
            profiler,
            profile: Profile::default(),
            gpu,
            config,
            chunk,
            logit_rows,
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
            sampler,
            chosen_staging,
            part_rows,
            lane_attention,
            prefill_tile,
            activations,
            texels: texels_used,
            memory: Memory { weights: weights_bytes, decode_read: weights_bytes - embedding_bytes, kv_cache, scratch: allocated.get() - weights_bytes - kv_cache },
            len: 0,
        };
        Ok((model, writer.into_inner()))
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.adapter_info
    }

    /// The device and its chosen features.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// One line: adapter, backend, features, KV-cache type.
    pub fn describe(&self) -> String {
        let activations = match self.activations {
            Activations::Int8 => "; q4 products on 8-bit activations",
            Activations::Int8Decode => "; q4 products on 8-bit activations in decode",
            _ => "",
        };
        let texels = if self.texels { "; q4 weights in textures" } else { "" };
        format!("{}; KV cache {}{activations}{texels}", self.gpu.describe(), if self.gpu.f16 { "f16" } else { "f32" })
    }

    /// Whether the q4 matrices are in textures ([`WeightStorage`]).
    pub fn weights_in_textures(&self) -> bool {
        self.texels
    }

    /// Keeps only the first `len` tokens of the cache (a conversation that shares them with
    /// the previous one runs only the rest).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// GPU time by dispatch of the prompt and decode steps since the cache was last emptied;
    /// empty unless the device was opened with timestamps ([`super::FeatureWish::timestamps`]).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Empties the KV cache (a new conversation), and the profile.
    pub fn reset(&mut self) {
        self.len = 0;
        self.rope = Rope::new(&self.config);
        self.profile = Profile::default();
    }

    /// Runs `tokens` after the cache, like [`crate::reference::Model::forward`]; returns the
    /// logits of every new position when `all_logits`, else of the last one only.
    pub async fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.run(tokens, all_logits, None).await
    }

    /// Runs `tokens` after the cache and returns the id of the most likely next token, chosen
    /// on the GPU: only 4 bytes come back.
    pub async fn forward_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        self.forward_draw(tokens, &Draw::greedy()).await
    }

    /// Runs `tokens` after the cache and samples the next token on the GPU as `draw` says
    /// (penalty, temperature, top-k, top-p, the uniform number): only 4 bytes come back.
    pub async fn forward_draw(&mut self, tokens: &[u32], draw: &Draw) -> Result<u32> {
        self.run(tokens, false, Some(draw)).await?;
        let id = self.gpu.read_mapped_u32(&self.chosen_staging, 4).await?;
        Ok(id[0])
    }

    /// Runs `tokens` after the cache and samples with `sampler` (its seeded stream and
    /// settings) on the GPU; `history` is every token so far, for the penalty.
    pub async fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        let draw = sampler.gpu_draw(history);
        self.forward_draw(tokens, &draw).await
    }

    /// The chunk loop of all: logits of every token (`all_logits`), of the last one, or, with
    /// a `draw`, none read back (the token sampled from the last row is left in `chosen_staging`).
    async fn run(&mut self, tokens: &[u32], all_logits: bool, draw: Option<&Draw>) -> Result<Vec<f32>> {
        self.check(tokens)?;
        // One RoPE table for the whole call, as HF computes it per forward call.
        self.rope.update(self.len + tokens.len());
        let vocab = self.config.vocab_size;
        let mut out = Vec::new();
        // Every token's logits: in chunks of as many tokens as there are logit rows.
        let chunks: Vec<&[u32]> = tokens.chunks(if all_logits { self.logit_rows } else { self.chunk }).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let last = n + 1 == chunks.len();
            let rows = if all_logits { chunk.len() } else { usize::from(last) };
            let draw = if last { draw } else { None };
            self.step(chunk, rows, draw);
            if let Some(p) = &self.profiler {
                let times = p.read(&self.gpu, chunk.len()).await?;
                let kind = if chunk.len() > 1 { &mut self.profile.prefill } else { &mut self.profile.decode };
                kind.get_or_insert_with(Default::default).add(times);
            }
            if rows > 0 && draw.is_none() {
                out.extend(self.read_logits(rows * vocab).await?);
            }
            self.len += chunk.len();
        }
        Ok(out)
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        self.gpu.check_alive()?;
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
    /// and are copied for reading, or, with a `draw`, the token sampled from the last row is.
    fn step(&mut self, tokens: &[u32], rows: usize, draw: Option<&Draw>) {
        let c = &self.config;
        let t = tokens.len() as u32;
        let pos0 = self.len as u32;
        let ctx = pos0 + t;
        let (h, hd) = (c.hidden_size as u32, c.head_dim as u32);
        let (nh, nkv) = (c.num_heads as u32, c.num_kv_heads as u32);
        // On CPU adapters attention runs a lane per split in decode, a lane per query in
        // steps of several tokens: (pipeline, its splits, its workgroups).
        let lanes = self.lane_attention.as_ref().and_then(|a| match t {
            1 => lane_splits(ctx as usize, c.head_dim).map(|sp| (&a.splits, sp, [nh, 1, 1])),
            _ => rows_splits(ctx as usize, c.head_dim, self.part_rows / t as usize).map(|sp| (&a.rows, sp, [t.div_ceil(64), nh, sp.0])),
        });
        let (splits, split_len) = match lanes {
            Some((_, sp, _)) => sp,
            None => kv_splits(tokens.len(), ctx as usize, c.num_heads, self.part_rows),
        };
        // A lane per query over one split writes the output itself: no combine.
        let no_combine = t > 1 && lanes.is_some() && splits == 1;
        let q = &self.gpu.queue;
        q.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
        let table: Vec<f32> = (0..tokens.len())
            .flat_map(|k| self.rope.cos_sin(self.len + k))
            .flat_map(|(cos, sin)| [cos, sin])
            .collect();
        q.write_buffer(&self.cos_sin, 0, bytemuck::cast_slice(&table));

        let last = self.head; // the final norm and output run on `rows` rows
        let mut params = vec![0u8; self.steps.len() * SLOT as usize];
        for (s, step) in self.steps.iter().enumerate() {
            let n = if s >= last { rows as u32 } else { t };
            let p: [u32; 8] = match step.op {
                Op::Embed { row0, rows } => [h, n, row0, rows, 0, 0, 0, 0],
                Op::Norm => [h, n, (c.rms_norm_eps as f32).to_bits(), 0, 0, 0, 0, 0],
                Op::Matmul { row0, rows, total, cols, .. } => [rows, cols, n, total, row0, 0, 0, 0],
                Op::Quantize { cols, .. } => [cols, n, 0, 0, 0, 0, 0, 0],
                Op::Rope => [nh, nkv, hd, n, pos0, 0, 0, 0],
                Op::Attend | Op::Combine => [nh, nkv, hd, n, pos0, splits, split_len, (1.0 / (hd as f32).sqrt()).to_bits()],
            };
            let at = s * SLOT as usize;
            params[at..at + 32].copy_from_slice(bytemuck::cast_slice(&p));
        }
        q.write_buffer(&self.params, 0, &params);

        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        if let Some(p) = &mut self.profiler {
            p.begin();
        }
        for (s, step) in self.steps.iter().enumerate() {
            if s == last {
                if rows == 0 {
                    break;
                }
                let row_bytes = h as u64 * 4;
                enc.copy_buffer_to_buffer(&self.x, (t as u64 - rows as u64) * row_bytes, &self.x_last, 0, rows as u64 * row_bytes);
            }
            let n = if s >= last { rows as u32 } else { t };
            let (mut pipeline, mut bind) = (&step.pipeline, &step.bind);
            // Products over several tokens run token-tiled (with tiles of more than one).
            let tile = if n > 1 { self.prefill_tile } else { 1 };
            if matches!(step.op, Op::Quantize { single: true, .. }) && tile > 1 {
                continue; // the tiled products read f32 x
            }
            if matches!(step.op, Op::Combine) && no_combine {
                continue; // the lane-per-query attention wrote its output itself
            }
            let groups = match step.op {
                Op::Embed { .. } => [h.div_ceil(64), n, 1],
                Op::Norm => [n, 1, 1],
                Op::Matmul { rows, per_lane, .. } => {
                    if tile > 1 {
                        let (p, own) = step.tiled.as_ref().expect("matmul steps have a tiled pipeline");
                        pipeline = p;
                        bind = own.as_ref().unwrap_or(bind);
                    }
                    let g = if per_lane > 0 { rows.div_ceil(64 * per_lane) } else { rows };
                    [g.min(65535), g.div_ceil(65535), n.div_ceil(tile)]
                }
                Op::Quantize { cols, .. } => [(cols / 32).div_ceil(64), n, 1],
                Op::Rope => [(hd / 2).div_ceil(64), c.kv_group() as u32 + 2, nkv * n],
                Op::Attend => match lanes {
                    Some((p, _, groups)) => {
                        pipeline = p;
                        groups
                    }
                    None => [splits, n, nh],
                },
                Op::Combine => [n, nh, 1],
            };
            let timestamp_writes = self.profiler.as_mut().and_then(|p| p.pass(step.name));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if let Some(d) = draw {
            let last_row = (rows.max(1) - 1) as u32;
            self.sampler.encode_profiled(q, &mut enc, d, last_row, self.profiler.as_mut());
            enc.copy_buffer_to_buffer(self.sampler.chosen(), 0, &self.chosen_staging, 0, 4);
        } else if rows > 0 {
            let bytes = (rows * c.vocab_size * 4) as u64;
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
        }
        if let Some(p) = &self.profiler {
            p.finish(&mut enc);
        }
        q.submit([enc.finish()]);
    }

    async fn read_logits(&self, n: usize) -> Result<Vec<f32>> {
        self.gpu.read_mapped(&self.staging, (n * 4) as u64).await
    }
}

/// A dispatch to be: its name, what it computes, its pipeline (and token-tiled pipeline, with
/// its own buffers if they differ), and its buffers in binding order (the parameter slot
/// comes last).
type StepSpec<'b> = (&'static str, Op, wgpu::ComputePipeline, Option<(wgpu::ComputePipeline, Option<Vec<wgpu::BindingResource<'b>>>)>, Vec<wgpu::BindingResource<'b>>);

/// Buffers as the bindings of a step.
fn bound<'b>(buffers: &[&'b wgpu::Buffer]) -> Vec<wgpu::BindingResource<'b>> {
    buffers.iter().map(|b| b.as_entire_binding()).collect()
}

/// Which matmul.wgsl variant the matrix products use.
#[derive(Clone, Copy)]
struct MatmulKernel {
    /// Rows per lane in the lane-per-row schedule; 0: a workgroup per row.
    per_lane: u32,
    subgroups: bool,
    /// Tokens per tile in steps of several tokens.
    tile: u32,
    /// q4 products take 8-bit activations (a quantize step first) in one-token steps, and in
    /// the tiled steps of several tokens.
    int8_single: bool,
    int8_tiles: bool,
}

/// What a matrix product does with its sums.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Epilogue {
    /// y = x·Wᵀ
    Store,
    /// y += x·Wᵀ (the residual add)
    Add,
    /// y = silu(x·W1ᵀ) · (x·W3ᵀ), W a stacked [W1; W3] (the feed-forward's gate and up).
    Glu,
}

/// The product of x and one matrix, as `epilogue` says: one step per buffer of W.
#[allow(clippy::too_many_arguments)]
fn push_matmul<'b>(
    dev: &wgpu::Device,
    pl: &mut Pipelines,
    kernel: MatmulKernel,
    steps: &mut Vec<StepSpec<'b>>,
    name: &'static str,
    // x, and the buffer its 8-bit form goes to when the product takes one.
    (x, xq): (&'b wgpu::Buffer, &'b wgpu::Buffer),
    w: &'b Weight,
    y: &'b wgpu::Buffer,
    cols: usize,
    epilogue: Epilogue,
) -> Result<()> {
    let texels = matches!(w.chunks[0].data, ChunkData::Texels(..));
    let binds = [Bind::Read, if texels { Bind::Texels } else { Bind::Read }, Bind::Read, Bind::Write, Bind::Uniform];
    // Weight rows per lane; with GLU each output row is two of them (its gate and up rows).
    // Never more output rows a lane than the matrix fills: past its last row a lane sums
    // copies of that row (tiny's 64-row matrices at 8 rows a lane would do 8 times the work).
    let glu = epilogue == Epilogue::Glu;
    let fill = 1u32 << (w.rows.div_ceil(64).max(1) as u32).ilog2();
    let outputs = match kernel.per_lane {
        0 => 0, // a workgroup per row
        n if glu => (n / 2).max(1).min(fill),
        n => n.min(fill),
    };
    let rows_per_lane = if glu { 2 * outputs } else { outputs };
    let q4 = w.quant == Quant::Q4;
    let (int8_single, int8_tiles) = (kernel.int8_single && q4, kernel.int8_tiles && q4);
    let defines = |tile: u32, int8: bool| -> Result<Vec<&'static str>> {
        let mut defs = vec![quant_define(w.quant)?];
        if int8 {
            defs.push("XQ8");
        }
        if texels {
            defs.push("TEXELS");
        }
        match epilogue {
            Epilogue::Store => {}
            Epilogue::Add => defs.push("ADD"),
            Epilogue::Glu => defs.push("GLU"),
        }
        match tile {
            4 => defs.push("TILE4"),
            8 => defs.push("TILE8"),
            _ => {}
        }
        match rows_per_lane {
            0 => {}
            1 => defs.push("ROW_PER_LANE"),
            2 => defs.extend(["ROW_PER_LANE", "ROWS2"]),
            4 => defs.extend(["ROW_PER_LANE", "ROWS2", "ROWS4"]),
            _ => defs.extend(["ROW_PER_LANE", "ROWS2", "ROWS4", "ROWS8"]),
        }
        if rows_per_lane == 0 && kernel.subgroups {
            defs.push("SUBGROUPS");
        }
        Ok(defs)
    };
    let pipeline = pl.get(dev, "matmul", shaders::MATMUL, "matmul", &defines(1, int8_single)?, &binds)?;
    let tiled = pl.get(dev, "matmul", shaders::MATMUL, "matmul", &defines(kernel.tile, int8_tiles)?, &binds)?;
    let per_lane = outputs;
    if int8_single || int8_tiles {
        let quantize = pl.get(dev, "quantize", shaders::QUANTIZE, "quantize", &[], &[Bind::Read, Bind::Write, Bind::Uniform])?;
        steps.push(("quantize", Op::Quantize { cols: cols as u32, single: !int8_tiles }, quantize, None, bound(&[x, xq])));
    }
    let input = |int8: bool| if int8 { xq } else { x };
    for c in &w.chunks {
        let op = Op::Matmul { row0: c.row0 as u32, rows: c.rows as u32, total: w.rows as u32, cols: cols as u32, per_lane };
        let bindings = |int8: bool| vec![input(int8).as_entire_binding(), c.data.binding(), c.scales.as_entire_binding(), y.as_entire_binding()];
        let tiled_bindings = (int8_tiles != int8_single).then(|| bindings(int8_tiles));
        steps.push((name, op, pipeline.clone(), Some((tiled.clone(), tiled_bindings)), bindings(int8_single)));
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
