//! What the tiny decoder references share (tests/qwen_reference.rs, phi3_reference.rs,
//! gemma3_reference.rs): the prompts' reference logits as the make-*-reference.py scripts
//! write them, and one run of every comparison for a file loaded one way: each prefix in one
//! step, chunked prefill then one token at a time through the KV cache, and continuous
//! batching, against the reference where it has logits and against our own full recompute;
//! and greedy decoding against llama.cpp's on the same file ([`check_llama_cpp_greedy`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use zerobatch::generate::decoder::{Decoder, StepInput};
use zerobatch::generate::kv_cache::KvCache;
use zerobatch::kernels::Dtype;

use super::{cosine, max_abs_diff};

/// Largest |difference| accepted between our f32 logits and transformers'.
pub const TOLERANCE: f32 = 1e-4;
/// Lowest cosine accepted for the default (int8 / Q4) load against the reference.
pub const AUTO_MIN_COSINE: f64 = 0.99;
/// Largest |difference| between a cached step and a full recompute of the same prefix, in
/// one load (the same kernels, a different batching of rows).
pub const SELF_TOLERANCE: f32 = 1e-3;

/// One prompt of a reference and transformers' logits for it.
#[derive(Deserialize)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The logits after every position (f32 file).
    pub f32: Vec<Vec<f32>>,
    pub q8_0_last: Vec<f32>,
    pub q4_0_last: Vec<f32>,
}

/// The comparisons of one run: the largest difference and the lowest cosine.
pub struct Checker {
    label: String,
    pub max_diff: f32,
    pub min_cosine: f64,
    count: usize,
}

impl Checker {
    pub fn new(label: String) -> Self {
        Self {
            label,
            max_diff: 0.0,
            min_cosine: 1.0,
            count: 0,
        }
    }

    /// `got` within `tolerance` of `want` (`None`: cosine ≥ [`AUTO_MIN_COSINE`] instead).
    pub fn check(&mut self, what: &str, got: &[f32], want: &[f32], tolerance: Option<f32>) {
        let d = max_abs_diff(got, want);
        let c = cosine(got, want);
        self.count += 1;
        self.max_diff = self.max_diff.max(d);
        self.min_cosine = self.min_cosine.min(c);
        match tolerance {
            Some(t) => assert!(
                d <= t,
                "{}: {what}: logits differ by up to {d} (cosine {c}); allowed {t}",
                self.label
            ),
            None => assert!(
                c >= AUTO_MIN_COSINE,
                "{}: {what}: cosine {c} (max abs diff {d}); need {AUTO_MIN_COSINE}",
                self.label
            ),
        }
    }

    pub fn report(&self) {
        eprintln!(
            "{}: {} comparisons, max abs diff {:.3e}, lowest cosine {:.7}",
            self.label, self.count, self.max_diff, self.min_cosine
        );
    }
}

/// How a prompt of `n` tokens is fed: its first ceil(n/2) tokens in two chunks (one when that
/// is a single token), then one token at a time. Returns the chunk ends.
pub fn schedule(n: usize) -> Vec<usize> {
    let prefill = n.div_ceil(2);
    let mut ends = vec![prefill.div_ceil(2), prefill];
    ends.dedup();
    ends.extend(prefill + 1..=n);
    ends
}

/// The reference logits after position `pos` of prompt `p` for `variant`, if recorded.
pub fn wanted<'a>(p: &'a Prompt, variant: &str, pos: usize) -> Option<&'a [f32]> {
    let last = pos + 1 == p.ids.len();
    match variant {
        "f32" => Some(&p.f32[pos]),
        "q8_0" if last => Some(&p.q8_0_last),
        "q4_0" if last => Some(&p.q4_0_last),
        _ => None,
    }
}

/// An empty cache as long as the model's context.
pub fn new_cache<M: Decoder + ?Sized>(model: &M) -> KvCache {
    model.new_cache(model.shape().context)
}

/// `tokens` from an empty cache in one step: the last position's logits.
pub fn run_alone<M: Decoder + ?Sized>(model: &M, tokens: &[u32]) -> Vec<f32> {
    let mut cache = new_cache(model);
    let mut out = model.step(&mut [StepInput {
        cache: &mut cache,
        tokens,
        want_logits: true,
    }]);
    assert_eq!(cache.len(), tokens.len());
    out.pop().unwrap()
}

/// Greedy decoding of `prompt` through the KV cache, one token per step after the prompt,
/// until an end token (kept) or `limit` tokens.
pub fn greedy<M: Decoder + ?Sized>(
    model: &M,
    is_end: impl Fn(u32) -> bool,
    prompt: &[u32],
    limit: usize,
) -> Vec<u32> {
    let mut cache = new_cache(model);
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < limit {
        let logits = model
            .step(&mut [StepInput {
                cache: &mut cache,
                tokens: &input,
                want_logits: true,
            }])
            .pop()
            .unwrap();
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(next);
        if is_end(next) {
            break;
        }
        input = vec![next];
    }
    out
}

