//! The per-row math of rotary decoders (the Llama family's generation models, the Qwen3
//! embedder run as an encoder): rotary position embeddings, in llama.cpp's two pairings,
//! RMSNorm and the SwiGLU activation. It lives among the kernels so that both the generation
//! side (`crate::generate`) and the encoders (`crate::model`) use the one copy.

use super::dispatch::{call, dispatch};
use super::math::{exp_neg, lane_sum};

/// What RoPE needs of a model's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// Rotated values per head (`2·pairs`; all of `head_dim` unless rotary is partial).
    pub n_rot: usize,
    /// Values per head.
    pub head_dim: usize,
    /// The frequency base (`rope_theta`).
    pub base: f32,
    /// Linear position scaling (1 for none).
    pub freq_scale: f32,
    /// Multiplies cos and sin (ggml's `mscale`; 1 for none).
    pub attn_factor: f32,
}

/// How RoPE pairs a head's values (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `LLAMA_ROPE_TYPE_NORM`: adjacent values `(x[2i], x[2i+1])` (llama.cpp's converter
    /// permutes Llama's Q and K rows for it).
    Adjacent,
    /// `LLAMA_ROPE_TYPE_NEOX`: the two halves, `(x[i], x[i + d/2])` (Hugging Face's
    /// `rotate_half`; Qwen's tensors are stored as trained).
    Halves,
}

/// Rotary embedding angles for the rows of one step.
pub struct Rope {
    /// Per row, per pair: (cos, sin).
    cos_sin: Vec<(f32, f32)>,
    /// Rotary pairs per head (`n_rot / 2`).
    pairs: usize,
    /// Values per head; those after the first `2·pairs` are left as they are.
    head_dim: usize,
    style: RopeStyle,
}

impl Rope {
    /// The angles of `positions`: pair `i` of the `n_rot` rotated values turns by
    /// `position · scale / base^(2i/n_rot) / factors[i]` (`factors`: Llama 3.1's
    /// `rope_freqs`, Phi-3's LongRoPE factors, or ones), its cos and sin times
    /// `rope_attn_factor` (as ggml's `rope_yarn` applies `mscale`).
    pub fn new(positions: &[usize], hp: &RopeParams, factors: &[f32], style: RopeStyle) -> Self {
        let (n_rot, base) = (hp.n_rot, hp.base as f64);
        let pairs = n_rot / 2;
        let inv_freq: Vec<f64> = (0..pairs)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / n_rot as f64) / factors[i] as f64)
            .collect();
        let (scale, mscale) = (hp.freq_scale as f64, hp.attn_factor as f64);
        let mut cos_sin = Vec::with_capacity(positions.len() * pairs);
        for &p in positions {
            for f in &inv_freq {
                let theta = p as f64 * scale * f;
                cos_sin.push(((theta.cos() * mscale) as f32, (theta.sin() * mscale) as f32));
            }
        }
        Self {
            cos_sin,
            pairs,
            head_dim: hp.head_dim,
            style,
        }
    }

    /// Rotates the first `2·pairs` values of every head of `x` (heads of `head_dim`
    /// values) for row `r`.
    pub fn apply(&self, r: usize, x: &mut [f32]) {
        let cs = &self.cos_sin[r * self.pairs..(r + 1) * self.pairs];
        let half = self.pairs;
        for head in x.chunks_exact_mut(self.head_dim) {
            let head = &mut head[..2 * half];
            match self.style {
                RopeStyle::Adjacent => {
                    for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(cs) {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos - b * sin;
                        pair[1] = a * sin + b * cos;
                    }
                }
                RopeStyle::Halves => {
                    let (lo, hi) = head.split_at_mut(half);
                    for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * cos - x1 * sin;
                        *b = x0 * sin + x1 * cos;
                    }
                }
            }
        }
    }
}

dispatch!(rms_norm_generic, rms_norm_avx2, (x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss = lane_sum(row, |v| v * v) / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * w;
        }
    }
});

/// `out = x / rms(x) · w`, for every row of `w.len()` values of `x`. The sum of squares in
/// sixteen lanes (a plain `sum()` is one serial chain of adds), compiled for AVX2 where the
/// CPU has it: the norms run on a decode step's serial thread.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    call!(rms_norm_generic, rms_norm_avx2, x, w, eps, out)
}

dispatch!(rms_norm_in_place_generic, rms_norm_in_place_avx2, (x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let ss = lane_sum(row, |v| v * v) / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(w) {
            *v = *v * scale * w;
        }
    }
});

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    call!(rms_norm_in_place_generic, rms_norm_in_place_avx2, x, w, eps)
}

dispatch!(swiglu_generic, swiglu_avx2, (gate_up: &[f32], ff: usize, act: &mut [f32]) {
    for (gu, a) in gate_up.chunks_exact(2 * ff).zip(act.chunks_exact_mut(ff)) {
        let (g, u) = gu.split_at(ff);
        for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
            *a = silu(g) * u;
        }
    }
});

/// `g · sigmoid(g)` from `e^−|g|` (which never overflows), vectorisable. Below −64 it is
/// 0: the sigmoid is under 2e−28 there, and `exp_neg`'s floor at `e^−87` would otherwise
/// leave products near the smallest normal float, whose denormal neighbours cost a
/// microcode assist in every multiply that reads them (libm's `expf` overflows to ∞ there,
/// and `g / ∞` is 0 as well). NaN stays NaN.
#[inline(always)]
fn silu(g: f32) -> f32 {
    let e = exp_neg(-g.abs());
    let sigmoid = if g >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    if g < -64.0 {
        0.0
    } else {
        g * sigmoid
    }
}

