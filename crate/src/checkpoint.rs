//! Reading HF checkpoints: safetensors files in BF16, F16 or F32, one file or sharded with
//! `model.safetensors.index.json`. Natively the files are memory-mapped, so opening a 15 GB
//! checkpoint costs nothing until a tensor is read; in wasm a checkpoint comes from bytes.
//!
//! Every size in a header is checked against the file before use (safetensors validates
//! offsets, overlaps and gaps; we add the truncation check so that its error names the file).

use std::collections::HashMap;
use std::ops::Deref;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Where a model's weights come from, by HF tensor name, as f32. The CPU reference reads
/// through this, so HF checkpoints and (later) quantized puyu folders serve it alike.
pub trait WeightSource {
    /// The tensor `name`, checked to have exactly `shape`, converted to f32 (row-major).
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
}

/// The bytes of one file: a memory map natively, or an owned buffer.
enum Bytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(m) => m,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

struct File {
    name: String,
    bytes: Bytes,
}

/// A borrowed view of one tensor's raw bytes.
#[derive(Debug)]
pub struct TensorView<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// An opened checkpoint: the tensors of all its files, by name.
pub struct Checkpoint {
    files: Vec<File>,
    entries: HashMap<String, Entry>,
}

impl Checkpoint {
    /// A single safetensors file held in memory (the wasm path, and generated test models).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        let mut ckpt = Checkpoint {
            files: Vec::new(),
            entries: HashMap::new(),
        };
        ckpt.add_file(name.to_string(), Bytes::Owned(bytes))?;
        Ok(ckpt)
    }

    /// Opens the weights of an HF folder: `model.safetensors.index.json` if present, else
    /// `model.safetensors`, else every `*.safetensors` in the folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let mut ckpt = Checkpoint {
            files: Vec::new(),
            entries: HashMap::new(),
        };
        if index.exists() {
            let weight_map = read_index(&index)?;
            let mut shard_names: Vec<&String> = weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            for shard in shard_names {
                ckpt.add_file(shard.clone(), map_file(&dir.join(shard))?)?;
            }
            // Every tensor the index promises must be in the shard it names.
            for (tensor, shard) in &weight_map {
                match ckpt.entries.get(tensor) {
                    Some(e) if &ckpt.files[e.file].name == shard => {}
                    Some(_) | None => {
                        return Err(Error::ShardIndex {
                            file: index.display().to_string(),
                            reason: format!("tensor `{tensor}` is not in shard {shard}"),
                        })
                    }
                }
            }
        } else if dir.join("model.safetensors").exists() {
            let path = dir.join("model.safetensors");
            ckpt.add_file("model.safetensors".into(), map_file(&path)?)?;
        } else {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            if names.is_empty() {
                return Err(Error::NoWeights {
                    dir: dir.display().to_string(),
                });
            }
            names.sort();
            for name in names {
                let bytes = map_file(&dir.join(&name))?;
                ckpt.add_file(name, bytes)?;
            }
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, name: String, bytes: Bytes) -> Result<()> {
        check_not_truncated(&name, &bytes)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::SafetensorsFormat {
                file: name.clone(),
                reason: e.to_string(),
            })?;
        let data_start = 8 + header_len;
        let file = self.files.len();
        for (tensor, info) in metadata.tensors() {
            if self.entries.contains_key(&tensor) {
                return Err(Error::SafetensorsFormat {
                    file: name.clone(),
                    reason: format!("tensor `{tensor}` also appears in another file"),
                });
            }
            let (start, end) = info.data_offsets;
            self.entries.insert(
                tensor,
                Entry {
                    file,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + start,
                    end: data_start + end,
                },
            );
        }
        self.files.push(File { name, bytes });
        Ok(())
    }

    /// The files the tensors come from, in load order.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.name.as_str())
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Tells the OS that bytes `range` of tensor `name` will not be read again soon, so their
    /// mapped pages stop counting towards this process's memory (they are read back from the
    /// file if touched). Lets `convert` stream a checkpoint larger than RAM. A no-op for
    /// checkpoints held in memory.
    pub fn release(&self, name: &str, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Some(e) = self.entries.get(name) {
            if let Bytes::Mapped(map) = &self.files[e.file].bytes {
                let start = e.start + range.start.min(e.end - e.start);
                let len = range.len().min(e.end - start);
                // SAFETY: a read-only file mapping: MADV_DONTNEED drops the pages, and a later
                // read faults the same bytes back in from the file.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
            }
        }
        #[cfg(not(unix))]
        let _ = (name, range);
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })?;
        Ok(TensorView {
            dtype: e.dtype,
            shape: &e.shape,
            data: &self.files[e.file].bytes[e.start..e.end],
        })
    }
}

