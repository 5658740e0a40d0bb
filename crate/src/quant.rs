//! Weight quantization, packed for the GPU.
//!
//! - `q4`: symmetric 4-bit in groups of 32 along a row, one f16 scale per group, value =
//!   (q − 8)·scale: GGUF Q4_0's arithmetic, so Q4_0 files convert losslessly. Eight weights
//!   per u32, in order: weight k of a row is nibble k % 8 of word k / 8 (bits 4·(k%8)..).
//! - `q8`: int8 in groups of 32, f16 scale, value = q·scale (GGUF Q8_0). Four weights per
//!   u32, weight k in byte k % 4 of word k / 4.
//! - `f16`: plain half precision.
//!
//! Scales are stored as f16 pairs in u32 words, which an f32-only kernel reads with
//! `unpack2x16float`: no `shader-f16` needed. A matrix [rows, cols] needs cols % 32 == 0.

use half::f16;
use serde::{Deserialize, Serialize};

pub const GROUP: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    Q4,
    Q8,
    F16,
    /// Unquantized (norm weights: tiny, and precision matters there).
    F32,
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q4" => Ok(Quant::Q4),
            "q8" => Ok(Quant::Q8),
            "f16" => Ok(Quant::F16),
            "f32" => Ok(Quant::F32),
            _ => Err(format!("unknown quantization `{s}` (q4, q8, f16, f32)")),
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quant::Q4 => "q4",
            Quant::Q8 => "q8",
            Quant::F16 => "f16",
            Quant::F32 => "f32",
        })
    }
}

impl Quant {
    /// The packing, spelled out in manifest.json so that a reader need not guess.
    pub fn layout(self) -> &'static str {
        match self {
            Quant::Q4 => "q4_0: row-major, 8 weights per u32 (weight k = bits 4(k%8).. of word k/8, value (q-8)*scale), f16 scale per 32 weights of a row",
            Quant::Q8 => "q8_0: row-major, 4 weights per u32 (weight k = signed byte k%4 of word k/4, value q*scale), f16 scale per 32 weights of a row",
            Quant::F16 => "f16: row-major",
            Quant::F32 => "f32: row-major",
        }
    }

    /// Whether this format has a separate scales blob.
    pub fn has_scales(self) -> bool {
        matches!(self, Quant::Q4 | Quant::Q8)
    }

    /// Bytes of the main blob for one row of `cols` weights.
    pub fn data_bytes_per_row(self, cols: usize) -> usize {
        match self {
            Quant::Q4 => cols / 2,
            Quant::Q8 => cols,
            Quant::F16 => cols * 2,
            Quant::F32 => cols * 4,
        }
    }

    /// Bytes of the scales blob for one row (f16 per group of 32).
    pub fn scale_bytes_per_row(self, cols: usize) -> usize {
        if self.has_scales() {
            cols / GROUP * 2
        } else {
            0
        }
    }

    /// Whether rows of `cols` weights can be stored in this format.
    pub fn fits(self, cols: usize) -> bool {
        !self.has_scales() || cols % GROUP == 0
    }

    /// Quantizes rows (`x.len()` a multiple of `cols`), appending to `data` and `scales`.
    pub fn quantize(self, x: &[f32], cols: usize, data: &mut Vec<u8>, scales: &mut Vec<u8>) {
        debug_assert!(self.fits(cols) && x.len() % cols == 0);
        match self {
            Quant::Q4 => {
                for group in x.chunks_exact(GROUP) {
                    let (d, q) = q4_group(group);
                    scales.extend_from_slice(&d.to_le_bytes());
                    for word in q.chunks_exact(8) {
                        let w = word
                            .iter()
                            .enumerate()
                            .fold(0u32, |w, (i, &n)| w | (n as u32) << (4 * i));
                        data.extend_from_slice(&w.to_le_bytes());
                    }
                }
            }
            Quant::Q8 => {
                for group in x.chunks_exact(GROUP) {
                    let (d, q) = q8_group(group);
                    scales.extend_from_slice(&d.to_le_bytes());
                    data.extend(q.iter().map(|&v| v as u8));
                }
            }
            Quant::F16 => data.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
            Quant::F32 => data.extend(x.iter().flat_map(|&v| v.to_le_bytes())),
        }
    }

    /// The f32 values of packed rows (`data` and `scales` as `quantize` wrote them).
    pub fn dequantize(self, data: &[u8], scales: &[u8]) -> Vec<f32> {
        match self {
            Quant::Q4 => {
                let mut out = Vec::with_capacity(data.len() * 2);
                for (g, packed) in data.chunks_exact(GROUP / 2).enumerate() {
                    let d = f16::from_le_bytes([scales[2 * g], scales[2 * g + 1]]).to_f32();
                    for word in packed.chunks_exact(4) {
                        let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                        out.extend((0..8).map(|i| ((w >> (4 * i)) & 15) as f32 - 8.0).map(|q| q * d));
                    }
                }
                out
            }
            Quant::Q8 => {
                let mut out = Vec::with_capacity(data.len());
                for (g, packed) in data.chunks_exact(GROUP).enumerate() {
                    let d = f16::from_le_bytes([scales[2 * g], scales[2 * g + 1]]).to_f32();
                    out.extend(packed.iter().map(|&b| b as i8 as f32 * d));
                }
                out
            }
            Quant::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Quant::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }
}

