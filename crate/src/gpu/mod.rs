//! The GPU context: adapter, device and queue, with what was chosen reported, and the
//! small helpers every kernel call needs (upload, read back).
//!
//! This is the start of the WebGPU engine; today it runs the element-wise kernel that the
//! smoke test uses to prove a real driver executes our WGSL.

use wgpu::util::DeviceExt;

pub mod lab;
pub mod model;
mod pipelines;
pub mod preprocess;
pub mod profile;
pub mod sampler;
pub mod weights;

use crate::error::{Error, Result};

/// WGSL sources, one file per op family (see `shaders/`).
pub mod shaders {
    pub const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
    pub const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
    pub const EMBED: &str = include_str!("../../../shaders/embed.wgsl");
    pub const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
    pub const NORM: &str = include_str!("../../../shaders/norm.wgsl");
    pub const QUANTIZE: &str = include_str!("../../../shaders/quantize.wgsl");
    pub const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
    pub const SAMPLE: &str = include_str!("../../../shaders/sample.wgsl");

    /// Every shader file with every set of defines the engine may use, for validation.
    pub fn variants() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
        let mut v: Vec<(&'static str, &'static str, Vec<&'static str>)> = vec![
            ("elementwise.wgsl", ELEMENTWISE, vec![]),
            ("norm.wgsl", NORM, vec![]),
            ("quantize.wgsl", QUANTIZE, vec![]),
            ("sample.wgsl", SAMPLE, vec![]),
        ];
        for kv in [None, Some("KV_F16")] {
            v.push(("attention.wgsl", ATTENTION, kv.into_iter().collect()));
            v.push(("rope.wgsl", ROPE, kv.into_iter().collect()));
        }
        for quant in ["Q4", "Q8", "F16"] {
            v.push(("embed.wgsl", EMBED, vec![quant]));
            for add in [None, Some("ADD")] {
                for tile in [None, Some("TILE4"), Some("TILE8")] {
                    for schedule in [Some("ROW_PER_LANE"), None, Some("SUBGROUPS")] {
                        let defs = [Some(quant), add, tile, schedule];
                        v.push(("matmul.wgsl", MATMUL, defs.into_iter().flatten().collect()));
                    }
                    for rows in [&["ROWS2"][..], &["ROWS2", "ROWS4"], &["ROWS2", "ROWS4", "ROWS8"]] {
                        let mut defs: Vec<&'static str> = [Some(quant), add, tile, Some("ROW_PER_LANE")].into_iter().flatten().collect();
                        defs.extend(rows);
                        v.push(("matmul.wgsl", MATMUL, defs));
                    }
                }
            }
            // The fused gate/up product (never with ADD).
            for tile in [None, Some("TILE4"), Some("TILE8")] {
                for schedule in [&["ROW_PER_LANE", "ROWS2"][..], &["ROW_PER_LANE", "ROWS2", "ROWS4"], &["ROW_PER_LANE", "ROWS2", "ROWS4", "ROWS8"], &[], &["SUBGROUPS"]] {
                    let mut defs: Vec<&'static str> = [Some(quant), tile, Some("GLU")].into_iter().flatten().collect();
                    defs.extend(schedule);
                    v.push(("matmul.wgsl", MATMUL, defs));
                }
            }
        }
        // Integer products on 8-bit activations: q4, lane per row only.
        for epilogue in [None, Some("ADD"), Some("GLU")] {
            for tile in [None, Some("TILE4"), Some("TILE8")] {
                for rows in [&[][..], &["ROWS2"], &["ROWS2", "ROWS4"], &["ROWS2", "ROWS4", "ROWS8"]] {
                    if epilogue == Some("GLU") && rows.is_empty() {
                        continue;
                    }
                    let mut defs: Vec<&'static str> = [Some("Q4"), Some("XQ8"), Some("ROW_PER_LANE"), epilogue, tile].into_iter().flatten().collect();
                    defs.extend(rows);
                    v.push(("matmul.wgsl", MATMUL, defs));
                }
            }
        }
        // Every q4 product also with its weights as texels.
        let texels: Vec<_> = v.iter().filter(|(file, _, defs)| *file == "matmul.wgsl" && defs[0] == "Q4").map(|(f, src, defs)| (*f, *src, [defs.clone(), vec!["TEXELS"]].concat())).collect();
        v.extend(texels);
        v
    }
}

/// Optional device features puyu uses when the adapter has them. Switching one off forces
/// the portable path (tests run both; Chromium's SwiftShader has no shader-f16, and wasm
/// wgpu exposes no subgroups today).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureWish {
    /// `shader-f16`: the KV cache is stored in f16 (half its memory and bandwidth).
    pub f16: bool,
    /// `subgroups`: matrix-product reductions with subgroupAdd instead of shared memory.
    pub subgroups: bool,
    /// `timestamp-query`: GPU time of every dispatch (profiling; off unless asked for).
    pub timestamps: bool,
}

impl Default for FeatureWish {
    fn default() -> Self {
        FeatureWish { f16: true, subgroups: true, timestamps: false }
    }
}

impl FeatureWish {
    /// Everything off: only what every WebGPU device has.
    pub const PORTABLE: FeatureWish = FeatureWish { f16: false, subgroups: false, timestamps: false };
}

