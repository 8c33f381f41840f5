//! Hugging Face TEI's bodies: `POST /embed` (and `POST /` on an embedding model, what
//! `huggingface_hub`'s `feature_extraction` sends), `POST /similarity` (also `POST /` with its
//! body, what `sentence_similarity` sends), `POST /rerank`, `POST /predict` (and `POST /` on a
//! reranker or a classifier, as TEI routes it), `POST /tokenize` and `POST /decode`, with their
//! answers.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{check_count, check_count_of, from_json, yes, Inputs};
use crate::embed::score::ScoreInput;
use crate::error::ServiceError;
use crate::model::ScoreFunction;

/// What `/embed` expects, for the message about an empty body.
pub const EMBED_EXPECTS: &str = r#"e.g. {"inputs": "a text"} or {"inputs": ["a text", "another"]}"#;
/// What `/tokenize` expects.
pub const TOKENIZE_EXPECTS: &str = r#"e.g. {"inputs": "a text"}"#;
/// What `/decode` expects.
pub const DECODE_EXPECTS: &str =
    r#"e.g. {"ids": [101, 7592, 102]} or {"ids": [[101, 7592, 102], [101, 102]]}"#;
/// What `/rerank` expects.
pub const RERANK_EXPECTS: &str =
    r#"e.g. {"query": "a question", "texts": ["a passage", "another passage"]}"#;
/// What `/predict` expects.
pub const PREDICT_EXPECTS: &str = r#"e.g. {"inputs": "a text"}, {"inputs": ["a text", "its pair"]} or {"inputs": [["a text"], ["a text", "its pair"]]}"#;

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
    /// One of the model's prompts (`config_sentence_transformers.json`), put before every
    /// text; the service refuses a name the model does not have.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

impl EmbedRequest {
    /// Parses and checks a body: the schema, the options this server does not implement, and
    /// the number of inputs.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, EMBED_EXPECTS)?;
        check_truncation_direction(r.truncation_direction.as_deref())?;
        check_count(r.inputs.0.len(), max_client_batch)?;
        Ok(r)
    }
}

/// `POST /embed_all`: every token's vector, as TEI's (no `normalize`: the vectors are the
/// model's last hidden state).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedAllRequest {
    pub inputs: Inputs,
    /// Cut inputs longer than the model's maximum instead of refusing them with 413 (default
    /// true).
    #[serde(default = "yes")]
    pub truncate: bool,
    /// TEI's option; only `right` (the default) is implemented.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// One of the model's prompts, put before every text (its tokens are answered too).
    #[serde(default)]
    pub prompt_name: Option<String>,
}

impl EmbedAllRequest {
    /// Parses and checks a body as [`EmbedRequest::parse`] does.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, EMBED_EXPECTS)?;
        check_truncation_direction(r.truncation_direction.as_deref())?;
        check_count(r.inputs.0.len(), max_client_batch)?;
        Ok(r)
    }
}

/// `/embed_all`'s answer: per input, one array per token, written straight from each input's
/// flat `len × hidden` values (no nested copy of a large answer).
pub struct EmbedAllAnswer<'a> {
    pub rows: &'a [Vec<f32>],
    pub hidden: usize,
}

impl Serialize for EmbedAllAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        /// One input's token vectors.
        struct Tokens<'a>(&'a [f32], usize);
        impl Serialize for Tokens<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.chunks_exact(self.1))
            }
        }
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for rows in self.rows {
            seq.serialize_element(&Tokens(rows, self.hidden.max(1)))?;
        }
        seq.end()
    }
}

/// Only `right` (any case) is implemented.
fn check_truncation_direction(direction: Option<&str>) -> Result<(), ServiceError> {
    match direction {
        Some(d) if !d.eq_ignore_ascii_case("right") => Err(ServiceError::Invalid(format!(
            "truncation_direction {d:?} is not supported; only \"right\""
        ))),
        _ => Ok(()),
    }
}

/// `POST /rerank`: the relevance of each text to the query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    /// Cut pairs longer than the model's maximum instead of refusing them with 413 (default
    /// true; null is the default, as TEI takes it).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// TEI's option; only `right` (the default) is implemented.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// The logits instead of the model's activation of them.
    #[serde(default)]
    pub raw_scores: bool,
    /// Each answer carries its text.
    #[serde(default)]
    pub return_text: bool,
}

