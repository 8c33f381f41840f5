//! The routes answered with one JSON body from one JSON body, without streaming: embeddings
//! (TEI's `/embed` and `POST /` on an embedding model, OpenAI's `/v1/embeddings`) and
//! `/tokenize`. Both front ends run them the same way: HTTP handlers for their routes, the queue
//! broker for jobs, which name one of these routes ([`JOB_ROUTES`]). So a job joins the same
//! batches as HTTP traffic, and its result is byte for byte the HTTP answer.

use super::openai::{self, EmbeddingsRequest};
use super::tei::{EmbedRequest, TokenizeRequest};
use crate::embed::queue::Arrival;
use crate::embed::EmbedOptions;
use crate::error::ServiceError;
use crate::lifecycle::{Lifecycle, Serving};

/// About how many bytes of JSON one token of a `/tokenize` answer takes.
const TOKEN_JSON_BYTES: usize = 64;

/// The routes a queue job may name.
pub const JOB_ROUTES: &[&str] = &["/embed", "/", "/v1/embeddings", "/tokenize"];

/// A parsed and checked body of one of these routes.
#[derive(Debug)]
pub enum JsonRequest {
    /// `POST /embed` and `POST /` (TEI's shape).
    Embed(EmbedRequest),
    /// `POST /v1/embeddings`.
    Embeddings(EmbeddingsRequest),
    /// `POST /tokenize`.
    Tokenize(TokenizeRequest),
}

impl JsonRequest {
    /// Parses `body` as the request of `route` and checks what needs no model: the schema
    /// (`Invalid`), the number of inputs (`Invalid` when none, `TooLarge` past
    /// `max_client_batch`) and options this server does not implement (`Invalid`). Also the
    /// fuzzing target's entry point.
    pub fn parse(route: &str, body: &[u8], max_client_batch: usize) -> Result<Self, ServiceError> {
        Ok(match route {
            "/" | "/embed" => JsonRequest::Embed(EmbedRequest::parse(body, max_client_batch)?),
            "/v1/embeddings" => {
                JsonRequest::Embeddings(EmbeddingsRequest::parse(body, max_client_batch)?)
            }
            "/tokenize" => JsonRequest::Tokenize(TokenizeRequest::parse(body, max_client_batch)?),
            _ => {
                return Err(ServiceError::Invalid(format!(
                    "route {route:?} cannot run as a job; one of {}",
                    JOB_ROUTES.join(", ")
                )))
            }
        })
    }

    /// How many texts the request carries.
    pub fn inputs(&self) -> usize {
        match self {
            JsonRequest::Embed(r) => r.inputs.0.len(),
            JsonRequest::Embeddings(r) => r.input.0.len(),
            JsonRequest::Tokenize(r) => r.inputs.0.len(),
        }
    }

    /// Bytes of text the parsed request holds (what it keeps of its body).
    pub fn text_bytes(&self) -> usize {
        let inputs = match self {
            JsonRequest::Embed(r) => &r.inputs,
            JsonRequest::Embeddings(r) => &r.input,
            JsonRequest::Tokenize(r) => &r.inputs,
        };
        inputs.0.iter().map(String::len).sum()
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
                };
                let service = super::embedding(serving)?;
                let done = service.embed(arrival, r.inputs.0, options).await?;
                Ok(to_json(&done.vectors))
            }
            JsonRequest::Embeddings(r) => {
                // OpenAI's embeddings are unit vectors; so are these.
                let options = EmbedOptions {
                    truncate: true,
                    normalize: true,
                    dimensions: r.dimensions,
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
            JsonRequest::Tokenize(r) => {
                let tokens = match serving {
                    Serving::Embedding(s) => {
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
        }
    }
}

/// The JSON text of an answer.
fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("answers always serialize")
}
