// Causal grouped-query attention, flash style: no score matrix is ever stored.
//
// attend:  one workgroup per (KV split s, token t, head n). It walks keys
//          [s·split_len, min((s+1)·split_len, pos0 + t + 1)) in blocks of 64 (one key per
//          lane), keeping a running max m, normaliser l and unnormalised output o (online
//          softmax), and writes (o, m, l) for its split to `part`.
// combine: one workgroup per (token t, head n) merges the splits:
//          out = Σ_s o_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M), M = max_s m_s.
// Decode (T = 1) splits a long KV range over many workgroups (flash-decoding); prefill runs
// one split per query, causal (query t sees keys ≤ pos0 + t).
// On CPU adapters a lane does the work of a workgroup instead (see the lane kernels below):
// attend_rows, a lane per query in steps of several tokens, writes `out` itself (no combine);
// attend_split_lanes, a lane per split in decode, writes `part` for `combine`.
// Variants: KV_F16 keeps the caches in f16 (needs shader-f16; halves their memory and
// bandwidth), otherwise f32.
#if KV_F16
enable f16;
alias kv_t = f16;
#else
alias kv_t = f32;
#endif
// The caches are read 4 dims at a time (one load of 8 or 16 bytes, not four): a lane of the
// lane kernels reads rows no other lane reads, which CPU drivers gather value by value.
alias kv4_t = vec4<kv_t>;

struct Params {
    heads: u32,      // nh
    kv_heads: u32,   // nkv
    head_dim: u32,   // hd ≤ 256
    tokens: u32,     // T
    pos0: u32,       // tokens already cached before this step
    splits: u32,     // S
    split_len: u32,  // keys per split, a multiple of 64
    scale: f32,      // 1/sqrt(hd)
}

@group(0) @binding(0) var<storage, read> q: array<f32>;             // [T, nh, hd]
@group(0) @binding(1) var<storage, read> k_cache: array<kv4_t>;     // [ctx, nkv, hd / 4]
@group(0) @binding(2) var<storage, read> v_cache: array<kv4_t>;     // [ctx, nkv, hd / 4]
@group(0) @binding(3) var<storage, read_write> part: array<f32>;    // [T, nh, S, hd + 2]: o, m, l
@group(0) @binding(4) var<storage, read_write> out: array<f32>;     // [T, nh, hd]
@group(0) @binding(5) var<uniform> p: Params;

const LANES: u32 = 64u;
const MAX_DIMS: u32 = 4u; // head dims per lane: hd ≤ 4 · 64

var<workgroup> q_row: array<f32, 256>;
var<workgroup> weights: array<f32, 64>;

// x: split s, y: token t, z: head n.
@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let s = wg.x;
    let t = wg.y;
    let n = wg.z;
    let hd = p.head_dim;
    let kv = n / (p.heads / p.kv_heads);
    let qb = (t * p.heads + n) * hd;
    for (var d = lane; d < hd; d += LANES) {
        q_row[d] = q[qb + d];
    }
    workgroupBarrier();

    let start = s * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t + 1u);
    var m = -3.4e38;
    var l = 0.0;
    var o: array<f32, MAX_DIMS>;
    for (var b = start; b < end; b += LANES) {
        // This lane's key: its scaled score, or −∞ past the end.
        let key = b + lane;
        var score = -3.4e38;
        if (key < end) {
            let kb = (key * p.kv_heads + kv) * hd;
            var acc = 0.0;
            for (var d = 0u; d < hd; d++) {
                acc += q_row[d] * f32(k_cache[(kb + d) / 4u][(kb + d) % 4u]);
            }
            score = acc * p.scale;
        }
        weights[lane] = score;
        workgroupBarrier();
        var block_max = -3.4e38;
        for (var j = 0u; j < LANES; j++) {
            block_max = max(block_max, weights[j]);
        }
        let m_new = max(m, block_max);
        let rescale = exp(m - m_new);
        workgroupBarrier();
        weights[lane] = select(0.0, exp(score - m_new), key < end);
        workgroupBarrier();
        let keys = min(LANES, end - b);
        var block_sum = 0.0;
        for (var j = 0u; j < keys; j++) {
            block_sum += weights[j];
        }
        l = l * rescale + block_sum;
        for (var i = 0u; i < MAX_DIMS; i++) {
            let d = lane + i * LANES;
            if (d < hd) {
                var acc = o[i] * rescale;
                for (var j = 0u; j < keys; j++) {
                    let vi = ((b + j) * p.kv_heads + kv) * hd + d;
                    acc += weights[j] * f32(v_cache[vi / 4u][vi % 4u]);
                }
                o[i] = acc;
            }
        }
        m = m_new;
        workgroupBarrier();
    }

    let pb = ((t * p.heads + n) * p.splits + s) * (hd + 2u);
    for (var i = 0u; i < MAX_DIMS; i++) {
        let d = lane + i * LANES;
        if (d < hd) {
            part[pb + d] = o[i];
        }
    }
    if (lane == 0u) {
        part[pb + hd] = m;
        part[pb + hd + 1u] = l;
    }
}

