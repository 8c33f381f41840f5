//! Causal attention of a decoder's rows over the keys and values of their sequence: the
//! generation side's KV caches (`crate::generate::decoder`), and the Qwen3 embedder's
//! keys and values of one forward pass (`crate::model::qwen3`). Grouped-query heads, an
//! optional sliding window, keys and values stored in f32 or f16 ([`KvElem`]).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::KernelLevel;

/// An element type of stored keys and values.
pub trait KvElem: Copy + Send + Sync {
    /// Appends `src` converted.
    fn append(cache: &mut Vec<Self>, src: &[f32]);
    /// Widens `src` into `dst`.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `src` as f32: itself when it is, else widened into `scratch`.
    fn view<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
    /// Whether [`Self::view`] has to widen (then a prefill widens the cache once instead).
    const NARROW: bool;
}

impl KvElem for f16 {
    fn append(cache: &mut Vec<Self>, src: &[f32]) {
        let at = cache.len();
        cache.resize(at + src.len(), f16::ZERO);
        cache[at..].convert_from_f32_slice(src);
    }

    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }

    #[inline(always)]
    fn view<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(scratch);
        scratch
    }

    const NARROW: bool = true;
}

impl KvElem for f32 {
    fn append(cache: &mut Vec<Self>, src: &[f32]) {
        cache.extend_from_slice(src);
    }

    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    #[inline(always)]
    fn view<'a>(src: &'a [Self], _scratch: &'a mut [f32]) -> &'a [f32] {
        src
    }

    const NARROW: bool = false;
}

/// The shape of one attention call.
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Width of one row of Q, K and V side by side.
    pub qkvw: usize,
    /// Multiplies every query·key product (`1/√head_dim` for most models; Gemma 3's
    /// `query_pre_attn_scalar`).
    pub scale: f32,
    /// Sliding-window attention: a query at position `p` sees the keys at positions
    /// `p + 1 - window ..= p` only (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`, transformers'
    /// `sliding_window`). `None`: every earlier position.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Full causal attention scaled by `1/√head_dim`.
    pub fn causal(n_head: usize, n_head_kv: usize, head_dim: usize, qkvw: usize) -> Self {
        Self {
            n_head,
            n_head_kv,
            head_dim,
            qkvw,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
        }
    }
}

/// Causal attention of one sequence's new rows (queries in `qkv`, rows at positions
/// `start..`) over its keys and values (`k`, `v`: rows of `n_head_kv·head_dim`, every
/// position up to the last new row; with a window, only the window's last positions are read),
/// into `out` (`rows × n_head·head_dim`). Each key and value is widened once per row and used
/// by every query head of its group (grouped-query attention).
pub fn attend<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    let rows = qkv.len() / s.qkvw;
    if T::NARROW && rows > 1 {
        // Several rows read the same keys and values: widen them once (the f16 → f32
        // conversion is exact, so the result is the same) rather than once per row.
        WIDENED.with(|w| {
            let mut guard = w.borrow_mut();
            let (kw, vw) = &mut *guard;
            let kvw = s.n_head_kv * s.head_dim;
            let span = start + rows;
            let lo = s.window.map_or(0, |w| (start + 1).saturating_sub(w));
            for (wide, narrow) in [(&mut *kw, k), (&mut *vw, v)] {
                wide.resize(span * kvw, 0.0);
                T::widen(&narrow[lo * kvw..span * kvw], &mut wide[lo * kvw..]);
            }
            attend_at(s, qkv, &kw[..], &vw[..], start, out, level)
        });
        return;
    }
    attend_at(s, qkv, k, v, start, out, level)
}

thread_local! {
    /// A prefill's keys and values widened to f32 (see [`attend`]), kept for the next one.
    static WIDENED: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// [`attend`] on the best code path `level` allows.
fn attend_at<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    #[cfg(target_arch = "x86_64")]
    if level >= KernelLevel::Avx2 && KernelLevel::detected() >= KernelLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { attend_avx2(s, qkv, k, v, start, out) };
        return;
    }
    let _ = level;
    attend_portable(s, qkv, k, v, start, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
) {
    attend_portable(s, qkv, k, v, start, out)
}

