//! The browser side of puyu: what the npm package's JavaScript calls (see `pkg/`).
//!
//! - [`Loader`]: opens WebGPU, makes the model's buffers and pipelines from `config.json`,
//!   `manifest.json` and `tokenizer.json`, then takes the shards chunk by chunk as `fetch`
//!   (or a local file) delivers them: each chunk goes straight into its GPU buffers and the
//!   shard's sha256, so neither JS nor wasm memory ever holds a whole shard.
//! - [`Engine`]: chat generation over one KV cache. A request that starts with the tokens
//!   already in the cache (the next turn of the same conversation) runs only the rest.
//!
//! Requests and results cross the boundary as JSON text; errors as JS `Error`s whose `name`
//! is the facade's error class (`pkg/errors.js`), so the page can tell them apart.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::rc::Rc;

use puyu::chat::{self, Message, Role, Template};
use puyu::generate::{generate, FinishReason, GenerateOptions};
use puyu::gpu::model::{GpuModel, GpuOptions, Schedule};
use puyu::gpu::weights::WeightWriter;
use puyu::gpu::{FeatureWish, Gpu};
use puyu::model_dir::{Manifest, ShardStream};
use puyu::sampling::SamplingParams;
use puyu::{Error, ModelConfig, Tokenizer};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

/// The facade's error class for each failure (pkg/errors.js has the same names).
fn class(e: &Error) -> &'static str {
    match e {
        Error::NoAdapter { .. } | Error::DeviceRequest(_) => "WebGPUUnavailableError",
        Error::DeviceLimits { .. } => "DeviceLimitsError",
        Error::DeviceLost { .. } => "DeviceLostError",
        Error::ContextFull { .. } => "ContextLengthError",
        Error::ShardSize { .. }
        | Error::Sha256Mismatch { .. }
        | Error::IncompleteModel { .. }
        | Error::ManifestInvalid { .. }
        | Error::ManifestOffsetOutOfRange { .. }
        | Error::ManifestOverlap { .. }
        | Error::UnsupportedFormatVersion { .. }
        | Error::ConfigSyntax { .. }
        | Error::ConfigMissingField { .. }
        | Error::ConfigInvalidField { .. }
        | Error::UnsupportedArchitecture { .. }
        | Error::UnsupportedRopeScaling { .. }
        | Error::MissingTensor { .. }
        | Error::WrongShape { .. }
        | Error::Tokenizer(_) => "ModelLoadError",
        _ => "PuyuError",
    }
}

fn js_error(name: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name(name);
    e.into()
}

fn err(e: Error) -> JsValue {
    match &e {
        // The native message's remedy (install a Vulkan driver) is not the browser's.
        Error::NoAdapter { detail } => js_error(
            class(&e),
            &format!(
                "WebGPU gave no GPU adapter ({detail}): WebGPU is off or unsupported here; use a recent Chrome, \
                 Edge or Safari, Firefox with WebGPU on, or Chromium on Linux with --enable-unsafe-webgpu"
            ),
        ),
        _ => js_error(class(&e), &e.to_string()),
    }
}

fn busy() -> JsValue {
    js_error("PuyuError", "the engine is busy with a request: await it, or call interrupt() and then await it")
}

fn invalid(message: impl AsRef<str>) -> JsValue {
    js_error("InvalidOptionError", message.as_ref())
}

/// `kernels.schedule` (matrix products) or `kernels.attention`: a lane or a workgroup per row.
fn schedule(key: &str, v: &Value) -> Result<Schedule, JsValue> {
    match v.as_str() {
        Some("auto") => Ok(Schedule::Auto),
        Some("lane") => Ok(Schedule::RowPerLane),
        Some("workgroup") => Ok(Schedule::Workgroup),
        _ => Err(invalid(format!("kernels.{key} must be \"auto\", \"lane\" or \"workgroup\", got {v}"))),
    }
}

