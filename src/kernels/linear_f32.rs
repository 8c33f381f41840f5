//! The f32 linear layer: `out = x · Wᵀ + b` on weights used in place (PyTorch layout, straight
//! from the memory-mapped checkpoint), with several weight blocks side by side (the fused QKV
//! projection).
//!
//! Two matmuls: up to [`SMALL_M`] rows, a register-blocked AVX2 dot kernel that reads each
//! weight row once, where it lies (a lone request's pass is dominated by reading the weights,
//! and packing them would read them twice); above it, `gemm`, whose packing pays off. The bias
//! is written into the output first and the product accumulated on top (no broadcast add).

#[cfg(target_arch = "x86_64")]
use super::dispatch::has_avx2_fma;
use super::team::{parallel_for, SharedOut};

/// Up to this many rows, a linear layer runs the dot-product kernel that reads each weight
/// once in place; above it, `gemm`, whose packing pays off. Measured in `benches/forward.rs`
/// (`linear/*` rows) and docs/benchmarks.md.
pub const SMALL_M: usize = 24;

/// One block of output columns of a linear layer: weight rows `w` (`n×k`, PyTorch layout)
/// and bias `b` (`n`). A layer may have several (the Q, K and V projections side by side).
#[derive(Clone, Copy)]
pub struct LinearPart<'a> {
    pub w: &'a [f32],
    pub b: &'a [f32],
}

/// Which matmul a linear layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The in-place dot kernel up to [`SMALL_M`] rows (when the CPU has AVX2+FMA), else gemm.
    Auto,
    /// Always gemm (for benchmarks).
    Gemm,
}

/// Σn, the output width of a linear layer with these parts; `None` if it overflows.
pub fn output_width(parts: &[LinearPart]) -> Option<usize> {
    parts
        .iter()
        .try_fold(0usize, |n, p| n.checked_add(p.b.len()))
}

/// `out[m × Σn] = [bias_p + x[m×k] · w_pᵀ for each part p]`, parts side by side. With `k = 0`
/// the product is empty and `out` is the biases.
///
/// # Panics
///
/// When a size does not match (`x` is not `m×k`, `out` not `m×Σn`, a weight not `n×k`),
/// computed without overflow.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &[LinearPart],
    out: &mut [f32],
    threads: usize,
) {
    linear_with(x, m, k, parts, out, threads, MatmulKernel::Auto)
}

/// [`linear`] with the kernel chosen by the caller.
pub fn linear_with(
    x: &[f32],
    m: usize,
    k: usize,
    parts: &[LinearPart],
    out: &mut [f32],
    threads: usize,
    kernel: MatmulKernel,
) {
    let total = output_width(parts).expect("linear: output width overflows usize");
    assert_eq!(Some(x.len()), m.checked_mul(k), "linear: input size");
    assert_eq!(Some(out.len()), m.checked_mul(total), "linear: output size");
    for p in parts {
        assert_eq!(
            Some(p.w.len()),
            p.b.len().checked_mul(k),
            "linear: weight size"
        );
    }
    // Nothing to compute, and the pointer arithmetic below needs a non-empty output.
    if m == 0 || total == 0 {
        return;
    }
    for row in out.chunks_exact_mut(total) {
        let mut col = 0;
        for p in parts {
            row[col..col + p.b.len()].copy_from_slice(p.b);
            col += p.b.len();
        }
    }
    if k == 0 {
        return;
    }
    let mut col = 0;
    for p in parts {
        let n = p.b.len();
        add_product(x, m, k, p.w, n, out, total, col, threads, matmul(kernel, m));
        col += n;
    }
}

/// The matmul that computes a part's product.
#[derive(Clone, Copy)]
enum Matmul {
    /// [`small_m_avx2`]: only chosen when the CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    SmallM,
    /// `gemm`, single-threaded (the threads split the columns, as for the dot kernel).
    Gemm,
}

/// The matmul `kernel` asks for at `m` rows, on this CPU.
fn matmul(kernel: MatmulKernel, m: usize) -> Matmul {
    #[cfg(target_arch = "x86_64")]
    if kernel == MatmulKernel::Auto && m <= SMALL_M && has_avx2_fma() {
        return Matmul::SmallM;
    }
    let _ = (kernel, m);
    Matmul::Gemm
}

