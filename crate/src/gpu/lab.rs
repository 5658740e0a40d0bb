//! One kernel at a time: upload inputs, run one dispatch of one shader variant, read the
//! outputs back (or time repeated dispatches). The per-kernel tests check every kernel against
//! the CPU reference through this, and the kernel benchmark times them; the model itself
//! never uses it (it builds its buffers and bind groups once).

use wgpu::util::DeviceExt;

use super::{layout_entry, preprocess::preprocess, texels_descriptor, texels_layout_entry, Gpu};
use crate::error::{Error, Result};

/// A buffer of a launch, in binding order (the 32-byte parameter block is bound after them).
pub enum Buf<'a> {
    /// Read-only input.
    In(&'a [u8]),
    /// Read-write, starting with these contents; read back after the launch.
    Out(&'a [u8]),
    /// Read-only rows of 16-byte texels (q4 groups), as an rgba32uint texture this many texels
    /// wide (matmul.wgsl's TEXELS).
    Texels(&'a [u8], u32),
}

/// One dispatch of `entry` in `source` expanded with `defines`.
pub struct Launch<'a> {
    pub source: &'a str,
    pub entry: &'a str,
    pub defines: &'a [&'a str],
    pub buffers: Vec<Buf<'a>>,
    pub params: [u32; 8],
    pub groups: [u32; 3],
}

enum Resource {
    Buffer(wgpu::Buffer),
    View(wgpu::TextureView),
}

struct Prepared {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    outs: Vec<wgpu::Buffer>,
}

fn prepare(gpu: &Gpu, l: &Launch) -> Result<Prepared> {
    let dev = &gpu.device;
    let code = preprocess(l.source, l.defines).map_err(Error::Gpu)?;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(l.entry),
        source: wgpu::ShaderSource::Wgsl(code.into()),
    });
    let mut entries = Vec::new();
    let mut resources = Vec::new();
    let mut outs = Vec::new();
    for (b, buf) in l.buffers.iter().enumerate() {
        let (bytes, read_only) = match buf {
            Buf::In(x) => (*x, true),
            Buf::Out(x) => (*x, false),
            Buf::Texels(x, width) => {
                let height = (x.len() / (16 * *width as usize)) as u32;
                let desc = texels_descriptor(None, *width, height, wgpu::TextureUsages::empty());
                let texture = dev.create_texture_with_data(&gpu.queue, &desc, wgpu::util::TextureDataOrder::LayerMajor, x);
                entries.push(texels_layout_entry(b as u32));
                resources.push(Resource::View(texture.create_view(&Default::default())));
                continue;
            }
        };
        // Bindings may not be empty, and sizes are whole words.
        let mut contents = bytes.to_vec();
        contents.resize(bytes.len().max(4).next_multiple_of(4), 0);
        let buffer = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        entries.push(layout_entry(b as u32, wgpu::BufferBindingType::Storage { read_only }));
        if !read_only {
            outs.push(buffer.clone());
        }
        resources.push(Resource::Buffer(buffer));
    }
    let params = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytemuck::cast_slice(&l.params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    entries.push(layout_entry(resources.len() as u32, wgpu::BufferBindingType::Uniform));
    let layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
    let pipeline_layout = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(l.entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(l.entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let mut bind_entries: Vec<wgpu::BindGroupEntry> = resources
        .iter()
        .enumerate()
        .map(|(b, r)| wgpu::BindGroupEntry {
            binding: b as u32,
            resource: match r {
                Resource::Buffer(buf) => buf.as_entire_binding(),
                Resource::View(view) => wgpu::BindingResource::TextureView(view),
            },
        })
        .collect();
    bind_entries.push(wgpu::BindGroupEntry { binding: resources.len() as u32, resource: params.as_entire_binding() });
    let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &bind_entries });
    Ok(Prepared { pipeline, bind, outs })
}

fn encode(gpu: &Gpu, p: &Prepared, groups: [u32; 3], times: usize) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    for _ in 0..times {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &p.bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
    gpu.queue.submit([enc.finish()]);
}

/// Runs the launch once; returns the contents of its `Out` buffers, in order.
pub async fn run(gpu: &Gpu, l: &Launch<'_>) -> Result<Vec<Vec<u8>>> {
    let p = prepare(gpu, l)?;
    encode(gpu, &p, l.groups, 1);
    let mut out = Vec::new();
    for buf in &p.outs {
        out.push(bytemuck::cast_slice(&gpu.read_f32(buf).await?).to_vec());
    }
    Ok(out)
}

/// Seconds per dispatch: `repeat` dispatches in one submission after a warm-up, timed to the
/// end of the GPU work (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn time(gpu: &Gpu, l: &Launch<'_>, repeat: usize) -> Result<f64> {
    let p = prepare(gpu, l)?;
    let wait = || gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()));
    encode(gpu, &p, l.groups, 1);
    wait()?;
    let start = std::time::Instant::now();
    encode(gpu, &p, l.groups, repeat);
    wait()?;
    Ok(start.elapsed().as_secs_f64() / repeat as f64)
}
