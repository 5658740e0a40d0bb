//! puyu runs the InternLM2 family (书生·浦语 2.0) on WebGPU, natively and in the browser.
//!
//! The HF config and checkpoint readers, the tokenizer and chat template, the puyu model
//! format and converter, the CPU reference forward pass (the oracle for everything on the
//! GPU), the tiny golden checkpoints, and the GPU engine (`gpu`) with generation on top.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod checkpoint;
pub mod chat;
pub mod config;
pub mod conversation;
#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod model_dir;
#[cfg(not(target_arch = "wasm32"))]
pub mod model_lookup;
pub mod perplexity;
pub mod quant;
pub mod reference;
pub mod rope;
pub mod sampling;
pub mod tiny;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, WeightSource};
pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use tokenizer::Tokenizer;

/// Loads the CPU reference model from an HF InternLM2 folder (config.json + safetensors).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_hf_reference(dir: &std::path::Path) -> Result<reference::Model> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open_dir(dir)?;
    reference::Model::load(config, &ckpt)
}

/// Loads the CPU reference model from a folder: a puyu model folder (manifest.json; the
/// weights dequantized) or an HF checkpoint.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_reference(dir: &std::path::Path) -> Result<reference::Model> {
    if model_dir::ModelDir::is_model_dir(dir) {
        let m = model_dir::ModelDir::open(dir, false)?;
        reference::Model::load(m.config.clone(), &m)
    } else {
        load_hf_reference(dir)
    }
}

/// Builds the CPU reference model of a tiny checkpoint in memory (no files).
pub fn tiny_reference(spec: &tiny::TinySpec) -> Result<reference::Model> {
    let ckpt = Checkpoint::from_bytes("model.safetensors", spec.safetensors())?;
    reference::Model::load(spec.config(), &ckpt)
}
