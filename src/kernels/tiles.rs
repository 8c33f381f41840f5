//! The loop nest shared by the packed (bf16 and int8) matmuls: which output tiles to compute,
//! in which order, on how many threads.
//!
//! A packed weight is a sequence of *panels* of 16 output columns. A micro-kernel computes a
//! tile of at most `mr` rows × `np` panels over the whole reduction dimension with its
//! accumulators in registers. Tiles are visited row-chunk by row-chunk (so a chunk of
//! activations stays in L2 while every panel block passes over it), panel block by panel
//! block inside a chunk (so a panel block stays in L1/L2 while the chunk's rows pass over it).
//! Threads split row chunks when there are enough of them, else panel blocks.

use super::team::{current_threads, parallel_for};

/// What a packed linear layer does to its sums before storing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `y = sum + bias`.
    Bias,
    /// `y = GELU(sum + bias)` (exact erf), applied while the tile is in cache: one pass over
    /// the layer's output less than a separate GELU.
    BiasGelu,
    /// `y = GELU(sum + bias)` with the tanh approximation (GPT-2's `gelu_new`).
    BiasGeluTanh,
}

/// Output columns per panel: one AVX-512 register of f32 or i32.
pub const PANEL: usize = 16;

/// Rows per chunk: a multiple of every micro-kernel's row count (8, 6 and 4), small enough that
/// a chunk of quantized activations (96 × 1536 bytes) sits in L2. A caller whose tile is
/// taller (AMX's chunk) gets chunks of its own height.
pub const CHUNK_ROWS: usize = 96;

/// Rows a packed matmul converts and runs at a time (a multiple of [`CHUNK_ROWS`]).
pub const BLOCK_ROWS: usize = 8 * CHUNK_ROWS;

/// The output pointer the tiles of one matmul share (see [`team`](super::team)).
pub(crate) use super::team::SharedOut;

/// Runs `f(x_block, rows, out_block)` on consecutive blocks of at most [`BLOCK_ROWS`] rows
/// of an `m×k` input and its `m×n` output, after checking those sizes.
///
/// Why: a packed matmul converts its activations (bf16 or int8) before multiplying; for a
/// whole batch (16,384 rows × 1,536 for the FFN's down projection) that copy would be tens of
/// MB of extra peak memory, for a block it is a few MB, still enough rows for every thread.
///
/// # Panics
///
/// When `x` is not `m×k` or `out` not `m×n` (a caller's bug), naming the `layer` kind.
pub(crate) fn in_row_blocks(
    layer: &str,
    (x, m, k): (&[f32], usize, usize),
    (out, n): (&mut [f32], usize),
    mut f: impl FnMut(&[f32], usize, &mut [f32]),
) {
    assert_eq!(
        Some(x.len()),
        m.checked_mul(k),
        "{layer} linear: input size"
    );
    assert_eq!(
        Some(out.len()),
        m.checked_mul(n),
        "{layer} linear: output size"
    );
    for (x, out) in x
        .chunks(BLOCK_ROWS * k.max(1))
        .zip(out.chunks_mut(BLOCK_ROWS * n.max(1)))
    {
        f(x, out.len() / n.max(1), out);
    }
}

