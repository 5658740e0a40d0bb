//! `puyu convert`: an HF InternLM2 checkpoint → a puyu model folder (see [`crate::model_dir`]).
//!
//! Memory stays bounded whatever the model size: the input is memory-mapped and each blob is
//! produced from a few rows at a time (about 1 MiB of f32) straight into its shard file. The
//! folder is written under a temporary name beside the target and renamed only once complete,
//! so a failed conversion never leaves a folder that looks usable.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checkpoint::{to_f32, Checkpoint, WeightSource};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model_dir::{expected_tensors, hex, matrix_dims, plan, storage_quant, Manifest, MAX_SHARD_BYTES};
use crate::quant::Quant;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub quant: Quant,
    pub max_shard_bytes: u64,
    /// Replace a non-empty output folder.
    pub force: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { quant: Quant::Q4, max_shard_bytes: MAX_SHARD_BYTES, force: false }
    }
}

/// Rows converted per step: about 1 MiB of f32.
const BLOCK_BYTES: usize = 1 << 20;

/// Converts `hf_dir` into `out_dir`; `progress(done, total)` counts bytes written.
pub fn convert(
    hf_dir: &Path,
    out_dir: &Path,
    options: &ConvertOptions,
    progress: impl FnMut(u64, u64),
) -> Result<Manifest> {
    let config_path = hf_dir.join("config.json");
    let config_text = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config = ModelConfig::from_file(&config_path)?;
    let ckpt = Checkpoint::open_dir(hf_dir)?;
    let tokenizer = open_tokenizer(hf_dir)?;
    // Kept beside tokenizer.json: the browser builds its tokenizer from it in less than half
    // the memory (see pkg/loader.js).
    let sp_path = hf_dir.join("tokenizer.model");
    let sentencepiece = if sp_path.is_file() { Some(std::fs::read(&sp_path).map_err(|e| Error::io(&sp_path, e))?) } else { None };
    check_output(out_dir, options)?;

    // Every tensor checked before a byte is written.
    let mut sources = Vec::new();
    for (name, shape) in expected_tensors(&config) {
        let source = if name == "output.weight" && config.tie_word_embeddings && !ckpt.contains("output.weight") {
            "model.tok_embeddings.weight".to_string()
        } else {
            name.clone()
        };
        let t = ckpt.tensor(&source)?;
        if t.shape != shape.as_slice() {
            return Err(Error::WrongShape { name, expected: shape, actual: t.shape.to_vec() });
        }
        if to_f32(t.dtype, &[]).is_none() {
            return Err(Error::WrongDtype { name, dtype: format!("{:?}", t.dtype) });
        }
        sources.push(source);
    }
    let rows = |tensor: usize, rows: std::ops::Range<usize>, cols: usize| -> Result<Vec<f32>> {
        let src = ckpt.tensor(&sources[tensor])?;
        let elem = src.data.len() / (src.shape.iter().product::<usize>()).max(1);
        let bytes = rows.start * cols * elem..rows.end * cols * elem;
        let x = to_f32(src.dtype, &src.data[bytes.clone()]).expect("dtype checked");
        ckpt.release(&sources[tensor], bytes);
        Ok(x)
    };
    write_model(&config, &config_text, &tokenizer, sentencepiece.as_deref(), out_dir, options, rows, progress)
}

/// Writes a random-weight model with the real shapes of `spec` (1_8b, 7b, 20b) straight into
/// a puyu folder, for speed and memory measurements without real weights (never commit
/// them). The values are the bf16 values `TinySpec::write_hf_sharded` draws from the same
/// distributions, from a stream seeded per block of rows.
pub fn write_random(spec: &crate::tiny::TinySpec, out_dir: &Path, options: &ConvertOptions, progress: impl FnMut(u64, u64)) -> Result<Manifest> {
    check_output(out_dir, options)?;
    let config_text = spec.config_json();
    let config = ModelConfig::from_json_str(&config_text)?;
    let tokenizer = Tokenizer::from_sentencepiece(crate::tiny::TOKENIZER_MODEL)?;
    let draws = spec.draws();
    let names: Vec<String> = expected_tensors(&config).into_iter().map(|(n, _)| n).collect();
    let rows = |tensor: usize, rows: std::ops::Range<usize>, cols: usize| {
        let name = &names[tensor];
        let &(t, centre, spread) = draws.get(name).ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
        Ok(crate::tiny::random_rows(spec.seed, t, centre, spread, rows, cols))
    };
    write_model(&config, config_text.as_bytes(), &tokenizer, Some(crate::tiny::TOKENIZER_MODEL), out_dir, options, rows, progress)
}

