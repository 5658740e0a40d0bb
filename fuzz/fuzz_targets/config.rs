//! Any text as config.json: an error or a config whose derived sizes are consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = puyu::ModelConfig::from_json_str(text) {
            assert_eq!(c.head_dim * c.num_heads, c.hidden_size);
            assert_eq!(c.num_heads % c.num_kv_heads, 0);
        }
    }
});
