//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use puyu::checkpoint::TensorView;
use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;

/// The repository root (tests run with the crate folder as working directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A golden fixture made by tools/reference_dump.py.
pub struct Golden {
    pub bytes: Vec<u8>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = repo_root().join("tests/fixtures").join(format!("golden-{name}.safetensors"));
        Golden {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap()
    }

    pub fn metadata(&self, key: &str) -> String {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
        meta.metadata().as_ref().unwrap()[key].clone()
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.st().tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (t.shape().to_vec(), v)
    }

    pub fn ids(&self, name: &str) -> (Vec<usize>, Vec<u32>) {
        let t = self.st().tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I32, "{name}");
        let v = t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect();
        (t.shape().to_vec(), v)
    }
}

/// Rewrites a safetensors file tensor by tensor: `edit` gets each (name, view) and returns
/// what to write instead (None drops the tensor).
pub fn rewrite(
    bytes: &[u8],
    mut edit: impl FnMut(&str, &TensorView) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let ckpt = puyu::Checkpoint::from_bytes("in", bytes.to_vec()).unwrap();
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in ckpt.names() {
        let t = ckpt.tensor(name).unwrap();
        if let Some((d, s, b)) = edit(name, &t) {
            out.push((name.to_string(), d, s, b));
        }
    }
    let views: Vec<(String, StView)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), StView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Keeps a tensor as it is.
pub fn keep(t: &TensorView) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
    Some((t.dtype, t.shape.to_vec(), t.data.to_vec()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