/// GGUF `quantize_row_q4_0_ref` for one group: d = (the value of largest magnitude) / −8,
/// q = min(15, trunc(x/d + 8.5)).
fn q4_group(x: &[f32]) -> (f16, [u8; GROUP]) {
    let max = x.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; GROUP];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 8.5) as i8).min(15) as u8;
    }
    (f16::from_f32(d), q)
}

/// GGUF `quantize_row_q8_0_ref` for one group: d = max|x| / 127, q = round(x/d).
fn q8_group(x: &[f32]) -> (f16, [i8; GROUP]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; GROUP];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (f16::from_f32(d), q)
}

/// Activations as the integer q4 products take them (shaders/quantize.wgsl, whose CPU twin
/// this is, byte for byte): per 32 values with m = max|x|, d = m · f32(1/127) and
/// q = round(x · 127 / m) (ties to even; in f64, where x · 127 is exact and the quotient is
/// never rounded onto or off a tie, so it is the exact rounding the shader computes in
/// integers); a block whose m is zero or subnormal is all zeros. Packed as 3 × 4 words: for
/// values 8j … 8j+7, word 2j holds the even ones and word 2j+1 the odd ones, a byte each
/// (the order `w & 0x0F0F0F0F` and `(w >> 4) & 0x0F0F0F0F` put a q4 word's nibbles in), then
/// d and Σq as f32 bits, then two zero words. `x.len()` a multiple of 32.
pub fn quantize_activations(x: &[f32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(x.len() / GROUP * 12);
    for block in x.chunks_exact(GROUP) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let normal = m.is_normal();
        let level = |v: f32| if normal && v.is_normal() { (v as f64 * 127.0 / m as f64).round_ties_even() as i32 } else { 0 };
        let q: Vec<i32> = block.iter().map(|&v| level(v)).collect();
        let pack = |idx: [usize; 4]| idx.iter().enumerate().fold(0u32, |w, (k, &i)| w | ((q[i] as u32 & 0xff) << (8 * k)));
        for j in 0..4 {
            let b = 8 * j;
            out.push(pack([b, b + 2, b + 4, b + 6]));
            out.push(pack([b + 1, b + 3, b + 5, b + 7]));
        }
        let d = if normal { m * (1.0 / 127.0) } else { 0.0 };
        out.extend([d.to_bits(), (q.iter().sum::<i32>() as f32).to_bits(), 0, 0]);
    }
    out
}

