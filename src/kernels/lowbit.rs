//! Linear layers on 4- and 5-bit weights kept as GGUF stores them (Q4_0 and Q4_1: blocks of
//! 32 values, `w = d·q + m` with `q` in 0..=15; Q5_0 and Q5_1 the same with a fifth bit, `q` in
//! 0..=31; Q4_K and Q5_K: super-blocks of 256 whose eight sub-blocks of 32 are the same form,
//! `d·sc_j · q − dmin·m_j`, with 6-bit `sc_j` and `m_j`), against activations quantized to int8
//! per block of 32 as in [`super::int8`].
//!
//! Q4_K is the bulk of the `Q4_K_M` files most people download; where 256 does not divide a
//! row (Qwen2.5-0.5B's 896, Gemma 3 1B's 1,152) llama-quantize writes Q5_0 instead, so those
//! files are mostly Q5_0. Each K-quant sub-block runs in the Q4_1 / Q5_1 form with `m =
//! −dmin·m_j` computed in f32 as ggml's dequantization computes it, so the weights keep their
//! exact values and run on the same kernels. Its scale is kept as the CPU's kernel wants it
//! ([`LowBitLayout`]): for the VNNI kernel `d = d·sc_j` in f32 per block, as ggml computes
//! it; for AVX2 the 6-bit `sc_j` and `m_j` as bytes and `d`, `−dmin` once per super-block
//! (0.59 bytes a Q4_K weight against 0.75), `sc_j` multiplying the block's integer sum
//! (exactly, by `vpmaddwd`) before `d` scales it.
//!
//! The fifth bit is held apart, one bit per weight, and added to the nibbles in registers: a
//! 5-bit layer is 0.875 bytes a weight with its f32 scales, against the 1.125 of int8, and
//! loads without requantizing. Its layout follows the CPU too: 64-bit masks where AVX-512
//! adds them under a mask register, bit planes for AVX2, which turns them into bytes with one
//! shift and one mask per 32 values.
//!
//! Why: generation reads every weight once per step. At a batch of one the step is bound by
//! memory traffic, and 4-bit weights are half the bytes of int8 ones (0.75 byte per weight with
//! the f32 scales, against 1.25); in a batched step the unpacking is shared by every row of a
//! tile. The weights also keep their exact values, as llama.cpp computes them.
//!
//! Per block `b`, for a row of activations `x ≈ sx·qx`:
//! `Σ w·x = sx · (d · Σ q·qx + m · Σ qx)` (a K-quant in the AVX2 layout: `(sc_j · Σ q·qx)`
//! in place of `Σ q·qx` and its super-block's `d`). The integer sums are exact on every path;
//! the two multiply-adds per block run in the same order everywhere, so every path gives the
//! same bits for one layout:
//! - **avx512-vnni** and up: `vpdpbusd` multiplies the unsigned nibbles by the signed
//!   activations directly (no offset correction is needed); the fifth bit is a masked byte add;
//! - **avx2**: `vpmaddubsw` (31 · 127 · 2 fits in i16, so it never saturates); the fifth bit is
//!   shifted out of its plane (or, on the mask layout, expanded from its mask by a byte
//!   shuffle and compare). One or two rows take a whole panel per pass; larger batches half
//!   a panel for four rows, so that each unpacking serves four rows;
//! - **scalar**: plain i32 arithmetic.
//!
//! Layout: panels of 16 output columns; per panel and block, 4 chunks of 64 bytes; chunk `j`
//! holds groups `2j` (low nibbles) and `2j + 1` (high nibbles), each group 16 columns × 4
//! consecutive reduction indices, as `vpdpbusd` consumes them. 5-bit formats add, per panel
//! and block, 64 bytes of fifth bits, in one of two layouts:
//! - masks (8 × 64 bits): mask `2j + h` holds the fifth bit of the 64 bytes of chunk `j`'s
//!   low (`h = 0`) or high (`h = 1`) nibbles, bit `i` for byte `i`;
//! - planes (2 × 32 bytes): the 16 vectors of 32 bytes AVX2 unpacks per block (chunk `j`'s
//!   bytes `32s..32s + 32`, `s` = 0 or 1, low or high nibbles `h`) each take one bit of
//!   every byte of a plane: plane `j / 2`, bit `4·(j mod 2) + 2h + s` of byte `i` for byte
//!   `32s + i` of the chunk.
//!
//! A K-quant in the AVX2 layout adds per panel and block the 16 columns' `sc_j` then their
//! `m_j` (32 bytes), and holds `d` and `−dmin` per panel, super-block and column.

