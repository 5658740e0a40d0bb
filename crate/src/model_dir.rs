//! The puyu model folder: what `puyu convert` writes and every loader reads.
//!
//! ```text
//! config.json            the HF config, verbatim
//! tokenizer.json         the tokenizer (converted from tokenizer.model if need be)
//! manifest.json          format version, quantization, chat template, stop ids, and for every
//!                        tensor its shape, format and where each blob lies (shard, offset, length)
//! model-00000.safetensors …  shards of at most 512 MiB, tensors in model order
//! ```
//! Shards are plain safetensors files, so other tools can read them; the manifest repeats the
//! absolute offsets so that a loader can consume a shard front to back as a byte stream
//! ([`ShardStream`]) and route each chunk straight to its GPU buffer, never holding a shard.
//! A tensor too big for one shard (f16 embeddings of 7B and up) is split by rows into parts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::WeightSource;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::Quant;

pub const FORMAT: &str = "puyu";
pub const FORMAT_VERSION: u32 = 1;
/// The largest shard `puyu convert` writes by default.
pub const MAX_SHARD_BYTES: u64 = 512 << 20;

/// InternLM2-Chat's HF chat template (the `chat_template` of its tokenizer_config.json).
pub const CHAT_TEMPLATE_JINJA: &str = "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The format of the weight matrices (norms are always f32).
    pub quantization: Quant,
    pub group_size: usize,
    pub bos_id: u32,
    pub stop_ids: Vec<u32>,
    pub chat_template: ChatTemplateInfo,
    /// In file order: shard by shard, offset by offset.
    pub tensors: Vec<TensorEntry>,
    pub shards: Vec<ShardEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTemplateInfo {
    pub name: String,
    pub jinja: String,
    pub stop_strings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The HF name (`model.layers.0.attention.wqkv.weight`).
    pub name: String,
    /// `[rows, cols]` for matrices, `[n]` for norms.
    pub shape: Vec<usize>,
    pub quant: Quant,
    /// How the blobs are packed ([`Quant::layout`]).
    pub layout: String,
    /// Row ranges, in order, covering every row once.
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub shard: usize,
    /// `[first, end)` rows of the tensor.
    pub rows: [usize; 2],
    /// The packed weights (see [`crate::quant`] for the layout).
    pub data: Span,
    /// f16 group scales (q4, q8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<Span>,
}

/// A byte range of a shard file, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

impl Span {
    fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// Which blob of which part of which tensor (indices into the manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobId {
    pub tensor: usize,
    pub part: usize,
    pub scales: bool,
}

