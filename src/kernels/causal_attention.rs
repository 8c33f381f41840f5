//! Causal attention of decoder rows (the generation caches, the Qwen3 embedder's forward pass):
//! a sequence's new query rows (at positions `start..`) over its cached keys and values, with grouped-query heads and an optional sliding window.
//!
//! Why blocked: attending one query row at a time streams the whole cache through the core
//! once per row and head (a long prompt's keys do not stay in L1), and a softmax over a full
//! row of scores needs a second pass. Here keys are taken [`KEY_BLOCK`] at a time, and each
//! block is used by every (row, head) pair of the call whose head reads that KV head (a
//! prefill task's 16 rows × the 3 query heads of SmolLM2's group: 48 pairs), under an online
//! softmax (a running maximum and sum per pair, the accumulator rescaled when the maximum
//! grows), so each key and value is loaded once per block and used many times from L1.
//!
//! Two layouts, by how many pairs share a KV head:
//! - wide (a prefill task): the pairs run along the vector lanes. The queries are transposed
//!   once (`head_dim × pairs`), so `QKᵀ` and `P·V` are small register-blocked matrix products
//!   whose inner step is one broadcast key (or value) element times a vector of pairs, and the
//!   softmax's maximum, sum and rescaling are vector operations across pairs;
//! - narrow (decode: one row, a group of 3 heads): too few pairs to fill a vector, so the
//!   lanes run along the block's keys for the scores (over the key block transposed) and
//!   along `head_dim` for the values (`axpy`).
//!
//! Both layouts do the same operations in the same order for every (row, head) pair, so a
//! row's output is the same bit for bit whichever layout ran it and whatever rows shared its
//! call: a sequence's tokens do not depend on how its prompt was chunked or batched.
//!
//! An f16 cache is widened to f32 one key block at a time (exact); an f32 cache is read in
//! place. All math is f32 (the reference tests hold logits to 1e-4). One body, compiled for
//! AVX-512, AVX2+FMA and the portable baseline, picked at run time (`dispatch.rs`); the AVX
//! builds fuse their multiply-adds (see [`FUSED`]).

use std::cell::RefCell;

pub use super::kv_value::KvValue;

mod key_blocks;

use key_blocks::{block, prefetch_block, transpose_keys};

use super::dispatch::{variant, Variant};
use super::math::exp_neg;
use super::KernelLevel;

/// Keys per block: a block's keys, values and scores stay in L1 beside the queries and the
/// accumulator.
const KEY_BLOCK: usize = 32;

/// Vector lanes of the wide layout (16 f32: one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;

/// From this many (row, head) pairs per KV head the wide layout runs (below it most of its
/// lanes would be padding).
const WIDE_PAIRS: usize = 8;

/// The shape of one call.
#[derive(Debug, Clone, Copy)]
pub struct CausalShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; each serves `n_head / n_head_kv` consecutive query heads.
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplies every query·key product.
    pub scale: f32,
    /// A query at position `p` sees keys `p + 1 - window ..= p` only; `None`: every key up to
    /// `p`.
    pub window: Option<usize>,
}

impl CausalShape {
    /// Full causal attention scaled by `1/√head_dim`, no window.
    pub fn new(n_head: usize, n_head_kv: usize, head_dim: usize) -> Self {
        Self {
            n_head,
            n_head_kv,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
        }
    }
}

/// A sequence's cached keys and values for one layer, `position × n_head_kv·head_dim`, from
/// position `first` on (a sliding-window layer drops the positions no query can see).
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    /// The position of the first row of `k` and `v`.
    pub first: usize,
}

/// Attends `rows = out.len() / (n_head·head_dim)` query rows at positions `start..start +
/// rows` over the cached keys and values `kv` (positions the rows cannot see are not read).
/// Query row `r` is `q[r·q_stride..]`, its heads side by side; output row `r` is
/// `out[r·n_head·head_dim..]`.
///
/// Key blocks are cut at multiples of [`KEY_BLOCK`] positions, so a row meets the same
/// blocks whatever rows share its call and whatever the cache has dropped: with the two
/// layouts' shared order, its result is the same bit for bit.
///
/// # Panics
///
/// When the slices are shorter than the shape says, the cache has dropped a position the
/// rows see, or `n_head` is not a multiple of `n_head_kv` (the callers' shapes come from a
/// validated model config and their caches keep each layer's window).
pub fn causal_attention<T: KvValue>(
    s: &CausalShape,
    q: &[f32],
    q_stride: usize,
    kv: KvRows<T>,
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    causal_attention_heads(s, 0..s.n_head_kv, q, q_stride, kv, start, out, level);
}

