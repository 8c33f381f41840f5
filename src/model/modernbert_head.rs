//! `ModernBertForSequenceClassification` (`gte-reranker-modernbert-base` and the classifiers
//! fine-tuned from ModernBERT), as transformers computes it:
//!
//! ```text
//! pooled = the first row, or the mean of the rows   (classifier_pooling "cls" / "mean")
//! logits = classifier(LayerNorm(act(dense(pooled))))
//! ```
//!
//! `dense` has a bias only when `classifier_bias`, the LayerNorm only when `norm_bias` (as the
//! encoder's), `classifier` always. A pair is one sequence of ids (`[CLS] a [SEP] b [SEP]`:
//! ModernBERT has no token types). The head is a few thousand multiply-adds per input: it
//! runs in f32 on the f32 linear kernel whatever the encoder's dtype, as BERT's does.

use super::modernbert::ModernBertEncoder;
use super::modernbert_config::Activation;
use super::weights::{Names, Weight, WeightFile};
use super::{EncoderInput, Model, ModelError};
use crate::kernels::{add_layer_norm, gelu_at, gelu_tanh_at, linear, KernelLevel, LinearPart};

/// A loaded ModernBERT sequence classifier: the encoder (pooling as `classifier_pooling`
/// says), then the head.
pub struct ModernBertClassifier {
    encoder: ModernBertEncoder,
    level: KernelLevel,
    dense: Weight,
    /// Zeros without `classifier_bias`.
    dense_bias: Vec<f32>,
    activation: Activation,
    norm_gamma: Weight,
    /// Zeros without `norm_bias`.
    norm_beta: Vec<f32>,
    classifier: Weight,
    classifier_bias: Weight,
    labels: usize,
}

impl ModernBertClassifier {
    /// Reads the head of `file` (`head.dense`, `head.norm`, `classifier`, beside the
    /// encoder's `model.` tensors) for `labels` labels, shapes checked against the encoder's
    /// config.
    pub fn load(
        encoder: ModernBertEncoder,
        file: &WeightFile,
        labels: usize,
        level: KernelLevel,
    ) -> Result<Self, ModelError> {
        let c = encoder.config();
        let d = c.hidden_size;
        let (_, activation) = c.classifier_head().ok_or_else(|| {
            ModelError::Config("config.json does not name a sequence classifier".into())
        })?;
        let names = Names::unprefixed(file);
        let get = |name: &str, dims: &[usize]| {
            names.get(name, dims).map_err(|e| {
                ModelError::Weights(format!(
                    "a ModernBERT sequence classifier needs its head's {name} (as ModernBertForSequenceClassification saves it): {e}"
                ))
            })
        };
        let bias_or_zeros = |present: bool, name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            Ok(if present {
                get(name, &[n])?.as_slice().to_vec()
            } else {
                vec![0.0; n]
            })
        };
        Ok(Self {
            dense: get("head.dense.weight", &[d, d])?,
            dense_bias: bias_or_zeros(c.classifier_bias, "head.dense.bias", d)?,
            activation,
            norm_gamma: get("head.norm.weight", &[d])?,
            norm_beta: bias_or_zeros(c.norm_bias, "head.norm.bias", d)?,
            classifier: get("classifier.weight", &[labels, d])?,
            classifier_bias: get("classifier.bias", &[labels])?,
            labels,
            level,
            encoder,
        })
    }
}

impl Model for ModernBertClassifier {
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = self.encoder.config();
        let d = c.hidden_size;
        let pooled: Vec<f32> = self.encoder.pooled(inputs, threads)?.concat();
        let m = inputs.len();
        let mut hidden = vec![0.0f32; m * d];
        let dense = LinearPart {
            w: self.dense.as_slice(),
            b: &self.dense_bias,
        };
        linear(&pooled, m, d, &[dense], &mut hidden, threads);
        match self.activation {
            Activation::Gelu => gelu_at(&mut hidden, self.level),
            Activation::GeluTanh => gelu_tanh_at(&mut hidden, self.level),
        }
        let zeros = vec![0.0f32; d];
        add_layer_norm(
            &mut hidden,
            &zeros,
            self.norm_gamma.as_slice(),
            &self.norm_beta,
            c.norm_eps,
        );
        let mut logits = vec![0.0f32; m * self.labels];
        let classifier = LinearPart {
            w: self.classifier.as_slice(),
            b: self.classifier_bias.as_slice(),
        };
        linear(&hidden, m, d, &[classifier], &mut logits, threads);
        if !logits.iter().all(|v| v.is_finite()) {
            return Err(ModelError::Forward(
                "the classifier produced a non-finite logit".into(),
            ));
        }
        Ok(logits
            .chunks_exact(self.labels)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
