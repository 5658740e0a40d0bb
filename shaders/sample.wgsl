// Sampling on the GPU, so that a decode step reads back 4 bytes, not the logits. It follows
// crate/src/sampling.rs (the reference) step for step; one workgroup of 256 lanes does all.
//
//  1. penalty: logits of the (distinct) recent tokens are divided by `penalty` when
//     positive, multiplied when negative.
//  2. temperature 0: the argmax (the first index on ties, as torch.argmax).
//  3. top-k: the k best by (logit, then lower id).
//  4. softmax at the temperature over them: e_i = exp((l_i − max) / T).
//  5. top-p: the shortest prefix, in rank order, whose mass reaches top_p · Σe.
//  6. draw: r = u · (mass of the nucleus), u uniform in [0, 1) from the CPU's seeded stream;
//     the first token in rank order whose running mass exceeds r.
//
// Nothing is sorted. Ranks are compared through an order-preserving u32 key of the logit
// (`key`); each cut ("the tokens ranked at or above some token") is found by a bitwise binary
// search over keys, then one over ids within a group of equal keys. Each search step is one
// pass over the vocabulary with a workgroup reduction.

struct Params {
    vocab: u32,        // V
    row: u32,          // which row of logits
    top_k: u32,        // 0: all
    history: u32,      // distinct recent tokens in `recent`
    temperature: f32,  // 0: greedy
    top_p: f32,        // 1: all
    penalty: f32,      // 1: off
    u: f32,            // uniform in [0, 1)
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // [rows, V]
@group(0) @binding(1) var<storage, read> recent: array<u32>;        // [history]
@group(0) @binding(2) var<storage, read_write> work: array<f32>;    // [2V]: penalised logits, e
@group(0) @binding(3) var<storage, read_write> out: array<u32>;     // [1]: the chosen id
@group(0) @binding(4) var<uniform> p: Params;

const LANES: u32 = 256u; // SwiftShader's limit of invocations per workgroup
var<workgroup> red: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;

// Larger logit ⇔ larger key (sign bit set for positives, all bits flipped for negatives).
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn total(lane: u32, v: f32) -> f32 {
    red[lane] = v;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s /= 2u) {
        if (lane < s) {
            red[lane] += red[lane + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Token i's logit after the penalty (copied to work only when there is one).
fn value(i: u32) -> f32 {
    if (p.penalty != 1.0) {
        return work[i];
    }
    return logits[p.row * p.vocab + i];
}

// The weight a token carries in a search: 1 when counting (top-k), else its e.
fn weight(i: u32, counting: bool) -> f32 {
    return select(work[p.vocab + i], 1.0, counting);
}

// Σ weight over tokens with key ≥ k.
fn at_or_above(lane: u32, k: u32, counting: bool) -> f32 {
    var s = 0.0;
    for (var i = lane; i < p.vocab; i += LANES) {
        if (key(value(i)) >= k) {
            s += weight(i, counting);
        }
    }
    return total(lane, s);
}

// Σ weight over tokens with key == k and id < below.
fn ties_before(lane: u32, k: u32, below: u32, counting: bool) -> f32 {
    var s = 0.0;
    for (var i = lane; i < min(below, p.vocab); i += LANES) {
        if (key(value(i)) == k) {
            s += weight(i, counting);
        }
    }
    return total(lane, s);
}

// The first token, in rank order, at which the running weight (inclusive) passes `goal`:
// reaches it (`reach`) or exceeds it. Returns (its key, its id).
fn first_passing(lane: u32, goal: f32, reach: bool, counting: bool) -> vec2<u32> {
    // Largest key k whose at-or-above weight passes the goal.
    var k = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let c = k | (1u << u32(bit));
        let w = at_or_above(lane, c, counting);
        if ((reach && w >= goal) || (!reach && w > goal)) {
            k = c;
        }
    }
    // Within the tokens of key k, by id: what is left of the goal after those above.
    let rest = goal - at_or_above(lane, k + 1u, counting);
    var id = 0u;
    for (var bit = i32(firstLeadingBit(p.vocab)); bit >= 0i; bit--) {
        let c = id | (1u << u32(bit));
        let w = ties_before(lane, k, c, counting);
        if ((reach && w < rest) || (!reach && w <= rest)) {
            id = c;
        }
    }
    return vec2<u32>(k, id);
}

// Keeps e only for tokens ranked at or above `last` (key, id); zero elsewhere.
fn cut_after(lane: u32, last: vec2<u32>) {
    for (var i = lane; i < p.vocab; i += LANES) {
        let ki = key(value(i));
        if (!(ki > last.x || (ki == last.x && i <= last.y))) {
            work[p.vocab + i] = 0.0;
        }
    }
    storageBarrier();
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn sample(@builtin(local_invocation_index) lane: u32) {
    if (p.penalty != 1.0) {
        let base = p.row * p.vocab;
        for (var i = lane; i < p.vocab; i += LANES) {
            work[i] = logits[base + i];
        }
        storageBarrier();
        workgroupBarrier();
        for (var h = lane; h < p.history; h += LANES) {
            let t = recent[h];
            if (t < p.vocab) {
                let l = work[t];
                work[t] = select(l * p.penalty, l / p.penalty, l > 0.0);
            }
        }
        storageBarrier();
        workgroupBarrier();
    }

    // The best token: the greedy answer, and the max for the softmax.
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lane; i < p.vocab; i += LANES) {
        let v = value(i);
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    red[lane] = bv;
    red_i[lane] = bi;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s /= 2u) {
        if (lane < s) {
            let ov = red[lane + s];
            let oi = red_i[lane + s];
            if (ov > red[lane] || (ov == red[lane] && oi < red_i[lane])) {
                red[lane] = ov;
                red_i[lane] = oi;
            }
        }
        workgroupBarrier();
    }
    let mx = red[0];
    let best = red_i[0];
    workgroupBarrier();
    if (p.temperature == 0.0) {
        if (lane == 0u) {
            out[0] = best;
        }
        return;
    }

    // e for every token, then zero outside the top k.
    for (var i = lane; i < p.vocab; i += LANES) {
        work[p.vocab + i] = exp((value(i) - mx) / p.temperature);
    }
    storageBarrier();
    workgroupBarrier();
    if (p.top_k > 0u && p.top_k < p.vocab) {
        cut_after(lane, first_passing(lane, f32(p.top_k), true, true));
    }
    if (p.top_p < 1.0) {
        let z = at_or_above(lane, 0u, false);
        cut_after(lane, first_passing(lane, p.top_p * z, true, false));
    }
    let r = p.u * at_or_above(lane, 0u, false);
    let chosen = first_passing(lane, r, false, false);
    if (lane == 0u) {
        out[0] = chosen.y;
    }
}
