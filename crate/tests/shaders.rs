//! Every WGSL source parses and validates with naga, with no GPU (as wgpu's own
//! `naga/tests` do), so a shader error fails plain `cargo test` on any machine.

#[test]
fn every_shader_validates() {
    assert!(!puyu::gpu::shaders::ALL.is_empty());
    for (name, source) in puyu::gpu::shaders::ALL {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    }
}

/// The shaders folder and the list compiled into the crate name the same files.
#[test]
fn every_file_in_shaders_is_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = puyu::gpu::shaders::ALL.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
