//! The `config.json` of a BERT-family checkpoint (`BertModel` or
//! `BertForSequenceClassification`, and the XLM-RoBERTa ones, `XLMRobertaModel` and
//! `XLMRobertaForSequenceClassification`): the fields the encoder and its heads need, validated
//! at load with the field named, so a bad file is an error before any weight is read.
//!
//! XLM-RoBERTa is BERT's encoder with three differences, which [`Family`] names so the encoder
//! and its head read them from here rather than from a second copy of the code: positions
//! start after the padding id, every token is of type 0 (its tokenizer gives no token types),
//! and the classification head is `RobertaClassificationHead`, stored under other names.

use serde::Deserialize;

use super::classifier_config::{ClassifierFields, Head};
use super::ModelError;

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    /// The checkpoint's classes (`BertModel`, `BertForSequenceClassification`, …).
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// A sequence classifier's labels and activation.
    #[serde(flatten)]
    pub classifier: ClassifierFields,
}

/// The encoder family of a checkpoint (from `model_type`): what differs between BERT and
/// (XLM-)RoBERTa, whose layers are otherwise the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `model_type` "bert" (or none): positions from 0, token types 0 and 1, the pooler and
    /// classifier of `BertForSequenceClassification`, tensors under `bert.`.
    Bert,
    /// `model_type` "xlm-roberta" or "roberta": positions from `pad_token_id + 1` (as
    /// transformers' `create_position_ids_from_input_ids`), one token type, the dense, tanh
    /// and `out_proj` of `RobertaClassificationHead`, tensors under `roberta.`.
    Roberta,
}

