//! Linear layers on Q6_K weights kept as GGUF stores them (ggml's `block_q6_K`: super-blocks
//! of 256 values, `w = d · sc_j · (q − 32)` with `q` in 0..=63, an f16 `d` per super-block
//! and a signed 8-bit `sc_j` per sub-block of 16), against activations quantized to int8 per
//! block of 32 as in [`super::int8`].
//!
//! Why: Q6_K is the LM head (tied to the token embeddings in most small models: Qwen3-0.6B's
//! 151,936 × 1,024) and the V and FFN-down projections of half the layers in the `Q4_K_M`
//! files most people download. Converted to int8 those read 1.125 bytes a weight per decode
//! step; kept as stored, 0.83 (nibbles 0.5, the two high bits 0.25, the scales 0.0625, `d`
//! as f32 0.016). A lone stream's step is bound by memory traffic: on Qwen3-0.6B Q4_K_M
//! these tensors are 214 M of its 596 M weights. The tied head also gives the embedding
//! rows back ([`SixBitLinear::weight_row`]), so the table is not held a second time.
//!
//! Per block `b` of 32 (sub-blocks `2b` and `2b + 1`) and a row of activations
//! `x ≈ sx·qx`: `Σ w·x = sx · d · (Σ_j sc_j · Σ q·qx − 32 · Σ_j sc_j · Σ qx)`. The integer
//! sum is exact on every path (at most 2 · 128 · 16 · 63 · 127 in magnitude); it becomes f32
//! once per block, in the same order everywhere, so every path gives the same bits.
//! - **avx2** (also used on AVX-512 CPUs when the loader picks this layer; it picks int8 on
//!   CPUs with VNNI, whose int8 kernel was tuned there): `vpmaddubsw` of the unsigned 6-bit
//!   `q` by the signed activations (63 · 127 · 2 per pair, two pairs summed: ≤ 32,004, no
//!   saturation), then `vpmaddwd` by the sub-block's scales; the offset term by one more
//!   `vpmaddwd` of the two scales by the two activation sums of the block. One or two rows
//!   take a whole panel per pass; larger batches half a panel for four rows, so that each
//!   unpacking of the six bits serves four rows;
//! - **scalar**: plain i32 arithmetic.
//!
//! Layout: panels of 16 output columns. Per panel and block of 32, the low nibbles as the
//! 4- and 5-bit layers hold them (4 chunks of 64 bytes; chunk `j` holds values `8j..8j+4` in
//! its low nibbles and `8j+4..8j+8` in its high ones, 4 bytes per column), then 4 × 32 bytes
//! of high bits: byte `i` of part `j` holds the two high bits of chunk `j`'s byte `i` (bits
//! 0–1 its low nibble's value, 2–3 its high nibble's) and of byte `32 + i` (bits 4–5 and
//! 6–7), so that one shift and one mask per 32 values put them in place; then the 16
//! columns' `sc_j` (i8) of the block's two sub-blocks, so a panel is one stream of bytes.
//! Per panel and super-block, the 16 columns' `d` (f32) apart.

use super::cpu::KernelLevel;
use super::int8::{quantize_activations, BLOCK};
use super::team::{available_threads, parallel_for_each};
use super::tiles::{for_each_tile, in_row_blocks, store_tile, Epilogue, SharedOut, PANEL};

/// Values per super-block.
const SUPER: usize = 256;
/// Bytes of one GGUF Q6_K super-block: 128 bytes of low nibbles, 64 of high bits, 16
/// scales, an f16 `d`.
const BLOCK_BYTES: usize = 210;
/// Blocks of 32 per super-block.
const SUPER_BLOCKS: usize = SUPER / BLOCK;
/// Bytes of one chunk of nibbles: 16 columns × 4 values, two values per byte.
const CHUNK_BYTES: usize = PANEL * 4;
/// Chunks per block of 32.
const BLOCK_CHUNKS: usize = BLOCK / 8;
/// Nibble bytes per panel and block.
const NIBBLE_BYTES: usize = BLOCK_CHUNKS * CHUNK_BYTES;
/// High-bit bytes per panel and block: 512 values × 2 bits.
const HIGH_BYTES: usize = BLOCK_CHUNKS * 32;
/// Where a panel's block holds its scales: the two sub-blocks' 16 columns, one i8 each.
const SCALES_AT: usize = NIBBLE_BYTES + HIGH_BYTES;
/// Layout bytes per panel and block: nibbles, high bits, scales (one stream to read).
const PANEL_BLOCK_BYTES: usize = SCALES_AT + 2 * PANEL;

