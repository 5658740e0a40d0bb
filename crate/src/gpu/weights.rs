//! Weights into GPU buffers as their bytes arrive, in pieces of any size and alignment: a
//! whole blob from a memory-mapped shard (native), or the chunks of a `fetch` stream
//! (browser), so that no shard is ever held whole in memory.
//!
//! A tensor may live in several buffers (split by rows where it exceeds the binding limit)
//! and come in several blobs (split by rows across shards): a piece is cut at buffer
//! boundaries. `queue.write_buffer` needs offsets and sizes in whole 4-byte words, so the
//! bytes of a word cut by a piece boundary wait in `edges` until the word is complete (or,
//! at the very end, are written zero-padded).
//!
//! A q4 matrix may live in a texture instead (one texel of 16 bytes per 32-weight group, a
//! texel row per weight row: what CPU adapters read fastest): there whole rows are written,
//! and the bytes of a row cut by a piece boundary wait in `row_edges` the same way.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model_dir::{BlobId, Manifest};

/// One buffer's (or texture's) share of a tensor: rows `[row0, row0 + rows)` of its data or
/// its scales, from byte `offset` of the buffer on (a buffer may stack blocks of several
/// tensors; in a texture, byte `offset` is where texel row offset / row bytes starts).
#[derive(Clone)]
pub(crate) struct Target {
    pub row0: usize,
    pub rows: usize,
    pub dest: Dest,
    pub offset: u64,
}

/// Where a target's bytes go.
#[derive(Clone)]
pub(crate) enum Dest {
    Buffer(wgpu::Buffer),
    /// An rgba32uint texture, one texel row per row of the tensor.
    Texels(wgpu::Texture),
}

/// Where the blobs of one tensor go.
struct TensorTargets {
    name: String,
    data: Vec<Target>,
    scales: Vec<Target>,
    data_row: u64,
    scale_row: u64,
}

/// Receives blob pieces and writes them to their buffers; [`WeightWriter::finish`] says
/// whether every byte of every blob arrived.
pub struct WeightWriter {
    queue: wgpu::Queue,
    tensors: HashMap<usize, TensorTargets>,
    /// Bytes still expected per blob.
    missing: HashMap<BlobId, u64>,
    /// Partly known words: (buffer id, word offset) → (buffer, bytes, which bytes are known).
    edges: HashMap<(usize, u64), (wgpu::Buffer, [u8; 4], u8)>,
    /// Buffers by the id used in `edges`.
    buffer_ids: HashMap<wgpu::Buffer, usize>,
    /// Partly known texel rows: (texture, row) → (bytes, how many are known).
    row_edges: HashMap<(wgpu::Texture, u32), (Vec<u8>, usize)>,
}

impl WeightWriter {
    pub(crate) fn new(queue: wgpu::Queue, manifest: &Manifest) -> Self {
        let mut missing = HashMap::new();
        for (t, entry) in manifest.tensors.iter().enumerate() {
            for (p, part) in entry.parts.iter().enumerate() {
                missing.insert(BlobId { tensor: t, part: p, scales: false }, part.data.len);
                if let Some(s) = part.scales {
                    missing.insert(BlobId { tensor: t, part: p, scales: true }, s.len);
                }
            }
        }
        WeightWriter { queue, tensors: HashMap::new(), missing, edges: HashMap::new(), buffer_ids: HashMap::new(), row_edges: HashMap::new() }
    }

    /// Registers the buffers of tensor `t` (rows of `data_row` and `scale_row` bytes).
    pub(crate) fn add_tensor(&mut self, t: usize, name: &str, data_row: usize, scale_row: usize, data: Vec<Target>, scales: Vec<Target>) {
        for target in data.iter().chain(&scales) {
            if let Dest::Buffer(buffer) = &target.dest {
                let next = self.buffer_ids.len();
                self.buffer_ids.entry(buffer.clone()).or_insert(next);
            }
        }
        let targets = TensorTargets { name: name.to_string(), data, scales, data_row: data_row as u64, scale_row: scale_row as u64 };
        self.tensors.insert(t, targets);
    }

