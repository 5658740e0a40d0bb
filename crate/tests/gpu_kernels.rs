//! Each kernel alone against the CPU reference, at several shapes (odd sizes, token counts
//! that are not multiples of the tile, KV lengths that are not multiples of the block or the
//! split), on the device's optional features and on the portable path (no shader-f16, no
//! subgroups). Compared by normalised MSE, as llama.cpp's test-backend-ops does.
//!
//! Tolerances: f32 results summed in another order differ by a few ulps per element
//! (relative error well under 1e-6 at these lengths), so NMSE ≤ 1e-10 passes every correct
//! kernel while one wrong element in a few hundred gives ~1e-3 or worse. KV caches in f16
//! are compared against the reference run on the same f16-rounded K and V. Sampling must
//! pick exactly the reference's token.

use puyu::gpu::lab::{self, Buf, Launch};
use puyu::gpu::model::{kv_splits, lane_keys, lane_splits, rows_splits};
use puyu::gpu::sampler::GpuSampler;
use puyu::gpu::{shaders, FeatureWish, Gpu};
use puyu::quant::Quant;
use puyu::reference;
use puyu::sampling::{Draw, Sampler, SamplingParams};

fn gpu(wish: FeatureWish) -> Gpu {
    pollster::block_on(Gpu::open(wgpu::Backends::all(), wish)).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

/// Both paths: everything the adapter has, and the portable one.
fn both() -> Vec<Gpu> {
    vec![gpu(FeatureWish::default()), gpu(FeatureWish::PORTABLE)]
}

/// Deterministic values in [-1, 1) (SplitMix64).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    num / den.max(f64::MIN_POSITIVE)
}

fn bytes(x: &[f32]) -> &[u8] {
    bytemuck::cast_slice(x)
}

fn floats(b: &[u8], n: usize) -> Vec<f32> {
    bytemuck::cast_slice::<u8, f32>(b)[..n].to_vec()
}

fn run(gpu: &Gpu, l: Launch) -> Vec<Vec<u8>> {
    pollster::block_on(lab::run(gpu, &l)).unwrap()
}

const TOL: f64 = 1e-10;

/// The weights of the matmul tests: W (the gate half under GLU), the up half W3, then both
/// stacked, as packed data and scales, and W's and W3's values as the reference sees them.
struct Weights {
    data: Vec<Vec<u8>>,
    scales: Vec<Vec<u8>>,
    values: Vec<Vec<f32>>,
}

impl Weights {
    fn new(quant: Quant, rows: usize, cols: usize) -> Weights {
        let (mut data, mut scales, mut dequantized) = (Vec::new(), Vec::new(), Vec::new());
        for seed in [1, 100] {
            let (mut d, mut sc) = (Vec::new(), Vec::new());
            quant.quantize(&values(rows * cols, seed + rows as u64), cols, &mut d, &mut sc);
            dequantized.push(quant.dequantize(&d, &sc));
            data.push(d);
            scales.push(sc);
        }
        data.push(data.concat());
        scales.push(scales.concat());
        Weights { data, scales, values: dequantized }
    }

    /// The buffers `epilogue` ("", "ADD" or "GLU") reads and the reference's y for input x
    /// (`y0`: y before, which ADD adds to).
    fn case(&self, epilogue: &str, x: &[f32], y0: &[f32], cols: usize) -> (&[u8], &[u8], Vec<f32>) {
        let plain = reference::matmul(x, &self.values[0], cols);
        match epilogue {
            "ADD" => (&self.data[0], &self.scales[0], plain.iter().zip(y0).map(|(a, b)| a + b).collect()),
            "GLU" => {
                let up = reference::matmul(x, &self.values[1], cols);
                (&self.data[2], &self.scales[2], plain.iter().zip(&up).map(|(g, u)| reference::silu(*g) * u).collect())
            }
            _ => (&self.data[0], &self.scales[0], plain),
        }
    }
}

