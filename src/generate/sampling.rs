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
    /// Scratch: candidate (id, logit) pairs.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self {
            params,
            rng,
            candidates: Vec::new(),
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
        let Some(top) = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .max_by(f32::total_cmp)
        else {
            return Choice {
                id: 0,
                logprob: f32::NEG_INFINITY,
            };
        };
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, (l - top) / t)),
        );
        // Most likely first; top-k first so the sort is over k values.
        if let Some(k) = p.top_k {
            if k < c.len() {
                c.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                c.truncate(k);
            }
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = c[0].1;
        let mut probs: Vec<f32> = c.iter().map(|&(_, l)| (l - max).exp()).collect();
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
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        let mut pick = keep - 1;
        for (i, &q) in probs[..keep].iter().enumerate() {
            if r < q {
                pick = i;
                break;
            }
            r -= q;
        }
        let id = c[pick].0;
        Choice {
            id,
            logprob: logprob_of(logits, id),
        }
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

/// The index of the largest logit (the lowest index among equals, like llama.cpp).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
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

    use std::collections::HashSet;
}
