//! What turns the encoder's last hidden state into a model's answer: sentence-transformers
//! pooling (an embedding model) or a sequence classifier's head (`BertForSequenceClassification`'s
//! pooler and classifier, XLM-RoBERTa's classification head: a cross-encoder reranker, a
//! classifier), and the function that turns a classifier's logits
//! into scores.

use candle_core::Tensor;

use super::bert::{Bert, Dense, Family};
use super::unpadded::pool_each;
use super::weights::{Names, WeightFile};
use super::{EncoderInput, Model, ModelError, Pooling};
use crate::kernels::linear;

/// A sentence-transformers style encoder: BERT followed by pooling.
pub struct SentenceEncoder {
    pub(super) bert: Bert,
    pub(super) pooling: Pooling,
}

impl Model for SentenceEncoder {
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let hidden_state = self.bert.forward(inputs, threads)?;
        let h = self.bert.config().hidden_size;
        with_hidden_state(&hidden_state, inputs, h, |hidden| {
            pool_each(hidden, inputs, h, self.pooling)
        })
    }
}

/// A sequence classifier: the encoder, then `tanh(dense · h[0])` on the first token (`[CLS]`,
/// `<s>`), then one logit per label. `BertForSequenceClassification` (its pooler, then
/// `classifier`) and XLM-RoBERTa's `RobertaClassificationHead` (`classifier.dense`, then
/// `classifier.out_proj`) are this same computation under other names ([`Family`]). The head
/// is a few thousand multiply-adds per input: it runs in f32, whatever the encoder's dtype, on
/// the f32 linear kernel.
pub struct SequenceClassifier {
    bert: Bert,
    pooler: Dense,
    classifier: Dense,
    labels: usize,
}

impl SequenceClassifier {
    /// Reads the head's two layers from `file` for `labels` labels: `bert.pooler.dense.*` and
    /// `classifier.*` for BERT, `classifier.dense.*` and `classifier.out_proj.*` for RoBERTa.
    pub fn load(bert: Bert, file: &WeightFile, labels: usize) -> Result<Self, ModelError> {
        let h = bert.config().hidden_size;
        let family = bert.config().family();
        let (first, first_prefixed, second) = family.classifier_layers();
        let names = if first_prefixed {
            Names::of(file, family)
        } else {
            Names::unprefixed(file)
        };
        let pooler = names
            .dense(first, h, h)
            .map_err(|e| missing_head(e, first, family))?;
        let classifier = Names::unprefixed(file)
            .dense(second, labels, h)
            .map_err(|e| missing_head(e, second, family))?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            labels,
        })
    }
}

fn missing_head(e: ModelError, part: &str, family: Family) -> ModelError {
    let class = match family {
        Family::Bert => "BertForSequenceClassification",
        Family::Roberta => "XLMRobertaForSequenceClassification",
    };
    ModelError::Weights(format!(
        "a sequence classifier needs its {part} weights (as {class} saves them): {e}"
    ))
}