/// Every matmul variant against the reference: plain, with the residual add (ADD), and the
/// fused gate/up product (GLU: W = [W1; W3] in one buffer, y = silu(x·W1ᵀ) · (x·W3ᵀ), against
/// the reference's two products and SwiGLU), in every schedule and tile.
#[test]
fn matmul_all_variants_and_shapes() {
    // (rows, cols, tokens): one row; odd rows and tokens; K not a power of two; more
    // tokens than a tile of 8 and not a multiple of it; more GLU output rows than a
    // workgroup of 2 outputs per lane covers.
    let shapes = [(1, 32, 1), (67, 96, 5), (130, 256, 9), (64, 160, 17), (200, 64, 17)];
    for g in both() {
        for quant in [Quant::Q4, Quant::Q8, Quant::F16] {
            for &(rows, cols, tokens) in &shapes {
                let weights = Weights::new(quant, rows, cols);
                let x = values(tokens * cols, 7);
                let y0 = values(tokens * rows, 9);
                for epilogue in ["", "ADD", "GLU"] {
                    let (w, sc, want) = weights.case(epilogue, &x, &y0, cols);
                    for tile in ["", "TILE4", "TILE8"] {
                        // q4 weights also as texels (TEXELS: a texture, a row of K/32 texels a row).
                        let storages: &[&str] = if quant == Quant::Q4 { &["", "TEXELS"] } else { &[""] };
                        for (schedule, storage) in ["ROW_PER_LANE", "ROW_PER_LANE+ROWS2", "ROW_PER_LANE+ROWS2+ROWS4", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8", "", "SUBGROUPS"].iter().flat_map(|s| storages.iter().map(move |t| (*s, *t))) {
                            // GLU pairs a lane's rows: at least 2 per lane.
                            if (schedule == "SUBGROUPS" && !g.subgroups) || (epilogue == "GLU" && schedule == "ROW_PER_LANE") {
                                continue;
                            }
                            let mut defines: Vec<&str> = vec![quant.to_string().to_uppercase().leak()];
                            defines.extend([epilogue, tile, storage].into_iter().chain(schedule.split('+')).filter(|d| !d.is_empty()));
                            let w_buf = if storage == "TEXELS" { Buf::Texels(w, cols as u32 / 32) } else { Buf::In(w) };
                            let t = match tile { "TILE4" => 4, "TILE8" => 8, _ => 1 };
                            let r = rows as u32;
                            let per_lane = [("ROWS8", 8), ("ROWS4", 4), ("ROWS2", 2)].iter().find(|(d, _)| schedule.ends_with(d)).map_or(1, |&(_, n)| n);
                            let outputs_per_lane = if epilogue == "GLU" { per_lane / 2 } else { per_lane };
                            let groups = if schedule.starts_with("ROW_PER_LANE") { r.div_ceil(64 * outputs_per_lane) } else { r };
                            let out = run(&g, Launch {
                                source: shaders::MATMUL,
                                entry: "matmul",
                                defines: &defines,
                                buffers: vec![Buf::In(bytes(&x)), w_buf, Buf::In(sc), Buf::Out(bytes(&y0))],
                                params: [r, cols as u32, tokens as u32, r, 0, 0, 0, 0],
                                groups: [groups, 1, (tokens as u32).div_ceil(t)],
                            });
                            let e = nmse(&floats(&out[0], tokens * rows), &want);
                            assert!(e <= TOL, "matmul {defines:?} {rows}x{cols} T={tokens}: NMSE {e:.2e}");
                        }
                    }
                }
            }
        }
    }
}