impl WeightSource for Checkpoint {
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(Error::WrongShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.shape.to_vec(),
            });
        }
        to_f32(t.dtype, t.data).ok_or_else(|| Error::WrongDtype {
            name: name.to_string(),
            dtype: format!("{:?}", t.dtype),
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Little-endian BF16/F16/F32 bytes to f32; `None` for any other dtype.
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// A file shorter than its header says gets a [`Error::TruncatedFile`] naming both sizes,
/// rather than safetensors' generic "incomplete buffer".
fn check_not_truncated(name: &str, bytes: &[u8]) -> Result<()> {
    let actual = bytes.len() as u64;
    let truncated = |expected| Error::TruncatedFile {
        file: name.to_string(),
        expected,
        actual,
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(truncated(8));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    // safetensors caps headers at 100 MB; a larger claim is corruption, not truncation.
    if header_len > 100_000_000 {
        return Err(Error::SafetensorsFormat {
            file: name.to_string(),
            reason: format!("header length {header_len} is implausible"),
        });
    }
    let header_end = 8 + header_len;
    let Some(header) = bytes.get(8..header_end as usize) else {
        return Err(truncated(header_end));
    };
    // The largest end offset in the header is where the data must end.
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header)
    else {
        return Ok(()); // not our concern: read_metadata reports the malformed header
    };
    let data_end = map
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    match header_end.checked_add(data_end) {
        Some(expected) if expected > actual => Err(truncated(expected)),
        _ => Ok(()),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn map_file(path: &std::path::Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a checkpoint modified while we run is undefined
    // behaviour in every runtime that maps weights (llama.cpp, candle, safetensors).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::Mapped(map))
}

#[cfg(not(target_arch = "wasm32"))]
fn read_index(path: &std::path::Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::ShardIndex {
        file: path.display().to_string(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    map.iter()
        .map(|(tensor, shard)| {
            let shard = shard
                .as_str()
                .filter(|s| !s.contains('/') && !s.contains('\\') && s.ends_with(".safetensors"))
                .ok_or_else(|| bad(format!("`{tensor}` maps to {shard}, not a shard file name")))?;
            Ok((tensor.clone(), shard.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView as StView;

    fn file_with(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, StView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), StView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn reads_all_three_float_dtypes() {
        let vals = [1.5f32, -2.25, 0.0, 3.0e-3];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
        let bytes = file_with(&[
            ("a", Dtype::F32, vec![2, 2], f32b),
            ("b", Dtype::F16, vec![4], f16b),
            ("c", Dtype::BF16, vec![4], bf16b),
            ("d", Dtype::I32, vec![1], vec![0; 4]),
        ]);
        let ckpt = Checkpoint::from_bytes("t.safetensors", bytes).unwrap();
        assert_eq!(ckpt.f32_tensor("a", &[2, 2]).unwrap(), vals);
        for (name, tol) in [("b", 1e-3), ("c", 1e-2)] {
            let got = ckpt.f32_tensor(name, &[4]).unwrap();
            for (g, v) in got.iter().zip(vals) {
                assert!((g - v).abs() <= tol * v.abs().max(1e-3), "{name}: {g} vs {v}");
            }
        }
        assert!(matches!(ckpt.f32_tensor("a", &[4]), Err(Error::WrongShape { name, .. }) if name == "a"));
        assert!(matches!(ckpt.f32_tensor("d", &[1]), Err(Error::WrongDtype { name, .. }) if name == "d"));
        assert!(matches!(ckpt.f32_tensor("zz", &[1]), Err(Error::MissingTensor { name }) if name == "zz"));
    }

    #[test]
    fn truncation_and_garbage_are_named() {
        let bytes = file_with(&[("a", Dtype::F32, vec![16], vec![0; 64])]);
        for cut in [0, 5, 8, 20, bytes.len() - 1] {
            let err = Checkpoint::from_bytes("x.safetensors", bytes[..cut].to_vec())
                .err()
                .unwrap_or_else(|| panic!("cut at {cut} accepted"));
            assert!(matches!(err, Error::TruncatedFile { .. }), "cut {cut}: {err}");
        }
        let mut garbage = bytes.clone();
        garbage[8] = b'!';
        assert!(matches!(
            Checkpoint::from_bytes("x.safetensors", garbage),
            Err(Error::SafetensorsFormat { .. })
        ));
        let huge = u64::MAX.to_le_bytes().to_vec();
        assert!(matches!(
            Checkpoint::from_bytes("x.safetensors", huge),
            Err(Error::SafetensorsFormat { .. })
        ));
    }

    /// Random corruptions of a valid file never panic: each gives a tensor set or an error.
    /// (fuzz/fuzz_targets/checkpoint.rs explores this further with cargo-fuzz.)
    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = file_with(&[
            ("a", Dtype::F32, vec![3, 4], vec![1; 48]),
            ("b", Dtype::BF16, vec![5], vec![2; 10]),
        ]);
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            if next() % 4 == 0 {
                b.truncate((next() % b.len() as u64) as usize);
            }
            if let Ok(ckpt) = Checkpoint::from_bytes("fuzz", b) {
                for name in ckpt.names() {
                    let t = ckpt.tensor(name).unwrap();
                    let _ = to_f32(t.dtype, t.data);
                }
            }
        }
    }
}
