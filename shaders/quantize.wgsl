// Activations to 8-bit integers for the integer q4 products (matmul.wgsl with XQ8):
//
//   for each token t and block b of 32 values of x[t], with m = max |x| over the block:
//     d = m · f32(1/127),  q_i = round(x_i · 127 / m) ∈ [−127, 127] (ties to even),
//     s = Σ q_i  (the product subtracts 8·s for the q4 offset instead of per weight).
//   A block whose m is zero or subnormal is all zeros (d = 0).
//
// q is computed exactly, in integers on the floats' significands: a float reciprocal is only
// accurate to 2.5 ulps in WGSL and would move values that sit at rounding ties differently
// on different drivers; this way every driver, and the CPU twin (crate/src/quant.rs,
// `quantize_activations`), gets the same bytes.
//
// Each block is 3 vec4<u32> (48 bytes for 128 of f32): q packed 4 to a word in the order the
// q4 words' nibbles come out of `w & 0x0F0F0F0F` and `(w >> 4) & 0x0F0F0F0F` — for values
// 8j … 8j+7, word 2j holds values 8j, 8j+2, 8j+4, 8j+6 and word 2j+1 the odd ones —, then
// (d, s as f32, 0, 0).

struct Params {
    cols: u32,    // K, a multiple of 32
    tokens: u32,  // T
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;        // [T, K]
@group(0) @binding(1) var<storage, read_write> xq: array<vec4<u32>>; // [T, K/32, 3]
@group(0) @binding(2) var<uniform> p: Params;

// round(v · 127 / m), exactly, for |v| ≤ m and m normal (`mb`: the bits of m).
fn level(v: f32, mb: u32) -> i32 {
    let b = bitcast<u32>(v);
    let e = (b >> 23u) & 0xffu;
    let shift = ((mb >> 23u) & 0xffu) - e; // ≥ 0 as |v| ≤ m
    // Zero or subnormal v, or |v| < m / 256 (so that |v| · 127 / m < 0.5): level 0.
    if (e == 0u || shift > 8u) {
        return 0;
    }
    // |v| · 127 / m = (mv · 127) / (mm · 2^shift) on the significands (24 bits each).
    let num = ((b & 0x7fffffu) | 0x800000u) * 127u;       // < 2^31
    let den = ((mb & 0x7fffffu) | 0x800000u) << shift;    // < 2^32
    var q = num / den;
    let rem = num - q * den;
    // Round half to even; rem vs den − rem compares 2·rem with den without overflow.
    if (rem > den - rem || (rem == den - rem && (q & 1u) == 1u)) {
        q += 1u;
    }
    return select(i32(q), -i32(q), (b >> 31u) == 1u);
}

// The byte of level l (two's complement, low 8 bits).
fn byte(l: i32) -> u32 {
    return u32(l) & 0xffu;
}

// x: block of 64 · 32 values, y: token. One lane per 32-value block.
@compute @workgroup_size(64)
fn quantize(@builtin(global_invocation_id) id: vec3<u32>) {
    let blocks = p.cols / 32u;
    let b = id.x;
    let t = id.y;
    if (b >= blocks || t >= p.tokens) {
        return;
    }
    let at = t * (p.cols / 4u) + b * 8u;
    var m = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let v = abs(x[at + j]);
        m = max(m, max(max(v.x, v.y), max(v.z, v.w)));
    }
    let mb = bitcast<u32>(m);
    let normal = ((mb >> 23u) & 0xffu) != 0u;
    let out = (t * blocks + b) * 3u;
    var sum = 0;
    var words = array<u32, 8>();
    if (normal) {
        for (var j = 0u; j < 4u; j++) {
            let a = x[at + 2u * j];      // values 8j … 8j+3
            let c = x[at + 2u * j + 1u]; // values 8j+4 … 8j+7
            let even = vec4<i32>(level(a.x, mb), level(a.z, mb), level(c.x, mb), level(c.z, mb));
            let odd = vec4<i32>(level(a.y, mb), level(a.w, mb), level(c.y, mb), level(c.w, mb));
            words[2u * j] = byte(even.x) | (byte(even.y) << 8u) | (byte(even.z) << 16u) | (byte(even.w) << 24u);
            words[2u * j + 1u] = byte(odd.x) | (byte(odd.y) << 8u) | (byte(odd.z) << 16u) | (byte(odd.w) << 24u);
            sum += even.x + even.y + even.z + even.w + odd.x + odd.y + odd.z + odd.w;
        }
    }
    let d = select(0.0, m * (1.0 / 127.0), normal);
    xq[out] = vec4<u32>(words[0], words[1], words[2], words[3]);
    xq[out + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
    xq[out + 2u] = vec4<u32>(bitcast<u32>(d), bitcast<u32>(f32(sum)), 0u, 0u);
}