use super::cpu::KernelLevel;
use super::int8::{quantize_activations, BLOCK};
use super::team::{available_threads, parallel_for_each};
use super::tiles::{for_each_tile, in_row_blocks, store_tile, Epilogue, SharedOut, PANEL};

/// Bytes of one chunk: 16 columns × 4 indices, two groups in the two nibbles.
const CHUNK_BYTES: usize = PANEL * 4;
/// Chunks per block of 32.
const BLOCK_CHUNKS: usize = BLOCK / 8;
/// Fifth-bit masks per panel and block (5-bit formats).
const BLOCK_MASKS: usize = 2 * BLOCK_CHUNKS;

/// How a layer keeps what its kernel reads besides the nibbles (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowBitLayout {
    /// For the VNNI kernel: fifth bits as 64-bit masks, which AVX-512's masked byte add
    /// takes; every block's `d` and `m` as f32.
    Vnni,
    /// For the AVX2 kernel: fifth bits as bit planes, which AVX2 shifts into place; a
    /// K-quant's 6-bit sub-block scales and mins kept as bytes beside one f32 `d` and `−dmin`
    /// per super-block (0.59 bytes a Q4_K weight where f32 `d` and `m` per block make 0.75).
    Avx2,
}

impl LowBitLayout {
    /// The layout for this CPU's kernel: the VNNI kernel's where it runs, else AVX2's (the
    /// AVX2 and portable paths read both; the VNNI kernel only its own).
    pub fn preferred() -> Self {
        if KernelLevel::detected() >= KernelLevel::Avx512Vnni {
            LowBitLayout::Vnni
        } else {
            LowBitLayout::Avx2
        }
    }

    /// Where the fifth bit of byte `byte` (0..64) of chunk `j`'s low (`h = 0`) or high
    /// (`h = 1`) nibbles is, as a bit index into the 8 words of one panel's block.
    fn position(self, j: usize, h: usize, byte: usize) -> usize {
        match self {
            LowBitLayout::Vnni => 64 * (2 * j + h) + byte,
            LowBitLayout::Avx2 => {
                let (s, i) = (byte / 32, byte % 32);
                8 * (32 * (j / 2) + i) + 4 * (j % 2) + 2 * h + s
            }
        }
    }

    /// The fifth bit (0 or 1) of byte `byte` of chunk `j`'s low or high nibbles (as
    /// [`Self::position`]), from the 8 words of one panel's block.
    fn bit(self, words: &[u64], j: usize, h: usize, byte: usize) -> i32 {
        let at = self.position(j, h, byte);
        ((words[at / 64] >> (at % 64)) & 1) as i32
    }