impl Model for SequenceClassifier {
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let hidden_state = self.bert.forward(inputs, threads)?;
        let h = self.bert.config().hidden_size;
        let m = inputs.len();
        let cls: Vec<f32> = with_hidden_state(&hidden_state, inputs, h, |hidden| {
            // Each input's first row, its inputs' rows back to back.
            let mut row0 = 0;
            let mut cls = Vec::with_capacity(m * h);
            for s in inputs {
                cls.extend_from_slice(&hidden[row0 * h..][..h]);
                row0 += s.ids.len();
            }
            Ok(cls)
        })?;
        let mut pooled = vec![0.0f32; m * h];
        linear(&cls, m, h, &[self.pooler.part()], &mut pooled, threads);
        pooled.iter_mut().for_each(|x| *x = x.tanh());
        let mut logits = vec![0.0f32; m * self.labels];
        linear(
            &pooled,
            m,
            h,
            &[self.classifier.part()],
            &mut logits,
            threads,
        );
        if !logits.iter().all(|v| v.is_finite()) {
            return Err(non_finite());
        }
        Ok(logits
            .chunks_exact(self.labels)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// Runs `read` on the hidden state (`Σ len × h` values, the inputs' rows back to back, as
/// [`Bert::forward`] returns it), checked to hold them all, every one finite: NaN or infinity
/// means corrupt weights (or an overflow), an error for this batch, not an answer that looks
/// fine. (Every row, not only those a head reads: max pooling would skip a NaN.)
fn with_hidden_state<T>(
    hidden_state: &Tensor,
    inputs: &[EncoderInput<'_>],
    h: usize,
    read: impl FnOnce(&[f32]) -> Result<T, ModelError>,
) -> Result<T, ModelError> {
    let (storage, layout) = hidden_state.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(cpu) => cpu
            .as_slice::<f32>()
            .map_err(|e| ModelError::Forward(e.to_string()))?,
        _ => return Err(ModelError::Forward("hidden state is not on the CPU".into())),
    };
    let tokens: usize = inputs.iter().map(|s| s.ids.len()).sum();
    let Some(hidden) = data
        .get(layout.start_offset()..)
        .and_then(|d| d.get(..tokens * h))
    else {
        return Err(ModelError::Forward(format!(
            "hidden state of {} values for {} sequences of {tokens} tokens in all × {h}",
            data.len(),
            inputs.len()
        )));
    };
    if !hidden.iter().all(|v| v.is_finite()) {
        return Err(non_finite());
    }
    read(hidden)
}

fn non_finite() -> ModelError {
    ModelError::Forward(
        "the forward pass produced non-finite values (NaN or infinity): \
         the weights may be corrupt"
            .into(),
    )
}

/// How a classifier's logits become the scores a request gets (`raw_scores: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreFunction {
    /// The logits themselves.
    Identity,
    /// Each logit through the logistic function (a one-label cross-encoder's default).
    Sigmoid,
    /// The logits as probabilities over the labels (TEI's default for several labels).
    Softmax,
    /// Each logit through tanh.
    Tanh,
}

impl ScoreFunction {
    /// The function for a model of `labels` labels whose `config.json` names `activation`
    /// (the class name sentence-transformers saved, e.g. `Sigmoid`): that one when it names
    /// one, else sentence-transformers' `CrossEncoder` default for one label (sigmoid) and
    /// TEI's for several (softmax).
    pub fn for_model(labels: usize, activation: Option<&str>) -> Result<Self, ModelError> {
        Ok(match activation {
            None if labels == 1 => ScoreFunction::Sigmoid,
            None => ScoreFunction::Softmax,
            Some("Sigmoid") => ScoreFunction::Sigmoid,
            Some("Identity") => ScoreFunction::Identity,
            Some("Tanh") => ScoreFunction::Tanh,
            Some("Softmax") => ScoreFunction::Softmax,
            Some(other) => {
                return Err(ModelError::Unsupported(format!(
                    "config.json names the cross-encoder activation {other:?}; this server applies Sigmoid, Identity, Tanh or Softmax"
                )))
            }
        })
    }

    /// Applies the function to one input's logits, in place.
    pub fn apply(self, logits: &mut [f32]) {
        match self {
            ScoreFunction::Identity => {}
            ScoreFunction::Sigmoid => logits
                .iter_mut()
                .for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
            ScoreFunction::Tanh => logits.iter_mut().for_each(|x| *x = x.tanh()),
            ScoreFunction::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in logits.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                logits.iter_mut().for_each(|x| *x /= sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_functions_follow_the_config_then_the_defaults() {
        assert_eq!(
            ScoreFunction::for_model(1, None).unwrap(),
            ScoreFunction::Sigmoid
        );
        assert_eq!(
            ScoreFunction::for_model(3, None).unwrap(),
            ScoreFunction::Softmax
        );
        assert_eq!(
            ScoreFunction::for_model(1, Some("Identity")).unwrap(),
            ScoreFunction::Identity
        );
        let err = ScoreFunction::for_model(1, Some("GELU")).unwrap_err();
        assert!(err.to_string().contains("GELU"), "{err}");

        let mut v = [0.0, 2.0];
        ScoreFunction::Sigmoid.apply(&mut v);
        assert_eq!(v[0], 0.5);
        assert!((v[1] - 0.880_797).abs() < 1e-6);
        let mut v = [1.0, 2.0, 3.0];
        ScoreFunction::Softmax.apply(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((v[2] - 0.665_241).abs() < 1e-6);
        // Large logits do not overflow.
        let mut v = [1000.0, 0.0];
        ScoreFunction::Softmax.apply(&mut v);
        assert_eq!(v, [1.0, 0.0]);
    }
}