/// The 8-bit activation path: quantize.wgsl against its CPU twin (byte for byte: both round
/// exactly, ties included), and the integer q4
/// products (XQ8, lane per row, every epilogue, tile and rows per lane) on the same 8-bit
/// input against the reference product of the values it stands for (NMSE ≤ 1e-10: the
/// integer sums are exact, only the f32 scaling differs). Against the f32 product the
/// quantization error shows: each value is off by up to half a step of max|x|/127, an NMSE
/// near 2e-5 for uniform values, 1.2e-4 with the hand-made block of ties below (most of its
/// values sit far under its maximum); 1e-3 bounds it.
#[test]
fn int8_activations_quantize_and_multiply() {
    use puyu::quant::{dequantize_activations, quantize_activations};
    let g = gpu(FeatureWish::PORTABLE);
    for &(rows, cols, tokens) in &[(1, 32, 1), (67, 96, 5), (130, 256, 9), (200, 64, 17)] {
        // Values of several magnitudes, and an all-zero block in the first token.
        let mut x: Vec<f32> = values(tokens * cols, 7).iter().enumerate().map(|(i, v)| v * (1 + i % 5) as f32).collect();
        x[..32].fill(0.0);
        if tokens > 1 {
            // Exact ties (m = 127: each value is its own level), a subnormal and a value
            // under m / 256.
            x[cols..cols + 8].copy_from_slice(&[127.0, 2.5, 3.5, -2.5, -0.5, 1e-40, 0.4, -126.5]);
        }
        let want = quantize_activations(&x);
        let out = run(&g, Launch {
            source: shaders::QUANTIZE,
            entry: "quantize",
            defines: &[],
            buffers: vec![Buf::In(bytes(&x)), Buf::Out(bytemuck::cast_slice(&vec![0u32; want.len()]))],
            params: [cols as u32, tokens as u32, 0, 0, 0, 0, 0, 0],
            groups: [(cols as u32 / 32).div_ceil(64), tokens as u32, 1],
        });
        let got: &[u32] = bytemuck::cast_slice(&out[0]);
        for (b, (gb, wb)) in got.chunks(12).zip(want.chunks(12)).enumerate() {
            assert_eq!(gb, wb, "{tokens}x{cols}: block {b}");
        }

        // The products, on the CPU's 8-bit x: against the reference on the values it stands
        // for, and (plain) on x itself.
        let weights = Weights::new(Quant::Q4, rows, cols);
        let xhat = dequantize_activations(&want);
        let y0 = values(tokens * rows, 9);
        let exact = weights.case("", &x, &y0, cols).2;
        for epilogue in ["", "ADD", "GLU"] {
            let (w, sc, want) = weights.case(epilogue, &xhat, &y0, cols);
            for tile in ["", "TILE4", "TILE8"] {
                for (per_lane, storage) in [1u32, 2, 4, 8].into_iter().flat_map(|n| [(n, ""), (n, "TEXELS")]) {
                    if epilogue == "GLU" && per_lane == 1 {
                        continue;
                    }
                    let mut defines = vec!["Q4", "XQ8", "ROW_PER_LANE"];
                    defines.extend([epilogue, tile, storage].into_iter().filter(|d| !d.is_empty()));
                    let w_buf = if storage == "TEXELS" { Buf::Texels(w, cols as u32 / 32) } else { Buf::In(w) };
                    defines.extend(&["ROWS2", "ROWS4", "ROWS8"][..per_lane.ilog2() as usize]);
                    let t = match tile { "TILE4" => 4, "TILE8" => 8, _ => 1 };
                    let outputs_per_lane = if epilogue == "GLU" { per_lane / 2 } else { per_lane };
                    let out = run(&g, Launch {
                        source: shaders::MATMUL,
                        entry: "matmul",
                        defines: &defines,
                        buffers: vec![Buf::In(bytemuck::cast_slice(&quantize_activations(&x))), w_buf, Buf::In(sc), Buf::Out(bytes(&y0))],
                        params: [rows as u32, cols as u32, tokens as u32, rows as u32, 0, 0, 0, 0],
                        groups: [(rows as u32).div_ceil(64 * outputs_per_lane), 1, (tokens as u32).div_ceil(t)],
                    });
                    let got = floats(&out[0], tokens * rows);
                    let e = nmse(&got, &want);
                    assert!(e <= TOL, "matmul {defines:?} {rows}x{cols} T={tokens}: NMSE {e:.2e}");
                    if epilogue.is_empty() {
                        let e = nmse(&got, &exact);
                        assert!(e <= 1e-3, "matmul {defines:?} {rows}x{cols} T={tokens} against f32 x: NMSE {e:.2e}");
                    }
                }
            }
        }
    }
}