/// Fewest output columns worth a task of their own: below it, handing out the task costs
/// more than the columns' share of the work.
const MIN_TASK_COLUMNS: usize = 64;

/// Output columns per task are a multiple of this: whole vectors for gemm's kernels, whole
/// 4-row blocks for the dot kernel.
const TASK_COLUMN_ALIGN: usize = 16;

/// Adds `x · wᵀ` to columns `col..col + n` of the `m` rows of `out` (row stride `stride`),
/// the columns split into one range per thread (at least [`MIN_TASK_COLUMNS`] each), so that
/// every thread reads a different part of the weights.
///
/// # Panics
///
/// When `x` is not `m×k`, `w` not `n×k`, or `out` does not hold `m` rows of `stride` values
/// with `col + n ≤ stride`.
#[allow(clippy::too_many_arguments)]
fn add_product(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    stride: usize,
    col: usize,
    threads: usize,
    matmul: Matmul,
) {
    assert_eq!(Some(x.len()), m.checked_mul(k), "linear: input size");
    assert_eq!(Some(w.len()), n.checked_mul(k), "linear: weight size");
    assert!(
        col.checked_add(n).is_some_and(|end| end <= stride)
            && m.checked_mul(stride).is_some_and(|len| len <= out.len()),
        "linear: output size"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let tasks = threads.min(n / MIN_TASK_COLUMNS).max(1);
    let chunk = n.div_ceil(tasks).div_ceil(TASK_COLUMN_ALIGN) * TASK_COLUMN_ALIGN;
    let shared = SharedOut(out.as_mut_ptr());
    parallel_for(n.div_ceil(chunk), threads, &|t| {
        let start = t * chunk;
        let len = chunk.min(n - start);
        // SAFETY: each task writes only columns col+start..col+start+len of the m rows,
        // disjoint from the other tasks' and inside `out` (checked above), which stays
        // mutably borrowed until every task has returned; the weight rows it reads are in
        // bounds (slice indexing); `matmul` is `SmallM` only on a CPU with AVX2 and FMA.
        unsafe {
            add_block(
                matmul,
                x,
                m,
                k,
                &w[start * k..(start + len) * k],
                len,
                shared.ptr(),
                stride,
                col + start,
            )
        }
    });
}

/// `out[i·stride + col + j] += x[i] · w[j]` for `i < m`, `j < n` with `matmul`, on the
/// calling thread.
///
/// # Safety
///
/// `x` holds `m×k` values and `w` `n×k` (`m, n, k ≥ 1`); `out` is valid for reads and writes
/// of those elements, which nothing else accesses during the call; `matmul` is
/// [`Matmul::SmallM`] only on a CPU with AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
unsafe fn add_block(
    matmul: Matmul,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    stride: usize,
    col: usize,
) {
    match matmul {
        // SAFETY: the caller's contract.
        #[cfg(target_arch = "x86_64")]
        Matmul::SmallM => unsafe { small_m_avx2(x, m, k, w, n, out, stride, col) },
        // SAFETY: dst is the m×n block at column `col` of rows `stride` apart, valid and ours
        // (the caller's contract); lhs is x (m×k row-major); rhs = wᵀ (k×n) read from w (n×k
        // row-major); the sizes are those of slices and of the caller's buffer, so they fit
        // in isize.
        Matmul::Gemm => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.add(col),
                1,
                stride as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        },
    }
}

/// `out[i·stride + col + j] += x[i] · w[j]` for a few rows: each weight row is read once,
/// straight from where it lies, and dotted with every input row while it sits in L1.
/// Register blocking: 3 input rows × 4 weight rows = 12 accumulators of 8 lanes.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `x` holds at least `m×k` values and `w` at least `n×k`;
/// `out` is valid for reads and writes of `out[i·stride + col + j]` for every `i < m`,
/// `j < n`, and nothing else accesses those elements during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_m_avx2(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    stride: usize,
    col: usize,
) {
    let (x, w, o) = (x.as_ptr(), w.as_ptr(), out.add(col));
    let mut j = 0;
    while j + 4 <= n {
        let mut i = 0;
        while i + 3 <= m {
            block::<3, 4>(x, w, o, k, stride, i, j);
            i += 3;
        }
        while i < m {
            block::<1, 4>(x, w, o, k, stride, i, j);
            i += 1;
        }
        j += 4;
    }
    while j < n {
        for i in 0..m {
            block::<1, 1>(x, w, o, k, stride, i, j);
        }
        j += 1;
    }
}