/// [`causal_attention`] for the query heads of KV heads `kv_heads` only: output row `r` is
/// `out[r·w..]` with `w = kv_heads.len()·(n_head / n_head_kv)·head_dim`, those heads side by
/// side. Heads are independent, so each head's output is the same bit for bit as in a call
/// with every head; a single sequence's attention can be split over threads this way.
///
/// # Panics
///
/// As [`causal_attention`], and when `kv_heads` is not within `0..n_head_kv`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_heads<T: KvValue>(
    s: &CausalShape,
    kv_heads: std::ops::Range<usize>,
    q: &[f32],
    q_stride: usize,
    kv: KvRows<T>,
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    let qw = s.n_head * s.head_dim;
    let kvw = s.n_head_kv * s.head_dim;
    assert!(
        s.n_head_kv > 0 && s.n_head.is_multiple_of(s.n_head_kv),
        "causal_attention: heads do not fit the shape"
    );
    assert!(
        kv_heads.start <= kv_heads.end && kv_heads.end <= s.n_head_kv,
        "causal_attention: KV heads {kv_heads:?} out of 0..{}",
        s.n_head_kv
    );
    let out_w = kv_heads.len() * (s.n_head / s.n_head_kv) * s.head_dim;
    if out_w == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / out_w;
    assert!(
        out.len() == rows * out_w,
        "causal_attention: output does not fit the shape"
    );
    assert!(
        q_stride >= qw && q.len() >= (rows - 1) * q_stride + qw,
        "causal_attention: queries shorter than the shape"
    );
    assert!(
        first_key(start, s.window) >= kv.first,
        "causal_attention: the cache has dropped positions the rows see"
    );
    let held = start + rows - kv.first;
    assert!(
        kv.k.len() >= held * kvw && kv.v.len() >= held * kvw,
        "causal_attention: cache shorter than the rows' positions"
    );
    let call = Call {
        s,
        q,
        q_stride,
        start,
        rows,
        first: kv.first,
        kv_heads,
        out_w,
    };
    let (k, v) = (kv.k, kv.v);
    // The scratch is taken here, outside the compiled versions: a closure inside them would
    // be compiled without their features (and `mul_add` would call libm).
    SCRATCH.with(|cell| {
        let sc = &mut *cell.borrow_mut();
        // The narrow layout (decode) runs its AVX2 build on AVX-512 CPUs too: 256-bit
        // vectors measured faster there (benches/causal_attention.rs, 32 decode rows at 512:
        // 5.9 against 6.2 ms). Both builds fuse, so the arithmetic is the same.
        let wide = rows * (s.n_head / s.n_head_kv) >= WIDE_PAIRS;
        match variant(level) {
            // SAFETY: `variant` never picks a version the CPU lacks the features of.
            #[cfg(target_arch = "x86_64")]
            Variant::Avx512 if wide => unsafe { attend_avx512(&call, k, v, out, sc) },
            // SAFETY: as above (AVX-512 CPUs have AVX2 and FMA).
            #[cfg(target_arch = "x86_64")]
            Variant::Avx512 => unsafe { attend_avx2(&call, k, v, out, sc) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Variant::Avx2 => unsafe { attend_avx2(&call, k, v, out, sc) },
            Variant::Generic => attend::<T, false, false>(&call, k, v, out, sc),
        }
    })
}

/// One call's arguments but the cache and the output.
struct Call<'a> {
    s: &'a CausalShape,
    q: &'a [f32],
    q_stride: usize,
    start: usize,
    rows: usize,
    /// The position of the cache slices' first row.
    first: usize,
    /// The KV heads attended; output row `r` holds their query heads at `r·out_w`.
    kv_heads: std::ops::Range<usize>,
    out_w: usize,
}

/// [`attend`] compiled for AVX-512.
///
/// # Safety
///
/// The CPU has AVX-512 F/BW/VL/DQ, AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn attend_avx512<T: KvValue>(c: &Call, k: &[T], v: &[T], out: &mut [f32], sc: &mut Scratch) {
    attend::<T, FUSED, true>(c, k, v, out, sc)
}

