//! What the tiny decoder references share (tests/qwen_reference.rs, phi3_reference.rs,
//! gemma3_reference.rs): the prompts' reference logits as the make-*-reference.py scripts
//! write them, and one run of every comparison for a file loaded one way: each prefix in one
//! step, chunked prefill then one token at a time through the KV cache, and continuous
//! batching, against the reference where it has logits and against our own full recompute.

use serde::Deserialize;
use zerobatch::generate::decoder::{Decoder, StepInput};
use zerobatch::generate::kv_cache::KvCache;

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
