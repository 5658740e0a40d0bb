// Matrix products with quantized weights: y[t, o] = Σ_k x[t, k] · W[o, k]  (y = x·Wᵀ).
// Two schedules: by default one workgroup per (output row o, token t), whose 64 lanes split k
// and then reduce; with ROW_PER_LANE each lane computes a whole row, 64 rows per workgroup
// (better when K is short: the tiny models, and CPU drivers such as lavapipe).
// W may be one of several row blocks of a matrix too big for one binding: this dispatch
// computes rows [row0, row0 + rows) of y, whose rows are `total` long.
// Variants (preprocessor): Q4 | Q8 | F16 weights (see crate/src/quant.rs for the packing);
// ADD accumulates into y (the residual add fused into the epilogue).

struct Params {
    rows: u32,      // rows of this block of W
    cols: u32,      // input features K (W cols), a multiple of 32
    tokens: u32,    // T
    total: u32,     // output features (rows of the whole W; the row length of y)
    row0: u32,      // first row of this block
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;            // [T, K]
@group(0) @binding(1) var<storage, read> w: array<u32>;            // packed [rows, K]
@group(0) @binding(2) var<storage, read> scales: array<u32>;       // f16 pairs [rows, K/32] (Q4, Q8)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // [T, total]
@group(0) @binding(4) var<uniform> p: Params;

const LANES: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

fn scale(row: u32, group: u32) -> f32 {
    let i = row * (p.cols / 32u) + group;
    return unpack2x16float(scales[i / 2u] >> (16u * (i % 2u))).x;
}

// Σ over this lane's share of row `row` against token t's input: words lane, lane + stride, …
fn dot_words(row: u32, t: u32, lane: u32, stride: u32) -> f32 {
    let xb = t * p.cols;
    var acc = 0.0;
#if Q4
    // 8 weights per word, nibble i = weight 8·word + i, value (q − 8)·scale.
    let words = p.cols / 8u;
    for (var wi = lane; wi < words; wi += stride) {
        let word = w[row * words + wi];
        let d = scale(row, wi / 4u);
        let k = xb + wi * 8u;
        var s = 0.0;
        for (var i = 0u; i < 8u; i++) {
            s += (f32((word >> (4u * i)) & 15u) - 8.0) * x[k + i];
        }
        acc += s * d;
    }
#endif
#if Q8
    // 4 signed bytes per word, value q·scale.
    let words = p.cols / 4u;
    for (var wi = lane; wi < words; wi += stride) {
        let word = i32(w[row * words + wi]);
        let d = scale(row, wi / 8u);
        let k = xb + wi * 4u;
        var s = 0.0;
        for (var i = 0u; i < 4u; i++) {
            s += f32(extractBits(word, 8u * i, 8u)) * x[k + i];
        }
        acc += s * d;
    }
#endif
#if F16
    let words = p.cols / 2u;
    for (var wi = lane; wi < words; wi += stride) {
        let v = unpack2x16float(w[row * words + wi]);
        let k = xb + wi * 2u;
        acc += v.x * x[k] + v.y * x[k + 1u];
    }
#endif
    return acc;
}

#if ROW_PER_LANE
@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let row = (wg.x + wg.y * 65535u) * LANES + lane;
    let t = wg.z;
    if (row >= p.rows) {
        return;
    }
    let acc = dot_words(row, t, 0u, 1u);
    let at = t * p.total + p.row0 + row;
#if ADD
    y[at] += acc;
#else
    y[at] = acc;
#endif
}
#else
@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    // Rows beyond 65535 workgroups continue in wg.y.
    let row = wg.x + wg.y * 65535u;
    let t = wg.z;
    if (row >= p.rows) {
        return; // uniform across the workgroup
    }
    partial[lane] = dot_words(row, t, lane, LANES);
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        let at = t * p.total + p.row0 + row;
#if ADD
        y[at] += partial[0];
#else
        y[at] = partial[0];
#endif
    }
}
#endif