/// A block of rows of a bigger matrix (the split-buffer path): only its rows of y change.
#[test]
fn matmul_row_block_writes_its_rows() {
    let g = gpu(FeatureWish::PORTABLE);
    let (rows, total, row0, cols, tokens) = (10, 40, 24, 64, 3);
    let w = values(rows * cols, 3);
    let (mut data, mut scales) = (Vec::new(), Vec::new());
    Quant::Q8.quantize(&w, cols, &mut data, &mut scales);
    let wq = Quant::Q8.dequantize(&data, &scales);
    let x = values(tokens * cols, 4);
    let y0 = values(tokens * total, 5);
    let out = run(&g, Launch {
        source: shaders::MATMUL,
        entry: "matmul",
        defines: &["Q8"],
        buffers: vec![Buf::In(bytes(&x)), Buf::In(&data), Buf::In(&scales), Buf::Out(bytes(&y0))],
        params: [rows as u32, cols as u32, tokens as u32, total as u32, row0 as u32, 0, 0, 0],
        groups: [rows as u32, 1, tokens as u32],
    });
    let got = floats(&out[0], tokens * total);
    let block = reference::matmul(&x, &wq, cols);
    for t in 0..tokens {
        for o in 0..total {
            let want = if (row0..row0 + rows).contains(&o) { block[t * rows + o - row0] } else { y0[t * total + o] };
            assert!((got[t * total + o] - want).abs() <= 1e-5 * want.abs().max(1.0), "t {t} o {o}");
        }
    }
}