// The lane kernels, for CPU adapters (head_dim a multiple of 4). CPU drivers run a
// workgroup's lanes as the SIMD slots of one core, where `attend`'s barriers each cost a
// switch between the lanes' contexts and its reductions are repeated by every lane; here each
// lane keeps its own online softmax over its keys, with no barrier. On GPUs the two private
// hd-float rows would spill out of registers, so there `attend` runs. llvmpipe ends a shader
// invocation's loops after 65,535 iterations in all, so the loops are few and wide: hd/2 + 1
// iterations a block of 8 keys (see `lane_keys` in model.rs).

// A lane's query row and its unnormalised output.
var<private> lane_q: array<vec4<f32>, 64>;
var<private> lane_o: array<vec4<f32>, 64>;

// Loads query row `row` into lane_q and zeroes lane_o.
fn start_query(row: u32) {
    let qb = row * p.head_dim;
    for (var i = 0u; i < p.head_dim / 4u; i++) {
        let b = qb + 4u * i;
        lane_q[i] = vec4(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
        lane_o[i] = vec4(0.0);
    }
}

// Online softmax of lane_q over keys [start, end) of KV head kv, those past `last` masked, 8 keys
// at a time; accumulates into lane_o and returns (m, l). Keys past `end` read key end − 1, which
// the caller guarantees is written (unwritten rows may hold anything, and 0 · NaN is NaN).
fn walk_keys(start: u32, end: u32, last: u32, kv: u32) -> vec2<f32> {
    let hd = p.head_dim;
    var m = -3.4e38;
    var l = 0.0;
    for (var k0 = start; k0 < end; k0 += 8u) {
        let r0 = cache_row(k0, end, kv);
        let r1 = cache_row(k0 + 1u, end, kv);
        let r2 = cache_row(k0 + 2u, end, kv);
        let r3 = cache_row(k0 + 3u, end, kv);
        let r4 = cache_row(k0 + 4u, end, kv);
        let r5 = cache_row(k0 + 5u, end, kv);
        let r6 = cache_row(k0 + 6u, end, kv);
        let r7 = cache_row(k0 + 7u, end, kv);
        // Their scores, 4 keys to a matrix: column j holds key j's 4 dims.
        var s_lo = vec4(0.0);
        var s_hi = vec4(0.0);
        for (var i = 0u; i < hd / 4u; i++) {
            let d = 4u * i;
            s_lo += lane_q[i] * mat4x4(k4(r0 + d), k4(r1 + d), k4(r2 + d), k4(r3 + d));
            s_hi += lane_q[i] * mat4x4(k4(r4 + d), k4(r5 + d), k4(r6 + d), k4(r7 + d));
        }
        let key = vec4(k0, k0 + 1u, k0 + 2u, k0 + 3u);
        let ok_lo = key <= vec4(min(last, end - 1u));
        let ok_hi = key + 4u <= vec4(min(last, end - 1u));
        let masked = vec4(-3.4e38);
        s_lo = select(masked, s_lo * p.scale, ok_lo);
        s_hi = select(masked, s_hi * p.scale, ok_hi);
        let mx = max(s_lo, s_hi);
        let m_new = max(m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
        let rescale = exp(m - m_new);
        let w_lo = select(vec4(0.0), exp(s_lo - m_new), ok_lo);
        let w_hi = select(vec4(0.0), exp(s_hi - m_new), ok_hi);
        l = l * rescale + dot(w_lo, vec4(1.0)) + dot(w_hi, vec4(1.0));
        for (var i = 0u; i < hd / 4u; i++) {
            let d = 4u * i;
            let v_lo = mat4x4(v4(r0 + d), v4(r1 + d), v4(r2 + d), v4(r3 + d));
            let v_hi = mat4x4(v4(r4 + d), v4(r5 + d), v4(r6 + d), v4(r7 + d));
            lane_o[i] = lane_o[i] * rescale + v_lo * w_lo + v_hi * w_hi;
        }
        m = m_new;
    }
    return vec2(m, l);
}

// Where key `key` of KV head `kv` starts in the caches; keys past `end` read the last one.
fn cache_row(key: u32, end: u32, kv: u32) -> u32 {
    return (min(key, end - 1u) * p.kv_heads + kv) * p.head_dim;
}

// Dims [i, i + 4) of the K and V caches as f32 (i a multiple of 4: the lane kernels need
// hd % 4 == 0).
fn k4(i: u32) -> vec4<f32> {
    return vec4<f32>(k_cache[i / 4u]);
}

fn v4(i: u32) -> vec4<f32> {
    return vec4<f32>(v_cache[i / 4u]);
}

// Writes the lane's (o, m, l) as split s of query row `row` for `combine`.
fn store_partial(row: u32, s: u32, ml: vec2<f32>) {
    let hd = p.head_dim;
    let pb = (row * p.splits + s) * (hd + 2u);
    for (var i = 0u; i < hd / 4u; i++) {
        part[pb + 4u * i] = lane_o[i].x;
        part[pb + 4u * i + 1u] = lane_o[i].y;
        part[pb + 4u * i + 2u] = lane_o[i].z;
        part[pb + 4u * i + 3u] = lane_o[i].w;
    }
    part[pb + hd] = ml.x;
    part[pb + hd + 1u] = ml.y;
}

// Steps of several tokens. x: block of 64 tokens, y: head n, z: KV split s; a lane per
// query t. The lanes are consecutive queries of one head and walk the same keys in step
// (those of the workgroup's last query within the split, so the loop is uniform): each K and
// V load is one value broadcast to the lanes. With one split it writes `out` itself and no
// combine follows; ranges longer than a lane may walk on llvmpipe are split (`rows_splits`)
// and leave partials for `combine`.
@compute @workgroup_size(64)
fn attend_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let n = wg.y;
    let s = wg.z;
    let t = wg.x * LANES + lane;
    if (t >= p.tokens) {
        return; // (a CPU driver skips SIMD slots whose lanes have all returned)
    }
    let t_hi = min(wg.x * LANES + LANES, p.tokens) - 1u;
    let row = t * p.heads + n;
    start_query(row);
    let start = s * p.split_len;
    let end = min(start + p.split_len, p.pos0 + t_hi + 1u);
    // A lane whose keys all lie before `start` keeps l = 0: combine skips its split.
    let ml = walk_keys(start, end, p.pos0 + t, n / (p.heads / p.kv_heads));
    if (p.splits > 1u) {
        store_partial(row, s, ml);
        return;
    }
    let ob = row * p.head_dim;
    for (var i = 0u; i < p.head_dim / 4u; i++) {
        let y = lane_o[i] / ml.y;
        out[ob + 4u * i] = y.x;
        out[ob + 4u * i + 1u] = y.y;
        out[ob + 4u * i + 2u] = y.z;
        out[ob + 4u * i + 3u] = y.w;
    }
}

// One-token steps (decode). x: head n; a lane per KV split s (of `split_len` keys, any
// length; at most 64 splits), as `attend` writes them for `combine`. The lanes read different
// keys, so their loads are gathers, but no work is repeated and nothing waits.
@compute @workgroup_size(64)
fn attend_split_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) s: u32) {
    let n = wg.x;
    if (s >= p.splits) {
        return;
    }
    start_query(n);
    let start = s * p.split_len;
    let end = min(start + p.split_len, p.pos0 + 1u);
    // An empty split keeps l = 0: combine skips it.
    store_partial(n, s, walk_keys(start, end, p.pos0, n / (p.heads / p.kv_heads)));
}

// x: token t, y: head n; lanes over head dims.
@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let t = wg.x;
    let n = wg.y;
    let hd = p.head_dim;
    let row = (t * p.heads + n) * p.splits;
    // Splits that start past this query's last key hold nothing (l = 0).
    var mx = -3.4e38;
    for (var s = 0u; s < p.splits; s++) {
        let pb = (row + s) * (hd + 2u);
        if (part[pb + hd + 1u] > 0.0) {
            mx = max(mx, part[pb + hd]);
        }
    }
    var l = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let pb = (row + s) * (hd + 2u);
        let ls = part[pb + hd + 1u];
        if (ls > 0.0) {
            l += ls * exp(part[pb + hd] - mx);
        }
    }
    for (var d = lane; d < hd; d += LANES) {
        var acc = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let pb = (row + s) * (hd + 2u);
            if (part[pb + hd + 1u] > 0.0) {
                acc += part[pb + d] * exp(part[pb + hd] - mx);
            }
        }
        out[(t * p.heads + n) * hd + d] = acc / l;
    }
}
