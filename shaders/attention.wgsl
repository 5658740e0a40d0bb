// Causal grouped-query attention in three steps over a score scratch buffer
// S [nh, T, ctx] (ctx = tokens visible to the last query, pos0 + T):
//   scores:  S[n, t, s] = q[t, n]·k[s, n/G] / sqrt(hd)      for s ≤ pos0 + t
//   softmax: S[n, t, :] normalised over s ≤ pos0 + t (one workgroup per row)
//   mix:     out[t, n, d] = Σ_s S[n, t, s] · v[s, n/G, d]

struct Params {
    heads: u32,     // nh
    kv_heads: u32,  // nkv
    head_dim: u32,  // hd
    tokens: u32,    // T
    pos0: u32,      // tokens already cached before this step
    ctx: u32,       // pos0 + T: the row length of S
    scale: f32,     // 1/sqrt(hd)
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;            // [T, nh, hd]
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;      // [ctx, nkv, hd]
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;      // [ctx, nkv, hd]
@group(0) @binding(3) var<storage, read_write> s: array<f32>;      // [nh, T, ctx]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;    // [T, nh, hd]
@group(0) @binding(5) var<uniform> p: Params;

// x: key position s, y: token t, z: head n.
@compute @workgroup_size(64)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pos = gid.x;
    let t = gid.y;
    let n = gid.z;
    if (pos >= p.ctx || t >= p.tokens) {
        return;
    }
    let row = (n * p.tokens + t) * p.ctx;
    if (pos > p.pos0 + t) {
        s[row + pos] = 0.0; // masked: softmax skips it
        return;
    }
    let kv = n / (p.heads / p.kv_heads);
    let qb = (t * p.heads + n) * p.head_dim;
    let kb = (pos * p.kv_heads + kv) * p.head_dim;
    var acc = 0.0;
    for (var d = 0u; d < p.head_dim; d++) {
        acc += q[qb + d] * k_cache[kb + d];
    }
    s[row + pos] = acc * p.scale;
}

var<workgroup> red: array<f32, 64>;

// One workgroup per (t, n) row: x: token t, y: head n.
@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let t = wg.x;
    let n = wg.y;
    let row = (n * p.tokens + t) * p.ctx;
    let visible = p.pos0 + t + 1u;
    var m = -3.4e38;
    for (var i = lane; i < visible; i += 64u) {
        m = max(m, s[row + i]);
    }
    red[lane] = m;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            red[lane] = max(red[lane], red[lane + stride]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = lane; i < visible; i += 64u) {
        let e = exp(s[row + i] - mx);
        s[row + i] = e;
        sum += e;
    }
    red[lane] = sum;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            red[lane] += red[lane + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var i = lane; i < visible; i += 64u) {
        s[row + i] *= inv;
    }
}

// x: dim d, y: token t, z: head n.
@compute @workgroup_size(64)
fn mix(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let t = gid.y;
    let n = gid.z;
    if (d >= p.head_dim || t >= p.tokens) {
        return;
    }
    let kv = n / (p.heads / p.kv_heads);
    let row = (n * p.tokens + t) * p.ctx;
    let visible = p.pos0 + t + 1u;
    var acc = 0.0;
    for (var i = 0u; i < visible; i++) {
        acc += s[row + i] * v_cache[(i * p.kv_heads + kv) * p.head_dim + d];
    }
    out[(t * p.heads + n) * p.head_dim + d] = acc;
}