#[test]
fn attention_decode_and_prefill() {
    // (nh, nkv, hd, T, pos0): decode over short and long caches (many splits, the last
    // one partial), prefill from empty and after a cache (past one lane's llvmpipe budget in
    // the last), hd not a multiple of 64.
    let cases = [(4, 2, 16, 1, 0), (4, 2, 16, 1, 300), (2, 1, 32, 7, 5), (8, 2, 128, 3, 70), (4, 4, 40, 65, 0), (16, 8, 128, 1, 1000), (2, 1, 128, 70, 3000), (2, 2, 64, 1, 4999), (2, 1, 128, 66, 8000)];
    for g in both() {
        for &(nh, nkv, hd, t, pos0) in &cases {
            let ctx = pos0 + t;
            let q = values(t * nh * hd, 11);
            let mut k = values(ctx * nkv * hd, 12);
            let mut v = values(ctx * nkv * hd, 13);
            // Scores of a realistic spread: scale K up so softmax is not flat.
            k.iter_mut().for_each(|x| *x *= 3.0);
            let cache = |x: &[f32]| -> Vec<u8> {
                if g.f16 {
                    x.iter().flat_map(|&a| half::f16::from_f32(a).to_le_bytes()).collect()
                } else {
                    bytes(x).to_vec()
                }
            };
            let (kb, vb) = (cache(&k), cache(&v));
            if g.f16 {
                // The reference on the values the cache holds.
                let round = |x: &mut Vec<f32>| x.iter_mut().for_each(|a| *a = half::f16::from_f32(*a).to_f32());
                round(&mut k);
                round(&mut v);
            }
            let want = reference::attention(&q, &k, &v, (nh, nkv, hd), pos0);
            let defines: &[&str] = if g.f16 { &["KV_F16"] } else { &[] };
            let part_rows = 64;
            // The workgroup kernel (GPUs) walks a split's keys in one invocation too: past
            // ~8,000 keys at hd 128 that is over llvmpipe's loop budget (see `lane_keys`), so
            // the longest case checks only the lane kernel, which splits.
            let workgroup = if ctx > lane_keys(hd) { vec![] } else { vec![kv_splits(t, ctx, nh, part_rows), (1, ctx.next_multiple_of(64) as u32)] };
            for (splits, split_len) in workgroup {
                let part = vec![0f32; t * nh * splits as usize * (hd + 2)];
                let out = vec![0f32; t * nh * hd];
                let params = [nh as u32, nkv as u32, hd as u32, t as u32, pos0 as u32, splits, split_len, (1.0 / (hd as f32).sqrt()).to_bits()];
                let buffers = |part: &[f32]| -> Vec<Vec<u8>> { vec![bytes(&q).to_vec(), kb.clone(), vb.clone(), bytes(part).to_vec(), bytes(&out).to_vec()] };
                let b = buffers(&part);
                let parts = run(&g, Launch {
                    source: shaders::ATTENTION,
                    entry: "attend",
                    defines,
                    buffers: vec![Buf::In(&b[0]), Buf::In(&b[1]), Buf::In(&b[2]), Buf::Out(&b[3]), Buf::Out(&b[4])],
                    params,
                    groups: [splits, t as u32, nh as u32],
                });
                let res = run(&g, Launch {
                    source: shaders::ATTENTION,
                    entry: "combine",
                    defines,
                    buffers: vec![Buf::In(&b[0]), Buf::In(&b[1]), Buf::In(&b[2]), Buf::Out(&parts[0]), Buf::Out(&b[4])],
                    params,
                    groups: [t as u32, nh as u32, 1],
                });
                let got = floats(&res[1], t * nh * hd);
                let e = nmse(&got, &want);
                assert!(e <= TOL, "attention nh {nh} nkv {nkv} hd {hd} T {t} pos0 {pos0} splits {splits}×{split_len} f16 {}: NMSE {e:.2e}", g.f16);
            }
            // The lane-per-query kernel of CPU adapters: over one split it writes the output
            // itself (NaN until then); over ranges longer than a lane may walk on llvmpipe,
            // split, then the usual combine.
            let (splits, split_len) = rows_splits(ctx, hd, 8).unwrap();
            assert_eq!(splits > 1, ctx > lane_keys(hd));
            let params = [nh as u32, nkv as u32, hd as u32, t as u32, pos0 as u32, splits, split_len, (1.0 / (hd as f32).sqrt()).to_bits()];
            let part = vec![f32::NAN; t * nh * splits as usize * (hd + 2)];
            let out = vec![f32::NAN; t * nh * hd];
            let mut res = run(&g, Launch {
                source: shaders::ATTENTION,
                entry: "attend_rows",
                defines,
                buffers: vec![Buf::In(bytes(&q)), Buf::In(&kb), Buf::In(&vb), Buf::Out(bytes(&part)), Buf::Out(bytes(&out))],
                params,
                groups: [t.div_ceil(64) as u32, nh as u32, splits],
            });
            if splits > 1 {
                res = run(&g, Launch {
                    source: shaders::ATTENTION,
                    entry: "combine",
                    defines,
                    buffers: vec![Buf::In(bytes(&q)), Buf::In(&kb), Buf::In(&vb), Buf::Out(&res[0]), Buf::Out(bytes(&out))],
                    params,
                    groups: [t as u32, nh as u32, 1],
                });
            }
            let e = nmse(&floats(&res[1], t * nh * hd), &want);
            assert!(e <= TOL, "attend_rows nh {nh} nkv {nkv} hd {hd} T {t} pos0 {pos0} {splits}×{split_len} f16 {}: NMSE {e:.2e}", g.f16);
            if t == 1 {
                // Decode a lane per split (CPU adapters), then the usual combine.
                let (splits, split_len) = lane_splits(ctx, hd).unwrap();
                assert!(splits <= 64);
                let params = [nh as u32, nkv as u32, hd as u32, 1, pos0 as u32, splits, split_len, (1.0 / (hd as f32).sqrt()).to_bits()];
                let part = vec![f32::NAN; nh * splits as usize * (hd + 2)];
                let out = vec![f32::NAN; nh * hd];
                let parts = run(&g, Launch {
                    source: shaders::ATTENTION,
                    entry: "attend_split_lanes",
                    defines,
                    buffers: vec![Buf::In(bytes(&q)), Buf::In(&kb), Buf::In(&vb), Buf::Out(bytes(&part)), Buf::Out(bytes(&out))],
                    params,
                    groups: [nh as u32, 1, 1],
                });
                let res = run(&g, Launch {
                    source: shaders::ATTENTION,
                    entry: "combine",
                    defines,
                    buffers: vec![Buf::In(bytes(&q)), Buf::In(&kb), Buf::In(&vb), Buf::Out(&parts[0]), Buf::Out(bytes(&out))],
                    params,
                    groups: [1, nh as u32, 1],
                });
                let e = nmse(&floats(&res[1], nh * hd), &want);
                assert!(e <= TOL, "attend_split_lanes nh {nh} nkv {nkv} hd {hd} pos0 {pos0} {splits}×{split_len} f16 {}: NMSE {e:.2e}", g.f16);
            }
        }
    }
}