/// `o[(i+r)·stride + j+c] += x[i+r] · w[j+c]` for `r < R`, `c < C` (rows of `k` values).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `x` holds rows `i..i+R` and `w` rows `j..j+C` of `k`
/// values each; `o` is valid for reads and writes of the `R×C` elements above, which nothing
/// else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const R: usize, const C: usize>(
    x: *const f32,
    w: *const f32,
    o: *mut f32,
    k: usize,
    stride: usize,
    i: usize,
    j: usize,
) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut kk = 0;
    while kk < k8 {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(w.add((j + c) * k + kk));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.add((i + r) * k + kk));
            for (a, wc) in row.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, *wc, *a);
            }
        }
        kk += 8;
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, a) in row.iter().enumerate() {
            let v = *a;
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_hadd_ps(s, s);
            let s = _mm_hadd_ps(s, s);
            let mut sum = _mm_cvtss_f32(s);
            for t in k8..k {
                sum += *x.add((i + r) * k + t) * *w.add((j + c) * k + t);
            }
            *o.add((i + r) * stride + j + c) += sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{close, edge_rows, edge_widths, lcg};

    /// Both paths (the in-place dot kernel for few rows, gemm for many), odd sizes, and parts
    /// side by side, against a naive loop.
    #[test]
    fn linear_parts_match_a_naive_matmul_for_small_and_large_batches() {
        for (m, k, n1, n2) in [
            (1, 384, 12, 5),
            (7, 37, 9, 4),
            (SMALL_M, 64, 16, 8),
            (SMALL_M + 5, 40, 13, 6),
        ] {
            let x = lcg(11, m * k);
            let (w1, b1, w2, b2) = (lcg(12, n1 * k), lcg(13, n1), lcg(14, n2 * k), lcg(15, n2));
            let parts = [LinearPart { w: &w1, b: &b1 }, LinearPart { w: &w2, b: &b2 }];
            let total = n1 + n2;
            let mut out = vec![0.0; m * total];
            linear(&x, m, k, &parts, &mut out, 1);
            for i in 0..m {
                for j in 0..total {
                    let (w, b, jj) = if j < n1 {
                        (&w1, &b1, j)
                    } else {
                        (&w2, &b2, j - n1)
                    };
                    let want: f64 = b[jj] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * w[jj * k + t] as f64)
                            .sum::<f64>();
                    let got = out[i * total + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "m{m} k{k} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn linear_matches_a_naive_matmul_with_bias() {
        let (m, k, n) = (5, 7, 3);
        let x = lcg(1, m * k);
        let w = lcg(2, n * k);
        let b = lcg(3, n);
        for threads in [1, 2] {
            let mut out = vec![0.0; m * n];
            linear(&x, m, k, &[LinearPart { w: &w, b: &b }], &mut out, threads);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                    assert!((out[i * n + j] - want).abs() < 1e-5);
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Edge shapes against naive references (f64), around SMALL_M, the 8-lane and 4-row blocks
    // of the kernels, and the thread splits. Under miri, a few small shapes only.
    // -----------------------------------------------------------------------------------------

    /// Checks `linear` (both kernels) for `x[m×k]` and parts of the given widths.
    fn check_linear(m: usize, k: usize, widths: &[usize], threads: usize, seed: u64) {
        let x = lcg(seed, m * k);
        let ws: Vec<(Vec<f32>, Vec<f32>)> = widths
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                (
                    lcg(seed + 10 + p as u64, n * k),
                    lcg(seed + 20 + p as u64, n),
                )
            })
            .collect();
        let parts: Vec<LinearPart> = ws.iter().map(|(w, b)| LinearPart { w, b }).collect();
        let total: usize = widths.iter().sum();
        let mut want = vec![0.0f64; m * total];
        for i in 0..m {
            let mut col = 0;
            for (w, b) in &ws {
                for j in 0..b.len() {
                    want[i * total + col + j] = b[j] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum::<f64>();
                }
                col += b.len();
            }
        }
        for kernel in [MatmulKernel::Auto, MatmulKernel::Gemm] {
            let mut out = vec![f32::NAN; m * total];
            linear_with(&x, m, k, &parts, &mut out, threads, kernel);
            for (e, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    close(*got, *want, 1e-5 * (k as f64).sqrt().max(1.0)),
                    "{kernel:?} m{m} k{k} widths {widths:?} threads {threads}: [{e}] {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn linear_edge_shapes_match_a_naive_matmul() {
        let mut case = 0u64;
        for m in edge_rows() {
            for k in edge_widths() {
                for n in edge_widths() {
                    case += 1;
                    let threads = 1 + (case % 5) as usize;
                    check_linear(m, k, &[n], threads, case);
                    check_linear(m, k, &[n, 1 + (n % 7), 4], threads, case);
                }
            }
        }
        // Every thread count where the work is split (≥ 128 columns for the dot kernel).
        let wide = if cfg!(miri) { 9 } else { 130 };
        for threads in 1..=5 {
            for m in [1, 7, SMALL_M, SMALL_M + 1] {
                check_linear(m, 65, &[wide, 129.min(wide)], threads, 7 + threads as u64);
            }
        }
    }

    /// The column split on a team (as the workers and the generation loop run it), around
    /// the task sizes: fewer columns than a task's minimum, one task per thread, ragged ends.
    #[test]
    fn linear_on_a_team_matches_a_naive_matmul() {
        let team = crate::kernels::team::Team::new(3).unwrap();
        team.install(|| {
            for (case, n) in [1usize, 63, 64, 65, 128, 130, 200, 1000]
                .into_iter()
                .enumerate()
            {
                for m in [1, 7, SMALL_M, SMALL_M + 1, 100] {
                    for threads in [2, 3] {
                        check_linear(m, 33, &[n, 17], threads, 100 + case as u64);
                    }
                }
            }
        });
    }

    #[test]
    fn linear_with_nothing_to_compute_leaves_the_biases() {
        let (w, b) = (lcg(1, 3 * 4), lcg(2, 3));
        let (w2, b2) = (lcg(3, 2 * 4), lcg(4, 2));
        let parts = [LinearPart { w: &w, b: &b }, LinearPart { w: &w2, b: &b2 }];
        // No rows (an empty output: no pointer arithmetic on its dangling pointer).
        for kernel in [MatmulKernel::Auto, MatmulKernel::Gemm] {
            linear_with(&[], 0, 4, &parts, &mut [], 2, kernel);
        }
        // No columns at all, and one empty part among others.
        linear(&lcg(5, 2 * 4), 2, 4, &[], &mut [], 1);
        let empty = LinearPart { w: &[], b: &[] };
        let x = lcg(6, 2 * 4);
        let mut out = vec![0.0; 2 * 3];
        linear(&x, 2, 4, &[empty, parts[0], empty], &mut out, 1);
        let mut want = vec![0.0; 2 * 3];
        linear(&x, 2, 4, &parts[..1], &mut want, 1);
        assert_eq!(out, want);
        // k = 0: x·wᵀ is empty, the result is the bias of every row.
        let parts0 = [LinearPart { w: &[], b: &b }, LinearPart { w: &[], b: &b2 }];
        let mut out = vec![f32::NAN; 3 * 5];
        linear(&[], 3, 0, &parts0, &mut out, 1);
        for row in out.chunks_exact(5) {
            assert_eq!(&row[..3], &b[..]);
            assert_eq!(&row[3..], &b2[..]);
        }
    }

    #[test]
    #[should_panic(expected = "linear: input size")]
    fn linear_refuses_sizes_whose_product_wraps() {
        // m × k = 2⁶⁴ wraps to 0 = x.len() with unchecked arithmetic.
        let b = [0.0f32; 1];
        linear(
            &[],
            1 << 32,
            1 << 32,
            &[LinearPart { w: &[], b: &b }],
            &mut [],
            1,
        );
    }
}