/// Stores a tile of sums into rows `r0..r0 + rows` of an `m×n` output: adds the bias
/// (padded to whole panels), keeps the valid columns, applies the epilogue's activation with
/// vectors no wider than `level`. `acc` holds `rows × ps × 16` sums, a row's `ps` panels side
/// by side, so a tile row is one contiguous run of the output row.
///
/// # Safety
///
/// `out` points to an `m×n` output that the caller borrows mutably for the whole call, with
/// `r0 + rows ≤ m` and panels `p0..p0 + ps` starting inside `n`; no other thread writes these
/// rows and columns during the call (tiles are disjoint).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_tile(
    acc: &mut [f32],
    bias: &[f32],
    n: usize,
    (r0, rows): (usize, usize),
    (p0, ps): (usize, usize),
    out: SharedOut,
    epilogue: Epilogue,
    level: super::KernelLevel,
) {
    let start = p0 * PANEL;
    let end = ((p0 + ps) * PANEL).min(n);
    let width = ps * PANEL;
    let acc = &mut acc[..rows * width];
    let bias = &bias[start..start + width];
    // Bias only: added while storing (one pass). With an activation: added first, then the
    // activation runs over the whole tile at once (padding columns included, never stored):
    // one call over many vectors lets the CPU overlap their long dependency chains, which a
    // call per output row of two vectors did not (GELU was ~4 cycles per value).
    let bias_when_storing = match epilogue {
        Epilogue::Bias => true,
        Epilogue::BiasGelu | Epilogue::BiasGeluTanh => {
            for row in acc.chunks_exact_mut(width) {
                for (a, b) in row.iter_mut().zip(bias) {
                    *a += b;
                }
            }
            if epilogue == Epilogue::BiasGelu {
                super::activations::gelu_at(acc, level)
            } else {
                super::activations::gelu_tanh_at(acc, level)
            }
            false
        }
    };
    // SAFETY: rows r0..r0 + rows < m, columns start..end ≤ n: inside the output, this tile's
    // own (the caller's contract).
    let dst = unsafe { out.ptr().add(r0 * n + start) };
    #[cfg(target_arch = "x86_64")]
    if super::dispatch::variant(level) == super::dispatch::Variant::Avx512 {
        // SAFETY: the variant is only AVX-512 when the CPU has it; `dst` as above.
        unsafe {
            store_rows_avx512(
                acc,
                width,
                end - start,
                bias_when_storing.then_some(bias),
                dst,
                n,
            )
        };
        return;
    }
    for (r, sums) in acc.chunks_exact(width).enumerate() {
        // SAFETY: as for `dst`.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * n), end - start) };
        if bias_when_storing {
            for ((d, s), b) in row.iter_mut().zip(sums).zip(bias) {
                *d = s + b;
            }
        } else {
            row.copy_from_slice(&sums[..end - start]);
        }
    }
}

/// Stores the first `valid` of each `width`-value row of `acc` (plus `bias` when given) at
/// `dst`, rows `n` values apart, 16 lanes at a time with masked stores: a `copy_from_slice`
/// per row was a `memmove` call per 128 bytes, 9% of MiniLM's pass on AMX (perf).
///
/// # Safety
///
/// The CPU has AVX-512 F; `dst` is valid for writing `valid` values at each of the
/// `acc.len() / width` rows `n` apart; `bias` (when given) holds `width` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_rows_avx512(
    acc: &[f32],
    width: usize,
    valid: usize,
    bias: Option<&[f32]>,
    dst: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(width.is_multiple_of(PANEL) && valid <= width);
    for (r, sums) in acc.chunks_exact(width).enumerate() {
        for c in (0..valid).step_by(PANEL) {
            let rest = valid - c;
            let mask: __mmask16 = if rest >= PANEL {
                u16::MAX
            } else {
                (1 << rest) - 1
            };
            // SAFETY: c + 16 ≤ width inside `sums` and `bias`; the mask keeps the store inside
            // the row's `valid` values (the caller's contract).
            unsafe {
                let mut v = _mm512_loadu_ps(sums.as_ptr().add(c));
                if let Some(bias) = bias {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(bias.as_ptr().add(c)));
                }
                _mm512_mask_storeu_ps(dst.add(r * n + c), mask, v);
            }
        }
    }
}

/// Bytes of one cache line: the unit a prefetch asks for.
pub(crate) const LINE: usize = 64;

/// Rows of one chunk of [`for_each_tile`] for tiles of `mr` rows: [`CHUNK_ROWS`] rounded
/// down to whole tiles (at least one).
fn chunk_rows(mr: usize) -> usize {
    (CHUNK_ROWS / mr).max(1) * mr
}

/// Which bytes of the next panel block the tile at `row0` asks the cache for while it
/// computes, when [`for_each_tile`] sweeps each panel block with several row tiles (a batch
/// of `m > mr` rows): every tile of the sweep takes an equal share of the next block's
/// `bytes`, so that they arrive while this block's tiles compute. Without it, the first
/// tile of every block waits on memory and the others compute from L1, one after the other
/// (eight int8 rows on a Zen 3: the time of the two added up). Empty for a lone row tile:
/// decode's one or two rows already stream their weights as fast as memory allows.
pub(crate) fn prefetch_share(
    m: usize,
    mr: usize,
    row0: usize,
    bytes: usize,
) -> std::ops::Range<usize> {
    let chunk_rows = chunk_rows(mr);
    let tiles = m.min(chunk_rows).div_ceil(mr);
    if tiles < 2 {
        return 0..0;
    }
    let lines = bytes.div_ceil(LINE);
    let t = (row0 % chunk_rows) / mr;
    let start = (t * lines / tiles) * LINE;
    let end = ((t + 1) * lines / tiles * LINE).min(bytes);
    start.min(end)..end
}

