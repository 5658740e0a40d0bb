// Sampling on the GPU, so that a decode step reads back 4 bytes, not the logits. It follows
// crate/src/sampling.rs (the reference) step for step:
//
//  1. penalty: logits of the (distinct) recent tokens are divided by `penalty` when
//     positive, multiplied when negative.
//  2. temperature 0: the argmax (the first index on ties, as the reference's argmax).
//  3. top-k: the k best by (logit, then lower id).
//  4. softmax at the temperature over them: e_i = exp((l_i − max) / T), in rank order.
//  5. top-p: the shortest prefix, in rank order, whose probability reaches top_p.
//  6. draw: r = u · (probability of the nucleus), u uniform in [0, 1) from the CPU's seeded
//     stream; the first token in rank order whose running probability exceeds r.
//
// The host picks one of three dispatch sequences (crate/src/gpu/sampler.rs); `penalize`
// comes first when the penalty is on (in place: the logits row is scratch once a draw is
// asked for, and the host passes each recent token once).
//
//  - greedy: `best` (CAP lanes' argmaxes over strided shares of the vocabulary), `best_of`.
//  - top-k with 1 ≤ k ≤ TOP_K_MAX (the usual case): a radix select narrows down the key of
//    the k-th best token one 8-bit digit a pass (`count0`…`count3`, every workgroup adding
//    its chunk's digit histogram to the shared one) until the tokens from its bin up fit
//    the CAP candidate slots (usually after one or two digits; the later passes then return
//    at once); `gather` collects them (or, when the k-th key's ties never fit, the tokens
//    above it); `finish` ranks the candidates and does steps 4–6 in one lane, in rank
//    order, with the reference's arithmetic. Every pass but the last spreads over the
//    device, instead of one workgroup making ~70 passes over the vocabulary.
//  - top-k off or above TOP_K_MAX: `sample_all`, one workgroup over the whole vocabulary.
//    Nothing is sorted: each cut ("the tokens ranked at or above some token") is found by a
//    bitwise binary search over keys, then one over ids within a group of equal keys, each
//    search step one pass over the vocabulary with a workgroup reduction.
//
// Ranks compare the order-preserving u32 key of a logit (`key`), then ids.

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

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;  // [rows, V] (penalised in place)
@group(0) @binding(1) var<storage, read> recent: array<u32>;        // [history]
@group(0) @binding(2) var<storage, read_write> work: array<f32>;    // [V]: e (sample_all)
@group(0) @binding(3) var<storage, read_write> out: array<u32>;     // [1]: the chosen id
// The select state, zeroed by the host before a draw: four 256-bin digit histograms
// (HIST), the number of candidates gathered (COUNT), and their ids (CAND, CAP of them; in
// greedy draws each `best` lane's best).
@group(0) @binding(4) var<storage, read_write> sel: array<atomic<u32>>;
@group(0) @binding(5) var<uniform> p: Params;

const LANES: u32 = 256u;     // lanes of sample_all (SwiftShader's limit)
const PART: u32 = 64u;       // lanes of the other passes' workgroups
// Tokens per workgroup of the radix select's passes (crate/src/gpu/sampler.rs): few
// workgroups, since CPU drivers pay for each that synchronises (2,048 a workgroup made
// SwiftShader's counting passes 2.9× slower over the 92,544 logits).
const CHUNK: u32 = 16384u;
const TOP_K_MAX: u32 = 256u; // the largest k of the radix select (finish's ranked list)
const CAP: u32 = 512u;       // candidate slots
const HIST: u32 = 0u;
const COUNT: u32 = 1024u;
const CAND: u32 = 1025u;
const NONE: u32 = 0xffffffffu;

var<workgroup> red: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;
var<workgroup> bins: array<atomic<u32>, 256>;
var<workgroup> cut: vec4<u32>;
var<workgroup> cand_key: array<u32, 512>;
var<workgroup> cand_id: array<u32, 512>;
var<workgroup> ranked: array<u32, 256>;
var<workgroup> taken: u32;

// Larger logit ⇔ larger key (sign bit set for positives, all bits flipped for negatives).
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn logit(i: u32) -> f32 {
    return logits[p.row * p.vocab + i];
}

@compute @workgroup_size(64)
fn penalize(@builtin(local_invocation_index) lane: u32) {
    for (var h = lane; h < p.history; h += PART) {
        let t = recent[h];
        if (t < p.vocab) {
            let at = p.row * p.vocab + t;
            let l = logits[at];
            logits[at] = select(l * p.penalty, l / p.penalty, l > 0.0);
        }
    }
}

// ---- greedy ----

// (v, i) ranks before (w, j) for the argmax: larger, then the lower id; NONE never does.
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return i != NONE && (j == NONE || v > w || (v == w && i < j));
}

