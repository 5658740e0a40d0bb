//! Sampling on the GPU (shaders/sample.wgsl): the dispatches that choose the next token from
//! a row of logits as [`crate::sampling::Sampler`] would, so that a decode step reads back a
//! 4-byte token id instead of the logits.
//!
//! Which dispatches run depends on the draw (see the shader's header): greedy draws take
//! CAP lanes' argmaxes then the best of those; top-k draws with k ≤ 256 (the usual
//! settings) narrow the vocabulary down to at most CAP candidates by a radix select spread
//! over the device and finish on those only; other draws (top-k off, or larger) run one
//! workgroup over the vocabulary.
//!
//! CPU drivers (lavapipe, SwiftShader) pay dearly for workgroups that synchronise, so the
//! passes over the vocabulary use few of them (CHUNK tokens each) or none (greedy).

use wgpu::util::DeviceExt;

use super::pipelines::{Bind, Pipelines};
use super::profile::Profiler;
use super::{shaders, Gpu};
use crate::error::{Error, Result};
use crate::sampling::Draw;

/// Tokens per workgroup in the vocabulary-wide passes (`CHUNK` in sample.wgsl).
const CHUNK: u32 = 16384;
/// The largest top-k of the radix select (`TOP_K_MAX`).
const TOP_K_MAX: u32 = 256;
/// Candidate slots of the select state (`CAP`), and the lanes of a greedy draw's `best`.
const CAP: u32 = 512;
/// Bytes of the select state the host zeroes before a top-k draw: four 256-bin histograms
/// and the candidate count (`HIST`, `COUNT`).
const SELECT_HEADER: u64 = (4 * 256 + 1) * 4;

/// Passes one draw takes at most (for the profiler's query set).
pub const MAX_PASSES: usize = 7;

pub struct GpuSampler {
    vocab: u32,
    penalize: wgpu::ComputePipeline,
    best: wgpu::ComputePipeline,
    best_of: wgpu::ComputePipeline,
    count: [wgpu::ComputePipeline; 4],
    gather: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    all: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    params: wgpu::Buffer,
    recent: wgpu::Buffer,
    recent_capacity: usize,
    work: wgpu::Buffer,
    select: wgpu::Buffer,
    chosen: wgpu::Buffer,
}

impl GpuSampler {
    /// A sampler over `logits` (rows of `vocab` floats, which draws penalise in place), with
    /// room for `recent_capacity` recent tokens.
    pub fn new(gpu: &Gpu, logits: &wgpu::Buffer, vocab: usize, recent_capacity: usize) -> Result<GpuSampler> {
        // The vocabulary-wide passes take a workgroup per CHUNK tokens, in one dispatch.
        let dev = &gpu.device;
        let most = dev.limits().max_compute_workgroups_per_dimension as u64 * CHUNK as u64;
        if vocab == 0 || vocab as u64 > most {
            return Err(Error::Gpu(format!("the GPU sampler takes vocabularies of 1 to {most} tokens, not {vocab}")));
        }
        let binds = [Bind::Write, Bind::Read, Bind::Write, Bind::Write, Bind::Write, Bind::Uniform];
        let mut pipelines = Pipelines::default();
        let mut get = |entry: &str| pipelines.get(dev, "sample", shaders::SAMPLE, entry, &[], &binds);
        let (penalize, best, best_of) = (get("penalize")?, get("best")?, get("best_of")?);
        let (gather, finish, all) = (get("gather")?, get("finish")?, get("sample_all")?);
        let count = [get("count0")?, get("count1")?, get("count2")?, get("count3")?];
        let storage = |label: &str, bytes: u64| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let recent = storage("recent tokens", recent_capacity as u64 * 4);
        let work = storage("sampling scratch", vocab as u64 * 4);
        let select = storage("select state", SELECT_HEADER + CAP as u64 * 4);
        let chosen = storage("chosen", 4);
        let params = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("sampling params"),
            contents: &[0u8; 32],
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let entries: Vec<wgpu::BindGroupEntry> = [logits, &recent, &work, &chosen, &select, &params]
            .iter()
            .enumerate()
            .map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() })
            .collect();
        let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("sampling"), layout: &finish.get_bind_group_layout(0), entries: &entries });
        Ok(GpuSampler { vocab: vocab as u32, penalize, best, best_of, count, gather, finish, all, bind, params, recent, recent_capacity, work, select, chosen })
    }

    /// Bytes of GPU memory it holds (besides the logits).
    pub fn bytes(&self) -> u64 {
        [&self.params, &self.recent, &self.work, &self.select, &self.chosen].iter().map(|b| b.size()).sum()
    }

    /// The chosen token id (4 bytes), once the encoded draw has run.
    pub fn chosen(&self) -> &wgpu::Buffer {
        &self.chosen
    }

    /// Writes the draw's settings and encodes its dispatches over logit row `row`.
    pub fn encode(&self, queue: &wgpu::Queue, enc: &mut wgpu::CommandEncoder, draw: &Draw, row: u32) {
        self.encode_profiled(queue, enc, draw, row, None);
    }

    pub(crate) fn encode_profiled(&self, queue: &wgpu::Queue, enc: &mut wgpu::CommandEncoder, draw: &Draw, row: u32, mut profiler: Option<&mut Profiler>) {
        // Most recent first: past the buffer's capacity only older ones go.
        let recent = &draw.recent[..draw.recent.len().min(self.recent_capacity)];
        queue.write_buffer(&self.recent, 0, bytemuck::cast_slice(recent));
        let p: [u32; 8] = [
            self.vocab, row, draw.top_k, recent.len() as u32,
            draw.temperature.to_bits(), draw.top_p.to_bits(), draw.penalty.to_bits(), draw.u.to_bits(),
        ];
        queue.write_buffer(&self.params, 0, bytemuck::cast_slice(&p));

        let groups = self.vocab.div_ceil(CHUNK);
        let mut passes: Vec<(&wgpu::ComputePipeline, u32)> = Vec::with_capacity(MAX_PASSES);
        if draw.penalty != 1.0 && !recent.is_empty() {
            passes.push((&self.penalize, 1));
        }
        if draw.temperature == 0.0 {
            passes.extend([(&self.best, CAP / 64), (&self.best_of, 1)]);
        } else if (1..=TOP_K_MAX).contains(&draw.top_k) {
            enc.clear_buffer(&self.select, 0, Some(SELECT_HEADER));
            passes.extend(self.count.iter().map(|c| (c, groups)));
            passes.extend([(&self.gather, groups), (&self.finish, 1)]);
        } else {
            passes.push((&self.all, 1));
        }
        for (pipeline, groups) in passes {
            let timestamp_writes = profiler.as_deref_mut().and_then(|p| p.pass("sample"));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("sample"), timestamp_writes });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.bind, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
    }
}