/// Whether the loader should keep Q6_K tensors as stored on this CPU: yes where the kernel
/// path is below AVX-512 VNNI (measured on an AVX2 Zen 3: fewer bytes per step than the int8
/// conversion); with VNNI the int8 kernel, tuned there, stays until this one is measured on
/// such a CPU.
pub fn preferred() -> bool {
    KernelLevel::detected() < KernelLevel::Avx512Vnni
}

/// Values `32·bb..32·bb + 32` (`bb` in 0..8) of a Q6_K super-block as their six bits `q`
/// (0..=63), as ggml's `dequantize_row_q6_K` reads them: in each half of 128, four runs of
/// 32 take the low or high nibbles of 64 bytes of `ql` and a pair of bits of 32 bytes of
/// `qh`. Eight values a word (no per-value shifts or index checks): the LM head's
/// conversion is most of a Q4_K_M file's load.
fn q6k_run(block: &[u8; BLOCK_BYTES], bb: usize) -> [u8; BLOCK] {
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const CRUMBS: u64 = 0x0303_0303_0303_0303;
    let (half, run) = (bb / 4, bb % 4);
    let ql = &block[64 * half + 32 * (run % 2)..][..BLOCK];
    let qh = &block[128 + 32 * half..][..BLOCK];
    let word = |bytes: &[u8], i: usize| {
        u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("eight bytes"))
    };
    let shift = if run < 2 { 0 } else { 4 };
    let mut q = [0u8; BLOCK];
    for (i, out) in q.chunks_exact_mut(8).enumerate() {
        let v = ((word(ql, i) >> shift) & LOW) | (((word(qh, i) >> (2 * run)) & CRUMBS) << 4);
        out.copy_from_slice(&v.to_le_bytes());
    }
    q
}

/// The scale of sub-block `j` (0..16) of a Q6_K super-block.
fn q6k_scale(block: &[u8], j: usize) -> i8 {
    block[192 + j] as i8
}

/// The `d` of a Q6_K super-block.
fn q6k_d(block: &[u8]) -> f32 {
    half::f16::from_le_bytes([block[208], block[209]]).to_f32()
}

/// A linear layer `y = x · Wᵀ + b` with Q6_K weights.
pub struct SixBitLinear {
    n: usize,
    k: usize,
    blocks: usize,
    panels: usize,
    /// Per panel and block, [`PANEL_BLOCK_BYTES`]: the nibbles, the high bits, the scales
    /// (0 in padding).
    weights: Vec<u8>,
    /// Per panel, super-block and lane: `d`.
    d: Vec<f32>,
    bias: Vec<f32>,
}