/// The values `quantize_activations` stands for: d · q.
pub fn dequantize_activations(packed: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(packed.len() / 12 * GROUP);
    for block in packed.chunks_exact(12) {
        let d = f32::from_bits(block[8]);
        let mut v = [0f32; GROUP];
        for j in 0..4 {
            for k in 0..4 {
                let byte = |w: u32| ((w >> (8 * k)) & 0xff) as u8 as i8 as f32 * d;
                v[8 * j + 2 * k] = byte(block[2 * j]);
                v[8 * j + 2 * k + 1] = byte(block[2 * j + 1]);
            }
        }
        out.extend(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5) * 0.2).collect()
    }

    fn round_trip(q: Quant, x: &[f32], cols: usize) -> Vec<f32> {
        let (mut data, mut scales) = (Vec::new(), Vec::new());
        q.quantize(x, cols, &mut data, &mut scales);
        assert_eq!(data.len(), x.len() / cols * q.data_bytes_per_row(cols));
        assert_eq!(scales.len(), x.len() / cols * q.scale_bytes_per_row(cols));
        q.dequantize(&data, &scales)
    }

    #[test]
    fn activations_round_trip_within_half_a_step() {
        let x: Vec<f32> = row(96, 7).iter().map(|v| v * 3.0).chain([0.0; 32]).collect();
        let packed = quantize_activations(&x);
        assert_eq!(packed.len(), 4 * 12);
        let back = dequantize_activations(&packed);
        for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let d = f32::from_bits(packed[12 * b + 8]);
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(d, amax * (1.0 / 127.0));
            for (a, y) in xs.iter().zip(ys) {
                assert!((a - y).abs() <= d / 2.0 * 1.0001, "block {b}: {a} vs {y} (d {d})");
            }
            // Σq as stored, and the block of largest magnitude value hits ±127.
            let sum: f32 = ys.iter().map(|y| if d > 0.0 { (y / d).round() } else { 0.0 }).sum();
            assert_eq!(f32::from_bits(packed[12 * b + 9]), sum);
            assert_eq!(ys.iter().fold(0f32, |m, v| m.max(v.abs())), 127.0 * d);
        }
        // The byte order of one word: values 0, 2, 4, 6 of the block (here 1, −2, 3, −4 steps).
        let mut x = [0f32; 32];
        x[..8].copy_from_slice(&[127.0, 9.0, -2.0, 9.0, 3.0, 9.0, -4.0, 9.0]);
        assert_eq!(quantize_activations(&x)[0], 0xfc03fe7f);
        // Ties round to even: with m = 127 a value is its own level.
        x[..8].copy_from_slice(&[127.0, 0.0, 2.5, 0.0, 3.5, 0.0, -2.5, 0.0]);
        assert_eq!(quantize_activations(&x)[0], 0xfe04027f);
    }

    #[test]
    fn errors_are_within_a_step() {
        // q8: half a step. q4: half a step, except that Q4_0's grid runs from −8·d to 7·d,
        // so a value opposite the group's extreme may be clipped by up to one step.
        let x = row(4 * 96, 7);
        for (q, steps, bound) in [(Quant::Q4, 8.0, 1.0), (Quant::Q8, 127.0, 0.5)] {
            let y = round_trip(q, &x, 96);
            for (g, (xs, ys)) in x.chunks(GROUP).zip(y.chunks(GROUP)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / steps;
                for (a, b) in xs.iter().zip(ys) {
                    // Plus the f16 rounding of the scale (2^-11 relative).
                    assert!((a - b).abs() <= step * bound + amax * 1e-3, "{q} group {g}: {a} vs {b}");
                }
            }
        }
        let y = round_trip(Quant::F16, &x, 96);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= a.abs() * 1e-3));
        assert_eq!(round_trip(Quant::F32, &x, 96), x);
    }

    #[test]
    fn q4_matches_gguf_on_worked_values() {
        // The extreme value is represented exactly: max = −8·d.
        let mut x = vec![0.0f32; 32];
        x[3] = -1.0;
        x[5] = 0.5;
        x[31] = 0.0625;
        let y = round_trip(Quant::Q4, &x, 32);
        assert_eq!(y[3], -1.0);
        assert_eq!(y[5], 0.5);
        // d = 1/8: 0.0625·8 + 8.5 = 9 exactly, so GGUF rounds the half step up.
        assert_eq!(y[31], 0.125);
        // Nibble order: weight k is nibble k % 8 of word k / 8 (x[3] → q 0, x[5] → q 12).
        let (mut data, mut scales) = (Vec::new(), Vec::new());
        Quant::Q4.quantize(&x, 32, &mut data, &mut scales);
        let w0 = u32::from_le_bytes(data[0..4].try_into().unwrap());
        assert_eq!(w0, 0x88C8_0888, "{w0:08x}");
        assert_eq!(f16::from_le_bytes([scales[0], scales[1]]).to_f32(), 0.125);
        // An all-zero group has a zero scale and decodes to zeros.
        assert_eq!(round_trip(Quant::Q4, &[0.0; 32], 32), vec![0.0; 32]);
    }
}