impl RerankRequest {
    /// Parses and checks a body: the schema, the options, and the number of texts (400 when
    /// none, 413 past `max_client_batch`, as TEI).
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, RERANK_EXPECTS)?;
        check_truncation_direction(r.truncation_direction.as_deref())?;
        check_count_of(r.texts.len(), max_client_batch, "texts")?;
        Ok(r)
    }
}

/// One text's place in a `/rerank` answer.
#[derive(Debug, Serialize)]
struct Rank<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    score: f32,
}

/// The indices of `scores` by decreasing score (ties in input order).
pub fn by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// TEI's `/rerank` answer: `[{"index", "text"?, "score"}]`, best first.
pub fn rerank_answer(scores: &[f32], texts: Option<&[String]>) -> Vec<u8> {
    let ranks: Vec<Rank> = by_score(scores)
        .into_iter()
        .map(|index| Rank {
            index,
            text: texts.map(|t| t[index].as_str()),
            score: scores[index],
        })
        .collect();
    serde_json::to_vec(&ranks).expect("a rerank answer serializes")
}

/// `POST /predict`: label scores of a text, a pair, or a batch of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub inputs: PredictInputs,
    /// Cut inputs longer than the model's maximum instead of refusing them with 413 (default
    /// true).
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// The logits instead of the model's scores (softmax over several labels, the
    /// activation of one).
    #[serde(default)]
    pub raw_scores: bool,
    /// What `huggingface_hub`'s `text_classification` sends beside `inputs`.
    #[serde(default)]
    pub parameters: Option<PredictParameters>,
}

/// The `parameters` of Hugging Face's text-classification task.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictParameters {
    /// Keep the best `top_k` labels of each input.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `sigmoid`, `softmax` or `none` (the logits), instead of the model's default.
    #[serde(default)]
    pub function_to_apply: Option<FunctionToApply>,
}

/// Hugging Face's `function_to_apply`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionToApply {
    Sigmoid,
    Softmax,
    None,
}

/// `/predict`'s `inputs`: one text or one pair, or a batch of texts and pairs (each a list of
/// one or two strings), as TEI reads them (`["a", "b"]` is one pair, not two texts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictInputs {
    One(ScoreInput),
    Batch(Vec<ScoreInput>),
}

