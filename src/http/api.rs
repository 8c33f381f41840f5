//! Request and response bodies of the JSON routes (serde), with the validation that the
//! types alone cannot express. [`parse_request`] is the one entry point from body bytes to a
//! checked request (also the fuzzing target's): everything that can be refused without the
//! model is refused here, with a 4xx.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::error::ApiError;

/// A parsed and checked body of one of the JSON routes.
#[derive(Debug)]
pub enum Parsed {
    /// `POST /embed` and `POST /` (TEI's shape).
    Embed(EmbedRequest),
    /// `POST /v1/embeddings`.
    OpenAi(OpenAiRequest),
    /// `POST /tokenize`.
    Tokenize(TokenizeRequest),
}

/// Parses `body` as the request of the JSON route `path` and checks what needs no model:
/// the schema (400), the number of inputs (400 when none, 413 over `max_client_batch`) and
/// options this server does not implement (400).
pub fn parse_request(path: &str, body: &[u8], max_client_batch: usize) -> Result<Parsed, ApiError> {
    let parsed = match path {
        "/" | "/embed" => Parsed::Embed(from_json(body)?),
        "/v1/embeddings" => Parsed::OpenAi(from_json(body)?),
        "/tokenize" => Parsed::Tokenize(from_json(body)?),
        _ => return Err(ApiError::NotFound(path.to_string())),
    };
    let count = match &parsed {
        Parsed::Embed(r) => {
            if let Some(d) = r.truncation_direction.as_deref() {
                if !d.eq_ignore_ascii_case("right") {
                    return Err(ApiError::BadRequest(format!(
                        "truncation_direction {d:?} is not supported; only \"right\""
                    )));
                }
            }
            if r.prompt_name.is_some() {
                return Err(ApiError::BadRequest(
                    "prompt_name is not supported by this server".into(),
                ));
            }
            r.inputs.0.len()
        }
        Parsed::OpenAi(r) => r.input.0.len(),
        Parsed::Tokenize(r) => r.inputs.0.len(),
    };
    check_count(count, max_client_batch)?;
    Ok(parsed)
}

/// 400 for no inputs, 413 for more than `max_client_batch`.
pub fn check_count(n: usize, max_client_batch: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::BadRequest(
            "the input list is empty; send at least one text".into(),
        ));
    }
    if n > max_client_batch {
        return Err(ApiError::PayloadTooLarge(format!(
            "{n} inputs in one request; the limit is {max_client_batch} (--max-client-batch)"
        )));
    }
    Ok(())
}

/// `serde_json` with error messages for people: where it failed, and what a lone surrogate
/// escape (which serde reports as an "unexpected end of hex escape") means.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        if text.contains("hex escape") || text.contains("surrogate") {
            ApiError::BadRequest(format!(
                "invalid JSON body: a \\u escape is a lone UTF-16 surrogate (\\uD800-\\uDFFF without its pair), which is not valid Unicode text (line {}, column {})",
                e.line(),
                e.column()
            ))
        } else {
            ApiError::BadRequest(format!("invalid JSON body: {e}"))
        }
    })
}

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
    /// Cut inputs at the model's maximum length, as the model sees them (default true);
    /// false answers 413 for a longer input.
    #[serde(default = "yes")]
    pub truncate: bool,
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
    fn parse_request_checks_counts_options_and_explains_lone_surrogates() {
        let status = |path: &str, body: &str| match parse_request(path, body.as_bytes(), 2) {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        assert_eq!(status("/embed", r#"{"inputs": "a"}"#), 200);
        assert_eq!(status("/", r#"{"inputs": ["a", "b"]}"#), 200);
        assert_eq!(status("/embed", r#"{"inputs": ["a", "b", "c"]}"#), 413);
        assert_eq!(status("/embed", r#"{"inputs": []}"#), 400);
        assert_eq!(
            status("/embed", r#"{"inputs": "a", "prompt_name": "q"}"#),
            400
        );
        assert_eq!(
            status(
                "/embed",
                r#"{"inputs": "a", "truncation_direction": "Left"}"#
            ),
            400
        );
        assert_eq!(status("/v1/embeddings", r#"{"input": []}"#), 400);
        assert_eq!(
            status("/tokenize", r#"{"inputs": "a", "truncate": false}"#),
            200
        );
        assert_eq!(status("/nope", "{}"), 404);
        let e = parse_request("/embed", br#"{"inputs": "\ud800"}"#, 2).unwrap_err();
        assert!(e.to_string().contains("lone UTF-16 surrogate"), "{e}");
        assert!(e.to_string().contains("column"), "{e}");
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
