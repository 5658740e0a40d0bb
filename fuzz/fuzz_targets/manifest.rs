//! Any text as manifest.json, checked against a tiny config and arbitrary shard sizes: an
//! error or a manifest whose blobs all lie inside their shards.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(manifest) = puyu::model_dir::Manifest::from_json(text) else { return };
    let sizes: Vec<u64> = (0..manifest.shards.len()).map(|i| (n as u64 + 1) << (i % 24)).collect();
    let config = puyu::tiny::TINY.config();
    if manifest.validate(&config, &sizes).is_ok() {
        for s in 0..manifest.shards.len() {
            for (_, span) in manifest.blobs_in(s) {
                assert!(span.offset + span.len <= sizes[s]);
            }
        }
    }
});
