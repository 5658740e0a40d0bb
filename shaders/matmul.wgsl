// Matrix products with quantized weights: y[t, o] = Σ_k x[t, k] · W[o, k]  (y = x·Wᵀ).
//
// Each invocation (or workgroup) computes one output row for a tile of TILE tokens, so a
// weight word is fetched and unpacked once per tile instead of once per token: TILE = 1 is
// the matrix-vector product of decode, TILE4 / TILE8 the tiled matrix-matrix product of
// prefill. Token counts that are not a multiple of the tile are handled (the tail lanes of
// the tile read a valid token and their results are not stored).
//
// Two schedules: by default one workgroup per (output row o, token tile), whose 64 lanes
// split k and then reduce (in shared memory, or with subgroupAdd under SUBGROUPS); with
// ROW_PER_LANE each lane computes a whole row, 64 rows per workgroup (better on CPU drivers
// such as lavapipe and SwiftShader, whose lanes are SIMD slots of one core). Its one-token
// form (decode) keeps no private arrays: group_dot sums straight from the packed words.
//
// W may be one of several row blocks of a matrix too big for one binding: this dispatch
// computes rows [row0, row0 + rows) of y, whose rows are `total` long.
// Variants (preprocessor): Q4 | Q8 | F16 weights (see crate/src/quant.rs for the packing);
// ADD accumulates into y (the residual add fused into the epilogue); TILE4 | TILE8;
// ROW_PER_LANE (with ROWS2, ROWS2 + ROWS4, or ROWS2 + ROWS4 + ROWS8: rows per lane);
// TEXELS (Q4): W in an rgba32uint texture, a texel per group (q4_group); SUBGROUPS
// (workgroup schedule only); GLU, the feed-forward's gate and up products and SwiGLU in one dispatch:
//   W = [W1 block; W3 block] (2 · rows rows: `rows` gate rows, then the same up rows),
//   y[t, o] = silu(x·W1ᵀ)[t, o] · (x·W3ᵀ)[t, o]   for o < rows,
// each gate row and its up row summed by the same lane (or workgroup), so x is read once for
// both and the gate and up activations never go to memory (with ROW_PER_LANE it needs ROWS2:
// a lane's row pairs are its output rows).
// XQ8 (q4 weights, ROW_PER_LANE only): x arrives as 8-bit integers with a scale per 32
// values (quantize.wgsl), and each 32-weight group is summed exactly in integers, held in
// f32s (below 2^24): bytes masked in place and made floats (x_block_q8), against weights
// unpacked once for the tile's tokens (tile_x) or, in one-token products, still packed
// (x_group_q8). Numerics: those of llama.cpp's q4_0 × q8_0 products, not the f32 reference's.
// (naga takes subgroup built-ins without `enable subgroups;` and rejects that directive; the
// variant is only used natively, as wasm wgpu exposes no subgroups.)

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

#if XQ8
@group(0) @binding(0) var<storage, read> xq: array<vec4<u32>>;     // [T, K/32, 3] (quantize.wgsl)
#else
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;      // [T, K]
#endif
#if TEXELS
@group(0) @binding(1) var w_texels: texture_2d<u32>;               // Q4 [rows, K/32] rgba32uint texels
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // packed [rows, K]
#endif
@group(0) @binding(2) var<storage, read> scales: array<u32>;       // f16 pairs [rows, K/32] (Q4, Q8)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // [T, total]
@group(0) @binding(4) var<uniform> p: Params;

const LANES: u32 = 64u;
#if TILE8
const TILE: u32 = 8u;
#else
#if TILE4
const TILE: u32 = 4u;
#else
const TILE: u32 = 1u;
#endif
#endif

fn scale(row: u32, group: u32) -> f32 {
    let i = row * (p.cols / 32u) + group;
    return unpack2x16float(scales[i / 2u] >> (16u * (i % 2u))).x;
}

