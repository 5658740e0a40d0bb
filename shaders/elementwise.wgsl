// Element-wise ops over flat f32 vectors.
//
// add:      out[i] = a[i] + b[i] for i < n (the kernel of the GPU smoke test that proves a
//           real driver runs our WGSL).
// silu_mul: out[i] = silu(a[i]) · b[i] (SwiGLU: a = gate = w1·x, b = up = w3·x).

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

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i < params.n) {
        let g = a[i];
        out[i] = g / (1.0 + exp(-g)) * b[i];
    }
}
