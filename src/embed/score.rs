//! Scoring on the encoder pipeline: a cross-encoder's relevance scores of (query, passage)
//! pairs, and a classifier's label scores of texts and pairs. Each text or pair is one entry
//! of the queue, so a rerank of 50 passages is 50 rows that the batcher places beside other
//! requests' rows (embeddings or pairs alike), run in the model's dtype on the same workers.
//!
//! The service answers scores in input order; sorting them and naming labels is the wire
//! format's (`crate::api`).

use std::sync::Arc;

use super::queue::{Arrival, Job, Output};
use super::EmbedService;
use crate::error::ServiceError;
use crate::model::{PairIds, ScoreFunction};

/// One input of a classifier: a text, or a pair of texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoreInput {
    Single(String),
    Pair(String, String),
}

/// Scores of a request, in input order.
#[derive(Debug)]
pub struct Scored<T> {
    pub scores: Vec<T>,
    /// Tokens the model read, over all inputs.
    pub tokens: usize,
}

impl EmbedService {
    /// The relevance of each passage to `query` (arrived at `arrival`): one score per
    /// passage, the model's logit through `function`. The model must have one label. The
    /// passages are shared, not copied: the caller keeps them for its answer.
    pub async fn rerank(
        &self,
        arrival: Arrival,
        query: String,
        passages: Arc<Vec<String>>,
        truncate: bool,
        function: ScoreFunction,
    ) -> Result<Scored<f32>, ServiceError> {
        let bytes = query.len() + passages.iter().map(String::len).sum::<usize>();
        let tokenizer = self.tokenizer.clone();
        // The query is encoded once for all its pairs.
        let pairs = self
            .offload
            .run(bytes, move || {
                tokenizer
                    .encode_pairs(&query, &passages, truncate)
                    .map_err(ServiceError::from)
            })
            .await?;
        let scored = self.score(arrival, pairs, function).await?;
        let scores = scored
            .scores
            .into_iter()
            .map(|s| match s.as_slice() {
                [one] => Ok(*one),
                other => Err(ServiceError::Failed(format!(
                    "the model answered {} scores for a pair; a reranker has one label",
                    other.len()
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Scored {
            scores,
            tokens: scored.tokens,
        })
    }

    /// The label scores of each input (arrived at `arrival`): the model's logits through
    /// `function`, in the order of its labels.
    pub async fn predict(
        &self,
        arrival: Arrival,
        inputs: Vec<ScoreInput>,
        truncate: bool,
        function: ScoreFunction,
    ) -> Result<Scored<Vec<f32>>, ServiceError> {
        let bytes = inputs
            .iter()
            .map(|i| match i {
                ScoreInput::Single(t) => t.len(),
                ScoreInput::Pair(a, b) => a.len() + b.len(),
            })
            .sum();
        let tokenizer = self.tokenizer.clone();
        let encoded = self
            .offload
            .run(bytes, move || {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| match input {
                        ScoreInput::Single(text) => {
                            let ids = tokenizer.encode(i, text, truncate)?;
                            Ok(PairIds {
                                second_from: ids.len(),
                                ids,
                            })
                        }
                        ScoreInput::Pair(a, b) => tokenizer.encode_pair(i, a, b, truncate),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ServiceError::from)
            })
            .await?;
        self.score(arrival, encoded, function).await
    }

    /// Runs the classifier over `inputs` and applies `function` to each one's logits.
    async fn score(
        &self,
        arrival: Arrival,
        inputs: Vec<PairIds>,
        function: ScoreFunction,
    ) -> Result<Scored<Vec<f32>>, ServiceError> {
        let tokens = inputs.iter().map(|p| p.ids.len()).sum();
        let jobs = inputs.into_iter().map(|p| Job::Score {
            ids: p.ids,
            second_from: p.second_from,
        });
        let scores = self
            .run(arrival, jobs)
            .await?
            .into_iter()
            .map(|output| match output {
                Output::Logits(mut logits) => {
                    function.apply(&mut logits);
                    Ok(logits)
                }
                Output::Embedding(_) => Err(ServiceError::Failed(
                    "the model answered scores with an embedding".into(),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Scored { scores, tokens })
    }
}