/// SwiGLU: `act[i] = silu(gate[i]) · up[i]` for every row of `gate_up` (`2·ff` values: the
/// gate's `ff`, then the up projection's), into the rows of `act` (`ff` values). Vectorised
/// (libm's `expf` one value at a time was ~1% of an eight-stream decode step, serial).
pub fn swiglu(gate_up: &[f32], ff: usize, act: &mut [f32]) {
    call!(swiglu_generic, swiglu_avx2, gate_up, ff, act)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(head_dim: usize) -> RopeParams {
        RopeParams {
            n_rot: head_dim,
            head_dim,
            base: 10_000.0,
            freq_scale: 1.0,
            attn_factor: 1.0,
        }
    }

    #[test]
    fn swiglu_and_rms_norm_match_the_f64_formulas() {
        let gates: Vec<f32> = (-1100..1100)
            .map(|i| i as f32 / 10.0)
            .chain([
                0.0, -0.0, -64.0, -63.99, -64.01, 1e-30, -1e-30, 88.0, 200.0, -200.0,
            ])
            .collect();
        let ff = gates.len();
        let ups: Vec<f32> = (0..ff).map(|i| 0.5 + (i % 13) as f32 / 7.0).collect();
        let gate_up: Vec<f32> = gates.iter().chain(&ups).copied().collect();
        let mut act = vec![f32::NAN; ff];
        swiglu(&gate_up, ff, &mut act);
        for ((&a, &g), &u) in act.iter().zip(&gates).zip(&ups) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            let tol = 1e-6 * want.abs() + if g < -64.0 { 1e-25 } else { 1e-30 };
            assert!(
                (a as f64 - want).abs() <= tol,
                "silu({g}) · {u}: {a} against {want}"
            );
        }
        let mut nan = vec![0.0; 1];
        swiglu(&[f32::NAN, 1.0], 1, &mut nan);
        assert!(nan[0].is_nan());
        for d in [1usize, 15, 16, 17, 100, 1024] {
            let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let w: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 / d as f32).collect();
            let mut out = vec![0.0; 2 * d];
            rms_norm(&x, &w, 1e-6, &mut out);
            let mut in_place = x.clone();
            rms_norm_in_place(&mut in_place, &w, 1e-6);
            assert_eq!(out, in_place, "{d}");
            for (row, o) in x.chunks(d).zip(out.chunks(d)) {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                for ((&v, &w), &o) in row.iter().zip(&w).zip(o) {
                    let want = v as f64 / (ms + 1e-6).sqrt() * w as f64;
                    assert!(
                        (o as f64 - want).abs() <= 1e-5 * want.abs().max(1e-3),
                        "{d}"
                    );
                }
            }
        }
    }

    /// Both styles rotate the same pairs by the same angles; they differ only in which values
    /// make a pair (adjacent, or one from each half).
    #[test]
    fn rope_styles_pair_values_differently_by_the_same_angles() {
        let h = hp(8);
        let ones = [1.0f32; 4];
        let adjacent = Rope::new(&[3], &h, &ones, RopeStyle::Adjacent);
        let halves = Rope::new(&[3], &h, &ones, RopeStyle::Halves);
        let x: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        // The same vector laid out for each style: pair i is (x[2i], x[2i+1]) in one,
        // (x[i], x[i+4]) in the other.
        let mut a = x.clone();
        let mut b: Vec<f32> = (0..8)
            .map(|j| if j < 4 { x[2 * j] } else { x[2 * (j - 4) + 1] })
            .collect();
        adjacent.apply(0, &mut a);
        halves.apply(0, &mut b);
        for i in 0..4 {
            assert!((a[2 * i] - b[i]).abs() < 1e-6);
            assert!((a[2 * i + 1] - b[i + 4]).abs() < 1e-6);
        }
        // Position 0 turns nothing; linear scaling by 2 turns position 6 as far as 3.
        let zero = Rope::new(&[0], &h, &ones, RopeStyle::Halves);
        let mut c = x.clone();
        zero.apply(0, &mut c);
        assert_eq!(c, x);
        let scaled = Rope::new(
            &[6],
            &RopeParams {
                freq_scale: 0.5,
                ..h
            },
            &ones,
            RopeStyle::Adjacent,
        );
        let mut s = x.clone();
        scaled.apply(0, &mut s);
        let mut t = x.clone();
        adjacent.apply(0, &mut t);
        for (u, v) in s.iter().zip(&t) {
            assert!((u - v).abs() < 1e-5);
        }
    }

    /// Partial rotary (Phi-3: `n_rot` < head size): each head's first `n_rot` values turn as a
    /// head of `n_rot` would, the rest pass unchanged; the attention factor scales only the
    /// turned values.
    #[test]
    fn partial_rotary_turns_the_first_values_of_each_head_only() {
        let full = hp(4);
        let partial = RopeParams {
            head_dim: 6,
            n_rot: 4,
            attn_factor: 1.5,
            ..full
        };
        let ones = [1.0f32; 2];
        let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let mut got = x.clone();
        Rope::new(&[5], &partial, &ones, RopeStyle::Halves).apply(0, &mut got);
        for head in 0..2 {
            let mut want = x[head * 6..head * 6 + 4].to_vec();
            Rope::new(&[5], &full, &ones, RopeStyle::Halves).apply(0, &mut want);
            for (g, w) in got[head * 6..head * 6 + 4].iter().zip(&want) {
                assert!((g - 1.5 * w).abs() < 1e-5);
            }
            assert_eq!(
                got[head * 6 + 4..head * 6 + 6],
                x[head * 6 + 4..head * 6 + 6]
            );
        }
    }
}