/// [`attend`] compiled for AVX2 and FMA.
///
/// # Safety
///
/// The CPU has AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<T: KvValue>(c: &Call, k: &[T], v: &[T], out: &mut [f32], sc: &mut Scratch) {
    attend::<T, FUSED, true>(c, k, v, out, sc)
}

/// Reused buffers (one set per thread), so that a decode step allocates nothing.
struct Scratch {
    /// Wide: queries transposed, `head_dim × pairs`; narrow: `pairs × head_dim`.
    q: Vec<f32>,
    /// Scores then probabilities of one key block: wide `keys × pairs`, narrow `pairs × keys`.
    p: Vec<f32>,
    /// The accumulator, laid out as `q`.
    o: Vec<f32>,
    /// Per pair: running maximum, running sum, this block's rescale factor, the maximum it is
    /// taken from, and the block's sum.
    max: Vec<f32>,
    sum: Vec<f32>,
    alpha: Vec<f32>,
    base: Vec<f32>,
    block_sum: Vec<f32>,
    /// A key block and a value block widened from f16 (`keys × head_dim`).
    keys: Vec<f32>,
    values: Vec<f32>,
    /// The narrow layout's key block transposed (`head_dim × KEY_BLOCK`).
    kt: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            q: Vec::new(),
            p: Vec::new(),
            o: Vec::new(),
            max: Vec::new(),
            sum: Vec::new(),
            alpha: Vec::new(),
            base: Vec::new(),
            block_sum: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            kt: Vec::new(),
        })
    };
}

/// `v` cleared and refilled with `len` copies of `x`.
#[inline(always)]
fn reset(v: &mut Vec<f32>, len: usize, x: f32) {
    v.clear();
    v.resize(len, x);
}

/// Whether the AVX builds fuse their multiply-adds (both layouts, so they stay alike). Fused,
/// prefill ran ~4× faster than unfused in benches/causal_attention.rs; the portable build
/// runs unfused (a fused multiply-add without FMA hardware is a libm call).
const FUSED: bool = true;

/// `a·b + c`, fused when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Whether a query at `pos` cannot see the key at `t`.
#[inline(always)]
fn hidden(t: usize, pos: usize, window: Option<usize>) -> bool {
    t > pos || window.is_some_and(|w| t + w <= pos)
}

