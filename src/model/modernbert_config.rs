//! ModernBERT's `config.json`, in both layouts checkpoints have: the released models'
//! (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`), and the one
//! transformers 5 writes (`layer_types`, `rope_parameters` per layer type). Read as
//! transformers' `ModernBertConfig` reads them, with its defaults.

use serde::Deserialize;

use super::classifier_config::{ClassifierFields, Head};
use super::{ModelError, Pooling};

/// How a layer attends: to the whole input, or to a window around each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `full_attention`: every token sees every token; RoPE at the global theta.
    Global,
    /// `sliding_attention`: a token sees the tokens within `local_attention / 2` positions;
    /// RoPE at the local theta.
    Local,
}

/// The activation of the GeGLU feed-forward's input half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_pytorch_tanh`, `gelu_new`: the tanh approximation.
    GeluTanh,
}

/// The fields of a ModernBERT `config.json` this encoder and its classification head read
/// (the masked-language-model decoder's settings are a head this server does not run).
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// The whole window of a local layer (a token sees `local_attention / 2` on each side).
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    global_attn_every_n_layers: Option<usize>,
    global_rope_theta: Option<f32>,
    local_rope_theta: Option<f32>,
    layer_types: Option<Vec<String>>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// A `ModernBertForSequenceClassification`'s head: `cls` or `mean`.
    #[serde(default = "default_classifier_pooling")]
    classifier_pooling: String,
    /// The head's activation (transformers' default `gelu`).
    #[serde(default = "default_act")]
    classifier_activation: String,
    /// Whether the head's dense layer has a bias.
    #[serde(default)]
    pub classifier_bias: bool,
    /// A sequence classifier's labels and activation.
    #[serde(flatten)]
    pub classifier: ClassifierFields,
    /// Read from the fields above by [`ModernBertConfig::from_json`].
    #[serde(skip)]
    layers: Vec<LayerKind>,
    #[serde(skip)]
    thetas: (f32, f32),
    #[serde(skip)]
    activation: Option<Activation>,
    #[serde(skip)]
    head: Option<(Pooling, Activation)>,
}

fn default_eps() -> f32 {
    1e-5
}

fn default_act() -> String {
    "gelu".into()
}

fn default_classifier_pooling() -> String {
    "cls".into()
}

fn default_positions() -> usize {
    8192
}

fn default_local_attention() -> usize {
    128
}

