//! The wire format both front ends speak: request bodies and answers of every API style (TEI,
//! OpenAI, TGI, the upstream `{"text"}` application), parsed into the services' requests and
//! rendered from their results, with the checks that need no model (schema, counts, ranges).
//!
//! - [`tei`], [`openai`], [`tgi`], [`upstream`]: each API style's bodies, one file each;
//! - [`generation`]: what the generation styles share (sampling settings, stop sequences, the
//!   answer of a finished sequence and the chunks of a streamed one);
//! - [`answer`]: a generation's answer in the style its call asked for, whole or streamed;
//! - [`json_routes`]: the routes answered with one JSON body (embeddings, tokenize), parsed and
//!   answered in one place for both front ends; a queue job names one of them, so a job's
//!   result is byte for byte the HTTP answer.
//!
//! Nothing here knows HTTP: errors are [`ServiceError`]s, which `http::error` maps to status
//! codes and the broker to retry decisions.

pub mod answer;
pub mod generation;
pub mod json_routes;
pub mod openai;
pub mod tei;
pub mod tgi;
pub mod upstream;

use std::sync::Arc;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::embed::EmbedService;
use crate::error::ServiceError;
use crate::generate::service::GenerateService;
use crate::lifecycle::Serving;

/// Parses a JSON body with error messages for people: an empty body says what the route
/// expects (`expects`, e.g. `{"inputs": ...}`), a syntax or schema error says where, and a lone
/// surrogate escape (which serde reports as an "unexpected end of hex escape") says what it is.
pub fn from_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expects: &str,
) -> Result<T, ServiceError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ServiceError::Invalid(format!(
            "the request body is empty: this route expects a JSON object, {expects}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        if text.contains("hex escape") || text.contains("surrogate") {
            ServiceError::Invalid(format!(
                "invalid JSON body: a \\u escape is a lone UTF-16 surrogate (\\uD800-\\uDFFF without its pair), which is not valid Unicode text (line {}, column {})",
                e.line(),
                e.column()
            ))
        } else {
            ServiceError::Invalid(format!("invalid JSON body: {e}"))
        }
    })
}

/// 400 for no inputs, 413 for more than `max_client_batch`.
pub fn check_count(n: usize, max_client_batch: usize) -> Result<(), ServiceError> {
    if n == 0 {
        return Err(ServiceError::Invalid(
            "the input list is empty; send at least one text".into(),
        ));
    }
    if n > max_client_batch {
        return Err(ServiceError::TooLarge(format!(
            "{n} inputs in one request; the limit is {max_client_batch} (--max-client-batch)"
        )));
    }
    Ok(())
}

/// The embedding service, or the error that names the loaded model's task.
pub fn embedding(serving: &Serving) -> Result<&Arc<EmbedService>, ServiceError> {
    match serving {
        Serving::Embedding(s) => Ok(s),
        Serving::Generation(g) => Err(ServiceError::WrongTask(format!(
            "this route computes embeddings, but the loaded model ({}) is a {} model: use /generate, /generate_stream, /v1/completions or /v1/chat/completions",
            g.info().id,
            g.info().task.name()
        ))),
    }
}

/// The generation service, or the error that names the loaded model's task.
pub fn generation(serving: &Serving) -> Result<&Arc<GenerateService>, ServiceError> {
    match serving {
        Serving::Generation(s) => Ok(s),
        Serving::Embedding(e) => Err(ServiceError::WrongTask(format!(
            "this route generates text, but the loaded model ({}) is an {} model: use /embed or /v1/embeddings",
            e.info().id,
            e.info().task.name()
        ))),
    }
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

/// `true`, for serde defaults.
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_body_says_what_the_route_expects() {
        for body in [&b""[..], b"  \n"] {
            let e = from_json::<serde_json::Value>(body, r#"{"inputs": "text"}"#).unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains("body is empty") && m.contains(r#"{"inputs": "text"}"#),
                "{m}"
            );
        }
        let e = from_json::<serde_json::Value>(b"{", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid JSON body") && e.contains("column"),
            "{e}"
        );
    }
}