// Each of CAP lanes takes the best of every CAP-th token from its own index on (adjacent
// lanes read adjacent logits), with no shared memory and no barriers: CPU drivers make a
// workgroup that synchronises cost far more than the loads (on SwiftShader this pass took
// 3.9 ms as 46 workgroups with a reduction in shared memory, 0.6 ms so).
@compute @workgroup_size(64)
fn best(@builtin(global_invocation_id) id: vec3<u32>) {
    var bv = 0.0;
    var bi = NONE;
    for (var i = id.x; i < p.vocab; i += CAP) {
        let v = logit(i);
        if (before(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    atomicStore(&sel[CAND + id.x], bi);
}

// The best of the lanes' bests, in one invocation.
@compute @workgroup_size(1)
fn best_of() {
    var bv = 0.0;
    var bi = NONE;
    for (var g = 0u; g < CAP; g++) {
        let i = atomicLoad(&sel[CAND + g]);
        if (i != NONE && before(logit(i), i, bv, bi)) {
            bv = logit(i);
            bi = i;
        }
    }
    out[0] = bi;
}

// ---- top-k by radix select ----

fn top_k() -> u32 {
    return min(p.top_k, p.vocab);
}

// The top-k's cut from the histograms of up to `rounds` digits: x the key bits fixed so far
// (the rest 0), y how many of the tokens whose key starts with them are still to be taken
// (after the k − y above), z how many such tokens there are, and w = 1 once every token
// from there up fits the candidate slots: then the later digits are not needed (those
// tokens are gathered and ranked whole), usually after one or two rounds.
fn resolve(rounds: u32) -> vec4<u32> {
    var prefix = 0u;
    var need = top_k();
    var have = p.vocab;
    for (var r = 0u; r < rounds; r++) {
        if (top_k() - need + have <= CAP) {
            break;
        }
        // From the highest digit down, to the bin where the k-th best falls.
        var d = 255u;
        var c = atomicLoad(&sel[HIST + r * 256u + d]);
        while (c < need && d > 0u) {
            need -= c;
            d -= 1u;
            c = atomicLoad(&sel[HIST + r * 256u + d]);
        }
        prefix |= d << (24u - 8u * r);
        have = c;
    }
    return vec4<u32>(prefix, need, have, select(0u, 1u, top_k() - need + have <= CAP));
}

// Adds the histogram of digit `round` (bits 31−8·round … 24−8·round of the key) over this
// workgroup's chunk, among the tokens whose higher digits are the cut's so far; nothing
// once the cut is settled.
fn count(round: u32, lane: u32, wg: u32) {
    for (var b = lane; b < 256u; b += PART) {
        atomicStore(&bins[b], 0u);
    }
    if (lane == 0u) {
        cut = resolve(round);
    }
    let c = workgroupUniformLoad(&cut);
    if (c.w == 1u) {
        return;
    }
    let prefix = c.x;
    let shift = 24u - 8u * round;
    let end = min((wg + 1u) * CHUNK, p.vocab);
    for (var i = wg * CHUNK + lane; i < end; i += PART) {
        let k = key(logit(i));
        if (((k ^ prefix) >> shift) >> 8u == 0u) {
            atomicAdd(&bins[(k >> shift) & 255u], 1u);
        }
    }
    workgroupBarrier();
    for (var b = lane; b < 256u; b += PART) {
        let n = atomicLoad(&bins[b]);
        if (n > 0u) {
            atomicAdd(&sel[HIST + round * 256u + b], n);
        }
    }
}

@compute @workgroup_size(64)
fn count0(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    count(0u, lane, wg.x);
}

@compute @workgroup_size(64)
fn count1(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    count(1u, lane, wg.x);
}

@compute @workgroup_size(64)
fn count2(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    count(2u, lane, wg.x);
}

@compute @workgroup_size(64)
fn count3(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    count(3u, lane, wg.x);
}

// Settled: every token whose key is at least the cut's prefix (then at most CAP, the top k
// among them). Otherwise all four digits are fixed, the cut is the k-th best key t, and
// its ties do not fit: the tokens above t, and finish takes the `need` ties of lowest id.
@compute @workgroup_size(64)
fn gather(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    if (lane == 0u) {
        cut = resolve(4u);
    }
    workgroupBarrier();
    let t = cut.x;
    let settled = cut.w == 1u;
    let end = min((wg.x + 1u) * CHUNK, p.vocab);
    for (var i = wg.x * CHUNK + lane; i < end; i += PART) {
        let k = key(logit(i));
        if (k > t || (k == t && settled)) {
            let slot = atomicAdd(&sel[COUNT], 1u);
            if (slot < CAP) {
                atomicStore(&sel[CAND + slot], i);
            }
        }
    }
}

@compute @workgroup_size(64)
fn finish(@builtin(local_invocation_index) lane: u32) {
    if (lane == 0u) {
        // (the cut's key bits, ties still to take, settled, candidates gathered)
        let c = resolve(4u);
        cut = vec4<u32>(c.x, c.y, c.w, min(atomicLoad(&sel[COUNT]), CAP));
        taken = 0u;
    }
    let c = workgroupUniformLoad(&cut);
    let t = c.x;
    let need = c.y;
    let gathered = c.w;
    for (var j = lane; j < gathered; j += PART) {
        let i = atomicLoad(&sel[CAND + j]);
        cand_id[j] = i;
        cand_key[j] = key(logit(i));
    }
    // Too many ties to gather: the first `need` tokens of key t in id order, PART ids a
    // round, each lane's place among them from a prefix sum of the round's matches.
    var m = gathered;
    if (c.z == 0u) {
        for (var base = 0u; base < p.vocab; base += PART) {
            if (workgroupUniformLoad(&taken) >= need) {
                break;
            }
            let i = base + lane;
            let hit = select(0u, 1u, i < p.vocab && key(logit(i)) == t);
            red_i[lane] = hit;
            workgroupBarrier();
            for (var s = 1u; s < PART; s *= 2u) {
                let add = select(0u, red_i[lane - s], lane >= s);
                workgroupBarrier();
                red_i[lane] += add;
                workgroupBarrier();
            }
            let at = taken + red_i[lane] - hit;
            if (hit == 1u && at < need) {
                cand_id[gathered + at] = i;
                cand_key[gathered + at] = t;
            }
            workgroupBarrier();
            if (lane == 0u) {
                taken += red_i[PART - 1u];
            }
        }
        m = gathered + need;
    }
    workgroupBarrier();
    // Rank of each candidate among the others; the top k land in rank order.
    let k = top_k();
    for (var j = lane; j < m; j += PART) {
        var r = 0u;
        for (var q = 0u; q < m; q++) {
            if (cand_key[q] > cand_key[j] || (cand_key[q] == cand_key[j] && cand_id[q] < cand_id[j])) {
                r++;
            }
        }
        if (r < k) {
            ranked[r] = cand_id[j];
        }
    }
    workgroupBarrier();
    if (lane != 0u) {
        return;
    }
    // Steps 4–6 as the reference does them, in rank order (probabilities in red).
    let mx = logit(ranked[0]);
    var total = 0.0;
    for (var r = 0u; r < k; r++) {
        let e = exp((logit(ranked[r]) - mx) / p.temperature);
        red[r] = e;
        total += e;
    }
    for (var r = 0u; r < k; r++) {
        red[r] = red[r] / total;
    }
    var keep = k;
    if (p.top_p < 1.0) {
        var acc = 0.0;
        for (var r = 0u; r < k; r++) {
            acc += red[r];
            if (acc >= p.top_p) {
                keep = r + 1u;
                break;
            }
        }
    }
    var mass = 0.0;
    for (var r = 0u; r < keep; r++) {
        mass += red[r];
    }
    var x = p.u * mass;
    var chosen = ranked[keep - 1u];
    for (var r = 0u; r < keep; r++) {
        x -= red[r];
        if (x < 0.0) {
            chosen = ranked[r];
            break;
        }
    }
    out[0] = chosen;
}

// ---- any top-k and top-p: one workgroup ----

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

// The weight a token carries in a search: 1 when counting (top-k), else its e.
fn weight(i: u32, counting: bool) -> f32 {
    return select(work[i], 1.0, counting);
}

// Σ weight over tokens with key ≥ k.
fn at_or_above(lane: u32, k: u32, counting: bool) -> f32 {
    var s = 0.0;
    for (var i = lane; i < p.vocab; i += LANES) {
        if (key(logit(i)) >= k) {
            s += weight(i, counting);
        }
    }
    return total(lane, s);
}

// Σ weight over tokens with key == k and id < below.
fn ties_before(lane: u32, k: u32, below: u32, counting: bool) -> f32 {
    var s = 0.0;
    for (var i = lane; i < min(below, p.vocab); i += LANES) {
        if (key(logit(i)) == k) {
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
        let ki = key(logit(i));
        if (!(ki > last.x || (ki == last.x && i <= last.y))) {
            work[i] = 0.0;
        }
    }
    storageBarrier();
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn sample_all(@builtin(local_invocation_index) lane: u32) {
    // The largest logit, for the softmax.
    var mx = -3.4e38;
    for (var i = lane; i < p.vocab; i += LANES) {
        mx = max(mx, logit(i));
    }
    red[lane] = mx;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s /= 2u) {
        if (lane < s) {
            red[lane] = max(red[lane], red[lane + s]);
        }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();

    // e for every token, then zero outside the top k.
    for (var i = lane; i < p.vocab; i += LANES) {
        work[i] = exp((logit(i) - mx) / p.temperature);
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