/// The first key a query at `pos` sees.
#[inline(always)]
fn first_key(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// The keys of the block from position `t0`: up to the next multiple of [`KEY_BLOCK`], and
/// not past `hi`.
#[inline(always)]
fn block_len(t0: usize, hi: usize) -> usize {
    (KEY_BLOCK - t0 % KEY_BLOCK).min(hi - t0)
}

/// Every KV head of the call, in the layout its number of pairs calls for. `AVX`: compiled
/// into a function with AVX enabled (the narrow layout then transposes with its intrinsics).
#[inline(always)]
fn attend<T: KvValue, const FMA: bool, const AVX: bool>(
    c: &Call,
    k: &[T],
    v: &[T],
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let group = c.s.n_head / c.s.n_head_kv;
    for kvh in c.kv_heads.clone() {
        if c.rows * group >= WIDE_PAIRS {
            wide::<T, FMA, AVX>(c, k, v, kvh, out, sc);
        } else {
            narrow::<T, FMA, AVX>(c, k, v, kvh, out, sc);
        }
    }
}

/// Whether some pair of the call cannot see some key of `t0..t1` (the block needs its mask).
#[inline(always)]
fn block_needs_mask(c: &Call, t0: usize, t1: usize) -> bool {
    t1 > c.start + 1 || c.s.window.is_some_and(|w| t0 + w < c.start + c.rows)
}

/// The wide layout: pair `i = r·group + g` (row `r`, head `kvh·group + g`) in lane `i`.
#[inline(always)]
fn wide<T: KvValue, const FMA: bool, const AVX: bool>(
    c: &Call,
    k: &[T],
    v: &[T],
    kvh: usize,
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let s = c.s;
    let (hd, group) = (s.head_dim, s.n_head / s.n_head_kv);
    let kvw = s.n_head_kv * hd;
    let n = c.rows * group;
    let np = n.next_multiple_of(LANES);
    let Scratch {
        q: qt,
        p,
        o: ot,
        max,
        sum,
        alpha,
        base,
        block_sum,
        keys,
        values,
        ..
    } = sc;
    reset(qt, hd * np, 0.0);
    for r in 0..c.rows {
        for g in 0..group {
            let i = r * group + g;
            let row = &c.q[r * c.q_stride + (kvh * group + g) * hd..][..hd];
            for (d, &x) in row.iter().enumerate() {
                qt[d * np + i] = x * s.scale;
            }
        }
    }
    reset(ot, hd * np, 0.0);
    reset(max, np, f32::NEG_INFINITY);
    reset(sum, np, 0.0);
    reset(alpha, np, 0.0);
    reset(base, np, 0.0);
    reset(block_sum, np, 0.0);
    reset(p, KEY_BLOCK * np, 0.0);
    let hi = c.start + c.rows;
    let mut t0 = first_key(c.start, s.window);
    while t0 < hi {
        let nb = block_len(t0, hi);
        let (kb, ks) = block::<T, AVX>(k, kvw, hd, kvh, t0 - c.first, nb, keys);
        scores_wide::<FMA>(qt, np, kb, ks, nb, hd, p);
        if block_needs_mask(c, t0, t0 + nb) {
            for j in 0..nb {
                let row = &mut p[j * np..][..n];
                for r in 0..c.rows {
                    if hidden(t0 + j, c.start + r, s.window) {
                        row[r * group..(r + 1) * group].fill(f32::NEG_INFINITY);
                    }
                }
            }
        }
        // Online softmax, every lane at once.
        let (max, alpha, base, block_sum) = (
            &mut max[..np],
            &mut alpha[..np],
            &mut base[..np],
            &mut block_sum[..np],
        );
        let mut block_max = [f32::NEG_INFINITY; LANES];
        for l0 in (0..np).step_by(LANES) {
            block_max.fill(f32::NEG_INFINITY);
            for j in 0..nb {
                let row = &p[j * np + l0..][..LANES];
                for (m, &x) in block_max.iter_mut().zip(row) {
                    *m = if x > *m { x } else { *m };
                }
            }
            for (x, &bm) in block_max.iter().enumerate() {
                let i = l0 + x;
                let new = if bm > max[i] { bm } else { max[i] };
                // A lane that has seen no key yet keeps a maximum of −∞: its
                // probabilities are 0, not exp(−∞ + ∞).
                base[i] = if new == f32::NEG_INFINITY { 0.0 } else { new };
                alpha[i] = if max[i] == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_neg(max[i] - base[i])
                };
                max[i] = new;
            }
        }
        block_sum.fill(0.0);
        for j in 0..nb {
            let row = &mut p[j * np..][..np];
            for ((x, &b), s) in row.iter_mut().zip(&*base).zip(block_sum.iter_mut()) {
                *x = if *x == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_neg(*x - b)
                };
                *s += *x;
            }
        }
        for ((s, &a), &b) in sum.iter_mut().zip(&*alpha).zip(&*block_sum) {
            *s = *s * a + b;
        }
        let (vb, vs) = block::<T, AVX>(v, kvw, hd, kvh, t0 - c.first, nb, values);
        values_wide::<FMA>(p, np, vb, vs, nb, hd, alpha, ot);
        t0 += nb;
    }
    for r in 0..c.rows {
        for g in 0..group {
            let i = r * group + g;
            let inv = if sum[i] > 0.0 { 1.0 / sum[i] } else { 0.0 };
            let row = &mut out[r * c.out_w + ((kvh - c.kv_heads.start) * group + g) * hd..][..hd];
            for (d, o) in row.iter_mut().enumerate() {
                *o = ot[d * np + i] * inv;
            }
        }
    }
}