#[test]
fn rms_norm_shapes() {
    let g = gpu(FeatureWish::PORTABLE);
    for (dim, tokens) in [(64, 1), (100, 3), (2048, 2)] {
        let x = values(dim * tokens, 21);
        let w = values(dim, 22);
        let eps = 1e-5;
        let out = run(&g, Launch {
            source: shaders::NORM,
            entry: "rms_norm",
            defines: &[],
            buffers: vec![Buf::In(bytes(&x)), Buf::In(bytes(&w)), Buf::Out(bytes(&vec![0f32; dim * tokens]))],
            params: [dim as u32, tokens as u32, (eps as f32).to_bits(), 0, 0, 0, 0, 0],
            groups: [tokens as u32, 1, 1],
        });
        let e = nmse(&floats(&out[0], dim * tokens), &reference::rms_norm(&x, &w, eps));
        assert!(e <= TOL, "rms_norm {dim}×{tokens}: NMSE {e:.2e}");
    }
}

#[test]
fn embed_rows_of_each_quant() {
    let g = gpu(FeatureWish::PORTABLE);
    let (vocab, dim) = (50, 96);
    let table = values(vocab * dim, 41);
    let tokens: Vec<u32> = vec![0, 49, 7, 7, 23];
    for quant in [Quant::Q4, Quant::Q8, Quant::F16] {
        let (mut data, mut scales) = (Vec::new(), Vec::new());
        quant.quantize(&table, dim, &mut data, &mut scales);
        let deq = quant.dequantize(&data, &scales);
        let define: &str = quant.to_string().to_uppercase().leak();
        let out = run(&g, Launch {
            source: shaders::EMBED,
            entry: "embed",
            defines: &[define],
            buffers: vec![Buf::In(bytemuck::cast_slice(&tokens)), Buf::In(&data), Buf::In(&scales), Buf::Out(bytes(&vec![0f32; tokens.len() * dim]))],
            params: [dim as u32, tokens.len() as u32, 0, vocab as u32, 0, 0, 0, 0],
            groups: [(dim as u32).div_ceil(64), tokens.len() as u32, 1],
        });
        let want: Vec<f32> = tokens.iter().flat_map(|&t| deq[t as usize * dim..(t as usize + 1) * dim].to_vec()).collect();
        assert_eq!(floats(&out[0], want.len()), want, "embed {quant}: dequantisation is exact");
    }
}

