//! Every WGSL variant (each source with each set of defines the engine uses) parses and
//! validates with naga, with no GPU (as wgpu's own `naga/tests` do), so a shader error fails
//! plain `cargo test` on any machine.

use puyu::gpu::{preprocess::preprocess, shaders};

#[test]
fn every_shader_variant_validates() {
    for (name, source, defines) in shaders::variants() {
        let code = preprocess(source, &defines).unwrap_or_else(|e| panic!("{name} {defines:?}: {e}"));
        let module = naga::front::wgsl::parse_str(&code)
            .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&code)));
        // Only what every WebGPU device has (naga files core WGSL's unpack2x16float under
        // SHADER_FLOAT16_IN_FLOAT32), plus exactly the feature a variant is for.
        use naga::valid::Capabilities as C;
        let mut caps = C::SHADER_FLOAT16_IN_FLOAT32;
        caps.set(C::SHADER_FLOAT16, defines.contains(&"KV_F16"));
        caps.set(C::SUBGROUP, defines.contains(&"SUBGROUPS"));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} {defines:?}: {}", e.emit_to_string(&code)));
    }
}

/// The shaders folder and the variant list name the same files.
#[test]
fn every_file_in_shaders_is_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = shaders::variants().iter().map(|(n, _, _)| n.to_string()).collect();
    listed.sort();
    listed.dedup();
    assert_eq!(on_disk, listed);
}
