//! The wire format both front ends speak: request bodies and answers of every API style (TEI,
//! OpenAI, TGI, the upstream `{"text"}` application), parsed into the services' requests and
//! rendered from their results, with the checks that need no model (schema, counts, ranges).
//!
//! - [`tei`], [`openai`], [`tgi`], [`upstream`], [`cohere`]: each API style's bodies, one file
//!   each;
//! - [`generation`]: what the generation styles share (sampling settings, stop sequences, the
//!   answer of a finished sequence and the chunks of a streamed one);
//! - [`answer`]: a generation's answer in the style its call asked for, whole or streamed;
//! - [`json_routes`]: the routes answered with one JSON body (embeddings, reranking,
//!   classification, tokenize), parsed and
//!   answered in one place for both front ends; a queue job names one of them, so a job's
//!   result is byte for byte the HTTP answer.
//!
//! Nothing here knows HTTP: errors are [`ServiceError`]s, which `http::error` maps to status
//! codes and the broker to retry decisions.

pub mod answer;
pub mod chat_messages;
pub mod cohere;
pub mod generation;
pub mod json_routes;
pub mod openai;
pub mod structured;
pub mod tei;
pub mod tgi;
pub mod tools;
pub mod upstream;

use std::sync::Arc;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::embed::EmbedService;
use crate::error::ServiceError;
use crate::generate::service::GenerateService;
use crate::lifecycle::Serving;
use crate::model::{ModelInfo, Task};

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
    check_count_of(n, max_client_batch, "inputs")
}

/// [`check_count`] for a list whose items are called `what` (`texts`, `documents`).
pub fn check_count_of(n: usize, max_client_batch: usize, what: &str) -> Result<(), ServiceError> {
    if n == 0 {
        let list = if what == "inputs" { "input" } else { what };
        return Err(ServiceError::Invalid(format!(
            "the {list} list is empty; send at least one text"
        )));
    }
    if n > max_client_batch {
        return Err(ServiceError::TooLarge(format!(
            "{n} {what} in one request; the limit is {max_client_batch} (--max-client-batch)"
        )));
    }
    Ok(())
}

/// The routes of a task, for the message that sends a client to them.
fn routes_of(task: Task) -> &'static str {
    match task {
        Task::Embedding => "/embed or /v1/embeddings",
        Task::Reranking => "/rerank, /v1/rerank or /predict",
        Task::TextClassification => "/predict",
        Task::TextGeneration => {
            "/generate, /generate_stream, /v1/completions or /v1/chat/completions"
        }
    }
}

/// The error of a route that `does` something the loaded model (`info`) does not: it names
/// the model's task and the routes that serve it.
fn wrong_task(does: &str, info: &ModelInfo) -> ServiceError {
    let name = info.task.name();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    ServiceError::WrongTask(format!(
        "this route {does}, but the loaded model ({}) is {article} {name} model: use {}",
        info.id,
        routes_of(info.task)
    ))
}

/// The encoder service when the loaded model's task is one of `tasks`, or the error that
/// names the model's task.
fn encoder<'a>(
    serving: &'a Serving,
    tasks: &[Task],
    does: &str,
) -> Result<&'a Arc<EmbedService>, ServiceError> {
    match serving {
        Serving::Encoder(s) if tasks.contains(&s.info().task) => Ok(s),
        other => Err(wrong_task(does, other.info())),
    }
}

/// The embedding service, or the error that names the loaded model's task.
pub fn embedding(serving: &Serving) -> Result<&Arc<EmbedService>, ServiceError> {
    encoder(serving, &[Task::Embedding], "computes embeddings")
}

/// The service of a reranker (a one-label cross-encoder), or the error that names the loaded
/// model's task.
pub fn reranking(serving: &Serving) -> Result<&Arc<EmbedService>, ServiceError> {
    encoder(
        serving,
        &[Task::Reranking],
        "reranks passages with a cross-encoder",
    )
}

/// The service of a sequence classifier (several labels, or a reranker's one, as TEI's
/// `/predict` takes both), or the error that names the loaded model's task.
pub fn classification(serving: &Serving) -> Result<&Arc<EmbedService>, ServiceError> {
    encoder(
        serving,
        &[Task::TextClassification, Task::Reranking],
        "classifies texts with a sequence classifier",
    )
}

/// The generation service, or the error that names the loaded model's task.
pub fn generation(serving: &Serving) -> Result<&Arc<GenerateService>, ServiceError> {
    match serving {
        Serving::Generation(s) => Ok(s),
        other => Err(wrong_task("generates text", other.info())),
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
    fn wrong_task_messages_name_the_task_and_its_routes() {
        let info = |task| ModelInfo {
            id: "m".into(),
            model_type: "bert".into(),
            task,
            dimensions: 4,
            max_input_length: 8,
            pooling: crate::model::Pooling::Mean,
            normalized_by_model: false,
            dtype: crate::kernels::Dtype::F32,
            weight_formats: Default::default(),
            kernel: crate::kernels::KernelLevel::Scalar,
            classifier: None,
            prompts: Default::default(),
        };
        let m = wrong_task("reranks passages", &info(Task::Embedding)).to_string();
        assert_eq!(
            m,
            "this route reranks passages, but the loaded model (m) is an embedding model: use /embed or /v1/embeddings"
        );
        let m = wrong_task("computes embeddings", &info(Task::TextClassification)).to_string();
        assert!(
            m.contains("a text-classification model: use /predict"),
            "{m}"
        );
        let m = wrong_task("computes embeddings", &info(Task::Reranking)).to_string();
        assert!(m.contains("a reranking model: use /rerank"), "{m}");
    }

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
