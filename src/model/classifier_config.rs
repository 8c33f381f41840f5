//! What a sequence classifier's `config.json` says about its answers, whatever its encoder
//! (BERT, XLM-RoBERTa, ModernBERT): its labels (`id2label`, else `num_labels`) and the
//! activation sentence-transformers' `CrossEncoder` saved with it. Each encoder's config
//! flattens these fields in, so the rules live once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ClassifierInfo, ModelError, ScoreFunction};

/// What follows the encoder in a checkpoint (from `architectures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// None that this server runs: the last hidden state is pooled (`BertModel`,
    /// `ModernBertModel`, or a `*ForMaskedLM` with its language-model head left out).
    Encoder,
    /// `*ForSequenceClassification`: a head that reads the pooled hidden state and gives one
    /// logit per label (a cross-encoder reranker, a classifier).
    SequenceClassification,
}

/// The fields of a sequence classifier's `config.json` that name its labels and activation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClassifierFields {
    /// A classifier's labels by index (`{"0": "LABEL_0"}` for a one-label cross-encoder).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// The labels' count when `id2label` is absent (transformers' default is 2).
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// What sentence-transformers (4 and later) saved of a cross-encoder: its activation.
    #[serde(default)]
    pub sentence_transformers: Option<SentenceTransformersConfig>,
    /// A cross-encoder's activation as sentence-transformers before 4 saved it.
    #[serde(default)]
    pub sbert_ce_default_activation_function: Option<String>,
}

/// The `sentence_transformers` object of a cross-encoder's `config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SentenceTransformersConfig {
    /// A dotted class path, e.g. `torch.nn.modules.activation.Sigmoid`.
    #[serde(default)]
    pub activation_fn: Option<String>,
}

impl ClassifierFields {
    /// The label names in index order: `id2label`, whose keys must be 0..n; without it,
    /// `num_labels` (default 2, as transformers) labels named `LABEL_i`.
    ///
    /// # Errors
    ///
    /// [`ModelError::Config`] for keys that are not the indices 0..n, no label at all, or a
    /// count too large to be a classifier's.
    pub fn labels(&self) -> Result<Vec<String>, ModelError> {
        let labels = match &self.id2label {
            None => {
                let n = self.num_labels.unwrap_or(2);
                if n > 1 << 16 {
                    return Err(ModelError::Config(format!(
                        "config.json: num_labels {n} is too large"
                    )));
                }
                (0..n).map(|i| format!("LABEL_{i}")).collect()
            }
            Some(map) => {
                let mut labels = vec![None; map.len()];
                for (key, label) in map {
                    let slot = key
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| labels.get_mut(i))
                        .ok_or_else(|| {
                            ModelError::Config(format!(
                                "config.json: id2label key {key:?} is not an index below {}",
                                map.len()
                            ))
                        })?;
                    *slot = Some(label.clone());
                }
                // n distinct keys, each below n: every index is there.
                labels.into_iter().flatten().collect::<Vec<_>>()
            }
        };
        if labels.is_empty() {
            return Err(ModelError::Config(
                "config.json: a sequence classifier with no labels (id2label is empty or num_labels is 0)"
                    .into(),
            ));
        }
        Ok(labels)
    }

    /// The activation sentence-transformers' `CrossEncoder` applies to the logits, when
    /// `config.json` names one (`sentence_transformers.activation_fn`, or the older
    /// `sbert_ce_default_activation_function`): the class's last name, e.g. `Sigmoid`.
    pub fn activation_name(&self) -> Option<&str> {
        self.sentence_transformers
            .as_ref()
            .and_then(|s| s.activation_fn.as_deref())
            .or(self.sbert_ce_default_activation_function.as_deref())
            .map(|path| path.rsplit('.').next().unwrap_or(path))
    }

    /// The classifier's labels and the function its scores go through.
    pub fn info(&self) -> Result<ClassifierInfo, ModelError> {
        let labels = self.labels()?;
        let score_function = ScoreFunction::for_model(labels.len(), self.activation_name())?;
        Ok(ClassifierInfo {
            labels,
            score_function,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: serde_json::Value) -> ClassifierFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn labels_come_from_id2label_else_num_labels_and_the_activation_from_either_field() {
        let c = fields(serde_json::json!({
            "id2label": {"1": "pos", "0": "neg"},
            "sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}
        }));
        assert_eq!(c.labels().unwrap(), vec!["neg", "pos"]);
        assert_eq!(c.activation_name(), Some("Identity"));
        assert_eq!(c.info().unwrap().score_function, ScoreFunction::Identity);
        // Without id2label, num_labels (default 2) labels named as transformers names them.
        let c = fields(serde_json::json!({
            "num_labels": 1,
            "sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"
        }));
        assert_eq!(c.labels().unwrap(), vec!["LABEL_0"]);
        assert_eq!(c.activation_name(), Some("Sigmoid"));
        assert_eq!(fields(serde_json::json!({})).labels().unwrap().len(), 2);
        assert_eq!(
            fields(serde_json::json!({"num_labels": 3}))
                .info()
                .unwrap()
                .score_function,
            ScoreFunction::Softmax
        );
        for (bad, says) in [
            (
                serde_json::json!({"id2label": {"0": "a", "2": "b"}}),
                "\"2\"",
            ),
            (serde_json::json!({"id2label": {}}), "no labels"),
            (serde_json::json!({"num_labels": 0}), "no labels"),
            (serde_json::json!({"num_labels": 100000}), "too large"),
        ] {
            let err = fields(bad.clone()).labels().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = fields(serde_json::json!({"sentence_transformers": {"activation_fn": "x.GELU"}}))
            .info()
            .unwrap_err()
            .to_string();
        assert!(err.contains("GELU"), "{err}");
    }
}