impl SixBitLinear {
    /// Builds the layer from rows of `k` values stored as GGUF Q6_K super-blocks, given in
    /// `parts` (stacked tensors, read in place), `bias.len()` rows in all.
    ///
    /// # Errors
    ///
    /// When `k` is not a positive multiple of 256, the bytes are not whole rows, or a `d` is
    /// NaN or infinite.
    pub fn from_parts(parts: &[&[u8]], bias: &[f32], k: usize) -> Result<Self, String> {
        let n = bias.len();
        if k == 0 || !k.is_multiple_of(SUPER) {
            return Err(format!(
                "Q6_K: a row of {k} values is not whole super-blocks of {SUPER}"
            ));
        }
        let row_bytes = k / SUPER * BLOCK_BYTES;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if Some(total) != n.checked_mul(row_bytes)
            || parts.iter().any(|p| !p.len().is_multiple_of(row_bytes))
        {
            return Err(format!(
                "Q6_K: {total} bytes are not {n} rows of {k} values"
            ));
        }
        let rows: Vec<&[u8]> = parts
            .iter()
            .flat_map(|p| p.chunks_exact(row_bytes))
            .collect();
        let (blocks, supers, panels) = (k / BLOCK, k / SUPER, n.div_ceil(PANEL));
        let mut weights = vec![0u8; panels * blocks * PANEL_BLOCK_BYTES];
        let mut d = vec![0.0f32; panels * supers * PANEL];
        let mut bias_padded = vec![0.0f32; panels * PANEL];
        bias_padded[..n].copy_from_slice(bias);
        let mut panel_parts: Vec<_> = weights
            .chunks_mut(blocks * PANEL_BLOCK_BYTES)
            .zip(d.chunks_mut(supers * PANEL))
            .collect();
        // Panels convert in parallel: loading is on the cold-start path.
        parallel_for_each(&mut panel_parts, available_threads(), &|panel, (w, d)| {
            for lane in 0..PANEL.min(n - panel * PANEL) {
                let row = rows[panel * PANEL + lane];
                for sb in 0..supers {
                    let block: &[u8; BLOCK_BYTES] = row[sb * BLOCK_BYTES..][..BLOCK_BYTES]
                        .try_into()
                        .expect("a super-block");
                    d[sb * PANEL + lane] = q6k_d(block);
                    for bb in 0..SUPER_BLOCKS {
                        let q = q6k_run(block, bb);
                        let out: &mut [u8; PANEL_BLOCK_BYTES] = (&mut w
                            [(sb * SUPER_BLOCKS + bb) * PANEL_BLOCK_BYTES..][..PANEL_BLOCK_BYTES])
                            .try_into()
                            .expect("a panel's block");
                        place_block(&q, lane, out);
                        for h in 0..2 {
                            out[SCALES_AT + h * PANEL + lane] = q6k_scale(block, 2 * bb + h) as u8;
                        }
                    }
                }
            }
        });
        // The six bits and the scales are integers: only `d` can be NaN or infinite.
        if d.iter().any(|v| !v.is_finite()) {
            return Err("Q6_K: holds NaN or infinite values".into());
        }
        Ok(Self {
            n,
            k,
            blocks,
            panels,
            weights,
            d,
            bias: bias_padded,
        })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (weights and scales, `d` and bias).
    pub fn bytes(&self) -> usize {
        self.weights.len() + 4 * (self.d.len() + self.bias.len())
    }

    /// Row `c` of the weight matrix (`k` values), as ggml's `dequantize_row_q6_K` computes
    /// it (`d · sc · (q − 32)` in f32, in that order): the tied LM head gives the token
    /// embeddings back bit for bit. `None` when out of range.
    pub fn weight_row(&self, c: usize) -> Option<Vec<f32>> {
        if c >= self.n {
            return None;
        }
        let (panel, lane) = (c / PANEL, c % PANEL);
        let w = &self.weights[panel * self.blocks * PANEL_BLOCK_BYTES..];
        let d = &self.d[panel * (self.k / SUPER) * PANEL..];
        Some(
            (0..self.k)
                .map(|i| {
                    let (b, v) = (i / BLOCK, i % BLOCK);
                    let block = &w[b * PANEL_BLOCK_BYTES..][..PANEL_BLOCK_BYTES];
                    let q = read_value(block, lane, v);
                    let sc = block[SCALES_AT + (v / 16) * PANEL + lane] as i8 as f32;
                    d[(i / SUPER) * PANEL + lane] * sc * (q as i32 - 32) as f32
                })
                .collect(),
        )
    }

    /// `out[m×n] = x[m×k] · Wᵀ + b`, then the `epilogue`, on the kernel path of `level`,
    /// using up to `threads` threads.
    ///
    /// # Panics
    ///
    /// When `x` is not `m×k` or `out` not `m×n`.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
        epilogue: Epilogue,
    ) {
        in_row_blocks("q6_k", (x, m, self.k), (out, self.n), |x, m, out| {
            self.forward_block(x, m, out, level, threads, epilogue)
        });
    }