/// `p[j][i] = Σ_d k[j][d]·qt[d][i]` for the block's `nb` keys (`p`: `keys × np`), four keys
/// by 16 lanes at a time.
#[inline(always)]
fn scores_wide<const FMA: bool>(
    qt: &[f32],
    np: usize,
    kb: &[f32],
    ks: usize,
    nb: usize,
    hd: usize,
    p: &mut [f32],
) {
    for l0 in (0..np).step_by(LANES) {
        let mut j = 0;
        while j + 4 <= nb {
            let kr = [
                &kb[j * ks..][..hd],
                &kb[(j + 1) * ks..][..hd],
                &kb[(j + 2) * ks..][..hd],
                &kb[(j + 3) * ks..][..hd],
            ];
            let mut acc = [[0.0f32; LANES]; 4];
            for d in 0..hd {
                let qv: &[f32; LANES] = qt[d * np + l0..][..LANES].try_into().unwrap();
                for (a, kr) in acc.iter_mut().zip(&kr) {
                    let kx = kr[d];
                    for (a, &qx) in a.iter_mut().zip(qv) {
                        *a = madd::<FMA>(kx, qx, *a);
                    }
                }
            }
            for (jj, a) in acc.iter().enumerate() {
                p[(j + jj) * np + l0..][..LANES].copy_from_slice(a);
            }
            j += 4;
        }
        while j < nb {
            let kr = &kb[j * ks..][..hd];
            let mut acc = [0.0f32; LANES];
            for (d, &kx) in kr.iter().enumerate() {
                let qv: &[f32; LANES] = qt[d * np + l0..][..LANES].try_into().unwrap();
                for (a, &qx) in acc.iter_mut().zip(qv) {
                    *a = madd::<FMA>(kx, qx, *a);
                }
            }
            p[j * np + l0..][..LANES].copy_from_slice(&acc);
            j += 1;
        }
    }
}

/// `ot[d][i] = ot[d][i]·alpha[i] + Σ_j v[j][d]·p[j][i]`, four `d` by 16 lanes at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn values_wide<const FMA: bool>(
    p: &[f32],
    np: usize,
    vb: &[f32],
    vs: usize,
    nb: usize,
    hd: usize,
    alpha: &[f32],
    ot: &mut [f32],
) {
    for l0 in (0..np).step_by(LANES) {
        let al: &[f32; LANES] = alpha[l0..l0 + LANES].try_into().unwrap();
        let mut d = 0;
        while d + 4 <= hd {
            let mut acc = [[0.0f32; LANES]; 4];
            for (dd, a) in acc.iter_mut().enumerate() {
                let o = &ot[(d + dd) * np + l0..][..LANES];
                for ((a, &o), &al) in a.iter_mut().zip(o).zip(al) {
                    *a = o * al;
                }
            }
            for j in 0..nb {
                let pv: &[f32; LANES] = p[j * np + l0..][..LANES].try_into().unwrap();
                let vr = &vb[j * vs + d..][..4];
                for (a, &vx) in acc.iter_mut().zip(vr) {
                    for (a, &px) in a.iter_mut().zip(pv) {
                        *a = madd::<FMA>(vx, px, *a);
                    }
                }
            }
            for (dd, a) in acc.iter().enumerate() {
                ot[(d + dd) * np + l0..][..LANES].copy_from_slice(a);
            }
            d += 4;
        }
        while d < hd {
            let mut acc = [0.0f32; LANES];
            let o = &ot[d * np + l0..][..LANES];
            for ((a, &o), &al) in acc.iter_mut().zip(o).zip(al) {
                *a = o * al;
            }
            for j in 0..nb {
                let pv: &[f32; LANES] = p[j * np + l0..][..LANES].try_into().unwrap();
                let vx = vb[j * vs + d];
                for (a, &px) in acc.iter_mut().zip(pv) {
                    *a = madd::<FMA>(vx, px, *a);
                }
            }
            ot[d * np + l0..][..LANES].copy_from_slice(&acc);
            d += 1;
        }
    }
}