pub struct Gpu {
    pub adapter_info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// shader-f16 was requested and granted.
    pub f16: bool,
    /// subgroups were requested and granted.
    pub subgroups: bool,
    /// timestamp-query was requested and granted.
    pub timestamps: bool,
    /// Set (with the reason) when the device is lost; every later step fails with
    /// [`Error::DeviceLost`].
    lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// The adapters wgpu can see on `backends`, for `puyu info`.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let instance = instance(backends);
    pollster::block_on(instance.enumerate_adapters(backends))
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Opens the best adapter on `backends` with that adapter's own limits and every
    /// optional feature it has. Fails with [`Error::NoAdapter`] when there is none.
    pub async fn new(backends: wgpu::Backends) -> Result<Gpu> {
        Gpu::open(backends, FeatureWish::default()).await
    }

    /// As [`Gpu::new`], requesting only the wished features (and only those the adapter has).
    pub async fn open(backends: wgpu::Backends, wish: FeatureWish) -> Result<Gpu> {
        let instance = instance(backends);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter {
                detail: e.to_string(),
            })?;
        let has = adapter.features();
        let f16 = wish.f16 && has.contains(wgpu::Features::SHADER_F16);
        let subgroups = wish.subgroups && has.contains(wgpu::Features::SUBGROUP);
        let timestamps = wish.timestamps && has.contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SHADER_F16, f16);
        features.set(wgpu::Features::SUBGROUP, subgroups);
        features.set(wgpu::Features::TIMESTAMP_QUERY, timestamps);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("puyu"),
                required_features: features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest(e.to_string()))?;
        let lost = std::sync::Arc::new(std::sync::Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = flag.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        Ok(Gpu {
            adapter_info: adapter.get_info(),
            device,
            queue,
            f16,
            subgroups,
            timestamps,
            lost,
        })
    }

    /// [`Error::DeviceLost`] once the device is gone.
    pub fn check_alive(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(reason) => Err(Error::DeviceLost { reason }),
            None => Ok(()),
        }
    }

    /// One line on what was chosen: adapter, backend, features.
    pub fn describe(&self) -> String {
        let i = &self.adapter_info;
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "{} ({:?}, {:?}); shader-f16 {}, subgroups {}",
            i.name,
            i.backend,
            i.device_type,
            on(self.f16),
            on(self.subgroups)
        )
    }

    fn storage(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// Copies `buffer` to the CPU.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);

        self.read_mapped(&staging, size).await
    }

    /// Maps the first `bytes` of a MAP_READ buffer (after the work that fills it has been
    /// submitted), copies them out as f32 and unmaps it.
    pub async fn read_mapped(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>> {
        self.read_mapped_as(staging, bytes).await
    }

    /// As [`Gpu::read_mapped`], for u32 data.
    pub async fn read_mapped_u32(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u32>> {
        self.read_mapped_as(staging, bytes).await
    }

    async fn read_mapped_as<T: bytemuck::Pod>(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let slice = staging.slice(..bytes);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        // Our readbacks are valid by construction, so a failed map means the device is gone
        // (in the browser the map fails before the device-lost callback has run).
        let lost = |reason: String| self.check_alive().err().unwrap_or(Error::DeviceLost { reason });
        rx.await
            .map_err(|_| lost("a readback was cancelled".into()))?
            .map_err(|e| lost(format!("a readback failed: {e}")))?;
        let view = slice.get_mapped_range().map_err(|e| Error::Gpu(e.to_string()))?;
        let data = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(data)
    }

    /// `a + b` on the GPU, with the `add` kernel of `elementwise.wgsl`.
    pub async fn add(&self, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        assert_eq!(a.len(), b.len(), "add: operands differ in length");
        let n = a.len() as u32;
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("elementwise.wgsl"),
                source: wgpu::ShaderSource::Wgsl(shaders::ELEMENTWISE.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("add"),
                layout: None,
                module: &module,
                entry_point: Some("add"),
                compilation_options: Default::default(),
                cache: None,
            });
        let (ba, bb) = (self.storage("a", a), self.storage("b", b));
        let out = self.storage("out", &vec![0.0; a.len()]);
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(&[n, 0, 0, 0]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("add"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, &ba),
                entry(1, &bb),
                entry(2, &out),
                entry(3, &params),
            ],
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(n.div_ceil(64), 1, 1);
        }
        self.queue.submit([encoder.finish()]);
        self.read_f32(&out).await
    }
}

/// A compute-stage buffer binding of kind `ty`, for the layouts of the model's pipelines and
/// of the kernel lab's.
pub(crate) fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

/// The binding of q4 weights as texels (matmul.wgsl's TEXELS): a texture_2d<u32>.
pub(crate) fn texels_layout_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Texture { sample_type: wgpu::TextureSampleType::Uint, view_dimension: wgpu::TextureViewDimension::D2, multisampled: false },
        count: None,
    }
}

/// An rgba32uint texture of `rows` rows of `groups` texels: q4 weights, a 16-byte texel per
/// 32-weight group.
pub(crate) fn texels_descriptor(label: Option<&str>, groups: u32, rows: u32, usage: wgpu::TextureUsages) -> wgpu::TextureDescriptor<'_> {
    wgpu::TextureDescriptor {
        label,
        size: wgpu::Extent3d { width: groups, height: rows, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: usage | wgpu::TextureUsages::TEXTURE_BINDING,
        view_formats: &[],
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}