// Where the tile's tokens start in x, in vec4s; past the last token, the last token again
// (read, not stored).
fn token_bases(t0: u32) -> array<u32, TILE> {
    var b: array<u32, TILE>;
    for (var j = 0u; j < TILE; j++) {
        b[j] = min(t0 + j, p.tokens - 1u) * (p.cols / 4u);
    }
    return b;
}

// Q4 nibbles s = 0 … 3 and 4 … 7 of a packed word masked in place (n_s · 16^s, exact as
// floats), and the 16^-s that bring them down: CPU drivers pay for vector shifts (see
// x_group), not for masks.
const NIBBLES_LO = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
const NIBBLES_HI = vec4<u32>(0xF0000u, 0xF00000u, 0xF000000u, 0xF0000000u);
const DOWN_LO = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const DOWN_HI = DOWN_LO * 1.52587890625e-05;
// The top nibble of a word flipped (n ^ 8): masked in place it reads as the signed integer
// (n − 8) · 2^28, so every masked nibble converts as a signed integer (one instruction on
// CPU drivers; unsigned conversion is five) and that nibble needs no q4 offset.
const TOP_FLIP = vec4<u32>(0u, 0u, 0u, 0x80000000u);
const NOT_TOP = vec4<f32>(1.0, 1.0, 1.0, 0.0);

// Masked nibbles (NIBBLES_LO, or NIBBLES_HI with TOP_FLIP) as floats.
fn masked_float(v: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(v));
}

// The 8 weights of packed word `word` as two vec4s (Q4: nibble i is weight i, value q − 8).
fn nibbles(word: u32) -> array<vec4<f32>, 2> {
    let v = vec4<u32>(word);
    let lo = masked_float(v & NIBBLES_LO) * DOWN_LO - 8.0;
    let hi = masked_float((v & NIBBLES_HI) ^ TOP_FLIP) * DOWN_HI - vec4<f32>(8.0, 8.0, 8.0, 0.0);
    return array<vec4<f32>, 2>(lo, hi);
}

// The 4 signed bytes of a word (Q8), sign-extended.
fn bytes4(word: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// The 16 bytes of Q4 group `g` of row `row`: from a texture with TEXELS (CPU drivers: where
// a storage vec4 is four 4-byte gathers per lane, SwiftShader fetches a texel in one load).
fn q4_group(row: u32, g: u32) -> vec4<u32> {
#if TEXELS
    return textureLoad(w_texels, vec2<u32>(g, row), 0);
#else
    return w[row * (p.cols / 32u) + g];
#endif
}

// Unpacks the 32 weights of group `g` of row `row` into `wv` (8 vec4s) and returns the
// group's scale. A group is 1 (Q4), 2 (Q8) or 4 (F16) 16-byte loads. Constant indices
// only (see group_dot).
fn load_group(row: u32, g: u32, wv: ptr<function, array<vec4<f32>, 8>>) -> f32 {
#if Q4
    let q = q4_group(row, g);
    let a = nibbles(q.x);
    let b = nibbles(q.y);
    let c = nibbles(q.z);
    let e = nibbles(q.w);
    *wv = array<vec4<f32>, 8>(a[0], a[1], b[0], b[1], c[0], c[1], e[0], e[1]);
    return scale(row, g);
#endif
#if Q8 | F16
    let at = row * (p.cols / 32u) + g;
#endif
#if Q8
    let a = w[2u * at];
    let b = w[2u * at + 1u];
    *wv = array<vec4<f32>, 8>(bytes4(a.x), bytes4(a.y), bytes4(a.z), bytes4(a.w), bytes4(b.x), bytes4(b.y), bytes4(b.z), bytes4(b.w));
    return scale(row, g);
#endif
#if F16
    let a = w[4u * at];
    let b = w[4u * at + 1u];
    let c = w[4u * at + 2u];
    let e = w[4u * at + 3u];
    *wv = array<vec4<f32>, 8>(
        vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y)), vec4<f32>(unpack2x16float(a.z), unpack2x16float(a.w)),
        vec4<f32>(unpack2x16float(b.x), unpack2x16float(b.y)), vec4<f32>(unpack2x16float(b.z), unpack2x16float(b.w)),
        vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y)), vec4<f32>(unpack2x16float(c.z), unpack2x16float(c.w)),
        vec4<f32>(unpack2x16float(e.x), unpack2x16float(e.y)), vec4<f32>(unpack2x16float(e.z), unpack2x16float(e.w)));
    return 1.0;
