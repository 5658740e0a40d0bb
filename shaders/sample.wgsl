// Sampling on the GPU, so that a decode step reads back 4 bytes, not the logits.
//
// argmax: the index of the largest logit of row `row` (the first one on ties, as
// torch.argmax and the CPU sampler), by one workgroup: each lane scans a strided share,
// then a tree reduction over (value, index) pairs.

struct Params {
    vocab: u32,     // V
    row: u32,       // which row of logits
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;     // [rows, V]
@group(0) @binding(1) var<storage, read_write> out: array<u32>;  // [1]: the chosen id
@group(0) @binding(2) var<uniform> p: Params;

const LANES: u32 = 256u; // SwiftShader's limit of invocations per workgroup
var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) lane: u32) {
    let base = p.row * p.vocab;
    var v = -3.4e38;
    var idx = 0xffffffffu;
    for (var i = lane; i < p.vocab; i += LANES) {
        let x = logits[base + i];
        if (x > v) { // strictly greater: the lane keeps its first maximum
            v = x;
            idx = i;
        }
    }
    best_v[lane] = v;
    best_i[lane] = idx;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            let ov = best_v[lane + stride];
            let oi = best_i[lane + stride];
            if (ov > best_v[lane] || (ov == best_v[lane] && oi < best_i[lane])) {
                best_v[lane] = ov;
                best_i[lane] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        out[0] = best_i[0];
    }
}
