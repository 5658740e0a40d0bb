//! Proves that a real GPU driver runs our WGSL: the `add` kernel of elementwise.wgsl on the
//! first adapter wgpu finds (lavapipe in CI), checked against the CPU.
//!
//! There is no skip: without an adapter this test fails, with the error that says which
//! driver to install. CI installs lavapipe (mesa-vulkan-drivers).

#[test]
fn add_kernel_runs_on_a_real_adapter() {
    let gpu = pollster::block_on(puyu::gpu::Gpu::new(wgpu::Backends::all()))
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    eprintln!(
        "adapter: {} ({:?}, {:?})",
        gpu.adapter_info.name, gpu.adapter_info.backend, gpu.adapter_info.device_type
    );
    // 1000 elements: not a multiple of the 64-lane workgroup, so the bounds check matters.
    let a: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..1000).map(|i| 1.0 - (i as f32).sqrt()).collect();
    let got = pollster::block_on(gpu.add(&a, &b)).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    // One IEEE addition on each side: the results are bit-identical.
    assert_eq!(got, want);
}