#endif
}

// The 8 vec4s of x that meet one group of weights, as named members (no private array).
struct X8 {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
}

#if XQ8
#else
fn load_x(k: u32) -> X8 {
    return X8(x[k], x[k + 1u], x[k + 2u], x[k + 3u], x[k + 4u], x[k + 5u], x[k + 6u], x[k + 7u]);
}
#endif

#if Q4
// A group's x as the decode kernel's q4 products take it: each value x_i times 16^-s, s = i
// mod 8 being its weight's nibble in a packed word, Σ x_i for the q4 offset, and a scale d
// for the group's sum (1; an 8-bit block's d under XQ8). Then
// (q & (15 << 4s)) — nibble s still in place, n_s · 16^s, exact as a float — times x_i · 16^-s
// is n_s · x_i with no shift: CPU drivers run a lane as one slot of a SIMD register, and
// SwiftShader's JIT (Subzero) breaks vector shifts into one shift per slot, so unpacking by
// masks takes w2's one-token product (2048×8192) from 13.3 to 9.0–10.0 ms there, below
// dot4I8Packed on 8-bit activations, which SwiftShader emulates.
struct XGroup {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
    sum: f32,
    d: f32,
}

fn x_group(xs: X8) -> XGroup {
    let t = xs.v0 + xs.v2 + xs.v4 + xs.v6 + (xs.v1 + xs.v3 + xs.v5 + xs.v7) * NOT_TOP;
    // (the q4 offset's sum leaves out each word's top nibble: see TOP_FLIP)
    return XGroup(xs.v0 * DOWN_LO, xs.v1 * DOWN_HI, xs.v2 * DOWN_LO, xs.v3 * DOWN_HI, xs.v4 * DOWN_LO, xs.v5 * DOWN_HI,
        xs.v6 * DOWN_LO, xs.v7 * DOWN_HI, t.x + t.y + t.z + t.w, 1.0);
}

// Σ n_s · x_s over packed word `q`, its nibbles masked in place (lo, hi: x_group's values).
fn masked_dot8(q: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    let v = vec4<u32>(q);
    return dot(masked_float(v & NIBBLES_LO), lo) + dot(masked_float((v & NIBBLES_HI) ^ TOP_FLIP), hi);
}

#if XQ8
// Block g of token t (clamped to the last token) as x_group's values, in units of the
// block's scale d: each byte q of the 8-bit block masked in place, made a float and scaled by
// 256^-c (its byte) · 16^-s (its weight's nibble) — bytes 0–2 offset by 128 so that they read
// as unsigned numbers (less 128 · 16^-s after), byte 3 left signed at the top of the word.
// Exact: n_s · 16^s times q · 16^-s is the integer n_s · q, so a group's sum is the integer
// dot4I8Packed would give — which SwiftShader emulates with shifts, 1.5× slower (w2
// 2048×8192 at T=1: 9.0 against 13.3 ms).
fn x_group_q8(t: u32, g: u32) -> XGroup {
    let se = DOWN_LO * DOWN_LO; // 16^-s, s = 0, 2, 4, 6
    var b = x_block_q8(t, g, se, se * 0.0625);
    // The q4 offset's Σq leaves out each word's top nibble (TOP_FLIP): v1.w, v3.w, v5.w and
    // v7.w hold those values q · 16^-7.
    b.sum -= (b.v1.w + b.v3.w + b.v5.w + b.v7.w) * 268435456.0;
    return b;
}

