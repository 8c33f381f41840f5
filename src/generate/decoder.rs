//! What every decoder shares: [`Decoder`], the interface the generation engine runs whatever
//! the architecture, one step's inputs, and causal attention of a step's new rows over their
//! own caches ([`super::kv_cache`]), run in parallel.
//!
//! Architectures differ in how they make Q, K and V and what follows attention; the cache,
//! the attention and the bookkeeping of a step are the same, so they live here once.

use super::kv_cache::{CacheShape, KvCache, KvElem, KvLayer};
use crate::kernels::team::parallel_for;
use crate::kernels::tiles::SharedOut;
use crate::kernels::{self, CausalShape, Dtype, Epilogue, KernelLevel, KvRows, PackedLinear};

/// The sizes the front end and the engine need to know.
#[derive(Debug, Clone, Copy)]
pub struct DecoderShape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub vocab: usize,
    /// Longest sequence (prompt and generated tokens) the model runs.
    pub context: usize,
    pub cache: CacheShape,
}

/// A decoder-only language model, as the engine runs it. Each architecture implements it in
/// its own file (`llama.rs`, `gpt2.rs`) with its own math; what they share is in this file.
pub trait Decoder: Send + Sync {
    /// The model's sizes.
    fn shape(&self) -> DecoderShape;

    /// Runs one step over every input (a chunk of a prompt, or a sequence's last token):
    /// appends their keys and values to their caches and returns the logits after the last
    /// token of every input that wants them, in input order.
    fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>>;

    /// Bytes of weights held.
    fn weight_bytes(&self) -> usize;

    /// The number format of the linear layers that are converted at load (4- and 5-bit GGUF
    /// weights may stay as stored: see [`Self::weight_formats`]).
    fn dtype(&self) -> Dtype;

    /// What each kind of weight runs in, by kind (`attention`, `feed_forward`, `lm_head`,
    /// `token_embedding`): what `/info` and the start-up log show.
    fn weight_formats(&self) -> Vec<(&'static str, String)>;

    /// An empty cache for a sequence of up to `tokens` tokens.
    fn new_cache(&self, tokens: usize) -> KvCache {
        KvCache::with_capacity(self.shape().cache, tokens)
    }
}

/// The formats `layers` run in, each named once, in order of first use (`q4_1+int8`).
pub(super) fn formats_of<'a>(layers: impl IntoIterator<Item = &'a Linear>) -> String {
    let mut names: Vec<&str> = Vec::new();
    for name in layers.into_iter().flat_map(|layer| layer.format_names()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join("+")
}

/// A linear layer (with its bias, zero for layers that have none) in the format chosen at
/// load: f32 in panels, or packed for the bf16, int16, int8 or 4-/5-bit kernels.
pub(super) type Linear = PackedLinear;

/// One sequence's part of a step: the tokens to run (at positions `cache.len()..`), and
/// whether the logits after its last token are wanted.
pub struct StepInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub want_logits: bool,
}

/// Query rows of one sequence per attention task: a prompt's chunk is split so the cores
/// share it (its last rows see the most keys, and tasks are taken as cores come free).
const ATTENTION_ROWS_PER_TASK: usize = 16;

/// One attention task: query rows of one sequence over one layer of its cache, for the query
/// heads of some of its KV heads.
#[derive(Clone)]
struct AttentionTask<'a> {
    /// The rows of `qkv`.
    q: &'a [f32],
    kv: &'a KvLayer,
    /// The position of the cache's first row (a sliding layer drops older ones).
    first: usize,
    /// The position of the first row.
    start: usize,
    /// The rows' place in the step's output (`rows × n_head·head_dim`).
    out: SharedOut,
    rows: usize,
    kv_heads: std::ops::Range<usize>,
}

