//! Choosing the next token from the logits: greedy, or sampling with temperature, top-k,
//! top-p, min-p and typical-p, after a repetition penalty. Each sequence owns its random
//! generator, seeded from the request, so the same seeded request gives the same tokens
//! whether it runs alone or in a batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernels::log_sum_exp;

/// How one request's tokens are chosen (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Sample (true) or take the most likely token (false).
    pub do_sample: bool,
    /// Divides the logits; must be > 0 when sampling.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities sum to at least `p`.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than `min_p` × the most likely one.
    pub min_p: Option<f32>,
    /// Locally typical sampling mass.
    pub typical_p: Option<f32>,
    /// CTRL-style penalty on tokens already in the prompt or the output (1 = none).
    pub repetition_penalty: f32,
    /// The generator's seed.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            min_p: None,
            typical_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Checks the ranges of the sampling settings that have one (a request's, or a model's
/// defaults); the message names the setting.
///
/// # Errors
///
/// The first setting out of range.
pub fn check_ranges(
    temperature: Option<f32>,
    top_p: Option<f32>,
    typical_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
) -> Result<(), String> {
    if let Some(t) = temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(format!("temperature must be a number ≥ 0 (got {t})"));
        }
    }
    for (name, v) in [("top_p", top_p), ("typical_p", typical_p)] {
        if let Some(p) = v {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("{name} must be in (0, 1] (got {p})"));
            }
        }
    }
    if let Some(p) = min_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("min_p must be in [0, 1] (got {p})"));
        }
    }
    if let Some(r) = repetition_penalty {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("repetition_penalty must be a number > 0 (got {r})"));
        }
    }
    Ok(())
}

/// A model's own sampling settings, used where a request leaves a setting out: from
/// `generation_config.json`, overridden by `config.json`'s
/// `task_specific_params["text-generation"]` (as transformers 4.x's text-generation pipeline,
/// the upstream application's, applied them; 5.x ignores them and samples at temperature
/// 0.7). GGUF files carry none.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct SamplingDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// `self` with every setting `over` has replaced by it.
    pub fn overridden_by(self, over: SamplingDefaults) -> Self {
        Self {
            do_sample: over.do_sample.or(self.do_sample),
            temperature: over.temperature.or(self.temperature),
            top_k: over.top_k.or(self.top_k),
            top_p: over.top_p.or(self.top_p),
            typical_p: over.typical_p.or(self.typical_p),
            min_p: over.min_p.or(self.min_p),
            repetition_penalty: over.repetition_penalty.or(self.repetition_penalty),
        }
    }

    /// Checks the ranges, and drops the values transformers reads as "off" (top_k 0,
    /// top_p / typical_p 1, min_p 0, repetition_penalty 1).
    ///
    /// # Errors
    ///
    /// A message naming the setting that is out of range.
    pub fn checked(self) -> Result<Self, String> {
        check_ranges(
            self.temperature,
            self.top_p,
            self.typical_p,
            self.min_p,
            self.repetition_penalty,
        )?;
        Ok(Self {
            top_k: self.top_k.filter(|&k| k > 0),
            top_p: self.top_p.filter(|&p| p < 1.0),
            typical_p: self.typical_p.filter(|&p| p < 1.0),
            min_p: self.min_p.filter(|&p| p > 0.0),
            repetition_penalty: self.repetition_penalty.filter(|&r| r != 1.0),
            ..self
        })
    }
}

/// A chosen token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub id: u32,
    /// Log-probability of the token under the model's own distribution (softmax of the raw
    /// logits), as TGI and OpenAI report it.
    pub logprob: f32,
}