// x_group_q8's values scaled by se (even values: weight nibbles s = 0, 2, 4, 6) and so (odd
// ones) instead of 16^-s (with 1 and 1, the block's plain values q: the tiles'), its whole
// Σq and its scale d.
fn x_block_q8(t: u32, g: u32, se: vec4<f32>, so: vec4<f32>) -> XGroup {
    let at = (min(t, p.tokens - 1u) * (p.cols / 32u) + g) * 3u;
    let a = xq[at] ^ vec4<u32>(0x00808080u);
    let b = xq[at + 1u] ^ vec4<u32>(0x00808080u);
    let m = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u);
    // Byte c of word 2j holds value 8j + 2c, the weight of nibble s = 2c of weight word j;
    // of word 2j+1, value 8j + 2c + 1 (s = 2c + 1). 256^-c = 16^-2c: the same numbers.
    let down = DOWN_LO * DOWN_LO; // 256^-c
    let even = down * se;
    let odd = down * so;
    let lift = 128.0 * NOT_TOP;
    let e0 = masked_float(vec4<u32>(a.x) & m) * even - lift * se;
    let o0 = masked_float(vec4<u32>(a.y) & m) * odd - lift * so;
    let e1 = masked_float(vec4<u32>(a.z) & m) * even - lift * se;
    let o1 = masked_float(vec4<u32>(a.w) & m) * odd - lift * so;
    let e2 = masked_float(vec4<u32>(b.x) & m) * even - lift * se;
    let o2 = masked_float(vec4<u32>(b.y) & m) * odd - lift * so;
    let e3 = masked_float(vec4<u32>(b.z) & m) * even - lift * se;
    let o3 = masked_float(vec4<u32>(b.w) & m) * odd - lift * so;
    let ds = bitcast<vec2<f32>>(xq[at + 2u].xy);
    return XGroup(vec4<f32>(e0.x, o0.x, e0.y, o0.y), vec4<f32>(e0.z, o0.z, e0.w, o0.w),
        vec4<f32>(e1.x, o1.x, e1.y, o1.y), vec4<f32>(e1.z, o1.z, e1.w, o1.w),
        vec4<f32>(e2.x, o2.x, e2.y, o2.y), vec4<f32>(e2.z, o2.z, e2.w, o2.w),
        vec4<f32>(e3.x, o3.x, e3.y, o3.y), vec4<f32>(e3.z, o3.z, e3.w, o3.w), ds.y, ds.x);
}
#endif
#else
alias XGroup = X8;

fn x_group(xs: X8) -> X8 {
    return xs;
}
#endif

// Σ over group `g` of row `row` of its 32 weights times its x (x_group), unscaled, with no
// private arrays: SwiftShader (Chromium's CPU WebGPU) keeps dynamically indexed private
// arrays in memory, so the decode kernel below avoids them.
fn group_dot(row: u32, g: u32, xs: XGroup) -> f32 {
#if Q4
    let q = q4_group(row, g);
    return masked_dot8(q.x, xs.v0, xs.v1) + masked_dot8(q.y, xs.v2, xs.v3) + masked_dot8(q.z, xs.v4, xs.v5)
        + masked_dot8(q.w, xs.v6, xs.v7) - 8.0 * xs.sum;
#endif
#if Q8
    let at = row * (p.cols / 32u) + g;
    let a = w[2u * at];
    let b = w[2u * at + 1u];
    return dot(bytes4(a.x), xs.v0) + dot(bytes4(a.y), xs.v1) + dot(bytes4(a.z), xs.v2) + dot(bytes4(a.w), xs.v3)
        + dot(bytes4(b.x), xs.v4) + dot(bytes4(b.y), xs.v5) + dot(bytes4(b.z), xs.v6) + dot(bytes4(b.w), xs.v7);
#endif
#if F16
    // (rare on CPU adapters; through an array with constant indices)
    var wv: array<vec4<f32>, 8>;
    load_group(row, g, &wv);
    return dot_unpacked(wv, xs);
#endif
}