    /// Writes `bytes`, found at `offset` inside `blob`, where they belong. Pieces of a blob
    /// may come in any order but must not overlap.
    pub fn write(&mut self, manifest: &Manifest, blob: BlobId, offset: u64, bytes: &[u8]) -> Result<()> {
        let entry = &manifest.tensors[blob.tensor];
        let Some(targets) = self.tensors.get(&blob.tensor) else {
            return Ok(()); // a tensor the model does not use
        };
        let left = self.missing.get_mut(&blob).ok_or_else(|| Error::ManifestInvalid { reason: format!("no blob {blob:?}") })?;
        *left = left.checked_sub(bytes.len() as u64).ok_or_else(|| Error::ManifestInvalid {
            reason: format!("`{}` received more bytes than the manifest gives it", targets.name),
        })?;
        let (row_bytes, list) = if blob.scales { (targets.scale_row, &targets.scales) } else { (targets.data_row, &targets.data) };
        // The piece's place in the whole tensor's bytes.
        let start = entry.parts[blob.part].rows[0] as u64 * row_bytes + offset;
        let end = start + bytes.len() as u64;
        let mut pieces = Vec::new();
        for target in list {
            let (b0, b1) = (target.row0 as u64 * row_bytes, (target.row0 + target.rows) as u64 * row_bytes);
            let (from, to) = (start.max(b0), end.min(b1));
            if from < to {
                pieces.push((target.dest.clone(), target.offset + from - b0, &bytes[(from - start) as usize..(to - start) as usize]));
            }
        }
        for (dest, at, piece) in pieces {
            match dest {
                Dest::Buffer(buffer) => self.write_words(&buffer, at, piece),
                Dest::Texels(texture) => self.write_rows(&texture, row_bytes, at, piece),
            }
        }
        Ok(())
    }

    /// Writes `bytes` at byte `at` of `texture`'s rows (`row_bytes` each): whole rows
    /// directly, cut rows via `row_edges`.
    fn write_rows(&mut self, texture: &wgpu::Texture, row_bytes: u64, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        let (mid0, mid1) = (at.next_multiple_of(row_bytes).min(end), end / row_bytes * row_bytes);
        if mid0 < mid1 {
            self.write_texels(texture, (mid0 / row_bytes) as u32, &bytes[(mid0 - at) as usize..(mid1 - at) as usize]);
        }
        for (from, to) in [(at, mid0.min(end)), (mid1.max(mid0), end)] {
            if from >= to {
                continue;
            }
            let row = from / row_bytes;
            let key = (texture.clone(), row as u32);
            let e = self.row_edges.entry(key.clone()).or_insert_with(|| (vec![0; row_bytes as usize], 0));
            let first = (from - row * row_bytes) as usize;
            e.0[first..first + (to - from) as usize].copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
            e.1 += (to - from) as usize;
            if e.1 == row_bytes as usize {
                let (row_data, _) = self.row_edges.remove(&key).expect("just inserted");
                self.write_texels(texture, row as u32, &row_data);
            }
        }
    }

    /// Whole texel rows from row `row` on.
    fn write_texels(&self, texture: &wgpu::Texture, row: u32, bytes: &[u8]) {
        let width = texture.width();
        let rows = (bytes.len() / (16 * width as usize)) as u32;
        self.queue.write_texture(
            wgpu::TexelCopyTextureInfo { texture, mip_level: 0, origin: wgpu::Origin3d { x: 0, y: row, z: 0 }, aspect: wgpu::TextureAspect::All },
            bytes,
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(16 * width), rows_per_image: None },
            wgpu::Extent3d { width, height: rows, depth_or_array_layers: 1 },
        );
    }

    /// Writes `bytes` at byte `at` of `buffer`: whole words directly, cut words via `edges`.
    fn write_words(&mut self, buffer: &wgpu::Buffer, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        let (mid0, mid1) = (at.next_multiple_of(4).min(end), end / 4 * 4);
        if mid0 < mid1 {
            self.queue.write_buffer(buffer, mid0, &bytes[(mid0 - at) as usize..(mid1 - at) as usize]);
        }
        let id = self.buffer_ids[buffer];
        let edge_bytes = (at..mid0.min(end)).chain(mid1.max(mid0)..end);
        for pos in edge_bytes {
            let word = pos / 4 * 4;
            let e = self.edges.entry((id, word)).or_insert_with(|| (buffer.clone(), [0; 4], 0));
            e.1[(pos - word) as usize] = bytes[(pos - at) as usize];
            e.2 |= 1 << (pos - word);
            if e.2 == 0b1111 {
                let (buffer, word_bytes, _) = self.edges.remove(&(id, word)).expect("just inserted");
                self.queue.write_buffer(&buffer, word, &word_bytes);
            }
        }
    }

    /// Flushes the words cut at the ends of blobs (zero-padded) and fails with
    /// [`Error::IncompleteModel`] if any tensor the model uses lacks bytes.
    pub fn finish(mut self) -> Result<()> {
        for ((_, word), (buffer, bytes, _)) in self.edges.drain() {
            self.queue.write_buffer(&buffer, word, &bytes);
        }
        for ((texture, row), (bytes, _)) in std::mem::take(&mut self.row_edges) {
            self.write_texels(&texture, row, &bytes);
        }
        let mut short: Vec<&str> = self
            .missing
            .iter()
            .filter(|(b, &n)| n > 0 && self.tensors.contains_key(&b.tensor))
            .map(|(b, _)| self.tensors[&b.tensor].name.as_str())
            .collect();
        short.sort_unstable();
        short.dedup();
        match short.first() {
            None => Ok(()),
            Some(first) => Err(Error::IncompleteModel { tensors: short.len(), first: first.to_string() }),
        }
    }
}
