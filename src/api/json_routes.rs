//! The routes answered with one JSON body from one JSON body, without streaming: embeddings
//! (TEI's `/embed` and `POST /` on an embedding model, OpenAI's `/v1/embeddings`), every
//! token's vector (TEI's `/embed_all`), TEI's
//! `/similarity` (also `POST /` with its body), reranking
//! (TEI's `/rerank`, the Cohere/Jina `/v1/rerank`), classification (TEI's `/predict`),
//! `/tokenize` and `/decode`. Both front ends run them the same way: HTTP handlers for their routes, the queue
//! broker for jobs, which name one of these routes ([`JOB_ROUTES`]). So a job joins the same
//! batches as HTTP traffic, and its result is byte for byte the HTTP answer.

use std::sync::Arc;

use super::cohere;
use super::openai::{self, EmbeddingsRequest};
use super::tei::{
    self, DecodeRequest, EmbedAllAnswer, EmbedAllRequest, EmbedRequest, PredictInputs,
    PredictRequest, RerankRequest, SimilarityRequest, TokenizeRequest,
};
use crate::embed::queue::Arrival;
use crate::embed::EmbedOptions;
use crate::error::ServiceError;
use crate::lifecycle::{Lifecycle, Serving};
use crate::model::ScoreFunction;

/// About how many bytes of JSON one token of a `/tokenize` answer takes.
const TOKEN_JSON_BYTES: usize = 64;
/// About how many bytes of JSON one value of an `/embed_all` answer takes (`-0.012345678,`).
const VALUE_JSON_BYTES: usize = 13;

/// The routes a queue job may name (`/` is TEI's embedding shape, as `/embed`).
pub const JOB_ROUTES: &[&str] = &[
    "/embed",
    "/",
    "/embed_all",
    "/similarity",
    "/v1/embeddings",
    "/rerank",
    "/v1/rerank",
    "/predict",
    "/tokenize",
    "/decode",
];

/// A parsed and checked body of one of these routes.
#[derive(Debug)]
pub enum JsonRequest {
    /// `POST /embed` and `POST /` (TEI's shape).
    Embed(EmbedRequest),
    /// `POST /embed_all`.
    EmbedAll(EmbedAllRequest),
    /// `POST /similarity`, and `POST /` with its body.
    Similarity(SimilarityRequest),
    /// `POST /v1/embeddings`.
    Embeddings(EmbeddingsRequest),
    /// `POST /rerank` (TEI's shape).
    Rerank(RerankRequest),
    /// `POST /v1/rerank` (Cohere's and Jina's shape).
    CohereRerank(cohere::RerankRequest),
    /// `POST /predict` (TEI's shape).
    Predict(PredictRequest),
    /// `POST /tokenize`.
    Tokenize(TokenizeRequest),
    /// `POST /decode`.
    Decode(DecodeRequest),
}

impl JsonRequest {
    /// Parses `body` as the request of `route` and checks what needs no model: the schema
    /// (`Invalid`), the number of inputs (`Invalid` when none, `TooLarge` past
    /// `max_client_batch`) and options this server does not implement (`Invalid`). Also the
    /// fuzzing target's entry point.
    pub fn parse(route: &str, body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        Ok(match route {
            "/embed" => JsonRequest::Embed(EmbedRequest::parse(body, max_client_batch)?),
            // TEI's shape of `/embed`, or `/similarity`'s (an object of sentences as `inputs`).
            "/" => match EmbedRequest::parse(body, max_client_batch) {
                Ok(r) => JsonRequest::Embed(r),
                Err(e) => match SimilarityRequest::parse(body, max_client_batch) {
                    Ok(r) => JsonRequest::Similarity(r),
                    Err(_) => return Err(e),
                },
            },
            "/embed_all" => JsonRequest::EmbedAll(EmbedAllRequest::parse(body, max_client_batch)?),
            "/similarity" => {
                JsonRequest::Similarity(SimilarityRequest::parse(body, max_client_batch)?)
            }
            "/v1/embeddings" => {
                JsonRequest::Embeddings(EmbeddingsRequest::parse(body, max_client_batch)?)
            }
            "/rerank" => JsonRequest::Rerank(RerankRequest::parse(body, max_client_batch)?),
            "/v1/rerank" => {
                JsonRequest::CohereRerank(cohere::RerankRequest::parse(body, max_client_batch)?)
            }
            "/predict" => JsonRequest::Predict(PredictRequest::parse(body, max_client_batch)?),
            "/tokenize" => JsonRequest::Tokenize(TokenizeRequest::parse(body, max_client_batch)?),
            "/decode" => JsonRequest::Decode(DecodeRequest::parse(body, max_client_batch)?),
            _ => {
                return Err(ServiceError::Invalid(format!(
                    "route {route:?} cannot run as a job; one of {}",
                    JOB_ROUTES.join(", ")
                )))
            }
        })
    }