// An unpacked group (load_group) times xs, with constant indices only.
fn dot_unpacked(wv: array<vec4<f32>, 8>, xs: X8) -> f32 {
    return dot(wv[0], xs.v0) + dot(wv[1], xs.v1) + dot(wv[2], xs.v2) + dot(wv[3], xs.v3) + dot(wv[4], xs.v4) + dot(wv[5], xs.v5) + dot(wv[6], xs.v6) + dot(wv[7], xs.v7);
}

// The scale of group `g` of row `row` (1 for F16).
fn group_scale(row: u32, g: u32) -> f32 {
#if F16
    return 1.0;
#else
    return scale(row, g);
#endif
}

// Group g of token t's x (clamped to the last token) as group_dot takes it.
fn decode_x(t: u32, g: u32) -> XGroup {
#if XQ8
    return x_group_q8(t, g);
#else
    return x_group(load_x(min(t, p.tokens - 1u) * (p.cols / 4u) + g * 8u));
#endif
}

// Group g of token t's x (clamped to the last token) as the tiles take it: plain values (in
// units of d, an 8-bit block's scale; 1 for floats), for weights unpacked by load_group. On
// 8-bit blocks the sums are integers, exact in f32 (|Σ (n − 8) · q| ≤ 32 · 8 · 127 < 2^24), so
// the tiles sum what dot4I8Packed would, without the emulated instruction (SwiftShader w2
// 2048×8192 at T=64: 241–285 ms against 749–1015 with dot4I8Packed, 347–393 on f32 x).
struct TileX {
    v: X8,
    d: f32,
}

fn tile_x(t: u32, g: u32) -> TileX {
#if XQ8
    let b = x_block_q8(t, g, vec4<f32>(1.0), vec4<f32>(1.0));
    return TileX(X8(b.v0, b.v1, b.v2, b.v3, b.v4, b.v5, b.v6, b.v7), b.d);
#else
    return TileX(load_x(min(t, p.tokens - 1u) * (p.cols / 4u) + g * 8u), 1.0);
#endif
}

// The scale of a group's sum that comes with its x: an 8-bit block's d (1 for floats).
fn x_scale(xs: XGroup) -> f32 {
#if Q4
    return xs.d;
#else
    return 1.0;
#endif
}

#if XQ8
#else
// Σ over this lane's share of row `row` (32-weight groups lane, lane + stride, …) against
// each token of the tile starting at t0.
fn dot_groups(row: u32, t0: u32, lane: u32, stride: u32) -> array<f32, TILE> {
    let xb = token_bases(t0);
    let groups = p.cols / 32u;
    var acc: array<f32, TILE>;
    for (var g = lane; g < groups; g += stride) {
        var wv: array<vec4<f32>, 8>;
        let d = load_group(row, g, &wv);
        for (var j = 0u; j < TILE; j++) {
            let k = xb[j] + g * 8u;
            var s = 0.0;
            for (var m = 0u; m < 8u; m++) {
                s += dot(wv[m], x[k + m]);
            }
            acc[j] += s * d;
        }
    }
    return acc;
}
#endif

// SwiGLU's activation, as the reference computes it.
fn silu(g: f32) -> f32 {
    return g / (1.0 + exp(-g));
}

fn store(row: u32, t: u32, value: f32) {
    if (t >= p.tokens) {
        return;
    }
    let at = t * p.total + p.row0 + row;
#if ADD
    y[at] += value;
#else
    y[at] = value;
#endif
}

#if ROW_PER_LANE
// The scaled sums over group g of rows `rows` (those of them the lane has: ROWS2, ROWS4)
// against its x (x_group), from the packed words (see group_dot).
fn quad_dot(rows: vec4<u32>, g: u32, xs: XGroup) -> vec4<f32> {
    var s = vec4<f32>(group_dot(rows.x, g, xs) * group_scale(rows.x, g), 0.0, 0.0, 0.0);
#if ROWS2
    s.y = group_dot(rows.y, g, xs) * group_scale(rows.y, g);
#endif
#if ROWS4
    s.z = group_dot(rows.z, g, xs) * group_scale(rows.z, g);
    s.w = group_dot(rows.w, g, xs) * group_scale(rows.w, g);
#endif
    return s;
}