/// Every tensor an InternLM2 model needs, in the order a model folder stores them, with its
/// shape. Norm weights are 1-D.
pub fn expected_tensors(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut out = vec![("model.tok_embeddings.weight".to_string(), vec![v, h])];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}.");
        out.extend([
            (format!("{p}attention_norm.weight"), vec![h]),
            (format!("{p}attention.wqkv.weight"), vec![c.qkv_rows(), h]),
            (format!("{p}attention.wo.weight"), vec![h, c.num_heads * c.head_dim]),
            (format!("{p}ffn_norm.weight"), vec![h]),
            (format!("{p}feed_forward.w1.weight"), vec![i, h]),
            (format!("{p}feed_forward.w3.weight"), vec![i, h]),
            (format!("{p}feed_forward.w2.weight"), vec![h, i]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out.push(("output.weight".to_string(), vec![v, h]));
    out
}

/// A stored tensor as a matrix `(rows, cols)`: a 1-D norm weight is one row.
pub fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    match shape {
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
        [] => (0, 0),
    }
}

/// The format a tensor is stored in, given the model's quantization: norms stay f32.
pub fn storage_quant(shape: &[usize], quant: Quant) -> Quant {
    if shape.len() == 1 {
        Quant::F32
    } else {
        quant
    }
}

// ---------------------------------------------------------------------------------------------
// Layout: where every blob goes, decided before a byte is written (safetensors headers come
// first and name every offset).

/// One shard's safetensors header and the blobs after it, in order.
pub struct ShardPlan {
    pub header: Vec<u8>,
    pub blobs: Vec<BlobId>,
    pub size: u64,
}

/// Plans the shards for `tensors` (name, shape, format; in storage order), none larger than
/// `max_shard` bytes. Returns the manifest (with sha256 left empty) and the shard plans.
pub fn plan(
    tensors: &[(String, Vec<usize>, Quant)],
    quantization: Quant,
    config: &ModelConfig,
    max_shard: u64,
) -> Result<(Manifest, Vec<ShardPlan>)> {
    // Each shard: a list of (safetensors name, dtype, shape, blob, bytes).
    type Item = (String, &'static str, Vec<usize>, BlobId, u64);
    let mut shards: Vec<Vec<Item>> = vec![Vec::new()];
    let mut entries = Vec::new();
    let shard_size = |items: &[Item]| -> u64 {
        header_bytes(items.iter().map(|(n, d, s, _, len)| (n.as_str(), *d, s.as_slice(), *len))).len() as u64
            + items.iter().map(|i| i.4).sum::<u64>()
    };
    for (t, (name, shape, quant)) in tensors.iter().enumerate() {
        let (rows, cols) = matrix_dims(shape);
        if !quant.fits(cols) {
            return Err(Error::ManifestInvalid {
                reason: format!("`{name}`: {cols} columns are not a multiple of 32, needed by {quant}"),
            });
        }
        let row_bytes = (quant.data_bytes_per_row(cols) + quant.scale_bytes_per_row(cols)) as u64;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let items_now = shards.last().expect("one shard");
            let used = shard_size(items_now) + 512; // room for this part's header entries
            let room = max_shard.saturating_sub(used) / row_bytes;
            if room == 0 {
                if items_now.is_empty() {
                    return Err(Error::ManifestInvalid {
                        reason: format!("one row of `{name}` ({row_bytes} bytes) exceeds the shard size {max_shard}"),
                    });
                }
                shards.push(Vec::new());
                continue;
            }
            let end = rows.min(start + room as usize);
            let part = parts.len();
            let split = start > 0 || end < rows;
            let base = if split { format!("{name}.rows.{start}-{end}") } else { name.clone() };
            let n = end - start;
            let shard = shards.len() - 1;
            let data_shape = if shape.len() == 1 { shape.clone() } else { data_shape(*quant, n, cols) };
            let items = shards.last_mut().expect("one shard");
            items.push((
                base.clone(),
                dtype_name(*quant),
                data_shape,
                BlobId { tensor: t, part, scales: false },
                (quant.data_bytes_per_row(cols) * n) as u64,
            ));
            if quant.has_scales() {
                items.push((
                    format!("{base}.scales"),
                    "F16",
                    vec![n, cols / crate::quant::GROUP],
                    BlobId { tensor: t, part, scales: true },
                    (quant.scale_bytes_per_row(cols) * n) as u64,
                ));
            }
            parts.push(Part {
                shard,
                rows: [start, end],
                data: Span { offset: 0, len: 0 },
                scales: None,
            });
            start = end;
        }
        entries.push(TensorEntry {
            name: name.clone(),
            shape: shape.clone(),
            quant: *quant,
            layout: quant.layout().to_string(),
            parts,
        });
    }

    // Now the headers are final: fill in the absolute offsets.
    let mut plans = Vec::new();
    let mut shard_entries = Vec::new();
    for (s, items) in shards.iter().enumerate() {
        let header = header_bytes(items.iter().map(|(n, d, sh, _, len)| (n.as_str(), *d, sh.as_slice(), *len)));
        let mut offset = header.len() as u64;
        for (_, _, _, blob, len) in items {
            let span = Span { offset, len: *len };
            let part = &mut entries[blob.tensor].parts[blob.part];
            debug_assert_eq!(part.shard, s);
            if blob.scales {
                part.scales = Some(span);
            } else {
                part.data = span;
            }
            offset += len;
        }
        shard_entries.push(ShardEntry {
            file: format!("model-{s:05}.safetensors"),
            size: offset,
            sha256: String::new(),
        });
        plans.push(ShardPlan {
            header,
            blobs: items.iter().map(|i| i.3).collect(),
            size: offset,
        });
    }
    let mut stop_ids = config.eos_token_ids.clone();
    for id in crate::chat::STOP_IDS {
        if !stop_ids.contains(&id) {
            stop_ids.push(id);
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        quantization,
        group_size: crate::quant::GROUP,
        bos_id: config.bos_token_id,
        stop_ids,
        chat_template: ChatTemplateInfo {
            name: "internlm2-chat".into(),
            jinja: CHAT_TEMPLATE_JINJA.into(),
            stop_strings: crate::chat::STOP_STRINGS.map(String::from).to_vec(),
        },
        tensors: entries,
        shards: shard_entries,
    };
    Ok((manifest, plans))
}

fn data_shape(quant: Quant, rows: usize, cols: usize) -> Vec<usize> {
    match quant {
        Quant::Q4 => vec![rows, cols / 8],
        Quant::Q8 => vec![rows, cols / 4],
        Quant::F16 | Quant::F32 => vec![rows, cols],
    }
}

fn dtype_name(quant: Quant) -> &'static str {
    match quant {
        Quant::Q4 | Quant::Q8 => "U32",
        Quant::F16 => "F16",
        Quant::F32 => "F32",
    }
}

/// A safetensors header (8-byte length, JSON padded with spaces to 8 bytes) for blobs laid
/// out back to back in the given order.
pub(crate) fn header_bytes<'a>(items: impl Iterator<Item = (&'a str, &'static str, &'a [usize], u64)>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": FORMAT}));
    let mut offset = 0u64;
    for (name, dtype, shape, len) in items {
        map.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).expect("serialisable");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