/// The narrow layout: pair `i = r·group + g`'s query and accumulator are rows of `head_dim`.
/// Its arithmetic is the wide layout's, operation for operation (a score sums `d` in order
/// from 0, a block's sum adds keys in order, the accumulator is rescaled then takes the keys in
/// order), so a row's output does not depend on which layout ran it: a sequence's tokens do
/// not depend on how its prompt was chunked or batched. For that the scores run with the keys
/// along the lanes, over the key block transposed (`head_dim × KEY_BLOCK`).
#[inline(always)]
fn narrow<T: KvValue, const FMA: bool, const AVX: bool>(
    c: &Call,
    k: &[T],
    v: &[T],
    kvh: usize,
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let s = c.s;
    let (hd, group) = (s.head_dim, s.n_head / s.n_head_kv);
    let kvw = s.n_head_kv * hd;
    let n = c.rows * group;
    let Scratch {
        q: qn,
        p,
        o,
        max,
        sum,
        keys,
        values,
        kt,
        ..
    } = sc;
    reset(qn, n * hd, 0.0);
    for r in 0..c.rows {
        for g in 0..group {
            let i = r * group + g;
            let row = &c.q[r * c.q_stride + (kvh * group + g) * hd..][..hd];
            for (x, &y) in qn[i * hd..][..hd].iter_mut().zip(row) {
                *x = y * s.scale;
            }
        }
    }
    reset(o, n * hd, 0.0);
    reset(max, n, f32::NEG_INFINITY);
    reset(sum, n, 0.0);
    reset(p, n * KEY_BLOCK, 0.0);
    reset(kt, hd * KEY_BLOCK, 0.0);
    let hi = c.start + c.rows;
    let first = first_key(c.start, s.window);
    if kvh == c.kv_heads.start {
        prefetch_block(k, v, kvw, hd, kvh, first - c.first, block_len(first, hi));
    }
    let mut t0 = first;
    while t0 < hi {
        let nb = block_len(t0, hi);
        // The next block's keys and values (this head's, or the next head's first) are asked
        // for now, so they arrive while this one is worked on.
        let next = if t0 + nb < hi {
            Some((kvh, t0 + nb))
        } else {
            (kvh + 1 < c.kv_heads.end).then_some((kvh + 1, first))
        };
        if let Some((h, t)) = next {
            prefetch_block(k, v, kvw, hd, h, t - c.first, block_len(t, hi));
        }
        let (kb, ks) = block::<T, AVX>(k, kvw, hd, kvh, t0 - c.first, nb, keys);
        transpose_keys::<AVX>(kb, ks, nb, hd, kt);
        for i in 0..n {
            let mut acc = [0.0f32; KEY_BLOCK];
            for (d, &qx) in qn[i * hd..][..hd].iter().enumerate() {
                let kv: &[f32; KEY_BLOCK] = kt[d * KEY_BLOCK..][..KEY_BLOCK].try_into().unwrap();
                for (a, &kx) in acc.iter_mut().zip(kv) {
                    *a = madd::<FMA>(kx, qx, *a);
                }
            }
            p[i * KEY_BLOCK..][..nb].copy_from_slice(&acc[..nb]);
        }
        let mask = block_needs_mask(c, t0, t0 + nb);
        for i in 0..n {
            let row = &mut p[i * KEY_BLOCK..][..nb];
            if mask {
                let pos = c.start + i / group;
                for (j, x) in row.iter_mut().enumerate() {
                    if hidden(t0 + j, pos, s.window) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let mut block_max = f32::NEG_INFINITY;
            for &x in row.iter() {
                block_max = if x > block_max { x } else { block_max };
            }
            let new = if block_max > max[i] {
                block_max
            } else {
                max[i]
            };
            let base = if new == f32::NEG_INFINITY { 0.0 } else { new };
            let alpha = if max[i] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_neg(max[i] - base)
            };
            max[i] = new;
            // The exponentials first (a loop that vectorises), then the sum in key order.
            for x in row.iter_mut() {
                *x = if *x == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_neg(*x - base)
                };
            }
            let mut block_sum = 0.0f32;
            for &x in row.iter() {
                block_sum += x;
            }
            sum[i] = sum[i] * alpha + block_sum;
            for x in &mut o[i * hd..][..hd] {
                *x *= alpha;
            }
        }
        let (vb, vs) = block::<T, AVX>(v, kvw, hd, kvh, t0 - c.first, nb, values);
        for j in 0..nb {
            let vr = &vb[j * vs..][..hd];
            for i in 0..n {
                let w = p[i * KEY_BLOCK + j];
                for (x, &y) in o[i * hd..][..hd].iter_mut().zip(vr) {
                    *x = madd::<FMA>(y, w, *x);
                }
            }
        }
        t0 += nb;
    }
    for r in 0..c.rows {
        for g in 0..group {
            let i = r * group + g;
            let inv = if sum[i] > 0.0 { 1.0 / sum[i] } else { 0.0 };
            let row = &mut out[r * c.out_w + ((kvh - c.kv_heads.start) * group + g) * hd..][..hd];
            for (y, &x) in row.iter_mut().zip(&o[i * hd..][..hd]) {
                *y = x * inv;
            }
        }
    }
}

#[cfg(test)]
#[path = "causal_attention_tests.rs"]
mod tests;
