//! Request and response bodies of the JSON routes (serde), with the validation that the
//! types alone cannot express.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// One text or a list of texts, as TEI's `inputs` and OpenAI's `input` accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs(pub Vec<String>);

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs(vec![v.to_string()]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Inputs, E> {
                Ok(Inputs(vec![v]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(1024));
                while let Some(item) = seq.next_element::<TextItem>()? {
                    out.push(item.0);
                }
                Ok(Inputs(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// An element of an input array: a string (token arrays are refused with a clear message).
struct TextItem(String);

impl<'de> Deserialize<'de> for TextItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string (token-id arrays are not supported: send text)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextItem, E> {
                Ok(TextItem(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextItem, E> {
                Ok(TextItem(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}

/// `POST /embed` (Hugging Face TEI).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub inputs: Inputs,
    /// L2-normalise the vectors (default true).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Cut inputs longer than the model's maximum instead of refusing them with 413 (default true).
    #[serde(default = "yes")]
    pub truncate: bool,
    /// TEI's option; only `right` (the default) is implemented.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// TEI's option; prompts are not implemented, so only null is accepted.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// `encoding_format` of the OpenAI route.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    pub input: Inputs,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Accepted when equal to the model's dimensions (vectors cannot be shortened).
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub inputs: Inputs,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

#[derive(Debug, Serialize)]
pub struct OpenAiResponse {
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct OpenAiEmbedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingData,
}

/// A vector as numbers or as base64 of its little-endian f32 bytes.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Base64 of the little-endian f32 bytes, as OpenAI encodes `encoding_format: "base64"`.
pub fn base64_f32(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_accept_a_string_or_strings_and_explain_anything_else() {
        let r: EmbedRequest = serde_json::from_str(r#"{"inputs": "hi"}"#).unwrap();
        assert_eq!(r.inputs.0, vec!["hi"]);
        assert!(r.normalize && r.truncate);
        let r: EmbedRequest =
            serde_json::from_str(r#"{"inputs": ["a", "b"], "normalize": false}"#).unwrap();
        assert_eq!(r.inputs.0, vec!["a", "b"]);
        assert!(!r.normalize);
        let e = serde_json::from_str::<EmbedRequest>(r#"{"inputs": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a string or an array of strings") && e.contains("column"),
            "{e}"
        );
        let e = serde_json::from_str::<EmbedRequest>(r#"{"inputs": [1, 2]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token-id arrays are not supported"), "{e}");
        let e = serde_json::from_str::<EmbedRequest>(r#"{"input": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `input`"), "{e}");
    }

    #[test]
    fn openai_defaults_and_base64() {
        let r: OpenAiRequest = serde_json::from_str(r#"{"input": "x", "model": "m"}"#).unwrap();
        assert_eq!(r.encoding_format, EncodingFormat::Float);
        let r: OpenAiRequest =
            serde_json::from_str(r#"{"input": ["x"], "encoding_format": "base64"}"#).unwrap();
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert!(serde_json::from_str::<OpenAiRequest>(
            r#"{"input": "x", "encoding_format": "hex"}"#
        )
        .is_err());
        // 1.0f32 = 00 00 80 3f
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }
}