    /// How many inputs (texts, or pairs of texts) the request carries.
    pub fn inputs(&self) -> usize {
        match self {
            JsonRequest::Embed(r) => r.inputs.0.len(),
            JsonRequest::EmbedAll(r) => r.inputs.0.len(),
            JsonRequest::Similarity(r) => 1 + r.inputs.sentences.len(),
            JsonRequest::Embeddings(r) => r.input.0.len(),
            JsonRequest::Rerank(r) => r.texts.len(),
            JsonRequest::CohereRerank(r) => r.documents.len(),
            JsonRequest::Predict(r) => r.inputs.len(),
            JsonRequest::Tokenize(r) => r.inputs.0.len(),
            JsonRequest::Decode(r) => r.ids.0.len(),
        }
    }

    /// Bytes of text the parsed request holds (what it keeps of its body).
    pub fn text_bytes(&self) -> usize {
        let sum = |texts: &[String]| texts.iter().map(String::len).sum::<usize>();
        match self {
            JsonRequest::Embed(r) => sum(&r.inputs.0),
            JsonRequest::EmbedAll(r) => sum(&r.inputs.0),
            JsonRequest::Similarity(r) => r.inputs.source_sentence.len() + sum(&r.inputs.sentences),
            JsonRequest::Embeddings(r) => sum(&r.input.0),
            JsonRequest::Rerank(r) => r.query.len() + sum(&r.texts),
            JsonRequest::CohereRerank(r) => r.query.len() + r.texts().map(str::len).sum::<usize>(),
            JsonRequest::Predict(r) => r.inputs.text_bytes(),
            JsonRequest::Tokenize(r) => sum(&r.inputs.0),
            // Its ids, 4 bytes each.
            JsonRequest::Decode(r) => r.ids.0.iter().map(|ids| 4 * ids.len()).sum(),
        }
    }

    /// Answers the request with the loaded model (waiting for it through a cold start), until
    /// the drain deadline: the JSON body of a 200 answer.
    pub async fn answer(self, lifecycle: &Lifecycle) -> Result<Vec<u8>, ServiceError> {
        // Arrival order is taken now, before any cold-start hold, so held requests keep it.
        let arrival = Arrival::now(self.inputs());
        lifecycle
            .until_aborted(async {
                let serving = lifecycle.serving().await?;
                self.answer_with(&serving, arrival).await
            })
            .await
    }