    /// Sets the fifth bits of one block of one column (`lane` of its panel; bit `v` of `high`
    /// for value `v`) in the panel's 8 words of that block: the bits [`Self::position`]
    /// names, computed a word or a byte at a time (loading converts every block of a 5-bit
    /// file through here; a bit at a time it was a third of the load).
    fn spread(self, high: u32, lane: usize, words: &mut [u64]) {
        match self {
            // Mask `2j + h` holds values `8j + 4h + t` (`v / 4` = the mask) at bit
            // `4·lane + t`: four bits of `high` a mask.
            LowBitLayout::Vnni => {
                for (mask, word) in words.iter_mut().enumerate() {
                    *word |= u64::from((high >> (4 * mask)) & 0xF) << (4 * lane);
                }
            }
            // Value `16p + 4g + t` (chunk `2p + g / 2`, nibbles `h = g mod 2`) is bit
            // `2g + s` (`s = lane / 8`) of byte `4·(lane mod 8) + t` of plane `p`.
            LowBitLayout::Avx2 => {
                let s = lane / 8;
                for p in 0..2 {
                    for t in 0..4 {
                        let byte = (0..4).fold(0u64, |byte, g| {
                            byte | u64::from((high >> (16 * p + 4 * g + t)) & 1) << (2 * g + s)
                        });
                        let at = 32 * p + 4 * (lane % 8) + t;
                        words[at / 8] |= byte << (8 * (at % 8));
                    }
                }
            }
        }
    }
}

/// A GGUF 4- or 5-bit block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowBitFormat {
    /// `{d: f16, qs: [u8; 16]}`, `w = d·(q − 8)`.
    Q4_0,
    /// `{d: f16, m: f16, qs: [u8; 16]}`, `w = d·q + m`.
    Q4_1,
    /// `{d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]}` for 256 values: sub-block `j`
    /// is `w = d·sc_j · q − dmin·m_j` (ggml's `block_q4_K`).
    Q4K,
    /// `{d: f16, qh: [u8; 4], qs: [u8; 16]}`, `w = d·(q − 16)`, bit `i` of `qh` the fifth bit
    /// of value `i`.
    Q5_0,
    /// `{d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]}`, `w = d·q + m`.
    Q5_1,
    /// `{d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]}` for 256 values:
    /// Q4_K's form with bit `j` of `qh[l]` the fifth bit of value `l` of sub-block `j`
    /// (ggml's `block_q5_K`).
    Q5K,
}