thread_local! {
    /// A task's heads before they are copied into their columns of the output (a task of some
    /// heads only), reused so that a decode step allocates nothing.
    static HEADS_OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends every input's new keys and values (from its rows of `qkv`: each row is Q, then
/// K, then V, `shape.qkvw` wide) to layer `l` of its cache, then attends, sequence by sequence
/// in parallel, writing each row's heads into `attn` (`rows × n_head·head_dim`).
///
/// A long prompt's rows are split into tasks of [`ATTENTION_ROWS_PER_TASK`]. When a step has
/// fewer tasks than threads (one stream decoding), each task's KV heads are split too, so that
/// every core attends: heads are independent, so the output is the same bit for bit.
pub(super) fn cached_attention(
    inputs: &mut [StepInput],
    l: usize,
    qkv: &[f32],
    shape: &AttnShape,
    attn: &mut [f32],
    level: KernelLevel,
    threads: usize,
) {
    let h = &shape.heads;
    let qw = h.n_head * h.head_dim;
    let kvw = h.n_head_kv * h.head_dim;
    let qkvw = shape.qkvw;
    let mut row0 = 0;
    let mut tasks = Vec::with_capacity(inputs.len());
    let mut attn_rest: &mut [f32] = attn;
    for input in inputs.iter_mut() {
        let rows = input.tokens.len();
        let (mine, rest) = attn_rest.split_at_mut(rows * qw);
        attn_rest = rest;
        input.cache.append(l, rows, |r| {
            let row = &qkv[(row0 + r) * qkvw..(row0 + r + 1) * qkvw];
            (&row[qw..qw + kvw], &row[qw + kvw..qw + 2 * kvw])
        });
        // A sliding layer holds positions `first..` only (it drops the ones no query can
        // see any more).
        let layer = input.cache.layer(l);
        let (start, first) = (input.cache.len(), layer.first);
        for (c, out) in mine.chunks_mut(ATTENTION_ROWS_PER_TASK * qw).enumerate() {
            let r0 = c * ATTENTION_ROWS_PER_TASK;
            let n = out.len() / qw;
            tasks.push(AttentionTask {
                q: &qkv[(row0 + r0) * qkvw..(row0 + r0 + n) * qkvw],
                kv: layer.kv,
                first,
                start: start + r0,
                out: SharedOut(out.as_mut_ptr()),
                rows: n,
                kv_heads: 0..h.n_head_kv,
            });
        }
        row0 += rows;
    }
    if !tasks.is_empty() && tasks.len() < threads {
        let parts = threads.div_ceil(tasks.len()).min(h.n_head_kv);
        tasks = tasks
            .iter()
            .flat_map(|t| {
                (0..parts).map(move |p| AttentionTask {
                    kv_heads: p * h.n_head_kv / parts..(p + 1) * h.n_head_kv / parts,
                    ..t.clone()
                })
            })
            .collect();
    }
    parallel_for(tasks.len(), threads, &|i| {
        let t = &tasks[i];
        let all = t.kv_heads.len() == h.n_head_kv;
        if all {
            // SAFETY: each task of every head writes its own rows of `attn` (split above),
            // which stays mutably borrowed until this call returns.
            let out = unsafe { std::slice::from_raw_parts_mut(t.out.ptr(), t.rows * qw) };
            attend(shape, t, out, level);
            return;
        }
        HEADS_OUT.with(|cell| {
            let heads = &mut *cell.borrow_mut();
            let group = h.n_head / h.n_head_kv;
            let w = t.kv_heads.len() * group * h.head_dim;
            heads.clear();
            heads.resize(t.rows * w, 0.0);
            attend(shape, t, heads, level);
            let col = t.kv_heads.start * group * h.head_dim;
            for (r, row) in heads.chunks_exact(w).enumerate() {
                // SAFETY: the task's heads are its own columns of its rows of `attn` (the
                // tasks of one row split its KV heads without overlap), mutably borrowed
                // until this call returns; no reference to them is formed.
                unsafe {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), t.out.ptr().add(r * qw + col), w)
                };
            }
        });
    });
}

/// Ends a step: every cache now holds its input's tokens. Returns the rows (in the step's
/// row order) whose hidden state gives logits: the last row of each input that wants them.
pub(super) fn finish_step(inputs: &mut [StepInput]) -> Vec<usize> {
    let mut last_rows = Vec::new();
    let mut row0 = 0;
    for input in inputs.iter_mut() {
        row0 += input.tokens.len();
        input.cache.advance(input.tokens.len());
        if input.want_logits && !input.tokens.is_empty() {
            last_rows.push(row0 - 1);
        }
    }
    last_rows
}

/// The logits of a finished step: the rows of `x` (`n_embd` wide) that want them (see
/// [`finish_step`]) go through the final norm, then the LM head (`vocab` values each).
pub(super) fn logits(
    x: &[f32],
    n_embd: usize,
    rows: &[usize],
    final_norm: impl Fn(&[f32], &mut [f32]),
    lm_head: &Linear,
    level: KernelLevel,
    threads: usize,
) -> Vec<Vec<f32>> {
    let r = rows.len();
    if r == 0 {
        return Vec::new();
    }
    let mut h = Vec::with_capacity(r * n_embd);
    for &row in rows {
        h.extend_from_slice(&x[row * n_embd..(row + 1) * n_embd]);
    }
    let mut hn = vec![0.0f32; r * n_embd];
    final_norm(&h, &mut hn);
    let vocab = lm_head.n();
    let mut out = vec![0.0f32; r * vocab];
    lm_head.forward(&hn, r, &mut out, level, threads, Epilogue::Bias);
    out.chunks_exact(vocab).map(<[f32]>::to_vec).collect()
}