/// Calls `tile(row0, rows, panel0, panels)` for tiles covering `m` rows × `panels` panels
/// exactly once each, with `rows ≤ mr` and `panels ≤ np`, on up to `threads` threads (see
/// [`parallel_for`]).
///
/// The tiles are disjoint, so `tile` may write its part of a shared output.
pub(crate) fn for_each_tile(
    m: usize,
    panels: usize,
    mr: usize,
    np: usize,
    threads: usize,
    tile: &(dyn Fn(usize, usize, usize, usize) + Sync),
) {
    assert!(mr > 0 && np > 0, "tile sizes must be positive");
    if m == 0 || panels == 0 {
        return;
    }
    let chunk_rows = chunk_rows(mr);
    let run = |rows: std::ops::Range<usize>, panel_range: std::ops::Range<usize>| {
        for r0 in (rows.start..rows.end).step_by(chunk_rows) {
            let r_end = (r0 + chunk_rows).min(rows.end);
            for p0 in (panel_range.start..panel_range.end).step_by(np) {
                let p = np.min(panel_range.end - p0);
                for i in (r0..r_end).step_by(mr) {
                    tile(i, mr.min(r_end - i), p0, p);
                }
            }
        }
    };
    let chunks = m.div_ceil(chunk_rows);
    if threads <= 1 {
        run(0..m, 0..panels);
    } else if chunks >= 2 * threads {
        // Enough rows: each task takes whole chunks and every panel.
        parallel_for(chunks, threads, &|c| {
            run(c * chunk_rows..((c + 1) * chunk_rows).min(m), 0..panels)
        });
    } else {
        // Few rows (one small batch): split the panels, so every thread reads a different
        // part of the weights. On a team (generation steps) in several tasks per thread, so
        // that a thread the OS delays leaves its share to the others.
        let tasks = match current_threads() {
            Some(_) => threads * 4,
            None => threads,
        };
        let per = panels.div_ceil(tasks).max(1);
        parallel_for(panels.div_ceil(per), threads, &|t| {
            run(0..m, t * per..((t + 1) * per).min(panels))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn the_tiles_of_a_sweep_share_the_next_block_in_whole_lines() {
        // Eight rows in tiles of two: four tiles, each a quarter of 16 KiB, in order.
        let shares: Vec<_> = (0..8)
            .step_by(2)
            .map(|r0| prefetch_share(8, 2, r0, 16384))
            .collect();
        assert_eq!(shares, [0..4096, 4096..8192, 8192..12288, 12288..16384]);
        // Lines do not divide evenly: still disjoint, in whole lines, covering every byte.
        let shares: Vec<_> = (0..9)
            .step_by(4)
            .map(|r0| prefetch_share(9, 4, r0, 1000))
            .collect();
        assert_eq!(shares, [0..320, 320..640, 640..1000]);
        // A lone tile (decode) and nothing to fetch: nothing.
        assert_eq!(prefetch_share(2, 2, 0, 16384), 0..0);
        assert_eq!(prefetch_share(1, 4, 0, 16384), 0..0);
        assert_eq!(prefetch_share(8, 2, 6, 0), 0..0);
        // Past a chunk of rows the sweep starts again: the chunk's tiles share it.
        let per_chunk = CHUNK_ROWS / 2;
        assert_eq!(
            prefetch_share(1000, 2, CHUNK_ROWS, 64 * per_chunk),
            prefetch_share(1000, 2, 0, 64 * per_chunk)
        );
        assert_eq!(prefetch_share(1000, 2, 0, 64 * per_chunk), 0..64);
    }

    #[test]
    fn every_cell_is_visited_exactly_once() {
        for (m, panels, mr, np, threads) in [
            (1, 1, 6, 4, 1),
            (7, 5, 6, 4, 2),
            (300, 3, 6, 4, 2),
            (95, 24, 4, 1, 2),
            (1000, 9, 6, 4, 3),
            (13, 1, 4, 1, 1),
        ] {
            let seen = Mutex::new(vec![0u8; m * panels]);
            for_each_tile(m, panels, mr, np, threads, &|r0, rows, p0, ps| {
                assert!(rows >= 1 && rows <= mr && ps >= 1 && ps <= np);
                let mut seen = seen.lock();
                for r in r0..r0 + rows {
                    for p in p0..p0 + ps {
                        seen[r * panels + p] += 1;
                    }
                }
            });
            assert!(
                seen.lock().iter().all(|&v| v == 1),
                "{m}×{panels} by {mr}×{np} on {threads}"
            );
        }
    }
}