#[inline(always)]
fn attend_portable<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let group = s.n_head / s.n_head_kv;
    let kvw = s.n_head_kv * hd;
    let scale = s.scale;
    let rows = qkv.len() / s.qkvw;
    let span = start + rows;
    let mut scores = vec![0.0f32; group * span];
    let mut wide = vec![0.0f32; hd];
    let mut max = vec![0.0f32; group];
    let mut inv = vec![0.0f32; group];
    for r in 0..rows {
        let visible = start + r + 1;
        // The first key this row sees: 0, or the window's first position.
        let first = s.window.map_or(0, |w| visible.saturating_sub(w));
        let q_row = &qkv[r * s.qkvw..r * s.qkvw + s.n_head * hd];
        let o_row = &mut out[r * s.n_head * hd..(r + 1) * s.n_head * hd];
        for kvh in 0..s.n_head_kv {
            let heads = kvh * group..(kvh + 1) * group;
            max.fill(f32::NEG_INFINITY);
            for t in first..visible {
                let key = T::view(&k[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let score = dot(&q_row[h * hd..(h + 1) * hd], key) * scale;
                    scores[gi * span + t] = score;
                    max[gi] = max[gi].max(score);
                }
            }
            for gi in 0..group {
                let mut sum = 0.0f32;
                for score in &mut scores[gi * span + first..gi * span + visible] {
                    *score = (*score - max[gi]).exp();
                    sum += *score;
                }
                inv[gi] = 1.0 / sum;
            }
            for h in heads.clone() {
                o_row[h * hd..(h + 1) * hd].fill(0.0);
            }
            for t in first..visible {
                let value = T::view(&v[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let w = scores[gi * span + t] * inv[gi];
                    for (o, &vv) in o_row[h * hd..(h + 1) * hd].iter_mut().zip(value) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
}

/// A dot product in 16 independent lanes (so it vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            acc[l] += a[c * 16 + l] * b[c * 16 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 16..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query row with a window of `w` attends exactly as it would over a cache holding only
    /// the last `w` positions; a window at least as long as the sequence changes nothing.
    #[test]
    fn a_window_attends_to_the_last_positions_only() {
        let (n_head, n_head_kv, hd) = (4, 2, 8);
        let qkvw = (n_head + 2 * n_head_kv) * hd;
        let kvw = n_head_kv * hd;
        let n = 11;
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let qkv: Vec<f32> = (0..n * qkvw).map(|_| next()).collect();
        let k: Vec<f32> = (0..n * kvw).map(|_| next()).collect();
        let v: Vec<f32> = (0..n * kvw).map(|_| next()).collect();
        let shape = |window| AttnShape {
            window,
            ..AttnShape::causal(n_head, n_head_kv, hd, qkvw)
        };
        // The last three rows at positions n-3..n, with a window of 4.
        let rows = 3;
        let q = &qkv[(n - rows) * qkvw..];
        let mut windowed = vec![0.0f32; rows * n_head * hd];
        attend_portable(&shape(Some(4)), q, &k, &v, n - rows, &mut windowed);
        for r in 0..rows {
            let last = n - rows + r;
            let first = last + 1 - 4;
            let mut alone = vec![0.0f32; n_head * hd];
            attend_portable(
                &shape(None),
                &q[r * qkvw..(r + 1) * qkvw],
                &k[first * kvw..(last + 1) * kvw],
                &v[first * kvw..(last + 1) * kvw],
                3,
                &mut alone,
            );
            assert_eq!(
                &windowed[r * n_head * hd..(r + 1) * n_head * hd],
                &alone[..]
            );
        }
        let mut full = vec![0.0f32; rows * n_head * hd];
        attend_portable(&shape(None), q, &k, &v, n - rows, &mut full);
        let mut wide = vec![0.0f32; rows * n_head * hd];
        attend_portable(&shape(Some(n)), q, &k, &v, n - rows, &mut wide);
        assert_eq!(full, wide);
        assert_ne!(full, windowed);
    }
}