/// The matrix-product and attention schedules, rows per lane and prefill tile of `kernels`
/// (benchmarks compare them; the defaults are the engine's choice for the adapter), and
/// whether to time every dispatch (`profile`).
fn kernel_options(mut o: GpuOptions, kernels: Option<&Value>) -> Result<(GpuOptions, bool), JsValue> {
    let mut profile = false;
    let Some(k) = kernels.filter(|k| !k.is_null()) else {
        return Ok((o, profile));
    };
    let k = k.as_object().ok_or_else(|| invalid("kernels must be an object"))?;
    for (key, v) in k {
        let n = || v.as_u64().and_then(|n| u32::try_from(n).ok());
        match key.as_str() {
            "schedule" => o.matmul = schedule(key, v)?,
            "attention" => o.attention = schedule(key, v)?,
            "rowsPerLane" => o.rows_per_lane = Some(n().filter(|n| [1, 2, 4, 8].contains(n)).ok_or_else(|| invalid(format!("kernels.rowsPerLane must be 1, 2, 4 or 8, got {v}")))?),
            "prefillTile" => o.prefill_tile = Some(n().filter(|n| [1, 4, 8].contains(n)).ok_or_else(|| invalid(format!("kernels.prefillTile must be 1, 4 or 8, got {v}")))?),
            "activations" => {
                let name = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                o.activations = name.parse().map_err(|e| invalid(format!("kernels.{e}")))?;
            }
            "weightStorage" => {
                let name = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                o.weight_storage = name.parse().map_err(|e| invalid(format!("kernels.{e}")))?;
            }
            "profile" => profile = v.as_bool().ok_or_else(|| invalid(format!("kernels.profile must be true or false, got {v}")))?,
            _ => return Err(invalid(format!("unknown kernels option {key} (known: schedule, attention, rowsPerLane, prefillTile, activations, weightStorage, profile)"))),
        }
    }
    Ok((o, profile))
}

/// A model being loaded: buffers made, weights arriving.
#[wasm_bindgen]
pub struct Loader {
    model: GpuModel,
    writer: WeightWriter,
    manifest: Manifest,
    tokenizer: Tokenizer,
    shard: Option<(usize, ShardStream)>,
    done: Vec<bool>,
}

#[wasm_bindgen]
impl Loader {
    /// Opens the GPU and prepares the model. `options_json`: `{"context": tokens,
    /// "f16": bool, "kernels": {"schedule": "auto" | "lane" | "workgroup", "attention": the
    /// same, "rowsPerLane":
    /// 1 | 2 | 4 | 8, "prefillTile": 1 | 4 | 8, "activations": "auto" | "f32" | "int8" |
    /// "int8-decode", "weightStorage": "auto" | "buffer" | "texture", "profile": bool}}` (all optional; `kernels` is for benchmarks:
    /// `profile` times every dispatch, see `info().profile`).
    pub async fn create(config_json: String, manifest_json: String, tokenizer_json: Vec<u8>, options_json: String) -> Result<Loader, JsValue> {
        let options: Value = serde_json::from_str(&options_json).map_err(|e| invalid(format!("options: {e}")))?;
        let config = ModelConfig::from_json_str(&config_json).map_err(err)?;
        let manifest = Manifest::from_json(&manifest_json).map_err(err)?;
        // The real sizes are checked as each shard streams in.
        let sizes: Vec<u64> = manifest.shards.iter().map(|s| s.size).collect();
        manifest.validate(&config, &sizes).map_err(err)?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json).map_err(err)?;
        let context = match options.get("context") {
            None | Some(Value::Null) => config.max_position_embeddings.min(4096),
            Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| invalid("context must be a positive integer"))? as usize,
        };
        let (gpu_options, timestamps) = kernel_options(GpuOptions { context, ..Default::default() }, options.get("kernels"))?;
        let wish = FeatureWish { f16: options.get("f16").and_then(Value::as_bool).unwrap_or(true), subgroups: true, timestamps };
        let gpu = Gpu::open(wgpu::Backends::BROWSER_WEBGPU, wish).await.map_err(err)?;
        if timestamps && !gpu.timestamps {
            return Err(js_error("DeviceLimitsError", "kernels.profile needs the timestamp-query feature, which this adapter does not have"));
        }
        let (model, writer) = GpuModel::allocate(gpu, config, &manifest, &gpu_options).map_err(err)?;
        let done = vec![false; manifest.shards.len()];
        Ok(Loader { model, writer, manifest, tokenizer, shard: None, done })
    }

    /// Starts shard `index` (its chunks follow with [`Loader::push`]).
    pub fn begin_shard(&mut self, index: usize) -> Result<(), JsValue> {
        if index >= self.manifest.shards.len() {
            return Err(invalid(format!("no shard {index}: the manifest has {}", self.manifest.shards.len())));
        }
        self.shard = Some((index, ShardStream::new(&self.manifest, index, true)));
        Ok(())
    }

    /// The next chunk of the current shard, written to the GPU at once.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        let (_, stream) = self.shard.as_mut().ok_or_else(|| invalid("push before begin_shard"))?;
        let (writer, manifest) = (&mut self.writer, &self.manifest);
        stream.push(chunk, |blob, offset, bytes| writer.write(manifest, blob, offset, bytes)).map_err(err)
    }

    /// Ends the current shard: all its bytes arrived and its sha256 is the manifest's.
    pub fn end_shard(&mut self) -> Result<(), JsValue> {
        let (index, stream) = self.shard.take().ok_or_else(|| invalid("end_shard before begin_shard"))?;
        stream.finish().map_err(err)?;
        self.done[index] = true;
        Ok(())
    }

    /// The loaded engine; fails if a shard or a tensor is missing.
    pub fn finish(self) -> Result<Engine, JsValue> {
        if let Some(missing) = self.done.iter().position(|d| !d) {
            let file = &self.manifest.shards[missing].file;
            return Err(js_error("ModelLoadError", &format!("shard {file} was not loaded: the download stopped early; load the model again")));
        }
        self.writer.finish().map_err(err)?;
        let config = self.model.config.clone();
        let mut stop_ids = config.eos_token_ids.clone();
        stop_ids.extend(chat::STOP_IDS);
        let inner = Inner { model: self.model, tokenizer: self.tokenizer, stop_ids, cached: Vec::new() };
        Ok(Engine { inner: Rc::new(RefCell::new(inner)) })
    }
}