// ---------------------------------------------------------------------------------------------
// Validation.

impl Manifest {
    /// Parses manifest.json, refusing formats this build does not know.
    pub fn from_json(text: &str) -> Result<Manifest> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::ManifestInvalid {
            reason: format!("not JSON: {e}"),
        })?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if value.get("format").and_then(|v| v.as_str()) != Some(FORMAT) || version != Some(FORMAT_VERSION as u64) {
            return Err(Error::UnsupportedFormatVersion {
                found: format!(
                    "{} {}",
                    value.get("format").unwrap_or(&serde_json::Value::Null),
                    value.get("format_version").unwrap_or(&serde_json::Value::Null)
                ),
                supported: format!("\"{FORMAT}\" {FORMAT_VERSION}"),
            });
        }
        serde_json::from_value(value).map_err(|e| Error::ManifestInvalid { reason: e.to_string() })
    }

    /// Checks the manifest against the config and the shards' actual sizes: every tensor the
    /// config implies is present with its shape, every part's blobs have the length its rows
    /// need, lie inside their shard and overlap no other blob, and the rows are covered once.
    pub fn validate(&self, config: &ModelConfig, shard_sizes: &[u64]) -> Result<()> {
        let bad = |reason: String| Error::ManifestInvalid { reason };
        if shard_sizes.len() != self.shards.len() {
            return Err(bad(format!("{} shards listed, {} found", self.shards.len(), shard_sizes.len())));
        }
        for (s, (entry, &actual)) in self.shards.iter().zip(shard_sizes).enumerate() {
            if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
                return Err(bad(format!("shard {s} has an unsafe file name `{}`", entry.file)));
            }
            if actual != entry.size {
                return Err(Error::ShardSize {
                    file: entry.file.clone(),
                    expected: entry.size,
                    actual,
                });
            }
        }
        let by_name: HashMap<&str, &TensorEntry> = self.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for (name, shape) in expected_tensors(config) {
            let t = by_name.get(name.as_str()).ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
            if t.shape != shape {
                return Err(Error::WrongShape { name, expected: shape, actual: t.shape.clone() });
            }
        }
        let mut spans: Vec<Vec<(Span, &str)>> = vec![Vec::new(); self.shards.len()];
        for t in &self.tensors {
            let (rows, cols) = matrix_dims(&t.shape);
            if t.layout != t.quant.layout() {
                return Err(bad(format!("`{}` has layout `{}`, which this version does not read", t.name, t.layout)));
            }
            if t.shape.len() > 2 || !t.quant.fits(cols) || (t.shape.len() == 1 && t.quant != Quant::F32) {
                return Err(bad(format!("`{}` cannot be stored as {} with shape {:?}", t.name, t.quant, t.shape)));
            }
            let mut next_row = 0;
            for p in &t.parts {
                if p.rows[0] != next_row || p.rows[1] <= p.rows[0] || p.rows[1] > rows {
                    return Err(bad(format!("`{}`: parts do not cover its {rows} rows in order", t.name)));
                }
                next_row = p.rows[1];
                let n = p.rows[1] - p.rows[0];
                let size = *shard_sizes
                    .get(p.shard)
                    .ok_or_else(|| bad(format!("`{}` names shard {}, which does not exist", t.name, p.shard)))?;
                let want = [(Some(p.data), t.quant.data_bytes_per_row(cols) * n), (p.scales, t.quant.scale_bytes_per_row(cols) * n)];
                for (span, len) in want {
                    match span {
                        None if len == 0 => {}
                        Some(span) if span.len == len as u64 => {
                            match span.end() {
                                Some(end) if end <= size => spans[p.shard].push((span, t.name.as_str())),
                                _ => {
                                    return Err(Error::ManifestOffsetOutOfRange {
                                        tensor: t.name.clone(),
                                        file: self.shards[p.shard].file.clone(),
                                        offset: span.offset,
                                        len: span.len,
                                        size,
                                    })
                                }
                            }
                        }
                        _ => return Err(bad(format!("`{}`: a blob's length disagrees with its rows and format", t.name))),
                    }
                }
            }
            if next_row != rows {
                return Err(bad(format!("`{}`: parts cover {next_row} of {rows} rows", t.name)));
            }
        }
        for (s, list) in spans.iter_mut().enumerate() {
            list.sort_by_key(|(span, _)| span.offset);
            for pair in list.windows(2) {
                let ((a, an), (b, bn)) = (pair[0], pair[1]);
                if a.offset + a.len > b.offset {
                    return Err(Error::ManifestOverlap {
                        file: self.shards[s].file.clone(),
                        first: an.to_string(),
                        second: bn.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The blobs of one shard, in file order.
    pub fn blobs_in(&self, shard: usize) -> Vec<(BlobId, Span)> {
        let mut out = Vec::new();
        for (t, entry) in self.tensors.iter().enumerate() {
            for (p, part) in entry.parts.iter().enumerate() {
                if part.shard == shard {
                    out.push((BlobId { tensor: t, part: p, scales: false }, part.data));
                    if let Some(s) = part.scales {
                        out.push((BlobId { tensor: t, part: p, scales: true }, s));
                    }
                }
            }
        }
        out.sort_by_key(|(_, s)| s.offset);
        out
    }

    /// Every blob of every tensor, in manifest order.
    pub fn blob_ids(&self) -> impl Iterator<Item = BlobId> + '_ {
        self.tensors.iter().enumerate().flat_map(|(t, entry)| {
            entry.parts.iter().enumerate().flat_map(move |(p, part)| {
                let scales = part.scales.map(|_| BlobId { tensor: t, part: p, scales: true });
                std::iter::once(BlobId { tensor: t, part: p, scales: false }).chain(scales)
            })
        })
    }

    pub fn tensor(&self, name: &str) -> Option<(usize, &TensorEntry)> {
        self.tensors.iter().enumerate().find(|(_, t)| t.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading: streaming (any target) and memory-mapped (native).

/// Consumes one shard as a sequence of byte chunks, in order, and hands every piece of every
/// blob to a sink with its offset inside the blob: what the browser does with `fetch` chunks
/// and `queue.write_buffer`. Checks the length and, if asked, the sha256.
pub struct ShardStream {
    entry: ShardEntry,
    blobs: Vec<(BlobId, Span)>,
    next: usize,
    pos: u64,
    hasher: Option<Sha256>,
}

impl ShardStream {
    pub fn new(manifest: &Manifest, shard: usize, verify_sha256: bool) -> Self {
        ShardStream {
            entry: manifest.shards[shard].clone(),
            blobs: manifest.blobs_in(shard),
            next: 0,
            pos: 0,
            hasher: verify_sha256.then(Sha256::new),
        }
    }

    /// Feeds the next chunk; `sink(blob, offset_in_blob, bytes)` receives its blob pieces
    /// (its first error ends the push).
    pub fn push(&mut self, chunk: &[u8], mut sink: impl FnMut(BlobId, u64, &[u8]) -> Result<()>) -> Result<()> {
        let entry = &self.entry;
        let end = self.pos + chunk.len() as u64;
        if end > entry.size {
            return Err(Error::ShardSize { file: entry.file.clone(), expected: entry.size, actual: end });
        }
        if let Some(h) = &mut self.hasher {
            h.update(chunk);
        }
        // Blobs are sorted and disjoint: walk them from the first not yet finished.
        let mut i = self.next;
        while let Some(&(blob, span)) = self.blobs.get(i) {
            if span.offset >= end {
                break;
            }
            let from = span.offset.max(self.pos);
            let to = (span.offset + span.len).min(end);
            if from < to {
                let bytes = &chunk[(from - self.pos) as usize..(to - self.pos) as usize];
                sink(blob, from - span.offset, bytes)?;
            }
            if span.offset + span.len <= end {
                self.next = i + 1;
            }
            i += 1;
        }
        self.pos = end;
        Ok(())
    }

    /// Ends the shard: all of it must have arrived, with the right hash if checked.
    pub fn finish(self) -> Result<()> {
        let entry = &self.entry;
        if self.pos != entry.size {
            return Err(Error::ShardSize { file: entry.file.clone(), expected: entry.size, actual: self.pos });
        }
        if let Some(h) = self.hasher {
            let actual = hex(&h.finalize());
            if actual != entry.sha256 {
                return Err(Error::Sha256Mismatch { file: entry.file.clone(), expected: entry.sha256.clone(), actual });
            }
        }
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Weights gathered blob by blob (from [`ShardStream`] sinks), for the CPU reference.
pub struct StreamedWeights {
    pub manifest: Manifest,
    blobs: HashMap<BlobId, Vec<u8>>,
}

impl StreamedWeights {
    pub fn new(manifest: Manifest) -> Self {
        StreamedWeights { manifest, blobs: HashMap::new() }
    }

    /// A sink for [`ShardStream::push`].
    pub fn write(&mut self, blob: BlobId, offset: u64, bytes: &[u8]) -> Result<()> {
        let buf = self.blobs.entry(blob).or_default();
        let end = offset as usize + bytes.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    /// The bytes of a blob, once streamed.
    pub fn blob(&self, blob: BlobId) -> Option<&[u8]> {
        self.blobs.get(&blob).map(Vec::as_slice)
    }
}

/// Dequantizes a tensor part by part from its blobs.
fn dequantize<'a>(
    manifest: &Manifest,
    name: &str,
    shape: &[usize],
    blob: impl Fn(BlobId) -> Option<&'a [u8]>,
) -> Result<Vec<f32>> {
    let (t, entry) = manifest.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
    if entry.shape != shape {
        return Err(Error::WrongShape { name: name.to_string(), expected: shape.to_vec(), actual: entry.shape.clone() });
    }
    let mut out = Vec::with_capacity(shape.iter().product());
    for (p, part) in entry.parts.iter().enumerate() {
        let missing = || Error::ManifestInvalid { reason: format!("`{name}` part {p} was not loaded") };
        let data = blob(BlobId { tensor: t, part: p, scales: false }).ok_or_else(missing)?;
        let scales = match part.scales {
            Some(_) => blob(BlobId { tensor: t, part: p, scales: true }).ok_or_else(missing)?,
            None => &[],
        };
        out.extend(entry.quant.dequantize(data, scales));
    }
    Ok(out)
}

impl WeightSource for StreamedWeights {
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        dequantize(&self.manifest, name, shape, |b| self.blob(b))
    }
    fn contains(&self, name: &str) -> bool {
        self.manifest.tensor(name).is_some()
    }
}

/// An opened model folder (native): config, manifest, and the shards memory-mapped.
#[cfg(not(target_arch = "wasm32"))]
pub struct ModelDir {
    pub dir: std::path::PathBuf,
    pub config: ModelConfig,
    pub manifest: Manifest,
    shards: Vec<memmap2::Mmap>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelDir {
    /// Whether `dir` looks like a puyu model folder (has manifest.json).
    pub fn is_model_dir(dir: &std::path::Path) -> bool {
        dir.join("manifest.json").is_file()
    }

    /// Opens and validates a model folder; with `verify_sha256` every shard is also hashed.
    pub fn open(dir: &std::path::Path, verify_sha256: bool) -> Result<ModelDir> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest = Manifest::from_json(&text)?;
        let mut shards = Vec::new();
        let mut sizes = Vec::new();
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map; see checkpoint::map_file.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            sizes.push(map.len() as u64);
            shards.push(map);
        }
        manifest.validate(&config, &sizes)?;
        if verify_sha256 {
            for (entry, map) in manifest.shards.iter().zip(&shards) {
                let actual = hex(&Sha256::digest(&map[..]));
                if actual != entry.sha256 {
                    return Err(Error::Sha256Mismatch { file: entry.file.clone(), expected: entry.sha256.clone(), actual });
                }
            }
        }
        Ok(ModelDir { dir: dir.to_path_buf(), config, manifest, shards })
    }

    pub fn tokenizer(&self) -> Result<crate::tokenizer::Tokenizer> {
        crate::tokenizer::Tokenizer::open(&self.dir)
    }

    /// The whole of shard `s` (for streaming it chunk by chunk).
    pub fn shard_bytes(&self, s: usize) -> &[u8] {
        &self.shards[s]
    }

    /// The bytes of one blob, straight from the mapped shard.
    pub fn blob(&self, b: BlobId) -> Option<&[u8]> {
        let part = self.manifest.tensors.get(b.tensor)?.parts.get(b.part)?;
        let span = if b.scales { part.scales? } else { part.data };
        self.shards.get(part.shard)?.get(span.offset as usize..(span.offset + span.len) as usize)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl WeightSource for ModelDir {
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        dequantize(&self.manifest, name, shape, |b| self.blob(b))
    }
    fn contains(&self, name: &str) -> bool {
        self.manifest.tensor(name).is_some()
    }
}