    fn forward_block(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        level: KernelLevel,
        threads: usize,
        epilogue: Epilogue,
    ) {
        let (n, k, blocks) = (self.n, self.k, self.blocks);
        if m == 0 {
            return;
        }
        let level = level.min(KernelLevel::detected());
        let mut xq = vec![0i8; m * k];
        let mut x_scales = vec![0.0f32; m * blocks];
        quantize_activations(x, k, k, false, &mut xq, &mut x_scales, level);
        // Per row and block, the sums of its two halves of 16 (|Σ| ≤ 16 · 127, an i16 each),
        // side by side in one i32 as `vpmaddwd` pairs them with the two sub-blocks' scales.
        let x_sums: Vec<i32> = xq
            .chunks_exact(BLOCK)
            .map(|q| {
                let half = |h: &[i8]| h.iter().map(|&v| v as i32).sum::<i32>() as u16 as u32;
                (half(&q[..16]) | (half(&q[16..]) << 16)) as i32
            })
            .collect();
        let shared = SharedOut(out.as_mut_ptr());
        // Decode's lone rows take both halves of a panel in one pass; batches four rows.
        let mr = if m <= 2 { 2 } else { 4 };
        let supers = k / SUPER;
        for_each_tile(m, self.panels, mr, 1, threads, &|r0, rows, p, _| {
            let mut acc = [0.0f32; 4 * PANEL];
            let tile = Tile {
                x: &xq[r0 * k..(r0 + rows) * k],
                x_scales: &x_scales[r0 * blocks..(r0 + rows) * blocks],
                x_sums: &x_sums[r0 * blocks..(r0 + rows) * blocks],
                k,
                blocks,
                w: &self.weights[p * blocks * PANEL_BLOCK_BYTES..][..blocks * PANEL_BLOCK_BYTES],
                d: &self.d[p * supers * PANEL..][..supers * PANEL],
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx2
                | KernelLevel::Avx512Vnni
                | KernelLevel::Avx512Bf16
                | KernelLevel::Amx => {
                    // SAFETY: the level is at most the detected one, and every level from
                    // AVX2 up has AVX2 and FMA; the tile holds `rows` ≤ 4 rows and a panel.
                    unsafe { avx2::tile(rows, &tile, acc.as_mut_ptr()) }
                }
                _ => scalar_tile(rows, &tile, &mut acc),
            }
            // SAFETY: disjoint tiles inside m rows and the layer's panels; `out` (m×n) stays
            // mutably borrowed for the call.
            unsafe {
                store_tile(
                    &mut acc,
                    &self.bias,
                    n,
                    (r0, rows),
                    (p, 1),
                    shared,
                    epilogue,
                    level,
                )
            };
        });
    }
}

/// Writes the 32 values `q` (0..=63) of one block of column `lane` into the panel's block
/// layout `out` (see the module's doc).
fn place_block(q: &[u8; BLOCK], lane: usize, out: &mut [u8; PANEL_BLOCK_BYTES]) {
    // Four values (bytes `4·lane..4·lane + 4` of a chunk) a word: loading converts every
    // Q6_K block through here.
    const LOW: u32 = 0x0F0F_0F0F;
    const CRUMBS: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes(q[i..i + 4].try_into().expect("four values"));
    let (nibbles, high) = out.split_at_mut(NIBBLE_BYTES);
    let shift = 4 * (lane / 8);
    for j in 0..BLOCK_CHUNKS {
        let (lo, hi) = (word(8 * j), word(8 * j + 4));
        let at = j * CHUNK_BYTES + lane * 4;
        nibbles[at..at + 4].copy_from_slice(&((lo & LOW) | ((hi & LOW) << 4)).to_le_bytes());
        let crumbs = ((lo >> 4) & CRUMBS) | (((hi >> 4) & CRUMBS) << 2);
        let at = j * 32 + (lane % 8) * 4;
        let old = u32::from_le_bytes(high[at..at + 4].try_into().expect("four bytes"));
        high[at..at + 4].copy_from_slice(&(old | (crumbs << shift)).to_le_bytes());
    }
}

/// Value `v` (0..32) of column `lane` from a panel's block layout: the inverse of
/// [`place_block`].
fn read_value(block: &[u8], lane: usize, v: usize) -> u8 {
    let (j, t) = (v / 8, v % 8);
    let byte = lane * 4 + t % 4;
    let nibble = block[j * CHUNK_BYTES + byte];
    let crumbs = block[NIBBLE_BYTES + j * 32 + byte % 32] >> (4 * (byte / 32));
    if t < 4 {
        (nibble & 0x0F) | ((crumbs & 3) << 4)
    } else {
        (nibble >> 4) | (((crumbs >> 2) & 3) << 4)
    }
}

/// The inputs of one tile (one panel).
struct Tile<'a> {
    /// `rows × k` signed activations.
    x: &'a [i8],
    /// `rows × blocks`.
    x_scales: &'a [f32],
    /// `rows × blocks`: the two halves' sums, as i16 pairs.
    x_sums: &'a [i32],
    k: usize,
    blocks: usize,
    /// `blocks × PANEL_BLOCK_BYTES`.
    w: &'a [u8],
    /// `supers × 16`.
    d: &'a [f32],
}

