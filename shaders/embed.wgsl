// Embedding lookup from quantized rows: out[t, i] = dequant(E[token[t], i]).
// E may be one of several row blocks (rows [row0, row0 + rows)); tokens outside it are left
// to the dispatches of the other blocks.
// Variants: Q4 | Q8 | F16 (packing as in crate/src/quant.rs).

struct Params {
    dim: u32,       // H (a multiple of 32)
    tokens: u32,    // T
    row0: u32,      // first vocabulary row in this block
    rows: u32,      // rows in this block
}

@group(0) @binding(0) var<storage, read> tokens: array<u32>;     // [T]
@group(0) @binding(1) var<storage, read> e: array<u32>;          // packed [rows, H]
@group(0) @binding(2) var<storage, read> scales: array<u32>;     // f16 pairs [rows, H/32]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [T, H]
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.dim || t >= p.tokens) {
        return;
    }
    let token = tokens[t];
    if (token < p.row0 || token >= p.row0 + p.rows) {
        return;
    }
    let row = token - p.row0;
#if Q4
    let word = e[row * (p.dim / 8u) + i / 8u];
    let s = row * (p.dim / 32u) + i / 32u;
    let d = unpack2x16float(scales[s / 2u] >> (16u * (s % 2u))).x;
    out[t * p.dim + i] = (f32((word >> (4u * (i % 8u))) & 15u) - 8.0) * d;
#endif
#if Q8
    let word = i32(e[row * (p.dim / 4u) + i / 4u]);
    let s = row * (p.dim / 32u) + i / 32u;
    let d = unpack2x16float(scales[s / 2u] >> (16u * (s % 2u))).x;
    out[t * p.dim + i] = f32(extractBits(word, 8u * (i % 4u), 8u)) * d;
#endif
#if F16
    out[t * p.dim + i] = unpack2x16float(e[(row * p.dim + i) / 2u] >> (16u * (i % 2u))).x;
#endif
}