impl LowBitFormat {
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            LowBitFormat::Q4_0 => 18,
            LowBitFormat::Q4_1 => 20,
            LowBitFormat::Q4K => 144,
            LowBitFormat::Q5_0 => 22,
            LowBitFormat::Q5_1 => 24,
            LowBitFormat::Q5K => 176,
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            LowBitFormat::Q4_0 | LowBitFormat::Q4_1 | LowBitFormat::Q5_0 | LowBitFormat::Q5_1 => {
                BLOCK
            }
            LowBitFormat::Q4K | LowBitFormat::Q5K => K_VALUES,
        }
    }

    /// Whether values have a fifth bit.
    pub fn five_bits(self) -> bool {
        matches!(
            self,
            LowBitFormat::Q5_0 | LowBitFormat::Q5_1 | LowBitFormat::Q5K
        )
    }

    /// Block `b` (of 32 values) of a row stored in this format: its scale `d`, its offset
    /// `m` (`w = d·q + m`), its nibbles as stored ([`Nibbles`]) and its fifth bits (bit `i`
    /// for value `i`; 0 in 4-bit formats).
    #[inline(always)]
    fn block(self, row: &[u8], b: usize) -> (f32, f32, Nibbles, u32) {
        let (nibbles, high) = self.quants(row, b);
        if self.is_k() {
            let (d, dmin, sc, mn) = self.k_parts(row, b);
            return (d * sc as f32, -(dmin * mn as f32), nibbles, high);
        }
        let block = &row[b * self.block_bytes()..][..self.block_bytes()];
        let d = f16(block);
        let m = match self {
            LowBitFormat::Q4_0 => -8.0 * d,
            LowBitFormat::Q5_0 => -16.0 * d,
            _ => f16(&block[2..]),
        };
        (d, m, nibbles, high)
    }

    /// Block `b`'s nibbles as stored and its fifth bits (bit `i` for value `i`; 0 in 4-bit
    /// formats), without its scales (a K-quant in the AVX2 layout reads those apart).
    /// Inlined, as [`Self::block`] and [`Self::k_parts`]: returned through memory, the
    /// nibbles were read back before their stores had landed, a sixth of the load's samples.
    #[inline(always)]
    fn quants(self, row: &[u8], b: usize) -> (Nibbles, u32) {
        let word = |q: &[u8], i: usize| {
            u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]])
        };
        match self {
            LowBitFormat::Q4_0 | LowBitFormat::Q4_1 | LowBitFormat::Q5_0 | LowBitFormat::Q5_1 => {
                let block = &row[b * self.block_bytes()..][..self.block_bytes()];
                let (high, qs) = match self {
                    LowBitFormat::Q4_0 => (0, &block[2..18]),
                    LowBitFormat::Q4_1 => (0, &block[4..20]),
                    LowBitFormat::Q5_0 => (word(&block[2..6], 0), &block[6..22]),
                    _ => (word(&block[4..8], 0), &block[8..24]),
                };
                (
                    Nibbles::Split([word(qs, 0), word(qs, 1), word(qs, 2), word(qs, 3)]),
                    high,
                )
            }
            LowBitFormat::Q4K | LowBitFormat::Q5K => {
                let (sb, j) = (b / 8, b % 8);
                let bytes = self.block_bytes();
                let block = &row[sb * bytes..][..bytes];
                // Sub-blocks 2g and 2g + 1 share the 32 bytes of group g: the low nibbles
                // and the high nibbles.
                let qs = &block[bytes - 128 + 32 * (j / 2)..][..32];
                let words = std::array::from_fn(|i| word(qs, i));
                let high = if self == LowBitFormat::Q5K {
                    // Bit `j` of each of `qh`'s 32 bytes, gathered eight bytes a word: with
                    // one bit per byte, the multiply puts byte `i`'s bit at bit `56 + i`, no
                    // two partial products overlapping (a bit at a time was a loop of 32 for
                    // every block a Q5_K file loads).
                    const GATHER: u64 = 0x0102_0408_1020_4080;
                    let qh = &block[16..48];
                    (0..4).fold(0, |h, w| {
                        let bytes =
                            u64::from_le_bytes(qh[8 * w..8 * w + 8].try_into().expect("8 bytes"));
                        let bits = (bytes >> j) & 0x0101_0101_0101_0101;
                        h | (((bits.wrapping_mul(GATHER) >> 56) as u32) << (8 * w))
                    })
                } else {
                    0
                };
                (
                    Nibbles::Whole {
                        words,
                        high: j % 2 == 1,
                    },
                    high,
                )
            }
        }
    }
}

impl LowBitFormat {
    /// Whether this is a K-quant (super-blocks of 256 with 6-bit sub-block scales and mins).
    fn is_k(self) -> bool {
        self.block_values() == K_VALUES
    }

    /// Sub-block `b` (of 32 values) of a K-quant row: its super-block's `d` and `dmin` and
    /// its own 6-bit scale and min (`w = d·sc·q − dmin·mn`).
    #[inline(always)]
    fn k_parts(self, row: &[u8], b: usize) -> (f32, f32, u8, u8) {
        let bytes = self.block_bytes();
        let block = &row[b / K_BLOCKS * bytes..][..bytes];
        let (sc, mn) = q4k_scale_min(b % K_BLOCKS, &block[4..16]);
        (f16(block), f16(&block[2..]), sc, mn)
    }
}

/// Values per K-quant super-block.
const K_VALUES: usize = 256;
/// Blocks of 32 per K-quant super-block.
const K_BLOCKS: usize = K_VALUES / BLOCK;

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K or Q5_K
/// block.
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 32 nibbles of one block, as stored.
enum Nibbles {
    /// Q4_0 / Q4_1: 16 bytes, value `i` in the low nibble of byte `i` and value `i + 16` in its
    /// high nibble.
    Split([u32; 4]),
    /// Q4_K: value `i` in byte `i` of 32, in its low or its high nibble.
    Whole { words: [u32; 8], high: bool },
}

