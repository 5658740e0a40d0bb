//! Compiled compute pipelines and their bind group layouts, made once per model (or
//! sampler) and shared by every step that runs the same shader variant.

use std::collections::HashMap;

use super::preprocess::preprocess;
use crate::error::{Error, Result};

/// What a kernel binding is.
#[derive(Clone, Copy)]
pub(crate) enum Bind {
    Read,
    Write,
    Uniform,
    /// A texture_2d<u32> (q4 weights as rgba32uint texels).
    Texels,
}

/// Compiled pipelines, by (file, entry point, defines); their shader modules, by (file,
/// defines), so the entry points of one file (the sampler's eight) are parsed once; and
/// their bind group layouts, by binding kinds: pipelines with the same kinds share one
/// layout, so a step's bind group serves both its pipelines (matrix products: plain and
/// token-tiled).
#[derive(Default)]
pub(crate) struct Pipelines {
    cache: HashMap<String, wgpu::ComputePipeline>,
    modules: HashMap<String, wgpu::ShaderModule>,
    layouts: HashMap<Vec<u8>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
}

impl Pipelines {
    pub fn get(
        &mut self,
        dev: &wgpu::Device,
        file: &str,
        source: &str,
        entry: &str,
        defines: &[&str],
        binds: &[Bind],
    ) -> Result<wgpu::ComputePipeline> {
        let variant = format!("{file}:{}", defines.join(","));
        let key = format!("{file}:{entry}:{}", defines.join(","));
        if let Some(p) = self.cache.get(&key) {
            return Ok(p.clone());
        }
        let module = match self.modules.get(&variant) {
            Some(m) => m.clone(),
            None => {
                let code = preprocess(source, defines).map_err(Error::Gpu)?;
                let m = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&variant),
                    source: wgpu::ShaderSource::Wgsl(code.into()),
                });
                self.modules.insert(variant, m.clone());
                m
            }
        };
        let kinds: Vec<u8> = binds.iter().map(|b| *b as u8).collect();
        let (_, pl) = self.layouts.entry(kinds).or_insert_with(|| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
                .iter()
                .enumerate()
                .map(|(b, kind)| {
                    let ty = match kind {
                        Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Bind::Write => wgpu::BufferBindingType::Storage { read_only: false },
                        Bind::Uniform => wgpu::BufferBindingType::Uniform,
                        Bind::Texels => return super::texels_layout_entry(b as u32),
                    };
                    super::layout_entry(b as u32, ty)
                })
                .collect();
            let layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
            let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            (layout, pl)
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        self.cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