    async fn answer_with(
        self,
        serving: &Serving,
        arrival: Arrival,
    ) -> Result<Vec<u8>, ServiceError> {
        match self {
            JsonRequest::Embed(r) => {
                let options = EmbedOptions {
                    truncate: r.truncate,
                    normalize: r.normalize,
                    dimensions: None,
                    prompt_name: r.prompt_name,
                };
                let service = super::embedding(serving)?;
                let done = service.embed(arrival, r.inputs.0, options).await?;
                Ok(to_json(&done.vectors))
            }
            JsonRequest::EmbedAll(r) => {
                let service = super::embedding(serving)?;
                let done = service
                    .embed_tokens(arrival, r.inputs.0, r.truncate, r.prompt_name.as_deref())
                    .await?;
                // Megabytes of JSON for long inputs: written off the async threads.
                let size = done.rows.iter().map(Vec::len).sum::<usize>() * VALUE_JSON_BYTES;
                serving
                    .offload()
                    .run(size, move || {
                        Ok(to_json(&EmbedAllAnswer {
                            rows: &done.rows,
                            hidden: done.hidden,
                        }))
                    })
                    .await
            }
            JsonRequest::Similarity(r) => {
                // Unit vectors: their dot products are the cosine similarities.
                let options = EmbedOptions {
                    truncate: r.truncate.unwrap_or(true),
                    normalize: true,
                    dimensions: None,
                    prompt_name: r.prompt_name.clone(),
                };
                let service = super::embedding(serving)?;
                let done = service.embed(arrival, r.into_texts(), options).await?;
                Ok(to_json(&tei::similarity_answer(&done.vectors)))
            }
            JsonRequest::Embeddings(r) => {
                // OpenAI's embeddings are unit vectors; so are these.
                let options = EmbedOptions {
                    truncate: true,
                    normalize: true,
                    dimensions: r.dimensions,
                    prompt_name: None,
                };
                let service = super::embedding(serving)?;
                let done = service.embed(arrival, r.input.0, options).await?;
                let model = r.model.unwrap_or_else(|| service.info().id.clone());
                Ok(openai::embeddings_answer(
                    done.vectors,
                    done.tokens,
                    model,
                    r.encoding_format,
                ))
            }
            JsonRequest::Rerank(r) => {
                let service = super::reranking(serving)?;
                let function = if r.raw_scores {
                    ScoreFunction::Identity
                } else {
                    model_function(service.info())
                };
                let texts = Arc::new(r.texts);
                let done = service
                    .rerank(
                        arrival,
                        r.query,
                        texts.clone(),
                        r.truncate.unwrap_or(true),
                        function,
                    )
                    .await?;
                let shown = r.return_text.then_some(texts.as_slice());
                Ok(tei::rerank_answer(&done.scores, shown))
            }
            JsonRequest::CohereRerank(r) => {
                let service = super::reranking(serving)?;
                let model = r.model.clone().unwrap_or_else(|| service.info().id.clone());
                let (query, texts, shape) = r.into_parts();
                let texts = Arc::new(texts);
                let function = model_function(service.info());
                // Cohere's and Jina's routes always truncate (as OpenAI's embeddings do here).
                let done = service
                    .rerank(arrival, query, texts.clone(), true, function)
                    .await?;
                let id = format!("rerank-{}", arrival.seq(0));
                Ok(cohere::rerank_answer(
                    shape,
                    &texts,
                    &done.scores,
                    done.tokens,
                    &model,
                    id,
                ))
            }
            JsonRequest::Predict(r) => {
                let service = super::classification(serving)?;
                let function = r.score_function(model_function(service.info()));
                let batch = matches!(r.inputs, PredictInputs::Batch(_));
                let top_k = r.parameters.as_ref().and_then(|p| p.top_k);
                let labels = service
                    .info()
                    .classifier
                    .as_ref()
                    .map(|c| c.labels.clone())
                    .unwrap_or_default();
                let done = service
                    .predict(
                        arrival,
                        r.inputs.into_inputs(),
                        r.truncate.unwrap_or(true),
                        function,
                    )
                    .await?;
                Ok(tei::predict_answer(&done.scores, &labels, batch, top_k))
            }
            JsonRequest::Tokenize(r) => {
                let tokens = match serving {
                    Serving::Encoder(s) => {
                        s.tokenize(r.inputs.0, r.add_special_tokens, r.truncate)
                            .await?
                    }
                    Serving::Generation(g) => g.tokenize(r.inputs.0, r.add_special_tokens).await?,
                };
                // Tens of MB of JSON for long inputs: written off the async threads too.
                let size = tokens.iter().map(Vec::len).sum::<usize>() * TOKEN_JSON_BYTES;
                serving
                    .offload()
                    .run(size, move || Ok(to_json(&tokens)))
                    .await
            }
            JsonRequest::Decode(r) => {
                let texts = match serving {
                    Serving::Encoder(s) => s.decode(r.ids.0, r.skip_special_tokens).await?,
                    Serving::Generation(g) => g.decode(r.ids.0, r.skip_special_tokens).await?,
                };
                Ok(to_json(&texts))
            }
        }
    }
}

/// What `raw_scores: false` applies to a classifier's logits (the routes that call this
/// checked that the model is one).
fn model_function(info: &crate::model::ModelInfo) -> ScoreFunction {
    info.classifier
        .as_ref()
        .map_or(ScoreFunction::Identity, |c| c.score_function)
}

/// The JSON text of an answer.
fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("answers always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_route_parses_its_own_body() {
        for (route, body, inputs) in [
            ("/rerank", r#"{"query": "q", "texts": ["a", "b"]}"#, 2),
            (
                "/v1/rerank",
                r#"{"query": "q", "documents": ["a", {"text": "b"}, "c"]}"#,
                3,
            ),
            ("/predict", r#"{"inputs": [["a"], ["a", "b"]]}"#, 2),
            ("/embed", r#"{"inputs": "a", "prompt_name": "query"}"#, 1),
            (
                "/embed_all",
                r#"{"inputs": ["a", "bc"], "truncate": false}"#,
                2,
            ),
            (
                "/similarity",
                r#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}"#,
                3,
            ),
            (
                "/",
                r#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {}}"#,
                2,
            ),
            ("/", r#"{"inputs": ["a", "b"]}"#, 2),
            ("/decode", r#"{"ids": [[101, 102], [7592]]}"#, 2),
        ] {
            let r = JsonRequest::parse(route, body.as_bytes(), 4).unwrap();
            assert_eq!(r.inputs(), inputs, "{route}");
            assert!(r.text_bytes() >= inputs, "{route}");
        }
        let e = JsonRequest::parse("/generate", b"{}", 4).unwrap_err();
        assert!(e.to_string().contains("/v1/rerank"), "{e}");
        // On `POST /`, a body that is neither shape gets `/embed`'s message.
        let e = JsonRequest::parse("/", br#"{"inputs": 3}"#, 4).unwrap_err();
        assert!(e.to_string().contains("a string or an array"), "{e}");
    }
}