struct Inner {
    model: GpuModel,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
}

/// A loaded model, ready to chat.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Inner>>,
}

/// The request's messages as the chat template's.
fn messages(request: &Value) -> Result<Vec<Message>, JsValue> {
    let list = request.get("messages").and_then(Value::as_array).ok_or_else(|| invalid("messages must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let content = m.get("content").and_then(Value::as_str).ok_or_else(|| invalid(format!("messages[{i}].content must be a string")))?;
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                other => return Err(invalid(format!("messages[{i}].role must be system, user or assistant, not {other:?}"))),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn number<T: TryFrom<u64>>(request: &Value, key: &str, default: T) -> Result<T, JsValue> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| invalid(format!("{key} must be a non-negative integer, got {v}"))),
    }
}

fn float(request: &Value, key: &str, default: f32) -> Result<f32, JsValue> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| invalid(format!("{key} must be a number, got {v}"))),
    }
}

#[wasm_bindgen]
impl Engine {
    /// JSON: the adapter and features, the context, GPU memory, the model's sizes, and with
    /// `kernels.profile` the GPU time by dispatch of the prompt and decode steps since the
    /// chat was last reset (each kind summed).
    pub fn info(&self) -> Result<String, JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        let m = &inner.model;
        let c = &m.config;
        Ok(json!({
            "adapter": m.adapter_info().name,
            "backend": format!("{:?}", m.adapter_info().backend),
            "description": m.describe(),
            "f16": m.gpu().f16,
            "activations": m.activations,
            "weight_storage": if m.weights_in_textures() { "texture" } else { "buffer" },
            "context": m.context,
            "memory": m.memory,
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "vocab_size": c.vocab_size,
            "profile": m.gpu().timestamps.then(|| m.profile()),
        })
        .to_string())
    }

    /// The ids of `text` (no BOS), for tests and token counting.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner.try_borrow().map_err(|_| busy())?.tokenizer.encode(text, false).map_err(err)
    }

    /// Runs a chat request (JSON: `messages`, `max_tokens`, `temperature`, `top_p`, `top_k`,
    /// `repetition_penalty`, `seed`, `stop`). `on_token(id, text)` sees each sampled token
    /// with the text it completes; returning `false` stops after it. Resolves to JSON:
    /// `ids`, `text`, `finish_reason` (stop, length, abort), `prompt_tokens`,
    /// `cached_tokens` (prompt tokens reused from the cache, not run again).
    pub fn generate(&self, request_json: String, on_token: js_sys::Function) -> js_sys::Promise {
        let inner = self.inner.clone();
        // The engine stays borrowed for the whole generation, across its GPU awaits: on the
        // browser's one thread, every other call finds it busy (a named error, not a panic).
        #[allow(clippy::await_holding_refcell_ref)]
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner.try_borrow_mut().map_err(|_| busy())?;
            let inner = &mut *guard;
            let request: Value = serde_json::from_str(&request_json).map_err(|e| invalid(format!("request: {e}")))?;
            let sampling = SamplingParams {
                temperature: float(&request, "temperature", 0.8)?,
                top_p: float(&request, "top_p", 0.8)?,
                top_k: number(&request, "top_k", 50)?,
                repeat_penalty: float(&request, "repetition_penalty", 1.0)?,
                seed: number(&request, "seed", 0)?,
                ..Default::default()
            };
            sampling.validate().map_err(invalid)?;
            let mut stop_strings: Vec<String> = chat::STOP_STRINGS.map(String::from).to_vec();
            match request.get("stop") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => stop_strings.push(s.clone()),
                Some(Value::Array(list)) => {
                    for s in list {
                        stop_strings.push(s.as_str().ok_or_else(|| invalid("stop must be a string or an array of strings"))?.to_string());
                    }
                }
                Some(_) => return Err(invalid("stop must be a string or an array of strings")),
            }
            let prompt = Template::default().encode(&inner.tokenizer, &messages(&request)?).map_err(err)?;
            let room = inner.model.context.saturating_sub(prompt.len()) + 1;
            let max_tokens = number(&request, "max_tokens", room.min(512))?;
            // Reuse the cache's longest common prefix with the prompt; at least one token
            // must run to give the next token's logits.
            let common = inner.cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
            inner.model.truncate(common);
            inner.cached.truncate(common);
            let options = GenerateOptions { max_tokens, stop_ids: inner.stop_ids.clone(), stop_strings, sampling };
            let Inner { model, tokenizer, cached, .. } = inner;
            let result = generate(model, tokenizer, &prompt[common..], &options, |id, text| {
                let go = on_token.call2(&JsValue::NULL, &JsValue::from(id), &JsValue::from(text));
                if go.map(|v| v.is_falsy() && !v.is_undefined()).unwrap_or(true) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
            // What ran is in the cache: the prompt, then every sampled token but the last.
            let out = match result {
                Ok(out) => out,
                Err(e) => {
                    model.reset();
                    cached.clear();
                    return Err(err(e));
                }
            };
            cached.extend_from_slice(&prompt[common..]);
            cached.extend_from_slice(&out.ids);
            cached.truncate(model.len);
            let finish = match out.finish {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
                FinishReason::Cancelled => "abort",
            };
            let result = json!({
                "ids": out.ids,
                "text": out.text,
                "finish_reason": finish,
                "prompt_tokens": prompt.len(),
                "cached_tokens": common,
            });
            Ok(JsValue::from(result.to_string()))
        })
    }

    /// Forgets the conversation in the cache.
    pub fn reset(&self) -> Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| busy())?;
        inner.model.reset();
        inner.cached.clear();
        Ok(())
    }

    /// Destroys the device as a driver reset would, leaving the engine in place: what a lost
    /// device looks like to the page (tests use it; the next request fails with
    /// DeviceLostError and a new engine can be loaded without reloading the page).
    pub fn lose_device_for_testing(&self) -> Result<(), JsValue> {
        self.inner.try_borrow().map_err(|_| busy())?.model.gpu().device.destroy();
        Ok(())
    }

    /// Destroys the GPU device's buffers now rather than at garbage collection.
    pub fn unload(&self) -> Result<(), JsValue> {
        let inner = self.inner.try_borrow().map_err(|_| busy())?;
        inner.model.gpu().device.destroy();
        Ok(())
    }
}