/// Every comparison for one file loaded one way. `exact`: f32 weights, held to
/// [`TOLERANCE`]; else the default load, held to [`AUTO_MIN_COSINE`].
pub fn check_model<M: Decoder + ?Sized>(
    label: &str,
    prompts: &[Prompt],
    variant: &str,
    model: &M,
    exact: bool,
) -> Checker {
    let mut ck = Checker::new(format!(
        "{label} {variant} as {}",
        if exact { "f32" } else { "auto" }
    ));
    let to_reference = exact.then_some(TOLERANCE);
    // Each prefix in one step: against the reference where it has one, and kept as our own
    // full recompute for the cached runs.
    let mut full: Vec<Vec<Vec<f32>>> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let n = p.ids.len();
        let mut mine = Vec::with_capacity(n);
        for len in 1..=n {
            let got = run_alone(model, &p.ids[..len]);
            if let Some(want) = wanted(p, variant, len - 1) {
                let what = format!("prompt {i}, prefix of {len} in one step");
                ck.check(&what, &got, want, to_reference);
            }
            mine.push(got);
        }
        full.push(mine);
    }
    // The same logits from a step, against the reference or our full recompute.
    let compare = |ck: &mut Checker, what: String, i: usize, end: usize, got: &[f32]| {
        let p = &prompts[i];
        if let Some(want) = wanted(p, variant, end - 1) {
            ck.check(&what, got, want, to_reference);
        }
        ck.check(
            &format!("{what} (against the full recompute)"),
            got,
            &full[i][end - 1],
            Some(SELF_TOLERANCE),
        );
    };
    // Chunked prefill, then one token at a time through the KV cache.
    for (i, p) in prompts.iter().enumerate() {
        let n = p.ids.len();
        let mut cache = new_cache(model);
        let mut start = 0;
        for (s, &end) in schedule(n).iter().enumerate() {
            let want_logits = !(s == 0 && end < n);
            let out = model.step(&mut [StepInput {
                cache: &mut cache,
                tokens: &p.ids[start..end],
                want_logits,
            }]);
            assert_eq!(cache.len(), end);
            assert_eq!(out.len(), usize::from(want_logits));
            if want_logits {
                let what = format!("prompt {i}, tokens {start}..{end} after a cache of {start}");
                compare(&mut ck, what, i, end, &out[0]);
            }
            start = end;
        }
    }
    // Continuous batching: sequence i joins at step i and follows its schedule.
    let schedules: Vec<Vec<usize>> = prompts.iter().map(|p| schedule(p.ids.len())).collect();
    let steps = (0..schedules.len())
        .map(|i| i + schedules[i].len())
        .max()
        .unwrap();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| new_cache(model)).collect();
    for step in 0..steps {
        let mut inputs = Vec::new();
        let mut expected = Vec::new();
        for (i, (cache, p)) in caches.iter_mut().zip(prompts).enumerate() {
            let Some(&end) = step.checked_sub(i).and_then(|s| schedules[i].get(s)) else {
                continue;
            };
            let start = cache.len();
            expected.push((i, start, end));
            inputs.push(StepInput {
                cache,
                tokens: &p.ids[start..end],
                want_logits: true,
            });
        }
        let out = model.step(&mut inputs);
        assert_eq!(out.len(), expected.len());
        for (got, &(i, start, end)) in out.iter().zip(&expected) {
            let what = format!("step {step} batched: prompt {i} tokens {start}..{end}");
            compare(&mut ck, what, i, end, got);
        }
    }
    ck.report();
    ck
}

/// Where the top two logits of a step are closer than this on either side (ours, or
/// llama.cpp's log-probabilities), the two may pick different tokens: a greedy comparison
/// with llama.cpp on an f32 file ends there (llama.cpp keeps its KV cache in f16).
pub const NEAR_TIE: f32 = 0.1;
/// The same on a quantized file: llama.cpp multiplies Q8_0 and Q4_0 weights by activations
/// quantized to 8 bits per block of 32, which moves the tiny models' logits (spread over
/// ±30) by up to 0.26 between the top two (measured: phi3's Q4_0 file, where our f32 load
/// matches transformers on the stored values to 1e-4).
pub const NEAR_TIE_QUANTIZED: f32 = 0.3;

/// The near-tie bound for a file variant (`f32`, `q8_0`, `q4_0`).
pub fn near_tie(variant: &str) -> f32 {
    if variant == "f32" {
        NEAR_TIE
    } else {
        NEAR_TIE_QUANTIZED
    }
}

/// The `llama_cpp` entry of a tiny model's reference: llama.cpp's llama-server's greedy
/// continuation of the chat's prompt on each file (scripts/reference_common.py,
/// `llama_cpp_block`).
#[derive(Deserialize)]
pub struct LlamaCpp {
    pub version: String,
    /// Per file variant (`f32`, `q8_0`, `q4_0`).
    pub greedy: BTreeMap<String, LlamaCppRun>,
}