impl Nibbles {
    /// The four chunks of the kernels' layout: chunk `j` holds values `8j..8j+4` in its low
    /// nibbles and `8j+4..8j+8` in its high ones, four bytes (one per value) per word.
    fn chunks(&self) -> [u32; 4] {
        const LOW: u32 = 0x0F0F_0F0F;
        match *self {
            Nibbles::Split([a, b, c, d]) => [
                (a & LOW) | ((b & LOW) << 4),
                (c & LOW) | ((d & LOW) << 4),
                ((a >> 4) & LOW) | (b & !LOW),
                ((c >> 4) & LOW) | (d & !LOW),
            ],
            Nibbles::Whole { words: w, high } => std::array::from_fn(|j| {
                let (lo, hi) = (w[2 * j], w[2 * j + 1]);
                if high {
                    ((lo >> 4) & LOW) | (hi & !LOW)
                } else {
                    (lo & LOW) | ((hi & LOW) << 4)
                }
            }),
        }
    }
}

/// A linear layer `y = x · Wᵀ + b` with 4- or 5-bit weights.
pub struct LowBitLinear {
    /// The GGUF format the weights came in (for `/info` and the logs).
    format: LowBitFormat,
    n: usize,
    k: usize,
    blocks: usize,
    panels: usize,
    /// `panels × blocks × 4 × 64` bytes.
    weights: Vec<u8>,
    /// Per panel, block and lane: `d` (`panels × blocks × 16`, 0 in padding); with
    /// `sub_scales`, per panel, super-block and lane: the super-block's `d`.
    scales: Vec<f32>,
    /// Per panel, block and lane: `m`; with `sub_scales`, per panel, super-block and lane:
    /// `−dmin`.
    mins: Vec<f32>,
    /// K-quants in the AVX2 layout: per panel and block, the 16 lanes' 6-bit scales, then
    /// their 6-bit mins; else empty.
    sub_scales: Vec<u8>,
    /// 5-bit formats: per panel and block, [`BLOCK_MASKS`] words of fifth bits; else empty.
    fifth_bits: Vec<u64>,
    /// How `fifth_bits` and the scales are laid out.
    layout: LowBitLayout,
    bias: Vec<f32>,
}