impl Family {
    /// The prefix of the encoder's tensors in a checkpoint saved with a head.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
        }
    }

    /// The names of a sequence classifier's two dense layers, `tanh(first · h[0])` then
    /// `second`, as transformers saves them, and whether the first is under the encoder's
    /// prefix (BERT's pooler is part of `BertModel`; RoBERTa's head is not).
    pub fn classifier_layers(self) -> (&'static str, bool, &'static str) {
        match self {
            Family::Bert => ("pooler.dense", true, "classifier"),
            Family::Roberta => ("classifier.dense", false, "classifier.out_proj"),
        }
    }
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The encoder family (from `model_type`, checked by [`BertConfig::from_json`]).
    pub fn family(&self) -> Family {
        match self.model_type.as_deref() {
            Some("xlm-roberta" | "roberta") => Family::Roberta,
            _ => Family::Bert,
        }
    }

    /// The position of the first token: 0 for BERT; `pad_token_id + 1` for RoBERTa, whose
    /// position ids count from the padding id (a padding token itself sits at `pad_token_id`).
    pub fn position_offset(&self) -> usize {
        match self.family() {
            Family::Bert => 0,
            Family::Roberta => self.pad_token_id.map_or(0, |p| p as usize + 1),
        }
    }

    /// Most tokens per input the position table allows: `max_position_embeddings` less the
    /// positions RoBERTa skips (514 − 2 = 512 for XLM-R).
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Whether a pair's second text is token type 1. RoBERTa's tokenizers give no token types
    /// (transformers feeds zeros), so every token of a pair is type 0 there.
    pub fn uses_token_types(&self) -> bool {
        self.family() == Family::Bert
    }

    /// What follows the encoder (from `architectures`).
    pub fn head(&self) -> Head {
        if self
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
        {
            Head::SequenceClassification
        } else {
            Head::Encoder
        }
    }

    /// Parses `config.json` and refuses what this encoder does not implement, with the reason.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let c: BertConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if let Some(t) = &c.model_type {
            if !matches!(t.as_str(), "bert" | "xlm-roberta" | "roberta") {
                return Err(ModelError::Unsupported(format!(
                    "model_type {t:?}: this server runs BERT-family encoders (model_type \"bert\", \"xlm-roberta\" or \"roberta\"), ModernBERT (\"modernbert\"), Qwen3-Embedding (\"qwen3\") and GPT-2 (\"gpt2\") in Hugging Face layout; other generation models as GGUF files"
                )));
            }
        }
        // Heads that turn the encoder's output into something this server does not compute:
        // loading their encoder alone would answer /embed with vectors the checkpoint was
        // never trained to give.
        const OTHER_HEADS: [&str; 4] = [
            "ForTokenClassification",
            "ForQuestionAnswering",
            "ForMultipleChoice",
            "ForNextSentencePrediction",
        ];
        if let Some(a) = c
            .architectures
            .iter()
            .find(|a| OTHER_HEADS.iter().any(|h| a.ends_with(h)))
        {
            return Err(ModelError::Unsupported(format!(
                "architectures names {a:?}: a head this server does not run; it serves BertModel and XLMRobertaModel (or their *ForMaskedLM, whose head it leaves out) as embedding models and BertForSequenceClassification and XLMRobertaForSequenceClassification as rerankers or classifiers"
            )));
        }
        if c.head() == Head::SequenceClassification {
            c.classifier.labels()?;
        }
        if c.hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {:?}: only exact \"gelu\" is implemented",
                c.hidden_act
            )));
        }
        if let Some(p) = &c.position_embedding_type {
            if p != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type {p:?}"
                )));
            }
        }
        for (field, value) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("intermediate_size", c.intermediate_size),
            ("max_position_embeddings", c.max_position_embeddings),
            ("type_vocab_size", c.type_vocab_size),
        ] {
            if value == 0 {
                return Err(ModelError::Config(format!(
                    "config.json: {field} is 0; it must be at least 1"
                )));
            }
        }
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::Config(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if c.family() == Family::Roberta {
            let offset = c.position_offset();
            if c.pad_token_id.is_none() || c.max_positions() == 0 {
                return Err(ModelError::Config(format!(
                    "config.json: a RoBERTa model's positions start after pad_token_id; it needs pad_token_id below max_position_embeddings - 1 (pad_token_id {:?}, max_position_embeddings {}, first position {offset})",
                    c.pad_token_id, c.max_position_embeddings
                )));
            }
        }
        let eps = c.layer_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && (eps as f32).is_finite() && eps as f32 > 0.0) {
            return Err(ModelError::Config(format!(
                "config.json: layer_norm_eps {eps} must be a finite number greater than 0 \
                 (also in single precision)"
            )));
        }
        // Every weight matrix must be addressable: rows × hidden_size f32 values, and the
        // fused QKV output 3 × hidden_size wide.
        for (field, rows) in [
            ("vocab_size", c.vocab_size),
            ("max_position_embeddings", c.max_position_embeddings),
            ("type_vocab_size", c.type_vocab_size),
            ("intermediate_size", c.intermediate_size),
            ("hidden_size", c.hidden_size),
            ("3 (query, key, value)", 3),
        ] {
            let bytes = rows
                .checked_mul(c.hidden_size)
                .and_then(|n| n.checked_mul(std::mem::size_of::<f32>()))
                .filter(|&b| b <= isize::MAX as usize);
            if bytes.is_none() {
                return Err(ModelError::Config(format!(
                    "config.json: {field} × hidden_size ({rows} × {}) is too large",
                    c.hidden_size
                )));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The tiny model's config.json with `changes` applied.
    pub(in crate::model) fn config_with(changes: serde_json::Value) -> String {
        let mut c = serde_json::json!({
            "model_type": "bert", "hidden_act": "gelu", "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "max_position_embeddings": 64, "type_vocab_size": 2, "vocab_size": 123,
            "layer_norm_eps": 1e-12
        });
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    }

    #[test]
    fn sequence_classifiers_load_and_other_heads_are_refused_naming_the_architecture() {
        for ok in ["BertModel", "BertForMaskedLM"] {
            let c =
                BertConfig::from_json(&config_with(serde_json::json!({ "architectures": [ok] })))
                    .unwrap();
            assert_eq!(c.head(), Head::Encoder, "{ok}");
        }
        let c = BertConfig::from_json(&config_with(serde_json::json!({
            "architectures": ["BertForSequenceClassification"],
            "id2label": {"1": "pos", "0": "neg"},
            "sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}
        })))
        .unwrap();
        assert_eq!(c.head(), Head::SequenceClassification);
        assert_eq!(c.classifier.labels().unwrap(), vec!["neg", "pos"]);
        assert_eq!(c.classifier.activation_name(), Some("Identity"));
        // Without id2label, num_labels (default 2) labels named as transformers names them.
        let c = BertConfig::from_json(&config_with(serde_json::json!({
            "architectures": ["BertForSequenceClassification"], "num_labels": 1,
            "sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"
        })))
        .unwrap();
        assert_eq!(c.classifier.labels().unwrap(), vec!["LABEL_0"]);
        assert_eq!(c.classifier.activation_name(), Some("Sigmoid"));
        for bad in [
            serde_json::json!({ "architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "2": "b"} }),
            serde_json::json!({ "architectures": ["BertForSequenceClassification"], "id2label": {} }),
        ] {
            assert!(
                BertConfig::from_json(&config_with(bad.clone())).is_err(),
                "{bad}"
            );
        }
        for head in [
            "BertForTokenClassification",
            "BertForQuestionAnswering",
            "BertForMultipleChoice",
        ] {
            let c = config_with(serde_json::json!({ "architectures": [head] }));
            let err = BertConfig::from_json(&c).unwrap_err().to_string();
            assert!(err.contains(head) && err.contains("does not run"), "{err}");
        }
    }

    #[test]
    fn config_values_are_validated_with_the_field_named() {
        assert!(BertConfig::from_json(&config_with(serde_json::json!({}))).is_ok());
        for field in [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ] {
            let err = BertConfig::from_json(&config_with(serde_json::json!({ field: 0 })))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field) && err.contains("at least 1"), "{err}");
        }
        for eps in [0.0, -1e-12, 1e-300, 1e300] {
            let err =
                BertConfig::from_json(&config_with(serde_json::json!({ "layer_norm_eps": eps })))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("layer_norm_eps"), "{eps}: {err}");
        }
        for (field, value) in [
            ("vocab_size", usize::MAX / 16),
            ("max_position_embeddings", usize::MAX / 2),
            ("intermediate_size", 1usize << 60),
            ("type_vocab_size", usize::MAX),
        ] {
            let err = BertConfig::from_json(&config_with(serde_json::json!({ field: value })))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field) && err.contains("too large"), "{err}");
        }
        let err = BertConfig::from_json(&config_with(
            serde_json::json!({ "hidden_size": 1usize << 62, "num_attention_heads": 1 }),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("hidden_size") && err.contains("too large"),
            "{err}"
        );
        let err = BertConfig::from_json(&config_with(serde_json::json!({ "hidden_size": 30 })))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a multiple"), "{err}");
        let err = BertConfig::from_json(&config_with(serde_json::json!({ "vocab_size": -1 })))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json: invalid value"), "{err}");
    }

    #[test]
    fn xlm_roberta_configs_name_their_family_positions_and_token_types() {
        let c = BertConfig::from_json(&config_with(serde_json::json!({
            "model_type": "xlm-roberta", "architectures": ["XLMRobertaForSequenceClassification"],
            "pad_token_id": 1, "max_position_embeddings": 514, "type_vocab_size": 1,
            "id2label": {"0": "LABEL_0"}
        })))
        .unwrap();
        assert_eq!(c.family(), Family::Roberta);
        assert_eq!(c.head(), Head::SequenceClassification);
        assert_eq!((c.position_offset(), c.max_positions()), (2, 512));
        assert!(!c.uses_token_types());
        assert_eq!(Family::Roberta.prefix(), "roberta.");
        let bert = BertConfig::from_json(&config_with(serde_json::json!({}))).unwrap();
        assert_eq!(bert.family(), Family::Bert);
        assert_eq!((bert.position_offset(), bert.max_positions()), (0, 64));
        assert!(bert.uses_token_types());
        // Positions that start after the padding id need one, and room after it.
        for bad in [
            serde_json::json!({ "model_type": "xlm-roberta" }),
            serde_json::json!({ "model_type": "xlm-roberta", "pad_token_id": 63 }),
        ] {
            let err = BertConfig::from_json(&config_with(bad.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("pad_token_id"), "{bad}: {err}");
        }
        let err = BertConfig::from_json(&config_with(serde_json::json!({ "model_type": "gpt2" })))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"xlm-roberta\""), "{err}");
    }
}
