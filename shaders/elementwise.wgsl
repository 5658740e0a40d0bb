// Element-wise ops over flat f32 vectors.
//
// add:      out[i] = a[i] + b[i] for i < n (the kernel of the GPU smoke test that proves a
//           real driver runs our WGSL).
// (SwiGLU is fused into the gate/up matrix product: matmul.wgsl, GLU.)

struct Params {
    n: u32,          // number of elements
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;        // [n]
@group(0) @binding(1) var<storage, read> b: array<f32>;        // [n]
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // [n]
@group(0) @binding(3) var<uniform> params: Params;

// 64 lanes: fits every adapter (SwiftShader allows 256 invocations) and is fast on lavapipe.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < params.n) {
        out[i] = a[i] + b[i];
    }
}