/// llama.cpp's greedy ids (up to and including an end-of-generation token) and, per step,
/// the gap between its two largest log-probabilities.
#[derive(Deserialize)]
pub struct LlamaCppRun {
    pub ids: Vec<u32>,
    pub margins: Vec<f32>,
}

impl LlamaCppRun {
    /// The steps before llama.cpp's first margin below `tie`.
    pub fn clear_steps(&self, tie: f32) -> usize {
        self.margins
            .iter()
            .position(|&m| m < tie)
            .unwrap_or(self.margins.len())
    }
}

/// Greedy decoding of `prompt` through the KV cache against llama.cpp's `run` on the same
/// file: the same token at every step up to the first where either side's two best
/// candidates are within `tie` ([`near_tie`]; a symmetric rule: a near tie on our side ends it as
/// well as one on llama.cpp's). Returns the number of steps compared; the caller says how
/// many it needs.
pub fn check_llama_cpp_greedy<M: Decoder + ?Sized>(
    label: &str,
    model: &M,
    prompt: &[u32],
    run: &LlamaCppRun,
    tie: f32,
) -> usize {
    assert_eq!(run.ids.len(), run.margins.len(), "{label}");
    let mut cache = new_cache(model);
    let mut input = prompt.to_vec();
    for (s, (&want, &theirs)) in run.ids.iter().zip(&run.margins).enumerate() {
        let logits = model
            .step(&mut [StepInput {
                cache: &mut cache,
                tokens: &input,
                want_logits: true,
            }])
            .pop()
            .unwrap();
        let (best, margin) = top_two(&logits);
        if margin < tie || theirs < tie {
            eprintln!(
                "{label}: {s} of {} steps compared (near tie: ours {margin:.4}, llama.cpp's {theirs:.4})",
                run.ids.len()
            );
            return s;
        }
        assert_eq!(
            best, want,
            "{label}: step {s}: our greedy token differs from llama.cpp's (margins: ours {margin:.4}, \
             llama.cpp's {theirs:.4}; ours {:.4} for {want})",
            logits[want as usize]
        );
        input = vec![best];
    }
    eprintln!("{label}: all {} steps compared", run.ids.len());
    run.ids.len()
}

/// Every file llama.cpp ran (`lc.greedy`), loaded in f32 and the default way (int8, Q4
/// weights kept as stored) by `load(variant, dtype, keep_low_bit)`, decoded greedily from `prompt`
/// against llama.cpp's run on it ([`check_llama_cpp_greedy`]); and llama.cpp's f32 run
/// against transformers' greedy ids, up to its first near tie.
///
/// The f32 file loaded in f32 (transformers' arithmetic, within 1e-4) must cover llama.cpp's
/// whole run up to its first near tie, and at least `min_steps` steps (or the whole run when
/// shorter). The other loads may meet a near tie of their own sooner: a quantized load's
/// logits differ from llama.cpp's by more than rounding (llama.cpp quantizes activations for
/// quantized weights and runs f32 weights as they are; our default load quantizes f32
/// weights to int8), and the tiny models' margins are small; all runs together must
/// still compare at least `min_total` steps. Returns that total.
pub fn check_llama_cpp<L: Fn(&str, Dtype, bool) -> Box<dyn Decoder>>(
    label: &str,
    lc: &LlamaCpp,
    prompt: &[u32],
    transformers_ids: &[u32],
    min_steps: usize,
    min_total: usize,
    load: L,
) -> usize {
    eprintln!(
        "{label}: llama.cpp {}",
        lc.version.lines().next().unwrap_or("")
    );
    assert_eq!(
        lc.greedy.keys().collect::<Vec<_>>(),
        ["f32", "q4_0", "q8_0"],
        "{label}"
    );
    let f32_run = &lc.greedy["f32"];
    let k = f32_run.clear_steps(NEAR_TIE);
    assert!(
        k >= min_steps.min(f32_run.ids.len()),
        "{label}: {k} clear steps"
    );
    assert_eq!(
        f32_run.ids[..k],
        transformers_ids[..k.min(transformers_ids.len())],
        "{label}: llama.cpp's greedy ids on the f32 file against transformers'"
    );
    let mut total = 0;
    for (variant, run) in &lc.greedy {
        for (dtype, keep_low_bit) in [(Dtype::F32, false), (Dtype::Int8, true)] {
            let model = load(variant, dtype, keep_low_bit);
            let what = format!("{label} {variant} loaded as {dtype:?}");
            let n = check_llama_cpp_greedy(&what, model.as_ref(), prompt, run, near_tie(variant));
            if variant == "f32" && dtype == Dtype::F32 {
                assert_eq!(n, k, "{what}: a near tie of ours before llama.cpp's");
            }
            total += n;
        }
    }
    eprintln!("{label}: {total} steps compared with llama.cpp in all");
    assert!(total >= min_total, "{label}: only {total} steps compared");
    total
}

/// The largest logit's index and its gap to the second largest.
fn top_two(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > first {
            (second, first, best) = (first, l, i);
        } else if l > second {
            second = l;
        }
    }
    (best as u32, first - second)
}
