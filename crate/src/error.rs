//! The library's error type: every failure a user can cause has its own variant that names
//! the file, field or tensor at fault, so the message says what to fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- config.json ----
    #[error("{path} is not valid JSON: {reason}")]
    ConfigSyntax { path: String, reason: String },
    #[error("config.json: required field `{field}` is missing")]
    ConfigMissingField { field: &'static str },
    #[error("config.json: field `{field}` is invalid: {reason}")]
    ConfigInvalidField { field: &'static str, reason: String },
    #[error(
        "config.json describes a `{found}` model; puyu runs InternLM2 \
         (architectures: InternLM2ForCausalLM, model_type: internlm2)"
    )]
    UnsupportedArchitecture { found: String },
    #[error(
        "config.json: rope scaling type `{kind}` is not supported \
         (supported: none, \"dynamic\", \"linear\")"
    )]
    UnsupportedRopeScaling { kind: String },

    // ---- checkpoint files ----
    #[error("{file}: not a valid safetensors file: {reason}")]
    SafetensorsFormat { file: String, reason: String },
    #[error("{file} is truncated: the header promises {expected} bytes, the file has {actual}")]
    TruncatedFile {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{dir}: no model.safetensors or model.safetensors.index.json (nor *.safetensors) found")]
    NoWeights { dir: String },
    #[error("{file}: shard index is invalid: {reason}")]
    ShardIndex { file: String, reason: String },
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; puyu reads BF16, F16 and F32 weights")]
    WrongDtype { name: String, dtype: String },

    // ---- puyu model folders ----
    #[error("manifest.json is invalid: {reason}")]
    ManifestInvalid { reason: String },
    #[error("manifest.json has format {found}; this puyu reads {supported}: convert the model again with this version")]
    UnsupportedFormatVersion { found: String, supported: String },
    #[error("shard {file} is {actual} bytes, the manifest says {expected}: the download or copy is incomplete or corrupt")]
    ShardSize { file: String, expected: u64, actual: u64 },
    #[error("shard {file} is corrupt: sha256 {actual}, the manifest says {expected}")]
    Sha256Mismatch { file: String, expected: String, actual: String },
    #[error("the model is incomplete: {tensors} tensor(s) did not receive all their bytes (the first: `{first}`); the download or copy stopped early: load it again")]
    IncompleteModel { tensors: usize, first: String },
    #[error("manifest.json: `{tensor}` lies at bytes {offset}+{len} of {file}, which has {size}")]
    ManifestOffsetOutOfRange { tensor: String, file: String, offset: u64, len: u64, size: u64 },
    #[error("manifest.json: `{first}` and `{second}` overlap in {file}")]
    ManifestOverlap { file: String, first: String, second: String },
    #[error("{dir} exists and is not empty; pass --force to replace it")]
    OutputExists { dir: String },
    #[error("{dir} has neither tokenizer.json nor tokenizer.model")]
    MissingTokenizer { dir: String },
    #[error(
        "model `{model}` is neither a folder, a bundled model (tiny, tiny-ntk), nor a model in the \
         local Hugging Face cache ({looked_in}); {hint}"
    )]
    ModelNotFound { model: String, looked_in: String, hint: String },

    // ---- tokenizer ----
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    // ---- running the model ----
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("the context is full: {needed} tokens needed, room for {context}; start a new conversation or load the model with a longer context")]
    ContextFull { needed: usize, context: usize },
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    #[error("{what} needs at least {needed} tokens, got {got}")]
    TooFewTokens {
        what: &'static str,
        needed: usize,
        got: usize,
    },

    // ---- GPU ----
    #[error("no GPU adapter found ({detail}); on Linux install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`")]
    NoAdapter { detail: String },
    #[error("GPU device request failed: {0}")]
    DeviceRequest(String),
    #[error(
        "the GPU's {limit} is {available} bytes, but {what} needs {needed}; use a shorter context, \
         a smaller model or a device with larger limits"
    )]
    DeviceLimits { limit: &'static str, what: String, needed: u64, available: u64 },
    #[error("the GPU device was lost ({reason}); load the model again")]
    DeviceLost { reason: String },
    #[error("GPU error: {0}")]
    Gpu(String),
}

impl Error {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