/// The positions of a step's rows, input by input, after checking that no cache passes
/// `context`.
///
/// # Panics
///
/// When a sequence would pass the context length (the engine checks before admitting).
pub(super) fn positions(inputs: &[StepInput], context: usize) -> Vec<usize> {
    let mut positions = Vec::new();
    for input in inputs {
        assert!(
            input.cache.len() + input.tokens.len() <= context,
            "a sequence passed the context length"
        );
        positions.extend(input.cache.len()..input.cache.len() + input.tokens.len());
    }
    positions
}

/// The shape of one attention call: the heads, scale and window the kernel reads, and where
/// the rows of Q, K and V side by side end.
pub(super) struct AttnShape {
    /// Heads, scale (`1/√head_dim` for most models; Gemma 3's `query_pre_attn_scalar`) and
    /// sliding window (a query at `p` sees `p + 1 - window ..= p` only: llama.cpp's
    /// `LLAMA_SWA_TYPE_STANDARD`, transformers' `sliding_window`).
    pub heads: CausalShape,
    /// Width of one row of Q, K and V side by side.
    pub qkvw: usize,
}

impl AttnShape {
    /// Full causal attention scaled by `1/√head_dim`.
    pub(super) fn causal(n_head: usize, n_head_kv: usize, head_dim: usize, qkvw: usize) -> Self {
        Self {
            heads: CausalShape::new(n_head, n_head_kv, head_dim),
            qkvw,
        }
    }
}

/// A task's attention into `out` (`rows ×` its heads' width), on its cache's element type.
fn attend(s: &AttnShape, t: &AttentionTask, out: &mut [f32], level: KernelLevel) {
    let (h, q, first, start) = (t.kv_heads.clone(), t.q, t.first, t.start);
    match t.kv {
        KvLayer::F16(k, v) => attend_rows(s, h, q, KvRows { k, v, first }, start, out, level),
        KvLayer::F32(k, v) => attend_rows(s, h, q, KvRows { k, v, first }, start, out, level),
    }
}

/// Causal attention of one sequence's new rows (queries in `qkv`, rows at positions
/// `start..`) over its cache (`kv`: every position up to the last new row the rows see), for
/// the query heads of `kv_heads`, into `out` (`rows ×` those heads): the blocked kernel of
/// `kernels/causal_attention.rs`, which widens an f16 cache a key block at a time.
fn attend_rows<T: KvElem>(
    s: &AttnShape,
    kv_heads: std::ops::Range<usize>,
    qkv: &[f32],
    kv: KvRows<T>,
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    kernels::causal_attention_heads(&s.heads, kv_heads, qkv, s.qkvw, kv, start, out, level);
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
        let shape = |window| {
            let mut s = AttnShape::causal(n_head, n_head_kv, hd, qkvw);
            s.heads.window = window;
            s
        };
        for level in [KernelLevel::Scalar, KernelLevel::detected()] {
            // The last three rows at positions n-3..n, with a window of 4.
            let rows = 3;
            let q = &qkv[(n - rows) * qkvw..];
            let mut windowed = vec![0.0f32; rows * n_head * hd];
            let all = KvRows {
                k: &k[..],
                v: &v[..],
                first: 0,
            };
            attend_rows(
                &shape(Some(4)),
                0..n_head_kv,
                q,
                all,
                n - rows,
                &mut windowed,
                level,
            );
            for r in 0..rows {
                let last = n - rows + r;
                let first = last + 1 - 4;
                let mut alone = vec![0.0f32; n_head * hd];
                attend_rows(
                    &shape(None),
                    0..n_head_kv,
                    &q[r * qkvw..(r + 1) * qkvw],
                    KvRows {
                        k: &k[first * kvw..(last + 1) * kvw],
                        v: &v[first * kvw..(last + 1) * kvw],
                        first: 0,
                    },
                    3,
                    &mut alone,
                    level,
                );
                assert_eq!(
                    &windowed[r * n_head * hd..(r + 1) * n_head * hd],
                    &alone[..]
                );
            }
            let mut full = vec![0.0f32; rows * n_head * hd];
            attend_rows(
                &shape(None),
                0..n_head_kv,
                q,
                all,
                n - rows,
                &mut full,
                level,
            );
            let mut wide = vec![0.0f32; rows * n_head * hd];
            attend_rows(
                &shape(Some(n)),
                0..n_head_kv,
                q,
                all,
                n - rows,
                &mut wide,
                level,
            );
            assert_eq!(full, wide);
            assert_ne!(full, windowed);
        }
    }
}