// 2, 4 or 8 rows per lane (ROWS2; ROWS4 with ROWS2; ROWS8 with both): every x value loaded
// and prepared serves them all. On CPU drivers the loads of x, the same for every lane, and a
// group's x_group cost as much as a row's arithmetic; this divides them (SwiftShader, from 4
// to 8 rows: w2's one-token product ~10% faster, its 64-token 8-tiles 25–45%). The rows'
// weights live in plain arrays w0..w7 and their sums in the components of a vec4 per 4 rows
// (Chromium's compiler miscompiled a pointer into an array of arrays here; found on
// SwiftShader).
#if ROWS8
const ROWS: u32 = 8u;
#else
#if ROWS4
const ROWS: u32 = 4u;
#else
#if ROWS2
const ROWS: u32 = 2u;
#else
const ROWS: u32 = 1u;
#endif
#endif
#endif

#if GLU
// Output rows per lane: each is a pair of slots (gate, up).
const OUTS: u32 = ROWS / 2u;
#else
const OUTS: u32 = ROWS;
#endif

// x: block of 64 · OUTS output rows (+ y · 65535 beyond 65535 workgroups), z: token tile.
// Lane `lane` computes rows first + 64 · r, r < ROWS (GLU: output rows first + 64 · r,
// r < OUTS, whose gate rows sit in slots x, z and up rows in slots y, w).
@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let first = (wg.x + wg.y * 65535u) * LANES * OUTS + lane;
    let t0 = wg.z * TILE;
    if (first >= p.rows) {
        return;
    }
    // Rows past the end compute on the last row and are not stored.
    let last = p.rows - 1u;
#if GLU
    let second = min(first + LANES, last);
    let rows = vec4<u32>(first, first + p.rows, second, second + p.rows);
#else
    let rows = vec4<u32>(first, min(first + LANES, last), min(first + 2u * LANES, last), min(first + 3u * LANES, last));
#endif
#if ROWS8
    // Rows 4 … 7 of the lane (GLU: output rows 2 and 3), summed into acc_b.
#if GLU
    let third = min(first + 2u * LANES, last);
    let fourth = min(first + 3u * LANES, last);
    let rows_b = vec4<u32>(third, third + p.rows, fourth, fourth + p.rows);
#else
    let rows_b = min(vec4<u32>(first) + vec4<u32>(4u, 5u, 6u, 7u) * LANES, vec4<u32>(last));
#endif
    var acc_b: array<vec4<f32>, TILE>;
#endif
    let groups = p.cols / 32u;
    var acc: array<vec4<f32>, TILE>;
#if TILE4 | TILE8
    // A tile of tokens (prefill): each row's group unpacked once, used for every token.
    for (var g = 0u; g < groups; g++) {
        var w0: array<vec4<f32>, 8>;
        var d = vec4<f32>(load_group(rows.x, g, &w0), 0.0, 0.0, 0.0);
#if ROWS2
        var w1: array<vec4<f32>, 8>;
        d.y = load_group(rows.y, g, &w1);
#endif
#if ROWS4
        var w2: array<vec4<f32>, 8>;
        var w3: array<vec4<f32>, 8>;
        d.z = load_group(rows.z, g, &w2);
        d.w = load_group(rows.w, g, &w3);
#endif
#if ROWS8
        var w4: array<vec4<f32>, 8>;
        var w5: array<vec4<f32>, 8>;
        var w6: array<vec4<f32>, 8>;
        var w7: array<vec4<f32>, 8>;
        let d_b = vec4<f32>(load_group(rows_b.x, g, &w4), load_group(rows_b.y, g, &w5), load_group(rows_b.z, g, &w6), load_group(rows_b.w, g, &w7));
#endif
        for (var j = 0u; j < TILE; j++) {
            let x = tile_x(t0 + j, g);
            var s = vec4<f32>(dot_unpacked(w0, x.v), 0.0, 0.0, 0.0);
#if ROWS2
            s.y = dot_unpacked(w1, x.v);
#endif
#if ROWS4
            s.z = dot_unpacked(w2, x.v);
            s.w = dot_unpacked(w3, x.v);
#endif
            acc[j] += s * d * x.d;
#if ROWS8
            acc_b[j] += vec4<f32>(dot_unpacked(w4, x.v), dot_unpacked(w5, x.v), dot_unpacked(w6, x.v), dot_unpacked(w7, x.v)) * d_b * x.d;
#endif
        }
    }
