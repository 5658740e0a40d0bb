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
// Variants: KV_F16 keeps the caches in f16 (needs shader-f16; halves their memory and
// bandwidth), otherwise f32.
#if KV_F16
enable f16;
alias kv_t = f16;
#else
alias kv_t = f32;
#endif

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
@group(0) @binding(1) var<storage, read> k_cache: array<kv_t>;      // [ctx, nkv, hd]
@group(0) @binding(2) var<storage, read> v_cache: array<kv_t>;      // [ctx, nkv, hd]
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
                acc += q_row[d] * f32(k_cache[kb + d]);
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
                    acc += weights[j] * f32(v_cache[((b + j) * p.kv_heads + kv) * hd + d]);
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
