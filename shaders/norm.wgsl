// RMSNorm: out[t, i] = w[i] · x[t, i] / sqrt(mean_i(x[t, i]²) + eps). One workgroup per token.

struct Params {
    dim: u32,       // H
    tokens: u32,    // T
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [T, H]
@group(0) @binding(1) var<storage, read> w: array<f32>;          // [H]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [T, H]
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = wg.x * p.dim;
    var s = 0.0;
    for (var i = lane; i < p.dim; i += 64u) {
        s += x[base + i] * x[base + i];
    }
    partial[lane] = s;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    for (var i = lane; i < p.dim; i += 64u) {
        out[base + i] = w[i] * (x[base + i] * inv);
    }
}