/// RoPE on the packed qkv rows, with the KV-cache write, against `Rope::apply`: at positions
/// past max_position_embeddings (dynamic NTK) and after a cache.
#[test]
fn rope_and_cache_write() {
    use puyu::tiny::TINY_NTK;
    let config = TINY_NTK.config();
    let (nh, nkv, hd) = (config.num_heads, config.num_kv_heads, config.head_dim);
    let group = nh / nkv;
    for g in both() {
        for (t, pos0) in [(1, 0), (5, 3), (9, 80)] {
            let mut rope = puyu::rope::Rope::new(&config);
            rope.update(pos0 + t);
            let qkv = values(t * config.qkv_rows(), 51);
            let table: Vec<f32> = (0..t).flat_map(|k| rope.cos_sin(pos0 + k).flat_map(|(c, s)| [c, s]).collect::<Vec<_>>()).collect();
            let ctx = pos0 + t;
            let kv_bytes = if g.f16 { 2 } else { 4 };
            let zeros = vec![0u8; ctx * nkv * hd * kv_bytes];
            let defines: &[&str] = if g.f16 { &["KV_F16"] } else { &[] };
            let out = run(&g, Launch {
                source: shaders::ROPE,
                entry: "rope_kv",
                defines,
                buffers: vec![Buf::In(bytes(&qkv)), Buf::In(bytes(&table)), Buf::Out(bytes(&vec![0f32; t * nh * hd])), Buf::Out(&zeros), Buf::Out(&zeros)],
                params: [nh as u32, nkv as u32, hd as u32, t as u32, pos0 as u32, 0, 0, 0],
                groups: [(hd as u32 / 2).div_ceil(64), group as u32 + 2, (nkv * t) as u32],
            });
            let cache = |b: &[u8]| -> Vec<f32> {
                if g.f16 {
                    b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                } else {
                    floats(b, b.len() / 4)
                }
            };
            let (q, kc, vc) = (floats(&out[0], t * nh * hd), cache(&out[1]), cache(&out[2]));
            let f16_round = |x: f32| if g.f16 { half::f16::from_f32(x).to_f32() } else { x };
            for tok in 0..t {
                for kvh in 0..nkv {
                    let src = &qkv[tok * config.qkv_rows() + kvh * (group + 2) * hd..];
                    for slot in 0..group + 2 {
                        let mut want = src[slot * hd..(slot + 1) * hd].to_vec();
                        if slot <= group {
                            rope.apply(&mut want, pos0 + tok);
                        }
                        let got: Vec<f32> = if slot < group {
                            let n = kvh * group + slot;
                            q[(tok * nh + n) * hd..(tok * nh + n + 1) * hd].to_vec()
                        } else {
                            let c = if slot == group { &kc } else { &vc };
                            let at = ((pos0 + tok) * nkv + kvh) * hd;
                            want.iter_mut().for_each(|x| *x = f16_round(*x));
                            c[at..at + hd].to_vec()
                        };
                        let e = nmse(&got, &want);
                        // f16 caches: the rounding of the reference value may differ by an ulp
                        // from the GPU's (its rotation rounds differently): 2^-11 relative.
                        let tol = if g.f16 && slot >= group { 1e-6 } else { TOL };
                        assert!(e <= tol, "rope T {t} pos0 {pos0} token {tok} kv {kvh} slot {slot}: NMSE {e:.2e}");
                    }
                }
            }
        }
    }
}

/// The GPU sampler picks exactly the token the CPU sampler picks, for the same logits,
/// settings and random stream: greedy, temperature, top-k, top-p, penalty, and ties.
#[test]
fn sampling_matches_the_cpu_sampler() {
    let g = gpu(FeatureWish::PORTABLE);
    let settings = [
        (0.0, 0, 1.0, 1.0),
        (0.0, 0, 1.0, 1.3),
        (1.0, 0, 1.0, 1.0),
        (0.7, 50, 1.0, 1.0),
        (0.8, 50, 0.8, 1.0),
        (1.3, 0, 0.5, 1.1),
        (0.5, 3, 0.9, 1.0),
        (1.0, 1, 1.0, 1.0),
        // The largest top-k of the radix select, and one past it (the one-workgroup path).
        (1.0, 256, 0.95, 1.0),
        (1.0, 300, 0.95, 1.2),
    ];
    let mut drawn = std::collections::HashSet::new();
    // 300 tokens: all of them fit the candidate slots before any digit is counted; 1,000:
    // the first digit settles the cut; 5,000: the second.
    for vocab in [300, 1000, 5000] {
        let s = SamplerRig::new(&g, vocab);
        for (case, &(temperature, top_k, top_p, repeat_penalty)) in settings.iter().enumerate() {
            for round in 0..6u64 {
                let mut logits: Vec<f32> = values(vocab, 100 + round).iter().map(|x| x * 6.0).collect();
                if round % 2 == 1 {
                    // Many exact ties: logits on a coarse grid.
                    logits.iter_mut().for_each(|x| *x = (*x * 2.0).round() / 2.0);
                }
                let history: Vec<u32> = values(20, round).iter().map(|x| ((x + 1.0) * 500.0) as u32 % vocab as u32).collect();
                let params = SamplingParams { temperature, top_k, top_p, repeat_penalty, repeat_last_n: 16, seed: 1000 * case as u64 + round };
                let (mut cpu, mut on_gpu) = (Sampler::new(params.clone()), Sampler::new(params));
                for step in 0..4 {
                    let want = cpu.sample(&logits, &history);
                    let got = s.draw(&g, &logits, &on_gpu.gpu_draw(&history));
                    assert_eq!(got, want, "vocab {vocab} settings {case} round {round} step {step} ({temperature}, k {top_k}, p {top_p}, penalty {repeat_penalty})");
                    drawn.insert((vocab, case, got));
                }
            }
        }
    }
    // The draws are not all the same token (the check above is not vacuous).
    assert!(drawn.len() > 4 * settings.len(), "{}", drawn.len());
}