/// One sequence's sampler.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch: every token's scaled logit.
    scaled: Vec<f32>,
    /// Scratch: the most likely candidates (id, scaled logit), ranked.
    ranked: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self {
            params,
            rng,
            scaled: Vec::new(),
            ranked: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` given the tokens so far (`history`, for the
    /// repetition penalty). `logits` is modified.
    pub fn choose(&mut self, logits: &mut [f32], history: &[u32]) -> Choice {
        let lse = log_sum_exp(logits);
        // Raw logits of the tokens the penalty changes, for the logprob.
        let mut changed: Vec<(u32, f32)> = Vec::new();
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in history {
                if let Some(s) = seen.get_mut(t as usize) {
                    if !*s {
                        *s = true;
                        let l = &mut logits[t as usize];
                        changed.push((t, *l));
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        let logprob_of = |logits: &[f32], id: u32| {
            let raw = changed
                .iter()
                .find(|(t, _)| *t == id)
                .map_or_else(|| logits.get(id as usize).copied(), |&(_, l)| Some(l));
            raw.map_or(f32::NEG_INFINITY, |l| l - lse)
        };
        if !p.do_sample {
            let id = argmax(logits);
            return Choice {
                id,
                logprob: logprob_of(logits, id),
            };
        }
        let t = p.temperature;
        // Scaled relative to the largest logit, so that the largest is 0 and nothing
        // overflows: a temperature as small as 1e-38 sends every other logit to -inf (an exp of
        // 0), which is greedy, rather than every logit to ±inf and their differences to NaN.
        let top = largest(logits, f32::is_finite);
        if top == f32::NEG_INFINITY {
            return Choice {
                id: 0,
                logprob: f32::NEG_INFINITY,
            };
        }
        // A non-finite logit (masked, or a model's NaN) is no candidate: −∞ here, as those
        // whose scaled logit underflows (probability 0).
        let scaled = &mut self.scaled;
        scaled.clear();
        scaled.extend(logits.iter().map(|&l| {
            if l.is_finite() {
                (l - top) / t
            } else {
                f32::NEG_INFINITY
            }
        }));
        let mut ranked = Ranked::new(scaled, &mut self.ranked);
        // Top-k first, so that everything after reads k candidates.
        if let Some(k) = p.top_k {
            ranked.keep_only(k);
        }
        let all = ranked.all;
        let mut keep = all;
        if let Some(tp) = p.typical_p {
            let probs: Vec<f32> = (0..all).filter_map(|i| ranked.prob(i)).collect();
            keep = keep.min(typical_keep(&probs, tp));
        }
        if let Some(tp) = p.top_p {
            let mut acc = 0.0;
            for i in 0..keep {
                acc += ranked.prob(i).expect("i < keep ≤ the candidates");
                if acc >= tp {
                    keep = i + 1;
                    break;
                }
            }
        }
        if let Some(mp) = p.min_p {
            let floor = ranked.prob(0).expect("one candidate at least") * mp;
            let above = (0..keep)
                .take_while(|&i| ranked.prob(i).is_some_and(|q| q >= floor))
                .count();
            keep = keep.min(above.max(1));
        }
        // Every candidate kept and not all ranked: their probabilities sum to 1.
        let total: f32 = if keep == all && ranked.ranked.len() < all {
            1.0
        } else {
            (0..keep).filter_map(|i| ranked.prob(i)).sum()
        };
        let mut r = self.rng.random::<f32>() * total;
        let mut pick = keep - 1;
        for i in 0..keep {
            let q = ranked.prob(i).expect("i < keep ≤ the candidates");
            if r < q {
                pick = i;
                break;
            }
            r -= q;
        }
        ranked.prob(pick);
        let id = ranked.ranked[pick].0;
        Choice {
            id,
            logprob: logprob_of(logits, id),
        }
    }
}

/// The largest value that `counts` (`−∞` when none does), in sixteen lanes so that it
/// vectorises: the scans over a 150k vocabulary run for every stream at every step.
fn largest(v: &[f32], counts: impl Fn(f32) -> bool) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            if counts(x) && x > *m {
                *m = x;
            }
        }
    }
    tail.iter().chain(&lanes).fold(
        f32::NEG_INFINITY,
        |m, &x| if counts(x) && x > m { x } else { m },
    )
}

/// The order of likelihood: the larger logit first, the lower id among equals.
fn likelier(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// How many candidates are ranked at first; each further ranking takes 8× as many.
const FIRST_RANKED: usize = 64;

/// How many scaled logits one block of the ranking's coarse pass covers.
const BLOCK: usize = 64;

/// Sampling's candidates, ranked most likely first only as far as they are read: top-p,
/// min-p and the draw itself rarely read more than a few hundred of a 150k vocabulary, and
/// sorting every candidate for each token of each stream cost milliseconds (OpenAI's
/// clients sample at temperature 1 with no top-k unless told otherwise). Ranking the first
/// n reads each block's largest value, takes the n-th largest of those as a floor (n
/// blocks, so n candidates at least, reach it), and sorts only what reaches the floor.
struct Ranked<'a> {
    /// Every token's scaled logit; −∞ is no candidate.
    scaled: &'a [f32],
    /// The largest of each [`BLOCK`] of `scaled`.
    block_max: Vec<f32>,
    /// How many candidates there are.
    all: usize,
    /// The most likely candidates (id, scaled logit), in [`likelier`] order.
    ranked: &'a mut Vec<(u32, f32)>,
    /// Σ exp over every candidate.
    sum: f32,
}

impl<'a> Ranked<'a> {
    fn new(scaled: &'a [f32], ranked: &'a mut Vec<(u32, f32)>) -> Self {
        ranked.clear();
        let block_max = scaled.chunks(BLOCK).map(|b| largest(b, |_| true)).collect();
        let all = scaled.iter().filter(|&&x| x > f32::NEG_INFINITY).count();
        // The largest is 0: nothing overflows, and the −∞ count as nothing.
        let sum = log_sum_exp(scaled).exp();
        Self {
            scaled,
            block_max,
            all,
            ranked,
            sum,
        }
    }

    /// Keeps only the `k` most likely candidates (top-k).
    fn keep_only(&mut self, k: usize) {
        // 0 is "off", as transformers reads it (requests refuse it before this).
        if k > 0 && k < self.all {
            self.rank_to(k);
            self.all = k;
            self.sum = self.ranked.iter().map(|&(_, l)| l.exp()).sum();
        }
    }

    /// The probability of the `i`-th most likely candidate (`None` past the last), ranking
    /// more of them when needed.
    fn prob(&mut self, i: usize) -> Option<f32> {
        if i >= self.all {
            return None;
        }
        while i >= self.ranked.len() {
            let next = (self.ranked.len() * 8).max(FIRST_RANKED).min(self.all);
            self.rank_to(next);
        }
        Some(self.ranked[i].1.exp() / self.sum)
    }

    /// Ranks the `next` most likely candidates (`next` ≤ `all`).
    fn rank_to(&mut self, next: usize) {
        let done = self.ranked.len();
        let floor = if next < self.block_max.len() {
            let mut maxima = self.block_max.clone();
            *maxima
                .select_nth_unstable_by(next - 1, |a, b| b.total_cmp(a))
                .1
        } else {
            f32::NEG_INFINITY
        };
        let reach = |x: f32| x >= floor && x > f32::NEG_INFINITY;
        let mut found: Vec<(u32, f32)> = Vec::new();
        for (b, _) in self.block_max.iter().enumerate().filter(|(_, &m)| reach(m)) {
            let start = b * BLOCK;
            let block = &self.scaled[start..(start + BLOCK).min(self.scaled.len())];
            found.extend(
                block
                    .iter()
                    .enumerate()
                    .filter(|&(_, &x)| reach(x))
                    .map(|(i, &x)| ((start + i) as u32, x)),
            );
        }
        if next < found.len() {
            found.select_nth_unstable_by(next - 1, likelier);
            found.truncate(next);
        }
        // The `done` most likely of these are the ones ranked already.
        if done > 0 {
            found.select_nth_unstable_by(done - 1, likelier);
        }
        found[done..].sort_unstable_by(likelier);
        self.ranked.extend_from_slice(&found[done..]);
    }
}

/// How many of the (sorted) candidates locally typical sampling keeps: the tokens whose
/// surprise is closest to the distribution's entropy, until their mass reaches `mass`.
fn typical_keep(probs: &[f32], mass: f32) -> usize {
    let entropy: f32 = probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| -q * q.ln())
        .sum();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| {
        let da = (-probs[a].max(f32::MIN_POSITIVE).ln() - entropy).abs();
        let db = (-probs[b].max(f32::MIN_POSITIVE).ln() - entropy).abs();
        da.total_cmp(&db)
    });
    // Keep a prefix of the probability order that covers the typical set's mass: the
    // typical set is not always a prefix, so keep up to its least likely member.
    let mut acc = 0.0;
    let mut last = 0;
    for &i in &order {
        acc += probs[i];
        last = last.max(i);
        if acc >= mass {
            break;
        }
    }
    last + 1
}

/// The index of the largest logit (the lowest index among equals, like llama.cpp; NaN is
/// never the largest).
pub fn argmax(logits: &[f32]) -> u32 {
    let max = largest(logits, |_| true);
    logits.iter().position(|&l| l == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_defaults_override_check_and_drop_the_off_values() {
        let base = SamplingDefaults {
            top_k: Some(50),
            temperature: Some(0.8),
            ..SamplingDefaults::default()
        };
        let over = SamplingDefaults {
            do_sample: Some(true),
            top_k: Some(0),
            top_p: Some(1.0),
            ..SamplingDefaults::default()
        };
        let d = base.overridden_by(over).checked().unwrap();
        assert_eq!(d.do_sample, Some(true));
        assert_eq!(d.temperature, Some(0.8));
        assert_eq!((d.top_k, d.top_p), (None, None));
        let bad = SamplingDefaults {
            top_p: Some(1.5),
            ..SamplingDefaults::default()
        };
        assert!(bad.checked().unwrap_err().contains("top_p"));
    }

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.5, 0.0]
    }

    #[test]
    fn a_vanishing_temperature_samples_as_greedy_decoding() {
        // Logits like a model's: large, close, some negative (and no two alike, so greedy
        // decoding has one answer).
        let mut rng_logits = Vec::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rng_logits.push((x % 4000) as f32 / 100.0 - 20.0 + i as f32 * 1e-5);
        }
        for temperature in [1e-38f32, 1e-30, 1e-20, f32::MIN_POSITIVE, 1e-45] {
            for seed in 0..20 {
                let params = SamplingParams {
                    do_sample: true,
                    temperature,
                    seed,
                    ..SamplingParams::greedy()
                };
                let want = argmax(&rng_logits);
                let got = Sampler::new(params).choose(&mut rng_logits.clone(), &[]);
                assert_eq!(got.id, want, "temperature {temperature:e}, seed {seed}");
                assert!(got.logprob.is_finite(), "temperature {temperature:e}");
            }
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit_and_reports_its_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let c = s.choose(&mut logits(), &[]);
        assert_eq!(c.id, 1);
        let l = logits();
        let lse = l.iter().map(|v| v.exp()).sum::<f32>().ln();
        assert!((c.logprob - (3.0 - lse)).abs() < 1e-5);
        // The lowest index among equals; NaN never the largest; in the lanes or the tail.
        assert_eq!(argmax(&[1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY]), 2);
        for n in [1, 15, 16, 17, 37, 64] {
            for at in [0, n / 2, n - 1] {
                let mut v = vec![-2.0f32; n];
                v[at] = 5.0;
                assert_eq!(argmax(&v), at as u32, "{n}, {at}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
    }

    #[test]
    fn the_repetition_penalty_can_change_the_greedy_choice() {
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(p);
        assert_eq!(s.choose(&mut logits(), &[1]).id, 4);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_top_k_1_is_greedy() {
        let params = SamplingParams {
            do_sample: true,
            temperature: 0.9,
            top_k: Some(4),
            top_p: Some(0.95),
            min_p: Some(0.01),
            typical_p: None,
            repetition_penalty: 1.0,
            seed: 42,
        };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..50)
                .map(|_| s.choose(&mut logits(), &[]).id)
                .collect::<Vec<_>>()
        };
        let a = run(params.clone());
        assert_eq!(a, run(params.clone()));
        assert!(
            a.iter().all(|&t| [1, 2, 4, 0].contains(&t)),
            "top-k 4: {a:?}"
        );
        assert!(
            a.iter().collect::<HashSet<_>>().len() > 1,
            "sampling varies"
        );
        let mut other = params.clone();
        other.seed = 43;
        assert_ne!(a, run(other));
        let mut k1 = params;
        k1.top_k = Some(1);
        assert!(run(k1).iter().all(|&t| t == 1));
    }

    #[test]
    fn a_small_top_p_keeps_only_the_head() {
        let mut s = Sampler::new(SamplingParams {
            do_sample: true,
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.3),
            min_p: None,
            typical_p: Some(0.99),
            repetition_penalty: 1.0,
            seed: 7,
        });
        for _ in 0..20 {
            assert_eq!(s.choose(&mut logits(), &[]).id, 1);
        }
    }

    /// The sampling draw as it was before candidates were ranked lazily: every candidate
    /// sorted, then the same cuts and the same walk.
    fn fully_sorted_pick(p: &SamplingParams, logits: &[f32], rng: &mut ChaCha8Rng) -> u32 {
        let top = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, (l - top) / p.temperature))
            .collect();
        if let Some(k) = p.top_k {
            c.sort_unstable_by(likelier);
            c.truncate(k);
        }
        c.sort_unstable_by(likelier);
        let mut probs: Vec<f32> = c.iter().map(|&(_, l)| l.exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        let mut keep = probs.len();
        if let Some(tp) = p.typical_p {
            keep = keep.min(typical_keep(&probs, tp));
        }
        if let Some(tp) = p.top_p {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate().take(keep) {
                acc += q;
                if acc >= tp {
                    keep = i + 1;
                    break;
                }
            }
        }
        if let Some(mp) = p.min_p {
            let floor = probs[0] * mp;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let mut r = rng.random::<f32>() * probs[..keep].iter().sum::<f32>();
        for (i, &q) in probs[..keep].iter().enumerate() {
            if r < q {
                return c[i].0;
            }
            r -= q;
        }
        c[keep - 1].0
    }

    #[test]
    fn ranking_lazily_draws_what_sorting_every_candidate_drew() {
        // A vocabulary large enough that the draws read past each ranking step (64, 512,
        // 4,096, all), flat at temperature 3 and peaked at 0.5; every seventh token masked
        // (as a grammar does), one NaN and one +∞ (no candidates either).
        let n = 6_000;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut logits: Vec<f32> = (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i % 7 {
                    3 => f32::NEG_INFINITY,
                    _ => (x % 10_000) as f32 / 1_000.0,
                }
            })
            .collect();
        logits[100] = f32::NAN;
        logits[200] = f32::INFINITY;
        // (top_k, top_p, min_p, typical_p)
        type Cuts = (Option<usize>, Option<f32>, Option<f32>, Option<f32>);
        let cuts: [Cuts; 6] = [
            (None, None, None, None),
            (None, Some(0.9), None, None),
            (None, Some(0.999), None, None),
            (None, None, Some(0.05), None),
            (Some(700), Some(0.95), None, None),
            (None, Some(0.95), None, Some(0.9)),
        ];
        // A draw walks hundreds of f32 subtractions, whose rounding differs between the
        // two (the denominator is summed in another order): where the draw falls within that
        // rounding of a boundary, the pick is the neighbour in order, never further.
        let rank = |id: u32| {
            let mine = (id, logits[id as usize]);
            (0..n)
                .filter(|&i| logits[i].is_finite())
                .filter(|&i| likelier(&(i as u32, logits[i]), &mine).is_lt())
                .count()
        };
        let (mut deep, mut same, mut draws) = (0, 0, 0);
        for temperature in [3.0f32, 1.0, 0.5] {
            for &(top_k, top_p, min_p, typical_p) in &cuts {
                let params = SamplingParams {
                    do_sample: true,
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    typical_p,
                    repetition_penalty: 1.0,
                    seed: 11,
                };
                let mut sampler = Sampler::new(params.clone());
                let mut rng = ChaCha8Rng::seed_from_u64(11);
                for draw in 0..200 {
                    let want = fully_sorted_pick(&params, &logits, &mut rng);
                    let got = sampler.choose(&mut logits.clone(), &[]).id;
                    assert!(logits[got as usize].is_finite(), "{params:?}: {got}");
                    draws += 1;
                    if got == want {
                        same += 1;
                    } else {
                        let (g, w) = (rank(got), rank(want));
                        assert!(
                            g.abs_diff(w) <= 1,
                            "{params:?}, draw {draw}: rank {g} for {w}"
                        );
                    }
                    deep += usize::from(rank(got) >= FIRST_RANKED * 8);
                }
            }
        }
        assert!(same * 100 >= draws * 98, "{same} of {draws} draws alike");
        assert!(deep > 100, "the draws read past the second ranking: {deep}");
    }

    use std::collections::HashSet;
}
