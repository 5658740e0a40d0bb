//! Any bytes as a safetensors checkpoint: an error or tensors whose views are in bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = puyu::Checkpoint::from_bytes("fuzz.safetensors", data.to_vec()) {
        for name in ckpt.names() {
            let t = ckpt.tensor(name).unwrap();
            let _ = puyu::checkpoint::to_f32(t.dtype, t.data);
        }
    }
});