/// The GPU sampler over a logits buffer the test fills before each draw (draws penalise
/// the logits in place).
struct SamplerRig {
    logits: wgpu::Buffer,
    sampler: GpuSampler,
}

impl SamplerRig {
    fn new(g: &Gpu, vocab: usize) -> SamplerRig {
        let logits = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits"),
            size: vocab as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let sampler = GpuSampler::new(g, &logits, vocab, 64).unwrap();
        SamplerRig { logits, sampler }
    }

    fn draw(&self, g: &Gpu, logits: &[f32], draw: &Draw) -> u32 {
        g.queue.write_buffer(&self.logits, 0, bytes(logits));
        let mut enc = g.device.create_command_encoder(&Default::default());
        self.sampler.encode(&g.queue, &mut enc, draw, 0);
        g.queue.submit([enc.finish()]);
        pollster::block_on(g.read_f32(self.sampler.chosen())).unwrap()[0].to_bits()
    }
}

/// The cases the small vocabularies above cannot reach: the real vocabulary (6 workgroups
/// of the radix select, 512 lanes of the greedy pass); logits alike in their first two or
/// three bytes, so the radix select needs its third or fourth digit (the latter with 361
/// exact ties of the best key, gathered whole and ranked by id); every logit equal (the ties
/// of the k-th best never fit the candidate slots, so they are taken in id order); and
/// greedy ties across lanes (the lowest id wins).
#[test]
fn sampling_matches_the_cpu_sampler_at_the_edges() {
    let g = gpu(FeatureWish::PORTABLE);
    let vocab = 92544;
    let s = SamplerRig::new(&g, vocab);
    let real: Vec<f32> = values(vocab, 7).iter().map(|x| x * 8.0).collect();
    let flat = vec![0.25f32; vocab];
    let mut two_peaks = values(vocab, 8);
    two_peaks[70000] = 5.0;
    two_peaks[3000] = 5.0;
    let digits3: Vec<f32> = (0..vocab as u32).map(|i| f32::from_bits(0x4040_0000 | (i * 7919 % 65536))).collect();
    let digits4: Vec<f32> = (0..vocab as u32).map(|i| f32::from_bits(0x4040_0000 | (i % 256))).collect();
    let mut drawn = std::collections::HashSet::new();
    for (name, logits) in [("real", &real), ("three digits", &digits3), ("four digits", &digits4), ("flat", &flat), ("two peaks", &two_peaks)] {
        for (temperature, top_k, top_p) in [(0.0, 0, 1.0), (0.8, 50, 0.8), (1.0, 256, 1.0), (1.0, 1, 1.0)] {
            let params = SamplingParams { temperature, top_k, top_p, repeat_penalty: 1.1, repeat_last_n: 8, seed: 5 };
            let (mut cpu, mut on_gpu) = (Sampler::new(params.clone()), Sampler::new(params));
            let history = [3000, 12, 70000, 92543];
            for step in 0..3 {
                let want = cpu.sample(logits, &history);
                let got = s.draw(&g, logits, &on_gpu.gpu_draw(&history));
                assert_eq!(got, want, "{name} ({temperature}, k {top_k}, p {top_p}) step {step}");
                drawn.insert(got);
            }
        }
    }
    assert!(drawn.len() > 10, "{}", drawn.len());
}