#[inline]
fn f16(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

impl LowBitLinear {
    /// Builds the layer from `n` rows of `k` values stored as GGUF `format` blocks (`rows`
    /// concatenated, row after row), with a bias.
    ///
    /// # Errors
    ///
    /// When `k` is not a positive multiple of 32, the bytes are not `n` rows, or a scale or
    /// offset is NaN or infinite.
    pub fn from_blocks(
        format: LowBitFormat,
        rows: &[u8],
        bias: &[f32],
        k: usize,
    ) -> Result<Self, String> {
        Self::from_parts(format, &[rows], bias, k)
    }

    /// [`Self::from_blocks`] with the rows given in parts (stacked tensors, e.g. Q, K and V),
    /// read in place.
    ///
    /// # Errors
    ///
    /// As [`Self::from_blocks`].
    pub fn from_parts(
        format: LowBitFormat,
        parts: &[&[u8]],
        bias: &[f32],
        k: usize,
    ) -> Result<Self, String> {
        Self::from_parts_in(format, parts, bias, k, LowBitLayout::preferred())
    }

    /// [`Self::from_parts`] in `layout` rather than this CPU's (tests and benchmarks set the
    /// two side by side).
    ///
    /// # Errors
    ///
    /// As [`Self::from_blocks`].
    pub fn from_parts_in(
        format: LowBitFormat,
        parts: &[&[u8]],
        bias: &[f32],
        k: usize,
        layout: LowBitLayout,
    ) -> Result<Self, String> {
        let n = bias.len();
        let per_block = format.block_values();
        if k == 0 || !k.is_multiple_of(per_block) {
            return Err(format!(
                "{format:?}: a row of {k} values is not whole blocks of {per_block}"
            ));
        }
        let blocks = k / BLOCK;
        let row_bytes = k / per_block * format.block_bytes();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if Some(total) != n.checked_mul(row_bytes)
            || parts.iter().any(|p| !p.len().is_multiple_of(row_bytes))
        {
            return Err(format!(
                "{format:?}: {total} bytes are not {n} rows of {k} values"
            ));
        }
        let row_slices: Vec<&[u8]> = parts
            .iter()
            .flat_map(|p| p.chunks_exact(row_bytes))
            .collect();
        let panels = n.div_ceil(PANEL);
        let mut weights = vec![0u8; panels * blocks * BLOCK_CHUNKS * CHUNK_BYTES];
        let integer = layout == LowBitLayout::Avx2 && format.is_k();
        // Scales per panel: one per block and lane, or one per super-block and lane.
        let panel_scales = PANEL * if integer { blocks / K_BLOCKS } else { blocks };
        let mut scales = vec![0.0f32; panels * panel_scales];
        let mut mins = vec![0.0f32; panels * panel_scales];
        let panel_subs = if integer { blocks * 2 * PANEL } else { 0 };
        let mut sub_scales = vec![0u8; panels * panel_subs];
        let masks = if format.five_bits() { BLOCK_MASKS } else { 0 };
        let mut fifth_bits = vec![0u64; panels * blocks * masks];
        let mut padded_bias = vec![0.0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        let panel_bytes = blocks * BLOCK_CHUNKS * CHUNK_BYTES;
        // Panels convert in parallel: loading is on the cold-start path.
        let mut panel_masks: Vec<&mut [u64]> = if masks > 0 {
            fifth_bits.chunks_mut(blocks * masks).collect()
        } else {
            std::iter::repeat_with(|| -> &mut [u64] { &mut [] })
                .take(panels)
                .collect()
        };
        let mut panel_subs: Vec<&mut [u8]> = if integer {
            sub_scales.chunks_mut(panel_subs).collect()
        } else {
            std::iter::repeat_with(|| -> &mut [u8] { &mut [] })
                .take(panels)
                .collect()
        };
        let mut panel_parts: Vec<_> = weights
            .chunks_mut(panel_bytes)
            .zip(scales.chunks_mut(panel_scales))
            .zip(mins.chunks_mut(panel_scales))
            .zip(panel_masks.iter_mut().zip(panel_subs.iter_mut()))
            .collect();
        parallel_for_each(&mut panel_parts, available_threads(), &|panel,
                                                                   (
            ((w, s), mn),
            (fifth, subs),
        )| {
            for lane in 0..PANEL.min(n - panel * PANEL) {
                let c = panel * PANEL + lane;
                for b in 0..blocks {
                    // A K-quant in the AVX2 layout keeps its integer scales; every other
                    // block its `d` and `m` in f32.
                    let (nibbles, high) = if integer {
                        let (d, dmin, sc, min) = format.k_parts(row_slices[c], b);
                        s[b / K_BLOCKS * PANEL + lane] = d;
                        mn[b / K_BLOCKS * PANEL + lane] = -dmin;
                        subs[b * 2 * PANEL + lane] = sc;
                        subs[b * 2 * PANEL + PANEL + lane] = min;
                        format.quants(row_slices[c], b)
                    } else {
                        let (d, m, nibbles, high) = format.block(row_slices[c], b);
                        s[b * PANEL + lane] = d;
                        mn[b * PANEL + lane] = m;
                        (nibbles, high)
                    };
                    if masks > 0 {
                        layout.spread(high, lane, &mut fifth[b * masks..][..masks]);
                    }
                    let chunks = nibbles.chunks();
                    let base = b * BLOCK_CHUNKS * CHUNK_BYTES + lane * 4;
                    for (j, chunk) in chunks.iter().enumerate() {
                        w[base + j * CHUNK_BYTES..][..4].copy_from_slice(&chunk.to_le_bytes());
                    }
                }
            }
        });
        if scales.iter().chain(&mins).any(|v| !v.is_finite()) {
            return Err(format!("{format:?}: holds NaN or infinite values"));
        }
        Ok(Self {
            format,
            n,
            k,
            blocks,
            panels,
            weights,
            scales,
            mins,
            sub_scales,
            fifth_bits,
            layout,
            bias: padded_bias,
        })
    }

    /// The GGUF format the weights came in.
    pub fn format(&self) -> LowBitFormat {
        self.format
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (weights, scales, mins, fifth bits and bias).
    pub fn bytes(&self) -> usize {
        self.weights.len()
            + self.sub_scales.len()
            + 4 * (self.scales.len() + self.mins.len() + self.bias.len())
            + 8 * self.fifth_bits.len()
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
        in_row_blocks("low-bit", (x, m, self.k), (out, self.n), |x, m, out| {
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
        // sx · Σ qx per row and block: the factor of each block's `m`.
        let x_sums: Vec<f32> = xq
            .chunks_exact(BLOCK)
            .zip(&x_scales)
            .map(|(q, &s)| s * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
            .collect();
        let shared = SharedOut(out.as_mut_ptr());
        // The AVX2 layout runs on the AVX2 kernel at every level from AVX2 up (the VNNI
        // kernel reads only its own).
        let vnni = self.layout == LowBitLayout::Vnni;
        let (mr, np) = match level {
            KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx if vnni => (4, 3),
            KernelLevel::Scalar => (4, 1),
            // AVX2: decode's lone rows take a whole panel per pass, batches four rows.
            _ if m <= 2 => (2, 1),
            _ => (4, 1),
        };
        let panel_bytes = blocks * BLOCK_CHUNKS * CHUNK_BYTES;
        let integer = !self.sub_scales.is_empty();
        let panel_scales = PANEL * if integer { blocks / K_BLOCKS } else { blocks };
        let panel_subs = if integer { blocks * 2 * PANEL } else { 0 };
        for_each_tile(m, self.panels, mr, np, threads, &|r0, rows, p0, ps| {
            let mut acc = [0.0f32; 4 * 3 * PANEL];
            let tile = Tile {
                x: &xq[r0 * k..(r0 + rows) * k],
                x_scales: &x_scales[r0 * blocks..(r0 + rows) * blocks],
                x_sums: &x_sums[r0 * blocks..(r0 + rows) * blocks],
                k,
                blocks,
                w: &self.weights[p0 * panel_bytes..][..ps * panel_bytes],
                scales: &self.scales[p0 * panel_scales..][..ps * panel_scales],
                mins: &self.mins[p0 * panel_scales..][..ps * panel_scales],
                sub_scales: &self.sub_scales[p0 * panel_subs..][..ps * panel_subs],
                fifth_bits: if self.fifth_bits.is_empty() {
                    &[]
                } else {
                    let per_panel = blocks * BLOCK_MASKS;
                    &self.fifth_bits[p0 * per_panel..][..ps * per_panel]
                },
                layout: self.layout,
            };
            match level {
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx512Vnni | KernelLevel::Avx512Bf16 | KernelLevel::Amx if vnni => {
                    // SAFETY: the level is at most the detected one, so the CPU has AVX-512
                    // F/BW/VL/DQ/VNNI; the tile holds `rows` rows and `ps` panels.
                    unsafe { vnni::tile(rows, ps, &tile, acc.as_mut_ptr()) }
                }
                #[cfg(target_arch = "x86_64")]
                KernelLevel::Avx2
                | KernelLevel::Avx512Vnni
                | KernelLevel::Avx512Bf16
                | KernelLevel::Amx => {
                    // SAFETY: as above: every level from AVX2 up has AVX2 and FMA (`ps` is 1,
                    // `rows` at most 4).
                    unsafe { avx2::tile(rows, &tile, acc.as_mut_ptr()) }
                }
                _ => scalar_tile(rows, ps, &tile, &mut acc),
            }
            // SAFETY: disjoint tiles inside m rows and the layer's panels; `out` (m×n) stays
            // mutably borrowed for the call.
            unsafe {
                store_tile(
                    &mut acc,
                    &self.bias,
                    n,
                    (r0, rows),
                    (p0, ps),
                    shared,
                    epilogue,
                    level,
                )
            };
        });
    }
}

/// The inputs of one tile.
struct Tile<'a> {
    /// `rows × k` signed activations.
    x: &'a [i8],
    /// `rows × blocks`.
    x_scales: &'a [f32],
    /// `rows × blocks`: `sx · Σ qx`.
    x_sums: &'a [f32],
    k: usize,
    blocks: usize,
    /// `panels × blocks × 256` bytes.
    w: &'a [u8],
    /// Per panel, block (or super-block, with `sub_scales`) and lane.
    scales: &'a [f32],
    mins: &'a [f32],
    /// `panels × blocks × 32`: K-quants' 6-bit scales and mins in the AVX2 layout; else empty.
    sub_scales: &'a [u8],
    /// `panels × blocks × 8` words of fifth bits; empty for 4-bit formats.
    fifth_bits: &'a [u64],
    layout: LowBitLayout,
}

/// The portable kernel (same arithmetic, same order, as the SIMD ones).
fn scalar_tile(rows: usize, ps: usize, t: &Tile, acc: &mut [f32]) {
    let panel_bytes = t.blocks * BLOCK_CHUNKS * CHUNK_BYTES;
    for r in 0..rows {
        let xr = &t.x[r * t.k..][..t.k];
        for p in 0..ps {
            let wp = &t.w[p * panel_bytes..][..panel_bytes];
            let mut sums = [0.0f32; PANEL];
            for b in 0..t.blocks {
                let mut dots = [0i32; PANEL];
                for j in 0..BLOCK_CHUNKS {
                    let chunk = &wp[(b * BLOCK_CHUNKS + j) * CHUNK_BYTES..][..CHUNK_BYTES];
                    let x_lo = &xr[b * BLOCK + 8 * j..][..4];
                    let x_hi = &xr[b * BLOCK + 8 * j + 4..][..4];
                    let fifth = |h: usize, byte: usize| {
                        if t.fifth_bits.is_empty() {
                            return 0;
                        }
                        let words = &t.fifth_bits[(p * t.blocks + b) * BLOCK_MASKS..];
                        t.layout.bit(words, j, h, byte) << 4
                    };
                    for (lane, d) in dots.iter_mut().enumerate() {
                        for tt in 0..4 {
                            let at = lane * 4 + tt;
                            let byte = chunk[at];
                            let lo = (byte & 0x0F) as i32 | fifth(0, at);
                            let hi = (byte >> 4) as i32 | fifth(1, at);
                            *d += lo * x_lo[tt] as i32 + hi * x_hi[tt] as i32;
                        }
                    }
                }
                let sx = t.x_scales[r * t.blocks + b];
                let xs = t.x_sums[r * t.blocks + b];
                if t.sub_scales.is_empty() {
                    let at = (p * t.blocks + b) * PANEL;
                    for (lane, s) in sums.iter_mut().enumerate() {
                        *s = (dots[lane] as f32).mul_add(sx * t.scales[at + lane], *s);
                        *s = t.mins[at + lane].mul_add(xs, *s);
                    }
                } else {
                    // The 6-bit scale times the integer sum, exactly; `m = −dmin·mn` as ggml
                    // computes it.
                    let at = (p * t.blocks + b) / K_BLOCKS * PANEL;
                    let subs = &t.sub_scales[(p * t.blocks + b) * 2 * PANEL..][..2 * PANEL];
                    for (lane, s) in sums.iter_mut().enumerate() {
                        let dot = dots[lane] * subs[lane] as i32;
                        *s = (dot as f32).mul_add(sx * t.scales[at + lane], *s);
                        let m = t.mins[at + lane] * subs[PANEL + lane] as f32;
                        *s = m.mul_add(xs, *s);
                    }
                }
            }
            acc[(r * ps + p) * PANEL..][..PANEL].copy_from_slice(&sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;

#[cfg(test)]
#[path = "lowbit_tests.rs"]
mod tests;