#else
    // One token (decode), with constant indices only (see group_dot): each row's group summed
    // straight from its packed words against x_group's values.
    for (var g = 0u; g < groups; g++) {
        let xs = decode_x(t0, g);
        acc[0] += quad_dot(rows, g, xs) * x_scale(xs);
#if ROWS8
        acc_b[0] += quad_dot(rows_b, g, xs) * x_scale(xs);
#endif
    }
#endif
    for (var r = 0u; r < OUTS; r++) {
        if (first + r * LANES < p.rows) {
            for (var j = 0u; j < TILE; j++) {
                // Output r's slot (GLU: its gate slot, the up slot next to it) of acc, or of
                // acc_b from slot 4 on.
                var slot = r * (ROWS / OUTS);
                var quad = acc[j];
#if ROWS8
                if (slot >= 4u) {
                    quad = acc_b[j];
                    slot -= 4u;
                }
#endif
#if GLU
                store(first + r * LANES, t0 + j, silu(quad[slot]) * quad[slot + 1u]);
#else
                store(first + r * LANES, t0 + j, quad[slot]);
#endif
            }
        }
    }
}
#else
var<workgroup> partial: array<array<f32, TILE>, 64>;

// The workgroup's total of each lane's `acc`, valid in lane 0 (call in uniform control flow).
fn reduce(
    acc: array<f32, TILE>,
    lane: u32,
#if SUBGROUPS
    sg_lane: u32,
    sg_size: u32,
#endif
) -> array<f32, TILE> {
    workgroupBarrier(); // a previous call's readers are done with `partial`
#if SUBGROUPS
    // Sum within each subgroup, then the subgroups' sums in shared memory.
    for (var j = 0u; j < TILE; j++) {
        let s = subgroupAdd(acc[j]);
        if (sg_lane == 0u) {
            partial[lane / sg_size][j] = s;
        }
    }
    workgroupBarrier();
    var total: array<f32, TILE>;
    for (var g = 0u; g < max(LANES / sg_size, 1u); g++) {
        for (var j = 0u; j < TILE; j++) {
            total[j] += partial[g][j];
        }
    }
    return total;
#else
    partial[lane] = acc;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            for (var j = 0u; j < TILE; j++) {
                partial[lane][j] += partial[lane + stride][j];
            }
        }
        workgroupBarrier();
    }
    return partial[0];
#endif
}

// x: row (+ y · 65535 beyond 65535 workgroups), z: token tile.
@compute @workgroup_size(64)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let row = wg.x + wg.y * 65535u;
    let t0 = wg.z * TILE;
    if (row >= p.rows) {
        return; // uniform across the workgroup
    }
#if SUBGROUPS
    let sum = reduce(dot_groups(row, t0, lane, LANES), lane, sg_lane, sg_size);
#if GLU
    let up = reduce(dot_groups(row + p.rows, t0, lane, LANES), lane, sg_lane, sg_size);
#endif
#else
    let sum = reduce(dot_groups(row, t0, lane, LANES), lane);
#if GLU
    let up = reduce(dot_groups(row + p.rows, t0, lane, LANES), lane);
#endif
#endif
    if (lane == 0u) {
        for (var j = 0u; j < TILE; j++) {
#if GLU
            store(row, t0 + j, silu(sum[j]) * up[j]);
#else
            store(row, t0 + j, sum[j]);
#endif
        }
    }
}
#endif
