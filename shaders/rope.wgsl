// RoPE (rotate-half over all head dims) on the packed qkv projection, fused with the KV-cache
// write: for token t at position pos0 + t, query heads go rotated to q, key heads rotated and
// value heads as they are to the caches. cos/sin come from the CPU (crate/src/rope.rs), which
// owns InternLM2's dynamic-NTK base, so the angles equal the reference's exactly.
// Variants: KV_F16 stores the caches in f16 (see attention.wgsl).
#if KV_F16
enable f16;
alias kv_t = f16;
#else
alias kv_t = f32;
#endif

struct Params {
    heads: u32,     // nh
    kv_heads: u32,  // nkv
    head_dim: u32,  // hd
    tokens: u32,    // T
    pos0: u32,      // position of token 0 (tokens already cached)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;           // [T, nkv, G+2, hd]
@group(0) @binding(1) var<storage, read> cos_sin: array<vec2<f32>>; // [T, hd/2] (cos, sin)
@group(0) @binding(2) var<storage, read_write> q: array<f32>;       // [T, nh, hd]
@group(0) @binding(3) var<storage, read_write> k_cache: array<kv_t>; // [ctx, nkv, hd]
@group(0) @binding(4) var<storage, read_write> v_cache: array<kv_t>; // [ctx, nkv, hd]
@group(0) @binding(5) var<uniform> p: Params;

// One invocation per (pair j < hd/2, slot in the group of G+2 heads, KV group · token).
@compute @workgroup_size(64)
fn rope_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let group = p.heads / p.kv_heads;
    let j = gid.x;
    let slot = gid.y;                // 0..G: query heads, G: key, G+1: value
    let g = gid.z % p.kv_heads;
    let t = gid.z / p.kv_heads;
    if (j >= half || slot >= group + 2u || t >= p.tokens) {
        return;
    }
    let src = ((t * p.kv_heads + g) * (group + 2u) + slot) * p.head_dim;
    let a = qkv[src + j];
    let b = qkv[src + j + half];
    let cs = cos_sin[t * half + j];
    let ra = a * cs.x - b * cs.y;
    let rb = b * cs.x + a * cs.y;
    let cache = ((p.pos0 + t) * p.kv_heads + g) * p.head_dim;
    if (slot < group) {
        let dst = (t * p.heads + g * group + slot) * p.head_dim;
        q[dst + j] = ra;
        q[dst + j + half] = rb;
    } else if (slot == group) {
        k_cache[cache + j] = kv_t(ra);
        k_cache[cache + j + half] = kv_t(rb);
    } else {
        v_cache[cache + j] = kv_t(a);
        v_cache[cache + j + half] = kv_t(b);
    }
}
