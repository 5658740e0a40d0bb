//! What `--model` names: a bundled tiny model, a folder (puyu or HF), or an HF model id found
//! offline in the local Hugging Face hub cache. Nothing is ever downloaded.
//!
//! The hub cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a
//! model `org/name` lives in `models--org--name/snapshots/<commit>/`, the commit named by
//! `refs/main` (else the newest snapshot). HF folders are converted once into puyu's cache
//! (`$PUYU_CACHE`, else `$XDG_CACHE_HOME/puyu`, else `~/.cache/puyu`) and reused.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::quant::Quant;
use crate::tiny::TinySpec;

#[derive(Clone, Debug)]
pub enum Found {
    Tiny(TinySpec),
    /// A puyu model folder, an HF checkpoint folder, or (for tokenizers) a file.
    Path(PathBuf),
}

/// Resolves `model` in this order: a bundled tiny model, an existing path, an HF model id in
/// the hub cache.
pub fn find(model: &str) -> Result<Found> {
    if let Some(spec) = TinySpec::by_name(model) {
        return Ok(Found::Tiny(spec));
    }
    let path = PathBuf::from(model);
    if path.exists() {
        return Ok(Found::Path(path));
    }
    let hub = hub_cache();
    if let Some(snapshot) = hub_snapshot(&hub, model) {
        return Ok(Found::Path(snapshot));
    }
    let id_like = model.split('/').count() == 2 && !model.starts_with(['/', '.', '~']);
    let hint = if id_like {
        format!("puyu never downloads: fetch it with `huggingface-cli download {model}` (or `hf download {model}`), or give a folder")
    } else {
        "there is no such folder".to_string()
    };
    Err(Error::ModelNotFound { model: model.into(), looked_in: hub.display().to_string(), hint })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The Hugging Face hub cache folder, as huggingface_hub finds it.
pub fn hub_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("HF_HOME") {
        return PathBuf::from(dir).join("hub");
    }
    home().unwrap_or_default().join(".cache/huggingface/hub")
}

/// The snapshot folder of model `id` (`org/name`) in `hub`, if it is there with a config.
pub fn hub_snapshot(hub: &Path, id: &str) -> Option<PathBuf> {
    let (org, name) = id.split_once('/')?;
    if org.is_empty() || name.is_empty() || name.contains('/') || id.contains("..") {
        return None;
    }
    let repo = hub.join(format!("models--{org}--{name}"));
    let snapshots = repo.join("snapshots");
    let by_ref = std::fs::read_to_string(repo.join("refs/main")).ok().map(|c| snapshots.join(c.trim()));
    let newest = || {
        std::fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("config.json").is_file())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    };
    by_ref.filter(|p| p.join("config.json").is_file()).or_else(newest)
}

/// puyu's own cache folder.
pub fn puyu_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PUYU_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("puyu");
    }
    home().unwrap_or_default().join(".cache/puyu")
}

/// Where the conversion of HF folder `hf` to `quant` is kept: named after the folder, keyed
/// by its canonical path and its config.json's modification time (a changed checkpoint gets a
/// new conversion).
pub fn converted_dir(hf: &Path, quant: Quant) -> PathBuf {
    use sha2::{Digest, Sha256};
    let canonical = hf.canonicalize().unwrap_or_else(|_| hf.to_path_buf());
    let stamp = std::fs::metadata(hf.join("config.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut h = Sha256::new();
    h.update(canonical.to_string_lossy().as_bytes());
    h.update(stamp.to_le_bytes());
    let key: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    // Snapshot folders are commit hashes: name the model after its repo folder instead.
    let name = canonical
        .ancestors()
        .filter_map(|p| p.file_name()?.to_str())
        .find_map(|n| n.strip_prefix("models--"))
        .map(|n| n.replace("--", "_"))
        .or_else(|| canonical.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    puyu_cache().join("converted").join(format!("{name}-{quant}-{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_snapshots_by_ref_and_rejects_odd_ids() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--internlm--internlm2-chat-1_8b");
        for c in ["aaa", "bbb"] {
            std::fs::create_dir_all(repo.join("snapshots").join(c)).unwrap();
            std::fs::write(repo.join("snapshots").join(c).join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        let found = hub_snapshot(hub.path(), "internlm/internlm2-chat-1_8b").unwrap();
        assert!(found.ends_with("snapshots/aaa"), "{found:?}");
        assert_eq!(hub_snapshot(hub.path(), "internlm/other"), None);
        for odd in ["internlm", "/x", "a/b/c", "../x", "a/.."] {
            assert_eq!(hub_snapshot(hub.path(), odd), None, "{odd}");
        }
    }
}