fn check_output(out_dir: &Path, options: &ConvertOptions) -> Result<()> {
    if out_dir.exists() && !options.force && !is_empty_dir(out_dir)? {
        return Err(Error::OutputExists { dir: out_dir.display().to_string() });
    }
    Ok(())
}

/// Plans and writes a model folder: `rows(tensor, rows, cols)` gives rows of tensor number
/// `tensor` (in [`expected_tensors`] order) as f32. `sentencepiece`: the tokenizer.model
/// the tokenizer came from, copied beside tokenizer.json.
#[allow(clippy::too_many_arguments)]
fn write_model(
    config: &ModelConfig,
    config_text: &[u8],
    tokenizer: &Tokenizer,
    sentencepiece: Option<&[u8]>,
    out_dir: &Path,
    options: &ConvertOptions,
    rows: impl Fn(usize, std::ops::Range<usize>, usize) -> Result<Vec<f32>> + Sync,
    mut progress: impl FnMut(u64, u64),
) -> Result<Manifest> {
    let tensors: Vec<_> = expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let quant = storage_quant(&shape, options.quant);
            (name, shape, quant)
        })
        .collect();
    let (mut manifest, plans) = plan(&tensors, options.quant, config, options.max_shard_bytes)?;

    let tmp = temp_sibling(out_dir)?;
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let total: u64 = plans.iter().map(|p| p.size).sum();
        let mut done = 0u64;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (s, shard) in plans.iter().enumerate() {
            let path = tmp.join(&manifest.shards[s].file);
            let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut out = HashingWriter { inner: std::io::BufWriter::new(file), hash: Sha256::new(), path: &path };
            out.write(&shard.header)?;
            for blob in &shard.blobs {
                let entry = &manifest.tensors[blob.tensor];
                let part = &entry.parts[blob.part];
                let (_, cols) = matrix_dims(&entry.shape);
                let block_rows = (BLOCK_BYTES / (cols * 4)).max(1);
                // Blocks are read (or drawn) and quantized on every core, a batch at a time,
                // and written in order.
                let block = |row: usize| -> Result<Vec<u8>> {
                    let x = rows(blob.tensor, row..part.rows[1].min(row + block_rows), cols)?;
                    let (mut data, mut scales) = (Vec::new(), Vec::new());
                    entry.quant.quantize(&x, cols, &mut data, &mut scales);
                    Ok(if blob.scales { scales } else { data })
                };
                let starts: Vec<usize> = (part.rows[0]..part.rows[1]).step_by(block_rows).collect();
                for batch in starts.chunks(threads) {
                    let blocks: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
                        let workers: Vec<_> = batch.iter().map(|&row| s.spawn(move || block(row))).collect();
                        workers.into_iter().map(|w| w.join().expect("a conversion worker panicked")).collect()
                    });
                    for bytes in blocks {
                        let bytes = bytes?;
                        out.write(&bytes)?;
                        done += bytes.len() as u64;
                        progress(done, total);
                    }
                }
            }
            manifest.shards[s].sha256 = out.finish()?;
        }
        let write = |name: &str, bytes: &[u8]| {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
        };
        write("config.json", config_text)?;
        write("tokenizer.json", tokenizer.to_json()?.as_bytes())?;
        if let Some(bytes) = sentencepiece {
            write("tokenizer.model", bytes)?;
        }
        let json = serde_json::to_string_pretty(&manifest).expect("serialisable");
        write("manifest.json", json.as_bytes())?;
        if out_dir.exists() {
            std::fs::remove_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        }
        std::fs::rename(&tmp, out_dir).map_err(|e| Error::io(out_dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| manifest)
}

fn open_tokenizer(dir: &Path) -> Result<Tokenizer> {
    if dir.join("tokenizer.json").is_file() || dir.join("tokenizer.model").is_file() {
        Tokenizer::open(dir)
    } else {
        Err(Error::MissingTokenizer { dir: dir.display().to_string() })
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries.next().is_none())
}

/// `.NAME.partial-PID` beside `out_dir`: same file system, so the final rename is atomic.
fn temp_sibling(out_dir: &Path) -> Result<PathBuf> {
    let name = out_dir
        .file_name()
        .ok_or_else(|| Error::io(out_dir, std::io::Error::other("the output must be a folder name")))?;
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id())))
}

struct HashingWriter<'a> {
    inner: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    path: &'a Path,
}

impl HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes).map_err(|e| Error::io(self.path, e))
    }

    fn finish(mut self) -> Result<String> {
        self.inner.flush().map_err(|e| Error::io(self.path, e))?;
        Ok(hex(&self.hash.finalize()))
    }
}