impl PredictInputs {
    /// Every input, in order.
    pub fn into_inputs(self) -> Vec<ScoreInput> {
        match self {
            PredictInputs::One(i) => vec![i],
            PredictInputs::Batch(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            PredictInputs::One(_) => 1,
            PredictInputs::Batch(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of text held.
    pub fn text_bytes(&self) -> usize {
        let bytes = |i: &ScoreInput| match i {
            ScoreInput::Single(t) => t.len(),
            ScoreInput::Pair(a, b) => a.len() + b.len(),
        };
        match self {
            PredictInputs::One(i) => bytes(i),
            PredictInputs::Batch(b) => b.iter().map(bytes).sum(),
        }
    }
}

const PREDICT_SHAPES: &str = "a string, a pair of strings [\"a\", \"b\"], or a batch of single texts and pairs [[\"a\"], [\"a\", \"b\"]]";

impl<'de> Deserialize<'de> for PredictInputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A string, or a list of strings (one batch element).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Text(String),
            List(Vec<String>),
        }
        fn sequence<E: de::Error>(mut texts: Vec<String>) -> Result<ScoreInput, E> {
            match texts.len() {
                1 => Ok(ScoreInput::Single(texts.remove(0))),
                2 => {
                    let second = texts.remove(1);
                    Ok(ScoreInput::Pair(texts.remove(0), second))
                }
                n => Err(E::custom(format!(
                    "a batch element has {n} strings; it must be one text [\"a\"] or a pair [\"a\", \"b\"]"
                ))),
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PredictInputs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PREDICT_SHAPES)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PredictInputs, E> {
                Ok(PredictInputs::One(ScoreInput::Single(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<PredictInputs, E> {
                Ok(PredictInputs::One(ScoreInput::Single(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PredictInputs, A::Error> {
                let Some(first) = seq.next_element::<Item>()? else {
                    return Ok(PredictInputs::Batch(Vec::new()));
                };
                match first {
                    // A text or a pair: one or two strings, nothing more.
                    Item::Text(a) => match seq.next_element::<String>()? {
                        None => Ok(PredictInputs::One(ScoreInput::Single(a))),
                        Some(b) => {
                            if seq.next_element::<String>()?.is_some() {
                                return Err(de::Error::custom(format!(
                                    "three or more strings: inputs must be {PREDICT_SHAPES}"
                                )));
                            }
                            Ok(PredictInputs::One(ScoreInput::Pair(a, b)))
                        }
                    },
                    Item::List(texts) => {
                        let mut batch = vec![sequence(texts)?];
                        while let Some(texts) = seq.next_element::<Vec<String>>()? {
                            batch.push(sequence(texts)?);
                        }
                        Ok(PredictInputs::Batch(batch))
                    }
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl PredictRequest {
    /// Parses and checks a body: the schema, the options, the number of inputs.
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, PREDICT_EXPECTS)?;
        check_truncation_direction(r.truncation_direction.as_deref())?;
        check_count(r.inputs.len(), max_client_batch)?;
        let p = r.parameters.as_ref();
        if p.and_then(|p| p.top_k) == Some(0) {
            return Err(ServiceError::Invalid(
                "parameters.top_k must be at least 1".into(),
            ));
        }
        if r.raw_scores && p.is_some_and(|p| p.function_to_apply.is_some()) {
            return Err(ServiceError::Invalid(
                "send raw_scores or parameters.function_to_apply, not both".into(),
            ));
        }
        Ok(r)
    }

    /// What turns the logits into scores: the logits with `raw_scores`, the function
    /// `parameters.function_to_apply` names, else the model's (`default`).
    pub fn score_function(&self, default: ScoreFunction) -> ScoreFunction {
        match self.parameters.as_ref().and_then(|p| p.function_to_apply) {
            Some(FunctionToApply::Sigmoid) => ScoreFunction::Sigmoid,
            Some(FunctionToApply::Softmax) => ScoreFunction::Softmax,
            Some(FunctionToApply::None) => ScoreFunction::Identity,
            None if self.raw_scores => ScoreFunction::Identity,
            None => default,
        }
    }
}

/// One label's score in a `/predict` answer.
#[derive(Debug, Serialize)]
struct Prediction<'a> {
    score: f32,
    label: &'a str,
}

/// TEI's `/predict` answer: for each input its labels by decreasing score (at most `top_k`),
/// `[{"score", "label"}]` for one input, a list of those for a batch.
pub fn predict_answer(
    scores: &[Vec<f32>],
    labels: &[String],
    batch: bool,
    top_k: Option<usize>,
) -> Vec<u8> {
    let ranked: Vec<Vec<Prediction>> = scores
        .iter()
        .map(|s| {
            by_score(s)
                .into_iter()
                .take(top_k.unwrap_or(usize::MAX))
                .map(|i| Prediction {
                    score: s[i],
                    label: labels.get(i).map_or("", String::as_str),
                })
                .collect()
        })
        .collect();
    if batch {
        serde_json::to_vec(&ranked)
    } else {
        serde_json::to_vec(&ranked.first())
    }
    .expect("a predict answer serializes")
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

/// `POST /decode`: the text of token ids (one list, or several), as TEI's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeRequest {
    pub ids: DecodeIds,
    /// Leave special tokens (`[CLS]`, `<|im_end|>`) out of the text (default true).
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

impl DecodeRequest {
    /// Parses and checks a body: the schema and the number of lists (400 when none, 413 past
    /// `max_client_batch`).
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let r: Self = from_json(body, DECODE_EXPECTS)?;
        check_count_of(r.ids.0.len(), max_client_batch, "ids")?;
        Ok(r)
    }
}

/// The lists of ids of a `/decode` request: `[1, 2]` is one list, `[[1, 2], [3]]` two.
#[derive(Debug)]
pub struct DecodeIds(pub Vec<Vec<u32>>);

impl<'de> Deserialize<'de> for DecodeIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// One list of ids, or a list of them: told apart by the first item.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Id(u32),
            List(Vec<u32>),
        }
        let items = Vec::<Item>::deserialize(d).map_err(|_| {
            de::Error::custom(
                "ids must be a list of token ids (integers from 0 to 4294967295) or a list of \
                 such lists",
            )
        })?;
        let mut ids = Vec::new();
        let mut lists = Vec::new();
        for item in items {
            match item {
                Item::Id(id) => ids.push(id),
                Item::List(list) => lists.push(list),
            }
        }
        match (ids.is_empty(), lists.is_empty()) {
            // `[]`: no list at all (refused by the count check).
            (true, true) => Ok(DecodeIds(Vec::new())),
            (false, true) => Ok(DecodeIds(vec![ids])),
            (true, false) => Ok(DecodeIds(lists)),
            (false, false) => Err(de::Error::custom(
                "ids mixes token ids and lists of them; send one list, or a list of lists",
            )),
        }
    }
}

/// What `/similarity` expects.
pub const SIMILARITY_EXPECTS: &str =
    r#"e.g. {"inputs": {"source_sentence": "a text", "sentences": ["another", "a third"]}}"#;

/// `POST /similarity` (and `POST /` on an embedding model with this body, what
/// `huggingface_hub`'s `sentence_similarity` sends): the cosine similarity of the source
/// sentence's embedding with each other sentence's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    pub inputs: SimilarityInputs,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<String>,
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// The same options where `huggingface_hub` puts a task's parameters.
    #[serde(default)]
    pub parameters: Option<SimilarityParameters>,
}

/// The sentences of a `/similarity` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityInputs {
    pub source_sentence: String,
    pub sentences: Vec<String>,
}

/// A `/similarity` request's options under `parameters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParameters {
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<String>,
    #[serde(default)]
    pub prompt_name: Option<String>,
}

impl SimilarityRequest {
    /// Parses and checks a body: the schema, the options (at the top or under `parameters`,
    /// not both), and the number of texts (the source sentence counts as one).
    pub fn parse(body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        let mut r: Self = from_json(body, SIMILARITY_EXPECTS)?;
        if let Some(p) = r.parameters.take() {
            r.truncate = once("truncate", r.truncate, p.truncate)?;
            r.prompt_name = once("prompt_name", r.prompt_name, p.prompt_name)?;
            r.truncation_direction = once(
                "truncation_direction",
                r.truncation_direction,
                p.truncation_direction,
            )?;
        }
        check_truncation_direction(r.truncation_direction.as_deref())?;
        check_count_of(
            r.inputs.sentences.len(),
            max_client_batch.saturating_sub(1),
            "sentences",
        )?;
        Ok(r)
    }

    /// The texts to embed: the source sentence first.
    pub fn into_texts(self) -> Vec<String> {
        let mut texts = Vec::with_capacity(1 + self.inputs.sentences.len());
        texts.push(self.inputs.source_sentence);
        texts.extend(self.inputs.sentences);
        texts
    }
}

/// An option given at the top of a body or under its `parameters`, not both.
fn once<T>(name: &str, top: Option<T>, nested: Option<T>) -> Result<Option<T>, ServiceError> {
    if top.is_some() && nested.is_some() {
        return Err(ServiceError::Invalid(format!(
            "{name} is given both at the top and under parameters; give it once"
        )));
    }
    Ok(top.or(nested))
}

/// `/similarity`'s answer from unit vectors, the source sentence's first: its cosine
/// similarity with each of the others, in order.
pub fn similarity_answer(vectors: &[Vec<f32>]) -> Vec<f32> {
    let Some((source, others)) = vectors.split_first() else {
        return Vec::new();
    };
    others
        .iter()
        .map(|v| source.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_bodies_take_options_at_the_top_or_under_parameters() {
        let r = SimilarityRequest::parse(
            br#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}, "parameters": {"truncate": false, "prompt_name": "query"}}"#,
            4,
        )
        .unwrap();
        assert_eq!(
            (r.truncate, r.prompt_name.as_deref()),
            (Some(false), Some("query"))
        );
        assert_eq!(r.into_texts(), ["a", "b", "c"]);
        for (body, kind) in [
            (
                r#"{"inputs": {"source_sentence": "a", "sentences": []}}"#,
                "invalid_request",
            ),
            (
                r#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c", "d", "e"]}}"#,
                "payload_too_large",
            ),
            (r#"{"inputs": {"source_sentence": "a"}}"#, "invalid_request"),
            (r#"{"inputs": "a"}"#, "invalid_request"),
            (
                r#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "truncate": true, "parameters": {"truncate": true}}"#,
                "invalid_request",
            ),
            (
                r#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "truncation_direction": "left"}"#,
                "invalid_request",
            ),
        ] {
            let e = SimilarityRequest::parse(body.as_bytes(), 4).unwrap_err();
            assert_eq!(e.kind(), kind, "{body}: {e}");
        }
        let v = [
            vec![0.6, 0.8],
            vec![0.6, 0.8],
            vec![0.8, -0.6],
            vec![-0.6, -0.8],
        ];
        assert_eq!(similarity_answer(&v), [1.0, 0.0, -1.0]);
    }

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
        assert_eq!(status(r#"{"inputs": "a", "prompt_name": "q"}"#), Ok(()));
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

    #[test]
    fn rerank_bodies_are_checked_as_tei_checks_them() {
        let r = RerankRequest::parse(br#"{"query": "q", "texts": ["a", "b"]}"#, 2).unwrap();
        assert_eq!(r.texts, vec!["a", "b"]);
        assert!(r.truncate.is_none() && !r.raw_scores && !r.return_text);
        let r = RerankRequest::parse(
            br#"{"query": "q", "texts": ["a"], "truncate": null, "raw_scores": true, "return_text": true, "truncation_direction": "Right"}"#,
            2,
        )
        .unwrap();
        assert!(r.raw_scores && r.return_text);
        for (body, kind, says) in [
            (r#"{"query": "q", "texts": []}"#, "invalid_request", "empty"),
            (
                r#"{"query": "q", "texts": ["a", "b", "c"]}"#,
                "payload_too_large",
                "3 texts in one request; the limit is 2",
            ),
            (
                r#"{"texts": ["a"]}"#,
                "invalid_request",
                "missing field `query`",
            ),
            (
                r#"{"query": "q", "texts": "a"}"#,
                "invalid_request",
                "a sequence",
            ),
            (
                r#"{"query": "q", "texts": ["a"], "top_n": 1}"#,
                "invalid_request",
                "unknown field `top_n`",
            ),
            (
                r#"{"query": "q", "texts": ["a"], "truncation_direction": "left"}"#,
                "invalid_request",
                "truncation_direction",
            ),
        ] {
            let e = RerankRequest::parse(body.as_bytes(), 2).unwrap_err();
            assert_eq!(e.kind(), kind, "{body}: {e}");
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn rerank_answers_are_sorted_best_first_with_ties_in_input_order() {
        let texts = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let v: serde_json::Value =
            serde_json::from_slice(&rerank_answer(&[0.25, 0.75, 0.25], Some(&texts))).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"index": 1, "text": "b", "score": 0.75},
                {"index": 0, "text": "a", "score": 0.25},
                {"index": 2, "text": "c", "score": 0.25}
            ])
        );
        let v: serde_json::Value = serde_json::from_slice(&rerank_answer(&[0.5], None)).unwrap();
        assert_eq!(v, serde_json::json!([{"index": 0, "score": 0.5}]));
    }

    #[test]
    fn predict_inputs_take_tei_shapes() {
        let one = |s: &str| ScoreInput::Single(s.into());
        let pair = |a: &str, b: &str| ScoreInput::Pair(a.into(), b.into());
        for (body, want) in [
            (r#""a""#, PredictInputs::One(one("a"))),
            (r#"["a"]"#, PredictInputs::One(one("a"))),
            (r#"["a", "b"]"#, PredictInputs::One(pair("a", "b"))),
            (
                r#"[["a"], ["a", "b"]]"#,
                PredictInputs::Batch(vec![one("a"), pair("a", "b")]),
            ),
        ] {
            let r =
                PredictRequest::parse(format!(r#"{{"inputs": {body}}}"#).as_bytes(), 4).unwrap();
            assert_eq!(r.inputs, want, "{body}");
        }
        for (body, kind, says) in [
            (r#"[]"#, "invalid_request", "empty"),
            (r#"["a", "b", "c"]"#, "invalid_request", "three or more"),
            (r#"[["a", "b", "c"]]"#, "invalid_request", "3 strings"),
            (r#"[["a"], "b"]"#, "invalid_request", "a sequence"),
            (r#"3"#, "invalid_request", "a pair of strings"),
            (
                r#"[["a"], ["b"], ["c"], ["d"], ["e"]]"#,
                "payload_too_large",
                "5 inputs",
            ),
        ] {
            let e = PredictRequest::parse(format!(r#"{{"inputs": {body}}}"#).as_bytes(), 4)
                .unwrap_err();
            assert_eq!(e.kind(), kind, "{body}: {e}");
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn predict_options_choose_the_score_function() {
        let parse = |body: &str| PredictRequest::parse(body.as_bytes(), 4);
        let r = parse(r#"{"inputs": "a"}"#).unwrap();
        assert_eq!(
            r.score_function(ScoreFunction::Softmax),
            ScoreFunction::Softmax
        );
        let r = parse(r#"{"inputs": "a", "raw_scores": true}"#).unwrap();
        assert_eq!(
            r.score_function(ScoreFunction::Softmax),
            ScoreFunction::Identity
        );
        let r =
            parse(r#"{"inputs": "a", "parameters": {"function_to_apply": "sigmoid", "top_k": 2}}"#)
                .unwrap();
        assert_eq!(
            r.score_function(ScoreFunction::Softmax),
            ScoreFunction::Sigmoid
        );
        // What huggingface_hub sends when no parameter is set.
        assert!(parse(r#"{"inputs": "a", "parameters": {}}"#).is_ok());
        for body in [
            r#"{"inputs": "a", "parameters": {"top_k": 0}}"#,
            r#"{"inputs": "a", "raw_scores": true, "parameters": {"function_to_apply": "none"}}"#,
            r#"{"inputs": "a", "parameters": {"function_to_apply": "relu"}}"#,
        ] {
            assert_eq!(parse(body).unwrap_err().kind(), "invalid_request", "{body}");
        }
    }

    #[test]
    fn predict_answers_sort_labels_and_keep_top_k() {
        let labels = vec!["neg".to_string(), "neu".to_string(), "pos".to_string()];
        let scores = vec![vec![0.25, 0.125, 0.625]];
        let v: serde_json::Value =
            serde_json::from_slice(&predict_answer(&scores, &labels, false, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"score": 0.625, "label": "pos"},
                {"score": 0.25, "label": "neg"},
                {"score": 0.125, "label": "neu"}
            ])
        );
        let v: serde_json::Value =
            serde_json::from_slice(&predict_answer(&scores, &labels, true, Some(1))).unwrap();
        assert_eq!(v, serde_json::json!([[{"score": 0.625, "label": "pos"}]]));
    }

    #[test]
    fn decode_takes_one_list_or_several() {
        let parse = |b: &str| DecodeRequest::parse(b.as_bytes(), 2);
        let r = parse(r#"{"ids": [101, 7592, 102]}"#).unwrap();
        assert_eq!(r.ids.0, vec![vec![101, 7592, 102]]);
        assert!(r.skip_special_tokens);
        let r = parse(r#"{"ids": [[101, 102], []], "skip_special_tokens": false}"#).unwrap();
        assert_eq!(r.ids.0, vec![vec![101, 102], vec![]]);
        assert!(!r.skip_special_tokens);
        // One empty list of ids is one (empty) text.
        assert_eq!(
            parse(r#"{"ids": [[]]}"#).unwrap().ids.0,
            vec![Vec::<u32>::new()]
        );
        for (body, kind, says) in [
            (r#"{"ids": []}"#, "invalid_request", "empty"),
            (r#"{"ids": [1, [2]]}"#, "invalid_request", "mixes"),
            (r#"{"ids": [-1]}"#, "invalid_request", "integers from 0"),
            (
                r#"{"ids": [4294967296]}"#,
                "invalid_request",
                "integers from 0",
            ),
            (r#"{"ids": [[1.5]]}"#, "invalid_request", "integers from 0"),
            (r#"{"ids": "1 2"}"#, "invalid_request", "integers from 0"),
            (
                r#"{"ids": [1], "skip": true}"#,
                "invalid_request",
                "unknown field",
            ),
            (r#"{}"#, "invalid_request", "ids"),
            (r#"{"ids": [[1], [2], [3]]}"#, "payload_too_large", "3 ids"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.kind(), kind, "{body}");
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }
}
