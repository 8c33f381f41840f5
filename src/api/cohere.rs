//! The Cohere / Jina rerank body that most RAG tools send (LangChain's and LlamaIndex's
//! rerankers, vLLM's and Jina's servers): `POST /v1/rerank` `{"model", "query", "documents",
//! "top_n", "return_documents"}` → `{"id", "model", "results": [{"index", "relevance_score",
//! "document"?}], "usage"}`, best first.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::tei::by_score;
use super::{check_count_of, from_json};
use crate::error::ServiceError;

/// What `/v1/rerank` expects.
pub const RERANK_EXPECTS: &str =
    r#"e.g. {"query": "a question", "documents": ["a passage", "another passage"]}"#;

/// `POST /v1/rerank`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// Echoed in the answer (the loaded model's id when absent); not checked.
    #[serde(default)]
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<Document>,
    /// Answer the best `top_n` documents only (all when absent or 0, as vLLM takes 0).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Each result carries its document's text (default true, as Cohere's v1 and Jina).
    #[serde(default)]
    pub return_documents: Option<bool>,
}

impl RerankRequest {
    /// Parses and checks a body: the schema and the number of documents (400 when none, 413
    /// past `max_client_batch`).
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, RERANK_EXPECTS)?;
        check_count_of(r.documents.len(), max_client_batch, "documents")?;
        Ok(r)
    }

    /// The documents' texts.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.documents.iter().map(|d| d.0.as_str())
    }
}

/// A document: a string, or an object whose `text` is ranked (Cohere's v1 and Jina accept
/// both; an object's other fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document(pub String);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object with a \"text\" string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Document, E> {
                Ok(Document(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Document, E> {
                Ok(Document(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "text" {
                        text = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                text.map(Document)
                    .ok_or_else(|| de::Error::custom("a document object needs a \"text\" string"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    id: String,
    model: &'a str,
    results: Vec<RerankResult<'a>>,
    usage: Usage,
}

#[derive(Serialize)]
struct RerankResult<'a> {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText<'a>>,
}

#[derive(Serialize)]
struct DocumentText<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Usage {
    total_tokens: usize,
}

/// How an answer is shaped: what the request asked besides its texts.
#[derive(Debug, Clone, Copy)]
pub struct AnswerShape {
    pub top_n: Option<usize>,
    pub return_documents: Option<bool>,
}

impl RerankRequest {
    /// Splits the request into its query, its documents' texts and its answer's shape.
    pub fn into_parts(self) -> (String, Vec<String>, AnswerShape) {
        let shape = AnswerShape {
            top_n: self.top_n,
            return_documents: self.return_documents,
        };
        let texts = self.documents.into_iter().map(|d| d.0).collect();
        (self.query, texts, shape)
    }
}

/// The answer given each document's (`texts[i]`) score: the best `top_n` first, with their
/// text unless `return_documents` is false; `id` names this answer.
pub fn rerank_answer(
    shape: AnswerShape,
    texts: &[String],
    scores: &[f32],
    tokens: usize,
    model: &str,
    id: String,
) -> Vec<u8> {
    let keep = shape.top_n.filter(|&n| n > 0).unwrap_or(usize::MAX);
    let with_text = shape.return_documents.unwrap_or(true);
    let results = by_score(scores)
        .into_iter()
        .take(keep)
        .map(|index| RerankResult {
            index,
            relevance_score: scores[index],
            document: with_text.then(|| DocumentText {
                text: &texts[index],
            }),
        })
        .collect();
    let answer = Answer {
        id,
        model,
        results,
        usage: Usage {
            total_tokens: tokens,
        },
    };
    serde_json::to_vec(&answer).expect("a rerank answer serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_strings_or_objects_with_text() {
        let r = RerankRequest::parse(
            br#"{"model": "m", "query": "q", "documents": ["a", {"text": "b", "title": "t"}], "top_n": 1, "return_documents": false}"#,
            4,
        )
        .unwrap();
        assert_eq!(r.texts().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!((r.top_n, r.return_documents), (Some(1), Some(false)));
        for (body, kind, says) in [
            (
                r#"{"query": "q", "documents": []}"#,
                "invalid_request",
                "documents list is empty",
            ),
            (
                r#"{"query": "q", "documents": ["a", "b", "c"]}"#,
                "payload_too_large",
                "3 documents",
            ),
            (
                r#"{"query": "q", "documents": [{"title": "t"}]}"#,
                "invalid_request",
                "\"text\" string",
            ),
            (
                r#"{"query": "q", "documents": [3]}"#,
                "invalid_request",
                "a string or an object",
            ),
            (
                r#"{"query": "q", "documents": ["a"], "rank_fields": ["x"]}"#,
                "invalid_request",
                "unknown field `rank_fields`",
            ),
        ] {
            let e = RerankRequest::parse(body.as_bytes(), 2).unwrap_err();
            assert_eq!(e.kind(), kind, "{body}: {e}");
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn answers_keep_the_best_top_n_with_their_documents() {
        let r = RerankRequest::parse(
            br#"{"query": "q", "documents": ["a", {"text": "b"}, "c"], "top_n": 2}"#,
            4,
        )
        .unwrap();
        let (_, texts, shape) = r.into_parts();
        let v: serde_json::Value = serde_json::from_slice(&rerank_answer(
            shape,
            &texts,
            &[0.125, 0.75, 0.5],
            12,
            "m",
            "rerank-7".into(),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "rerank-7", "model": "m",
                "results": [
                    {"index": 1, "relevance_score": 0.75, "document": {"text": "b"}},
                    {"index": 2, "relevance_score": 0.5, "document": {"text": "c"}}
                ],
                "usage": {"total_tokens": 12}
            })
        );
        let r = RerankRequest::parse(
            br#"{"query": "q", "documents": ["a"], "top_n": 0, "return_documents": false}"#,
            4,
        )
        .unwrap();
        let (_, texts, shape) = r.into_parts();
        let v: serde_json::Value =
            serde_json::from_slice(&rerank_answer(shape, &texts, &[0.375], 3, "m", "x".into()))
                .unwrap();
        assert_eq!(
            v["results"],
            serde_json::json!([{"index": 0, "relevance_score": 0.375}])
        );
    }
}
