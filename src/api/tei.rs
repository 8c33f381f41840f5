//! Hugging Face TEI's embedding bodies: `POST /embed` (and `POST /` on an embedding model,
//! what `huggingface_hub`'s `feature_extraction` sends) and `POST /tokenize`.

use serde::Deserialize;

use super::{check_count, from_json, yes, Inputs};
use crate::error::ServiceError;

/// What `/embed` expects, for the message about an empty body.
pub const EMBED_EXPECTS: &str = r#"e.g. {"inputs": "a text"} or {"inputs": ["a text", "another"]}"#;
/// What `/tokenize` expects.
pub const TOKENIZE_EXPECTS: &str = r#"e.g. {"inputs": "a text"}"#;

/// `POST /embed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub inputs: Inputs,
    /// L2-normalise the vectors (default true).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Cut inputs longer than the model's maximum instead of refusing them with 413 (default
    /// true).
    #[serde(default = "yes")]
    pub truncate: bool,
    /// TEI's option; only `right` (the default) is implemented.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// TEI's option; prompts are not implemented, so only null is accepted.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

impl EmbedRequest {
    /// Parses and checks a body: the schema, the options this server does not implement, and
    /// the number of inputs.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, EMBED_EXPECTS)?;
        if let Some(d) = r.truncation_direction.as_deref() {
            if !d.eq_ignore_ascii_case("right") {
                return Err(ServiceError::Invalid(format!(
                    "truncation_direction {d:?} is not supported; only \"right\""
                )));
            }
        }
        if r.prompt_name.is_some() {
            return Err(ServiceError::Invalid(
                "prompt_name is not supported by this server".into(),
            ));
        }
        check_count(r.inputs.0.len(), max_client_batch)?;
        Ok(r)
    }
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub inputs: Inputs,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// Cut inputs at the model's maximum length, as the model sees them (default true);
    /// false answers 413 for a longer input. (Embedding models only: a generation model
    /// tokenizes a prompt whole.)
    #[serde(default = "yes")]
    pub truncate: bool,
}

impl TokenizeRequest {
    /// Parses and checks a body.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, TOKENIZE_EXPECTS)?;
        check_count(r.inputs.0.len(), max_client_batch)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(body: &str) -> Result<(), &'static str> {
        EmbedRequest::parse(body.as_bytes(), 2)
            .map(|_| ())
            .map_err(|e| e.kind())
    }

    #[test]
    fn inputs_accept_a_string_or_strings_and_explain_anything_else() {
        let r = EmbedRequest::parse(br#"{"inputs": "hi"}"#, 2).unwrap();
        assert_eq!(r.inputs.0, vec!["hi"]);
        assert!(r.normalize && r.truncate);
        let r = EmbedRequest::parse(br#"{"inputs": ["a", "b"], "normalize": false}"#, 2).unwrap();
        assert_eq!(r.inputs.0, vec!["a", "b"]);
        assert!(!r.normalize);
        for (body, says) in [
            (r#"{"inputs": 3}"#, "a string or an array of strings"),
            (r#"{"inputs": [1, 2]}"#, "token-id arrays are not supported"),
            (r#"{"input": "x"}"#, "unknown field `input`"),
        ] {
            let e = EmbedRequest::parse(body.as_bytes(), 2)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("column"), "{e}");
        }
    }

    #[test]
    fn counts_and_options_are_checked_and_lone_surrogates_explained() {
        assert_eq!(status(r#"{"inputs": ["a", "b"]}"#), Ok(()));
        assert_eq!(
            status(r#"{"inputs": ["a", "b", "c"]}"#),
            Err("payload_too_large")
        );
        assert_eq!(status(r#"{"inputs": []}"#), Err("invalid_request"));
        assert_eq!(
            status(r#"{"inputs": "a", "prompt_name": "q"}"#),
            Err("invalid_request")
        );
        assert_eq!(
            status(r#"{"inputs": "a", "truncation_direction": "Left"}"#),
            Err("invalid_request")
        );
        assert_eq!(
            status(r#"{"inputs": "a", "truncation_direction": "RIGHT"}"#),
            Ok(())
        );
        assert!(TokenizeRequest::parse(br#"{"inputs": "a", "truncate": false}"#, 2).is_ok());
        let e = EmbedRequest::parse(br#"{"inputs": "\ud800"}"#, 2).unwrap_err();
        assert!(e.to_string().contains("lone UTF-16 surrogate"), "{e}");
        assert!(e.to_string().contains("column"), "{e}");
    }
}