/// The portable kernel (same arithmetic, same order, as the AVX2 one).
fn scalar_tile(rows: usize, t: &Tile, acc: &mut [f32]) {
    for r in 0..rows {
        let xr = &t.x[r * t.k..][..t.k];
        let mut sums = [0.0f32; PANEL];
        for b in 0..t.blocks {
            let block = &t.w[b * PANEL_BLOCK_BYTES..][..PANEL_BLOCK_BYTES];
            let xb = &xr[b * BLOCK..][..BLOCK];
            let pair = t.x_sums[r * t.blocks + b];
            let halves = [pair as i16 as i32, (pair >> 16) as i16 as i32];
            let sx = t.x_scales[r * t.blocks + b];
            for (lane, s) in sums.iter_mut().enumerate() {
                let mut dot = 0i32;
                for (h, half) in xb.chunks_exact(16).enumerate() {
                    let sc = block[SCALES_AT + h * PANEL + lane] as i8 as i32;
                    let q: i32 = half
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| read_value(block, lane, 16 * h + i) as i32 * x as i32)
                        .sum();
                    dot += sc * q - 32 * sc * halves[h];
                }
                let d = t.d[(b / SUPER_BLOCKS) * PANEL + lane];
                *s = (dot as f32).mul_add(sx * d, *s);
            }
        }
        acc[r * PANEL..][..PANEL].copy_from_slice(&sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, BLOCK, BLOCK_CHUNKS, CHUNK_BYTES, NIBBLE_BYTES, PANEL, PANEL_BLOCK_BYTES};
    use super::{SCALES_AT, SUPER_BLOCKS};
    use crate::kernels::lowbit::avx2::{doubled, row_step};
    use std::arch::x86_64::*;

    /// AVX2 tile of `mr ≤ 4` rows × 1 panel. One or two rows take both halves of the panel
    /// at once ([`whole`]: one pass over the weights, as decode's lone rows need); more take
    /// one half (8 columns) at a time ([`half`]): a row then needs two registers, so four rows
    /// share each unpacking of the six bits (criterion, `q6k-decode`: 10–20% less time at 8
    /// to 32 rows, 15–25% more at 1 and 2).
    ///
    /// # Safety
    ///
    /// As [`half`].
    pub unsafe fn tile(mr: usize, t: &Tile, acc: *mut f32) {
        unsafe {
            match mr {
                1 => whole::<1>(t, acc),
                2 => whole::<2>(t, acc),
                3 => {
                    half::<3, 0>(t, acc);
                    half::<3, 1>(t, acc)
                }
                4 => {
                    half::<4, 0>(t, acc);
                    half::<4, 1>(t, acc)
                }
                _ => unreachable!("tile rows"),
            }
        }
    }

    /// Both halves of the panel for `MR ≤ 2` rows, into `acc[r·16..]`.
    ///
    /// # Safety
    ///
    /// As [`half`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn whole<const MR: usize>(t: &Tile, acc: *mut f32) {
        let nibble = _mm256_set1_epi8(0x0F);
        let crumb = _mm256_set1_epi8(0x30);
        let (x, w, k) = (t.x.as_ptr(), t.w.as_ptr(), t.k);
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        let mut d = [_mm256_setzero_ps(); 2];
        for b in 0..t.blocks {
            if b % SUPER_BLOCKS == 0 {
                let at = t.d.as_ptr().add(b / SUPER_BLOCKS * PANEL);
                d = [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))];
            }
            let block = w.add(b * PANEL_BLOCK_BYTES);
            let sc = block.add(SCALES_AT).cast::<i8>();
            // Per half of the panel: each sub-block's scales doubled, and the two sub-blocks'
            // scales side by side for the offset term.
            let scale = [
                [doubled(sc), doubled(sc.add(8))],
                [doubled(sc.add(PANEL)), doubled(sc.add(PANEL + 8))],
            ];
            let pairs = [0, 8].map(|h| {
                let a = _mm_loadl_epi64(sc.add(h).cast());
                let c = _mm_loadl_epi64(sc.add(PANEL + h).cast());
                _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, c))
            });
            let mut dots = [[_mm256_setzero_si256(); 2]; MR];
            for j in 0..BLOCK_CHUNKS {
                let raw0 = _mm256_loadu_si256(block.add(j * CHUNK_BYTES).cast());
                let raw1 = _mm256_loadu_si256(block.add(j * CHUNK_BYTES + 32).cast());
                let bits = _mm256_loadu_si256(block.add(NIBBLE_BYTES + 32 * j).cast());
                let lo = [
                    _mm256_or_si256(
                        _mm256_and_si256(raw0, nibble),
                        _mm256_and_si256(_mm256_slli_epi16(bits, 4), crumb),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(raw1, nibble),
                        _mm256_and_si256(bits, crumb),
                    ),
                ];
                let hi = [
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(raw0, 4), nibble),
                        _mm256_and_si256(_mm256_slli_epi16(bits, 2), crumb),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(raw1, 4), nibble),
                        _mm256_and_si256(_mm256_srli_epi16(bits, 2), crumb),
                    ),
                ];
                for (r, dot) in dots.iter_mut().enumerate() {
                    let at = x.add(r * k + b * BLOCK + 8 * j);
                    for h in 0..2 {
                        dot[h] = row_step(dot[h], at, lo[h], hi[h], scale[j / 2][h]);
                    }
                }
            }
            for (r, (s, dot)) in sums.iter_mut().zip(&dots).enumerate() {
                let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                let halves = _mm256_set1_epi32(*t.x_sums.get_unchecked(r * t.blocks + b));
                for h in 0..2 {
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(pairs[h], halves), 5);
                    let total = _mm256_sub_epi32(dot[h], offset);
                    s[h] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(sx, d[h]), s[h]);
                }
            }
        }
        for (r, s) in sums.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * PANEL), s[0]);
            _mm256_storeu_ps(acc.add(r * PANEL + 8), s[1]);
        }
    }

    /// Columns `8H..8H + 8` of the panel for `MR` rows, into `acc[r·16 + 8H..]`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA; `t` holds at least `MR` rows and one panel; `acc`
    /// is valid for writing `MR × 16` values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn half<const MR: usize, const H: usize>(t: &Tile, acc: *mut f32) {
        let nibble = _mm256_set1_epi8(0x0F);
        let crumb = _mm256_set1_epi8(0x30);
        let (x, w, k) = (t.x.as_ptr(), t.w.as_ptr(), t.k);
        let mut sums = [_mm256_setzero_ps(); MR];
        let mut d = _mm256_setzero_ps();
        for b in 0..t.blocks {
            if b % SUPER_BLOCKS == 0 {
                d = _mm256_loadu_ps(t.d.as_ptr().add(b / SUPER_BLOCKS * PANEL + 8 * H));
            }
            let block = w.add(b * PANEL_BLOCK_BYTES);
            let sc = block.add(SCALES_AT + 8 * H).cast::<i8>();
            // Each sub-block's scales doubled, and the two side by side for the offset term.
            let scale = [doubled(sc), doubled(sc.add(PANEL))];
            let pairs = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(
                _mm_loadl_epi64(sc.cast()),
                _mm_loadl_epi64(sc.add(PANEL).cast()),
            ));
            let mut dots = [_mm256_setzero_si256(); MR];
            for j in 0..BLOCK_CHUNKS {
                let raw = _mm256_loadu_si256(block.add(j * CHUNK_BYTES + 32 * H).cast());
                let bits = _mm256_loadu_si256(block.add(NIBBLE_BYTES + 32 * j).cast());
                // The high bits of this half's low and high nibbles: bits 0–1 and 2–3 (H = 0)
                // or 4–5 and 6–7 (H = 1), moved to 4–5.
                let (lo_bits, hi_bits) = if H == 0 {
                    (_mm256_slli_epi16(bits, 4), _mm256_slli_epi16(bits, 2))
                } else {
                    (bits, _mm256_srli_epi16(bits, 2))
                };
                let lo = _mm256_or_si256(
                    _mm256_and_si256(raw, nibble),
                    _mm256_and_si256(lo_bits, crumb),
                );
                let hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble),
                    _mm256_and_si256(hi_bits, crumb),
                );
                for (r, dot) in dots.iter_mut().enumerate() {
                    let at = x.add(r * k + b * BLOCK + 8 * j);
                    *dot = row_step(*dot, at, lo, hi, scale[j / 2]);
                }
            }
            for (r, (s, dot)) in sums.iter_mut().zip(&dots).enumerate() {
                let sx = _mm256_set1_ps(*t.x_scales.get_unchecked(r * t.blocks + b));
                let halves = _mm256_set1_epi32(*t.x_sums.get_unchecked(r * t.blocks + b));
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(pairs, halves), 5);
                let total = _mm256_sub_epi32(*dot, offset);
                *s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(sx, d), *s);
            }
        }
        for (r, s) in sums.iter().enumerate() {
            _mm256_storeu_ps(acc.add(r * PANEL + 8 * H), *s);
        }
    }
}

#[cfg(test)]
#[path = "sixbit_tests.rs"]
mod tests;
