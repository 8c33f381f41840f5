//! One constrained sequence's matcher. Each step the engine has it compute the mask of the
//! tokens the grammar allows next ([`Constraint::compute_mask`], on another thread while the
//! forward pass runs), applies the mask to the sequence's logits ([`Constraint::apply`]) and,
//! once a token is sampled, commits it ([`Constraint::commit`]).

use std::time::Instant;

use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, TokenParser};

use super::error::GrammarError;
use crate::metrics;

/// What applying the mask left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// Some tokens are allowed; the others' logits are now −∞.
    Allowed,
    /// The grammar allows no token (or failed): the sequence cannot go on.
    Nothing(String),
}

/// A grammar's matcher for one sequence.
pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next token, computed this step.
    mask: Option<Result<SimpleVob, String>>,
}

impl Constraint {
    /// A matcher starting `parser` (a fresh copy of a compiled grammar).
    pub(super) fn new(parser: TokenParser) -> Result<Self, GrammarError> {
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(format!("invalid grammar: {e}")));
        }
        Ok(Self {
            matcher,
            mask: None,
        })
    }

    /// Computes the mask of the next token (the slow part: run it beside the forward pass).
    pub fn compute_mask(&mut self) {
        let started = Instant::now();
        let mask = self.matcher.compute_mask().map_err(|e| e.to_string());
        metrics::record_grammar_mask(started.elapsed());
        self.mask = Some(mask);
    }

    /// Sets the logits of the tokens the grammar does not allow to −∞ (computing the mask
    /// first if [`Self::compute_mask`] was not run this step). Tokens past the mask (it has
    /// the trie's width, the model's logits) are disallowed too.
    pub fn apply(&mut self, logits: &mut [f32]) -> Masked {
        if self.mask.is_none() {
            self.compute_mask();
        }
        let mask = match self.mask.take() {
            Some(Ok(mask)) => mask,
            Some(Err(e)) => return Masked::Nothing(format!("the grammar failed: {e}")),
            None => return Masked::Nothing("the grammar's mask is missing".into()),
        };
        let mut any = false;
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = mask.as_slice().get(w).copied().unwrap_or(0);
            if bits == u32::MAX && chunk.len() == 32 {
                any = true;
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                } else {
                    any = true;
                }
            }
        }
        if any {
            Masked::Allowed
        } else {
            Masked::Nothing("the grammar allows no further token".into())
        }
    }

    /// Commits the sampled token. `Ok(true)`: the grammar is complete and allows nothing
    /// more (the sequence is done).
    ///
    /// # Errors
    ///
    /// When the grammar refuses the token (a bug: the mask allowed it).
    pub fn commit(&mut self, token: u32) -> Result<bool, String> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the grammar refused token {token}: {e}"))?;
        Ok(self.matcher.is_stopped())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use llguidance::api::TopLevelGrammar;
    use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};
    use llguidance::ParserFactory;

    use super::*;

    /// A vocabulary of `words` (the last one the end token).
    fn constraint(words: &[&[u8]], grammar: TopLevelGrammar) -> Constraint {
        let words: Vec<Vec<u8>> = words.iter().map(|w| w.to_vec()).collect();
        let info = TokRxInfo::new(words.len() as u32, words.len() as u32 - 1);
        let env = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&(env as _)).unwrap();
        factory.quiet();
        Constraint::new(factory.create_parser(grammar).unwrap()).unwrap()
    }

    #[test]
    fn the_mask_allows_the_grammar_s_tokens_then_stops() {
        let words: &[&[u8]] = &[b"a", b"b", b"ab", b"c", b"\xFF<end>"];
        let mut c = constraint(words, TopLevelGrammar::from_regex("ab?c"));
        let mut logits = vec![1.0; 5];
        c.compute_mask();
        assert_eq!(c.apply(&mut logits), Masked::Allowed);
        let allowed: Vec<bool> = logits.iter().map(|l| l.is_finite()).collect();
        assert_eq!(allowed, [true, false, true, false, false]);
        assert_eq!(c.commit(2), Ok(false)); // "ab"
        let mut logits = vec![1.0; 5];
        assert_eq!(c.apply(&mut logits), Masked::Allowed);
        let allowed: Vec<bool> = logits.iter().map(|l| l.is_finite()).collect();
        assert_eq!(allowed, [false, false, false, true, false]);
        // "c" completes the grammar: nothing more can follow.
        assert_eq!(c.commit(3), Ok(true));
    }

    #[test]
    fn a_grammar_no_token_can_continue_is_reported_not_hung() {
        // No token spells "z", so the grammar can never start.
        let words: &[&[u8]] = &[b"a", b"b", b"\xFF<end>"];
        let mut c = constraint(words, TopLevelGrammar::from_regex("z+"));
        let mut logits = vec![0.5; 3];
        match c.apply(&mut logits) {
            Masked::Nothing(why) => assert!(why.contains("grammar"), "{why}"),
            Masked::Allowed => panic!("allowed {logits:?}"),
        }
    }

    #[test]
    fn logits_past_the_mask_are_disallowed() {
        let words: &[&[u8]] = &[b"a", b"\xFF<end>"];
        let mut c = constraint(words, TopLevelGrammar::from_regex("a"));
        // The model's logits are wider than the vocabulary (padding rows).
        let mut logits = vec![0.0; 70];
        assert_eq!(c.apply(&mut logits), Masked::Allowed);
        assert!(logits[0].is_finite());
        assert!(logits[1..].iter().all(|l| *l == f32::NEG_INFINITY));
    }
}