/// An activation named in `config.json`'s `field`: the GELUs transformers' ModernBERT uses.
fn activation(field: &str, name: &str) -> Result<Activation, ModelError> {
    match name {
        "gelu" => Ok(Activation::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
        other => Err(ModelError::Unsupported(format!(
            "config.json: {field} {other:?}; this server runs gelu, gelu_pytorch_tanh and gelu_new"
        ))),
    }
}

/// transformers' defaults: `ModernBertConfig.default_theta`.
const GLOBAL_THETA: f32 = 160_000.0;
const LOCAL_THETA: f32 = 10_000.0;

/// The largest sizes accepted from `config.json`, so a corrupt file fails with a message, not
/// an allocation failure.
const MAX_DIM: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 20;

impl ModernBertConfig {
    /// Reads and checks a ModernBERT `config.json`.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut c: ModernBertConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let bad = |m: String| Err(ModelError::Config(format!("config.json: {m}")));
        if c.model_type != "modernbert" {
            return bad(format!(
                "model_type {:?} is not \"modernbert\"",
                c.model_type
            ));
        }
        if let Some(a) = c.architectures.iter().find(|a| {
            !matches!(
                a.as_str(),
                "ModernBertModel" | "ModernBertForMaskedLM" | "ModernBertForSequenceClassification"
            )
        }) {
            return Err(ModelError::Unsupported(format!(
                "architectures names {a:?}; this server serves a ModernBERT checkpoint as an embedding model (ModernBertModel, or ModernBertForMaskedLM without its head) or as a reranker or classifier (ModernBertForSequenceClassification)"
            )));
        }
        c.activation = Some(activation("hidden_activation", &c.hidden_activation)?);
        if c.architectures
            .iter()
            .any(|a| a == "ModernBertForSequenceClassification")
        {
            let pooling = match c.classifier_pooling.as_str() {
                "cls" => Pooling::Cls,
                "mean" => Pooling::Mean,
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "config.json: classifier_pooling {other:?}; this server runs \"cls\" and \"mean\""
                    )))
                }
            };
            let act = activation("classifier_activation", &c.classifier_activation)?;
            c.classifier.labels()?;
            c.head = Some((pooling, act));
        }
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ModelError::Unsupported(
                "config.json sets rope_scaling, which this server does not implement for ModernBERT".into(),
            ));
        }
        let sizes = [
            ("hidden_size", c.hidden_size, MAX_DIM),
            ("intermediate_size", c.intermediate_size, 4 * MAX_DIM),
            ("num_hidden_layers", c.num_hidden_layers, 512),
            ("num_attention_heads", c.num_attention_heads, 1024),
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                1 << 24,
            ),
            ("local_attention", c.local_attention, 1 << 24),
        ];
        for (name, v, max) in sizes {
            if v == 0 || v > max {
                return bad(format!("{name} is {v}; it must be between 1 and {max}"));
            }
        }
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            ));
        }
        if !c.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd; RoPE turns pairs of values",
                c.head_dim()
            ));
        }
        c.layers = c.read_layer_kinds()?;
        c.thetas = c.read_thetas()?;
        let eps_ok = c.norm_eps.is_finite() && c.norm_eps >= 0.0;
        let theta_ok = |t: f32| t.is_finite() && t > 1.0;
        if !(eps_ok && theta_ok(c.thetas.0) && theta_ok(c.thetas.1)) {
            return bad(format!(
                "norm_eps {} or a rope theta {:?} is out of range",
                c.norm_eps, c.thetas
            ));
        }
        Ok(c)
    }

    /// Each layer's kind: `layer_types` if the file has it, else a global layer every
    /// `global_attn_every_n_layers` (3 by default) starting with layer 0, as transformers
    /// derives it.
    fn read_layer_kinds(&self) -> Result<Vec<LayerKind>, ModelError> {
        let bad = |m: String| Err(ModelError::Config(format!("config.json: {m}")));
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return bad(format!(
                    "layer_types names {} layers, num_hidden_layers is {}",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(LayerKind::Global),
                    "sliding_attention" => Ok(LayerKind::Local),
                    other => Err(ModelError::Config(format!(
                        "config.json: layer_types holds {other:?}"
                    ))),
                })
                .collect();
        }
        let every = self.global_attn_every_n_layers.unwrap_or(3);
        if every == 0 {
            return bad("global_attn_every_n_layers is 0".into());
        }
        Ok((0..self.num_hidden_layers)
            .map(|l| {
                if l.is_multiple_of(every) {
                    LayerKind::Global
                } else {
                    LayerKind::Local
                }
            })
            .collect())
    }

    /// The RoPE thetas (global, local): `rope_parameters`' per layer type if the file has
    /// them, else `global_rope_theta` and `local_rope_theta`, else transformers' defaults.
    fn read_thetas(&self) -> Result<(f32, f32), ModelError> {
        let mut thetas = (
            self.global_rope_theta.unwrap_or(GLOBAL_THETA),
            self.local_rope_theta.unwrap_or(LOCAL_THETA),
        );
        let Some(params) = self.rope_parameters.as_ref().filter(|v| !v.is_null()) else {
            return Ok(thetas);
        };
        for (key, theta) in [
            ("full_attention", &mut thetas.0),
            ("sliding_attention", &mut thetas.1),
        ] {
            let Some(p) = params.get(key).filter(|p| !p.is_null()) else {
                continue;
            };
            let kind = p
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(ModelError::Unsupported(format!(
                    "config.json: rope_parameters.{key} has rope_type {kind:?}, which this server does not implement for ModernBERT"
                )));
            }
            if let Some(t) = p.get("rope_theta") {
                *theta = t.as_f64().ok_or_else(|| {
                    ModelError::Config(format!(
                        "config.json: rope_parameters.{key}.rope_theta is {t}"
                    ))
                })? as f32;
            }
        }
        Ok(thetas)
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Each layer's kind, in order.
    pub fn layer_kinds(&self) -> &[LayerKind] {
        &self.layers
    }

    /// A local layer's reach: a token sees the tokens at most this many positions away
    /// (transformers' `sliding_window`, `local_attention // 2`).
    pub fn half_window(&self) -> usize {
        self.local_attention / 2
    }

    /// The RoPE theta of a layer of `kind`.
    pub fn rope_theta(&self, kind: LayerKind) -> f32 {
        match kind {
            LayerKind::Global => self.thetas.0,
            LayerKind::Local => self.thetas.1,
        }
    }

    /// The feed-forward's activation.
    pub fn activation(&self) -> Activation {
        self.activation.unwrap_or(Activation::Gelu)
    }

    /// What follows the encoder: a sequence classifier's head when `architectures` names
    /// `ModernBertForSequenceClassification`, else none (an embedder).
    pub fn head(&self) -> Head {
        match self.head {
            Some(_) => Head::SequenceClassification,
            None => Head::Encoder,
        }
    }

    /// A classifier's pooling and head activation (`None` for an embedder).
    pub fn classifier_head(&self) -> Option<(Pooling, Activation)> {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> String {
        let mut c = json!({
            "model_type": "modernbert", "architectures": ["ModernBertModel"], "vocab_size": 100,
            "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
            "num_attention_heads": 2, "norm_eps": 1e-5, "norm_bias": false,
            "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
            "local_rope_theta": 10000.0, "local_attention": 128, "hidden_activation": "gelu",
            "max_position_embeddings": 8192
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    }

    #[test]
    fn reads_the_released_layout_and_transformers_5s() {
        use LayerKind::{Global as G, Local as L};
        let c = ModernBertConfig::from_json(&config(json!({}))).unwrap();
        assert_eq!(c.layer_kinds(), [G, L, L, G]);
        assert_eq!((c.head_dim(), c.half_window()), (16, 64));
        assert_eq!((c.rope_theta(G), c.rope_theta(L)), (160_000.0, 10_000.0));
        assert_eq!(c.activation(), Activation::Gelu);
        // transformers 5 writes the layer types and the thetas per layer type.
        let c = ModernBertConfig::from_json(&config(json!({
            "global_attn_every_n_layers": null, "global_rope_theta": null, "local_rope_theta": null,
            "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}
            },
            "hidden_activation": "gelu_pytorch_tanh"
        })))
        .unwrap();
        assert_eq!(c.layer_kinds(), [G, L, G, L]);
        assert_eq!((c.rope_theta(G), c.rope_theta(L)), (80_000.0, 5_000.0));
        assert_eq!(c.activation(), Activation::GeluTanh);
        // Neither: transformers' defaults (a global layer every 3, thetas 160k and 10k).
        let c = ModernBertConfig::from_json(&config(json!({
            "global_attn_every_n_layers": null, "global_rope_theta": null, "local_rope_theta": null
        })))
        .unwrap();
        assert_eq!(c.layer_kinds(), [G, L, L, G]);
        assert_eq!((c.rope_theta(G), c.rope_theta(L)), (160_000.0, 10_000.0));
    }

    #[test]
    fn a_sequence_classifier_reads_its_head_with_transformers_defaults() {
        let c = ModernBertConfig::from_json(&config(json!({}))).unwrap();
        assert_eq!((c.head(), c.classifier_head()), (Head::Encoder, None));
        let c = ModernBertConfig::from_json(&config(json!({
            "architectures": ["ModernBertForSequenceClassification"], "num_labels": 1
        })))
        .unwrap();
        assert_eq!(c.head(), Head::SequenceClassification);
        assert_eq!(c.classifier_head(), Some((Pooling::Cls, Activation::Gelu)));
        assert!(!c.classifier_bias);
        assert_eq!(c.classifier.labels().unwrap(), ["LABEL_0"]);
        let c = ModernBertConfig::from_json(&config(json!({
            "architectures": ["ModernBertForSequenceClassification"],
            "classifier_pooling": "mean", "classifier_activation": "gelu_new",
            "classifier_bias": true, "id2label": {"0": "no", "1": "yes"}
        })))
        .unwrap();
        assert_eq!(
            c.classifier_head(),
            Some((Pooling::Mean, Activation::GeluTanh))
        );
        assert!(c.classifier_bias);
        assert_eq!(c.classifier.labels().unwrap(), ["no", "yes"]);
    }

    #[test]
    fn refuses_what_it_does_not_run() {
        for (extra, says) in [
            (json!({"model_type": "bert"}), "model_type"),
            (
                json!({"architectures": ["ModernBertForTokenClassification"]}),
                "ModernBertForTokenClassification",
            ),
            (
                json!({"architectures": ["ModernBertForSequenceClassification"], "classifier_pooling": "max"}),
                "classifier_pooling \"max\"",
            ),
            (
                json!({"architectures": ["ModernBertForSequenceClassification"], "classifier_activation": "relu"}),
                "classifier_activation",
            ),
            (
                json!({"architectures": ["ModernBertForSequenceClassification"], "id2label": {}}),
                "no labels",
            ),
            (json!({"hidden_activation": "silu"}), "hidden_activation"),
            (json!({"rope_scaling": {"type": "linear"}}), "rope_scaling"),
            (
                json!({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}),
                "yarn",
            ),
            (json!({"layer_types": ["full_attention"]}), "layer_types"),
            (
                json!({"layer_types": ["full_attention", "x", "x", "x"]}),
                "\"x\"",
            ),
            (json!({"global_attn_every_n_layers": 0}), "global_attn"),
            (json!({"num_attention_heads": 3}), "multiple"),
            (json!({"hidden_size": 0}), "hidden_size"),
            (json!({"local_rope_theta": -1.0}), "theta"),
        ] {
            let err = ModernBertConfig::from_json(&config(extra.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
        assert!(ModernBertConfig::from_json("[]").is_err());
    }
}
