//! Self-description: the OpenAPI 3 document of every route (`GET /openapi.json`) and the HTML
//! index page (`GET /`) with a curl example per route.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::reply::{json_response, Body};
use super::state::AppState;

/// `GET /openapi.json`.
pub fn openapi_response() -> Response<Body> {
    json_response(StatusCode::OK, openapi())
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn tokenize_errors() -> Value {
    json!({
        "400": error_response("Malformed JSON, wrong schema, or an empty input list"),
        "401": error_response("Missing or wrong API key (when the server has one)"),
        "408": error_response("The body did not arrive within --client-timeout-ms"),
        "413": error_response("Body over --max-body-bytes, more inputs than --max-client-batch, or an input over the model's maximum length with truncate false"),
        "415": error_response("Content-Type is not JSON"),
        "503": error_response("Model still loading after the cold-start timeout, failed to load, or shutting down; see Retry-After"),
    })
}

fn decode_errors() -> Value {
    json!({
        "400": error_response("Malformed JSON, wrong schema, no list of ids, or an id outside the model's vocabulary"),
        "401": error_response("Missing or wrong API key (when the server has one)"),
        "408": error_response("The body did not arrive within --client-timeout-ms"),
        "413": error_response("Body over --max-body-bytes, more lists of ids than --max-client-batch, or an answer larger than --max-inflight-body-bytes"),
        "415": error_response("Content-Type is not JSON"),
        "503": error_response("Model still loading after the cold-start timeout, failed to load, or shutting down; see Retry-After"),
    })
}

fn post_errors() -> Value {
    json!({
        "400": error_response("Malformed JSON, wrong schema, an empty input list, or an unknown prompt_name"),
        "404": error_response("The loaded model has another task (the message names it and its routes)"),
        "401": error_response("Missing or wrong API key (when the server has one)"),
        "408": error_response("The body did not arrive within --client-timeout-ms"),
        "413": error_response("Body over --max-body-bytes, more inputs than --max-client-batch, or an input over the model's maximum length with truncate false"),
        "415": error_response("Content-Type is not JSON"),
        "500": error_response("The model failed on this batch"),
        "503": error_response("Queue full, request bodies over --max-inflight-body-bytes, request timed out, model still loading after the cold-start timeout or failed to load, connection limit, or shutting down; see Retry-After"),
    })
}

/// The OpenAPI 3.0 document (built once).
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let inputs = json!({ "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" }, "minItems": 1 } ] });
        let vector = json!({ "type": "array", "items": { "type": "number", "format": "float" } });
        let mut doc = json!({
            "openapi": "3.0.3",
            "info": {
                "title": "zerobatch",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Inference server for serverless containers: embeddings with dynamic micro-batching over a fixed pool of CPU workers, or text generation (GPT-2 checkpoints, Llama-family GGUF) with continuous batching. The task follows from the model loaded."
            },
            "components": {
                "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
                "schemas": {
                    "Error": { "type": "object", "required": ["error", "error_type"], "properties": {
                        "error": { "type": "string" }, "error_type": { "type": "string" } } },
                    "EmbedRequest": { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
                        "inputs": inputs,
                        "normalize": { "type": "boolean", "default": true },
                        "truncate": { "type": "boolean", "default": true },
                        "truncation_direction": { "type": "string", "nullable": true, "description": "only \"right\" (any case) is supported" },
                        "prompt_name": { "type": "string", "nullable": true, "description": "one of the model's prompts (config_sentence_transformers.json, listed by /info), put before every input; an unknown name is 400" } } },
                    "EmbedAllRequest": { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
                        "inputs": inputs,
                        "truncate": { "type": "boolean", "default": true },
                        "truncation_direction": { "type": "string", "nullable": true, "description": "only \"right\" (any case) is supported" },
                        "prompt_name": { "type": "string", "nullable": true, "description": "one of the model's prompts, put before every input (its tokens are answered too); an unknown name is 400" } } },
                    "SimilarityRequest": { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
                        "inputs": { "type": "object", "required": ["source_sentence", "sentences"], "additionalProperties": false, "properties": {
                            "source_sentence": { "type": "string" },
                            "sentences": { "type": "array", "items": { "type": "string" }, "minItems": 1, "description": "with the source sentence, at most --max-client-batch texts" } } },
                        "truncate": { "type": "boolean", "nullable": true, "default": true },
                        "truncation_direction": { "type": "string", "nullable": true, "description": "only \"right\" (any case) is supported" },
                        "prompt_name": { "type": "string", "nullable": true, "description": "one of the model's prompts, put before every sentence" },
                        "parameters": { "type": "object", "nullable": true, "additionalProperties": false, "description": "the same three options, where huggingface_hub puts them (each given once)", "properties": {
                            "truncate": { "type": "boolean", "nullable": true },
                            "truncation_direction": { "type": "string", "nullable": true },
                            "prompt_name": { "type": "string", "nullable": true } } } } },
                    "OpenAiRequest": { "type": "object", "required": ["input"], "additionalProperties": false, "properties": {
                        "input": inputs,
                        "model": { "type": "string" },
                        "encoding_format": { "type": "string", "enum": ["float", "base64"], "default": "float" },
                        "dimensions": { "type": "integer", "description": "must equal the model's dimensions" },
                        "user": { "type": "string" } } },
                    "OpenAiResponse": { "type": "object", "properties": {
                        "object": { "type": "string", "enum": ["list"] },
                        "data": { "type": "array", "items": { "type": "object", "properties": {
                            "object": { "type": "string", "enum": ["embedding"] },
                            "index": { "type": "integer" },
                            "embedding": { "oneOf": [vector, { "type": "string", "format": "byte" }] } } } },
                        "model": { "type": "string" },
                        "usage": { "type": "object", "properties": {
                            "prompt_tokens": { "type": "integer" }, "total_tokens": { "type": "integer" } } } } },
                    "TokenizeRequest": { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
                        "inputs": inputs, "add_special_tokens": { "type": "boolean", "default": true },
                        "truncate": { "type": "boolean", "default": true, "description": "cut at the model's maximum input length (the tokens the model sees); false: 413 for a longer input" } } },
                    "DecodeRequest": { "type": "object", "required": ["ids"], "additionalProperties": false, "properties": {
                        "ids": { "oneOf": [
                            { "type": "array", "items": { "type": "integer", "minimum": 0 } },
                            { "type": "array", "items": { "type": "array", "items": { "type": "integer", "minimum": 0 } } }
                        ], "description": "one list of token ids, or a list of lists" },
                        "skip_special_tokens": { "type": "boolean", "default": true } } },
                    "Token": { "type": "object", "properties": {
                        "id": { "type": "integer" }, "text": { "type": "string" }, "special": { "type": "boolean" },
                        "start": { "type": "integer" }, "stop": { "type": "integer" } } },
                    "Status": { "type": "object", "properties": { "status": { "type": "string" }, "reason": { "type": "string" },
                        "queue": { "type": "object", "description": "with --queue: the broker's status (up or down, with the reason)" } } },
                    "JobRequest": { "type": "object", "required": ["route", "body"], "additionalProperties": false, "properties": {
                        "route": { "type": "string", "enum": ["/embed", "/", "/embed_all", "/similarity", "/v1/embeddings", "/rerank", "/v1/rerank", "/predict", "/tokenize", "/decode"] },
                        "body": { "type": "object", "description": "the body that route takes" } } },
                    "Job": { "type": "object", "required": ["id", "state"], "properties": {
                        "id": { "type": "string" },
                        "state": { "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"] },
                        "route": { "type": "string" },
                        "status": { "type": "integer", "description": "the HTTP status the route answered" },
                        "result": { "description": "the route's JSON answer (or error body)" } } }
                }
            },
            "security": [ { "bearer": [] } ],
            "paths": {
                "/embed": { "post": {
                    "summary": "Embed one text or a list of texts (Hugging Face TEI API)",
                    "requestBody": json_body("EmbedRequest"),
                    "responses": merge(json!({ "200": { "description": "One vector per input, in input order",
                        "content": { "application/json": { "schema": { "type": "array", "items": vector } } } } }), post_errors()) } },
                "/embed_all": { "post": {
                    "summary": "Every token's vector of each input: the model's last hidden state, neither pooled nor normalised, special tokens included (Hugging Face TEI API); the answer counts against --max-inflight-body-bytes (413 when larger)",
                    "requestBody": json_body("EmbedAllRequest"),
                    "responses": merge(json!({ "200": { "description": "Per input, one vector per token, in order",
                        "content": { "application/json": { "schema": { "type": "array", "items": { "type": "array", "items": vector } } } } } }), merge(post_errors(), json!({
                            "413": error_response("Body over --max-body-bytes, more inputs than --max-client-batch, an input over the model's maximum length with truncate false, or an answer larger than --max-inflight-body-bytes") }))) } },
                "/similarity": { "post": {
                    "summary": "Cosine similarity of a source sentence with each other sentence, from the model's embeddings (Hugging Face TEI API; POST / takes the same body on an embedding model, as huggingface_hub's sentence_similarity sends it)",
                    "requestBody": json_body("SimilarityRequest"),
                    "responses": merge(json!({ "200": { "description": "One similarity per sentence, in order",
                        "content": { "application/json": { "schema": { "type": "array", "items": { "type": "number" } } } } } }), post_errors()) } },
                "/v1/embeddings": { "post": {
                    "summary": "Embed one text or a list of texts (OpenAI API)",
                    "requestBody": json_body("OpenAiRequest"),
                    "responses": merge(json!({ "200": { "description": "Embeddings",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OpenAiResponse" } } } } }), post_errors()) } },
                "/tokenize": { "post": {
                    "summary": "Tokens of each input, with ids, text and byte offsets",
                    "requestBody": json_body("TokenizeRequest"),
                    "responses": merge(json!({ "200": { "description": "One token list per input",
                        "content": { "application/json": { "schema": { "type": "array", "items": { "type": "array", "items": { "$ref": "#/components/schemas/Token" } } } } } } }), tokenize_errors()) } },
                "/decode": { "post": {
                    "summary": "The text of token ids, as the model's tokenizer writes it (Hugging Face TEI API)",
                    "requestBody": json_body("DecodeRequest"),
                    "responses": merge(json!({ "200": { "description": "One text per list of ids",
                        "content": { "application/json": { "schema": { "type": "array", "items": { "type": "string" } } } } } }), decode_errors()) } },
                "/v1/jobs": { "post": {
                    "summary": "Queue an asynchronous job ({route, body}) in the queue broker (needs --queue; 404 without it)",
                    "requestBody": json_body("JobRequest"),
                    "responses": {
                        "202": { "description": "Queued; Location: /v1/jobs/{id}", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } },
                        "400": error_response("Malformed JSON, a route that cannot be a job, or a body its route refuses"),
                        "401": error_response("Missing or wrong API key (when the server has one)"),
                        "404": error_response("No queue broker configured (--queue)"),
                        "413": error_response("Body over --max-body-bytes, or more inputs than --max-client-batch"),
                        "415": error_response("Content-Type is not JSON"),
                        "503": error_response("The queue broker is unreachable; see Retry-After") } } },
                "/v1/jobs/{id}": {
                    "get": { "summary": "A job's state (queued, running, succeeded, failed, cancelled) and, once finished, its HTTP status and answer",
                        "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
                        "responses": {
                            "200": { "description": "The job", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } },
                            "401": error_response("Missing or wrong API key (when the server has one)"),
                            "404": error_response("No such job (or its record expired), or no queue broker configured"),
                            "503": error_response("The queue broker is unreachable; see Retry-After") } },
                    "delete": { "summary": "Cancel a job that has not started",
                        "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
                        "responses": {
                            "200": { "description": "Cancelled", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } },
                            "401": error_response("Missing or wrong API key (when the server has one)"),
                            "404": error_response("No such job, or no queue broker configured"),
                            "409": error_response("The job is running or has ended"),
                            "503": error_response("The queue broker is unreachable; see Retry-After") } } },
                "/info": { "get": { "summary": "Model and batching settings",
                    "responses": { "200": { "description": "Model id, task, dimensions, max input length, batching settings, version",
                        "content": { "application/json": { "schema": { "type": "object" } } } }, "401": error_response("Missing or wrong API key") } } },
                "/healthz": { "get": { "summary": "Liveness: 200 from the first moment the process listens", "security": [],
                    "responses": { "200": { "description": "Alive", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } } } },
                "/readyz": { "get": { "summary": "Readiness: 200 once the model is loaded and warm; 503 while loading, draining or after a failed load", "security": [],
                    "responses": {
                        "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } },
                        "503": { "description": "loading, draining or failed (with reason)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } } } },
                "/health": { "get": { "summary": "/readyz under Hugging Face TEI's and TGI's name, for probes written for them", "security": [],
                    "responses": {
                        "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } },
                        "503": { "description": "loading, draining or failed (with reason)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } } } },
                "/metrics": { "get": { "summary": "Prometheus metrics",
                    "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": error_response("Missing or wrong API key") } } },
                "/openapi.json": { "get": { "summary": "OpenAPI 3 description of every route",
                    "responses": { "200": { "description": "OpenAPI 3 document", "content": { "application/json": { "schema": { "type": "object" } } } }, "401": error_response("Missing or wrong API key") } } },
                "/": { "get": { "summary": "Human-readable index of the server and its routes",
                    "responses": { "200": { "description": "HTML page", "content": { "text/html": { "schema": { "type": "string" } } } }, "401": error_response("Missing or wrong API key") } },
                    "post": {
                    "summary": "The loaded model's task, as TEI and TGI answer it (what huggingface_hub's InferenceClient sends): for an embedding model, the same as POST /embed (this schema); for a reranker, POST /rerank; for a classifier, POST /predict; for a generation model, POST /generate",
                    "requestBody": json_body("EmbedRequest"),
                    "responses": merge(json!({ "200": { "description": "One vector per input, in input order",
                        "content": { "application/json": { "schema": { "type": "array", "items": vector } } } } }), post_errors()) } }
            }
        });
        let paths = doc["paths"].take();
        doc["paths"] = merge(
            merge(merge(paths, generation_paths()), scoring_paths()),
            models_path(),
        );
        let schemas = doc["components"]["schemas"].take();
        doc["components"]["schemas"] =
            merge(merge(schemas, generation_schemas()), scoring_schemas());
        doc
    })
}

fn scoring_errors() -> Value {
    let mut errors = post_errors();
    errors["404"] =
        error_response("The loaded model has another task (the message names it and its routes)");
    errors["413"] = error_response("Body over --max-body-bytes, more texts (pairs) than --max-client-batch, or a pair over the model's maximum length with truncate false");
    errors
}

/// `GET /v1/models` in the OpenAPI document.
fn models_path() -> Value {
    let model = json!({ "type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
        "id": { "type": "string", "description": "the name /info gives (model_id)" },
        "object": { "type": "string", "enum": ["model"] },
        "created": { "type": "integer" },
        "owned_by": { "type": "string" } } });
    json!({
        "/v1/models": { "get": {
            "summary": "The model this process serves, as OpenAI lists models (client.models.list())",
            "responses": {
                "200": { "description": "A list of one model", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["object", "data"], "properties": {
                        "object": { "type": "string", "enum": ["list"] },
                        "data": { "type": "array", "items": model } } } } } },
                "401": error_response("Missing or wrong API key") } } }
    })
}

/// The reranking and classification routes' part of the OpenAPI document.
fn scoring_paths() -> Value {
    let ranks = json!({ "type": "array", "items": { "$ref": "#/components/schemas/Rank" } });
    let predictions =
        json!({ "type": "array", "items": { "$ref": "#/components/schemas/Prediction" } });
    json!({
        "/rerank": { "post": {
            "summary": "Score each text's relevance to the query with a cross-encoder, best first (Hugging Face TEI API); each (query, text) pair is one row of the batcher",
            "requestBody": json_body("RerankRequest"),
            "responses": merge(json!({ "200": { "description": "One rank per text, by decreasing score",
                "content": { "application/json": { "schema": ranks } } } }), scoring_errors()) } },
        "/v1/rerank": { "post": {
            "summary": "Rerank documents, Cohere / Jina style (what LangChain, LlamaIndex and most RAG tools call)",
            "requestBody": json_body("CohereRerankRequest"),
            "responses": merge(json!({ "200": { "description": "Results by decreasing relevance_score",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CohereRerankResponse" } } } } }), scoring_errors()) } },
        "/predict": { "post": {
            "summary": "Label scores of a text, a pair of texts, or a batch of them, with a sequence classifier (Hugging Face TEI API)",
            "requestBody": json_body("PredictRequest"),
            "responses": merge(json!({ "200": { "description": "For one input its labels by decreasing score; for a batch, one such list per input",
                "content": { "application/json": { "schema": { "oneOf": [predictions, { "type": "array", "items": predictions }] } } } } }), scoring_errors()) } },
    })
}

/// The reranking and classification request and answer schemas.
fn scoring_schemas() -> Value {
    let texts = json!({ "type": "array", "items": { "type": "string" }, "minItems": 1 });
    let text_or_pair =
        json!({ "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 2 });
    json!({
        "RerankRequest": { "type": "object", "required": ["query", "texts"], "additionalProperties": false, "properties": {
            "query": { "type": "string" }, "texts": texts,
            "truncate": { "type": "boolean", "nullable": true, "default": true },
            "truncation_direction": { "type": "string", "nullable": true, "description": "only \"right\" (any case) is supported" },
            "raw_scores": { "type": "boolean", "default": false, "description": "the logits instead of the model's activation of them (sigmoid unless config.json names another)" },
            "return_text": { "type": "boolean", "default": false } } },
        "Rank": { "type": "object", "required": ["index", "score"], "properties": {
            "index": { "type": "integer" }, "text": { "type": "string" }, "score": { "type": "number", "format": "float" } } },
        "CohereRerankRequest": { "type": "object", "required": ["query", "documents"], "additionalProperties": false, "properties": {
            "model": { "type": "string", "description": "echoed back; not checked" },
            "query": { "type": "string" },
            "documents": { "type": "array", "minItems": 1, "items": { "oneOf": [ { "type": "string" },
                { "type": "object", "required": ["text"], "properties": { "text": { "type": "string" } } } ] } },
            "top_n": { "type": "integer", "minimum": 0, "description": "the best top_n only; absent or 0: all" },
            "return_documents": { "type": "boolean", "default": true } } },
        "CohereRerankResponse": { "type": "object", "properties": {
            "id": { "type": "string" }, "model": { "type": "string" },
            "results": { "type": "array", "items": { "type": "object", "required": ["index", "relevance_score"], "properties": {
                "index": { "type": "integer" }, "relevance_score": { "type": "number", "format": "float" },
                "document": { "type": "object", "properties": { "text": { "type": "string" } } } } } },
            "usage": { "type": "object", "properties": { "total_tokens": { "type": "integer" } } } } },
        "PredictRequest": { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
            "inputs": { "oneOf": [ { "type": "string" }, text_or_pair, { "type": "array", "minItems": 1, "items": text_or_pair } ],
                "description": "a text, a pair [text, text], or a batch of texts and pairs [[text], [text, text]]" },
            "truncate": { "type": "boolean", "nullable": true, "default": true },
            "truncation_direction": { "type": "string", "nullable": true, "description": "only \"right\" (any case) is supported" },
            "raw_scores": { "type": "boolean", "default": false, "description": "the logits instead of softmax over several labels (or the activation of one)" },
            "parameters": { "type": "object", "additionalProperties": false, "description": "what huggingface_hub's text_classification sends", "properties": {
                "top_k": { "type": "integer", "minimum": 1 },
                "function_to_apply": { "type": "string", "enum": ["sigmoid", "softmax", "none"] } } } } },
        "Prediction": { "type": "object", "required": ["score", "label"], "properties": {
            "score": { "type": "number", "format": "float" }, "label": { "type": "string" } } },
    })
}

fn generation_errors() -> Value {
    json!({
        "400": error_response("Malformed JSON, an unknown field, a setting out of range (named in the message: temperature, top_p, top_k, max_new_tokens, ...), or an empty prompt"),
        "404": error_response("The loaded model has another task (the message names it and its routes)"),
        "401": error_response("Missing or wrong API key (when the server has one)"),
        "408": error_response("The body did not arrive within --client-timeout-ms"),
        "413": error_response("Body over --max-body-bytes, a prompt of at least the context (or --max-batch-total-tokens), or max_new_tokens over the room the prompt leaves"),
        "415": error_response("Content-Type is not JSON"),
        "503": error_response("Generation queue full (--queue-capacity), model still loading after the cold-start timeout or failed to load, or shutting down; see Retry-After"),
    })
}

/// The generation routes' part of the OpenAPI document.
fn generation_paths() -> Value {
    let sse = json!({ "description": "Server-Sent Events, one per token", "content": { "text/event-stream": { "schema": { "type": "string" } } } });
    json!({
        "/generate": { "post": {
            "summary": "Generate text: the upstream {\"text\"} shape (prompt + continuation, 35 tokens in all, sampled with the model's settings, else top-k 50) or TGI's {\"inputs\", \"parameters\"}",
            "requestBody": json_body("GenerateRequest"),
            "responses": merge(json!({ "200": { "description": "{\"generated_text\": ...} (with \"details\" when asked)",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/GenerateResponse" } } } } }), generation_errors()) } },
        "/generate_stream": { "post": {
            "summary": "Generate text as Server-Sent Events in TGI's format; the last event carries the full text and the finish reason",
            "requestBody": json_body("GenerateRequest"),
            "responses": merge(json!({ "200": sse }), generation_errors()) } },
        "/v1/completions": { "post": {
            "summary": "Generate text (OpenAI completions; stream: true for Server-Sent Events ending in data: [DONE])",
            "requestBody": json_body("CompletionRequest"),
            "responses": merge(json!({ "200": { "description": "A text_completion object, or its chunks as Server-Sent Events",
                "content": { "application/json": { "schema": { "type": "object" } }, "text/event-stream": { "schema": { "type": "string" } } } } }), generation_errors()) } },
        "/v1/chat/completions": { "post": {
            "summary": "Chat through the model's own template (OpenAI chat completions; stream: true for Server-Sent Events ending in data: [DONE])",
            "requestBody": json_body("ChatRequest"),
            "responses": merge(json!({ "200": { "description": "A chat.completion object, or chat.completion.chunk objects as Server-Sent Events",
                "content": { "application/json": { "schema": { "type": "object" } }, "text/event-stream": { "schema": { "type": "string" } } } } }), generation_errors()) } },
    })
}

/// The generation request and answer schemas.
fn generation_schemas() -> Value {
    let stop = json!({ "oneOf": [ { "type": "string", "maxLength": 256 }, { "type": "array", "items": { "type": "string", "maxLength": 256 }, "maxItems": 8 } ] });
    let openai_common = json!({
        "model": { "type": "string" }, "max_tokens": { "type": "integer", "minimum": 1 },
        "temperature": { "type": "number", "minimum": 0, "default": 1 },
        "top_p": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
        "stop": stop, "seed": { "type": "integer" }, "n": { "type": "integer", "enum": [1] },
        "stream": { "type": "boolean", "default": false },
        "stream_options": { "type": "object", "properties": { "include_usage": { "type": "boolean" } } },
        "presence_penalty": { "type": "number", "enum": [0] }, "frequency_penalty": { "type": "number", "enum": [0] },
        "user": { "type": "string" }, "ignore_eos": { "type": "boolean", "description": "not OpenAI's: keep going past end-of-sequence tokens" },
        "logit_bias": { "type": "object", "maxProperties": 300, "additionalProperties": { "type": "number", "minimum": -100, "maximum": 100 },
            "description": "token id (as a key) to a bias added to its logit before sampling (and before a grammar's mask)" },
        "response_format": { "type": "object", "required": ["type"], "description": "structured output, enforced token by token: {\"type\": \"text\"}, {\"type\": \"json_object\"}, {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\", \"strict\"}}; TGI's {\"type\": \"json\" | \"regex\", \"value\"}",
            "properties": { "type": { "type": "string", "enum": ["text", "json_object", "json_schema", "json", "regex"] },
                "json_schema": { "type": "object", "properties": { "name": { "type": "string" }, "description": { "type": "string" }, "schema": { "type": "object" }, "strict": { "type": "boolean" } } },
                "value": {} } },
        "structured_outputs": { "type": "object", "additionalProperties": false, "description": "vLLM's structured outputs: exactly one of json (a schema), regex, grammar (Lark), choice, json_object",
            "properties": { "json": {}, "regex": { "type": "string" }, "grammar": { "type": "string" },
                "choice": { "type": "array", "items": { "type": "string" }, "minItems": 1 }, "json_object": { "type": "boolean" } } }
    });
    let mut completion = openai_common.clone();
    completion["prompt"] = json!({ "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 1 } ] });
    completion["echo"] = json!({ "type": "boolean", "default": false });
    let mut chat = openai_common;
    chat["messages"] = json!({ "type": "array", "minItems": 1, "items": { "type": "object", "required": ["role", "content"], "properties": {
        "role": { "type": "string" }, "content": { "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "object",
            "properties": { "type": { "type": "string", "enum": ["text"] }, "text": { "type": "string" } } } } ] } } } });
    chat["max_completion_tokens"] = json!({ "type": "integer", "minimum": 1 });
    chat["tools"] = json!({ "type": "array", "items": { "type": "object", "required": ["type", "function"], "properties": {
        "type": { "type": "string", "enum": ["function"] },
        "function": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string" }, "description": { "type": "string" }, "parameters": { "type": "object" }, "strict": { "type": "boolean" } } } } } });
    chat["tool_choice"] = json!({ "description": "\"auto\" (the default with tools): text or calls in the model's own syntax (Hermes <tool_call>, Mistral [TOOL_CALLS], Llama 3.x JSON, or a generic JSON format), a started call constrained to validate; \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}: the answer is one call whose arguments follow the function's parameters (message.tool_calls, finish_reason tool_calls); \"none\": text",
        "oneOf": [ { "type": "string", "enum": ["none", "auto", "required"] }, { "type": "object", "required": ["type", "function"], "properties": {
            "type": { "type": "string", "enum": ["function"] }, "function": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string" } } } } } ] });
    chat["parallel_tool_calls"] = json!({ "type": "boolean", "default": true, "description": "under auto, false keeps at most one call; a forced answer is one call" });
    chat["reasoning_format"] = json!({ "type": "string", "enum": ["none", "deepseek", "auto"], "description": "llama.cpp's: a reasoning model's thinking (between its template's <think> tags) as message.reasoning_content (deepseek, auto) or inline in content (none); default --reasoning-format" });
    chat["chat_template_kwargs"] = json!({ "type": "object", "description": "further chat template variables (vLLM's and llama.cpp's), e.g. {\"enable_thinking\": false} for Qwen3; not messages, add_generation_prompt, bos_token, eos_token or raise_exception" });
    json!({
        "GenerateRequest": { "oneOf": [
            { "type": "object", "required": ["text"], "additionalProperties": false, "properties": { "text": { "type": "string" } } },
            { "type": "object", "required": ["inputs"], "additionalProperties": false, "properties": {
                "inputs": { "type": "string" },
                "stream": { "type": "boolean" },
                "parameters": { "type": "object", "additionalProperties": false, "properties": {
                    "max_new_tokens": { "type": "integer", "minimum": 1 },
                    "temperature": { "type": "number", "minimum": 0 },
                    "top_k": { "type": "integer", "minimum": 1 },
                    "top_p": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
                    "typical_p": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
                    "min_p": { "type": "number", "minimum": 0, "maximum": 1 },
                    "repetition_penalty": { "type": "number", "exclusiveMinimum": 0 },
                    "seed": { "type": "integer" },
                    "stop": { "type": "array", "items": { "type": "string", "maxLength": 256 }, "maxItems": 8 },
                    "do_sample": { "type": "boolean" },
                    "return_full_text": { "type": "boolean" },
                    "details": { "type": "boolean" },
                    "ignore_eos": { "type": "boolean", "description": "not TGI's: keep going past end-of-sequence tokens" },
                    "grammar": { "type": "object", "required": ["type", "value"], "description": "structured output, enforced token by token (lark is not TGI's)",
                        "properties": { "type": { "type": "string", "enum": ["json", "json_schema", "regex", "lark"] }, "value": {} } } } } } } ] },
        "GenerateResponse": { "type": "object", "required": ["generated_text"], "properties": {
            "generated_text": { "type": "string" },
            "details": { "type": "object", "properties": {
                "finish_reason": { "type": "string", "enum": ["length", "eos_token", "stop_sequence", "grammar_error"] },
                "generated_tokens": { "type": "integer" }, "seed": { "type": "integer", "nullable": true },
                "tokens": { "type": "array", "items": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "text": { "type": "string" }, "logprob": { "type": "number" }, "special": { "type": "boolean" } } } } } } } },
        "CompletionRequest": { "type": "object", "required": ["prompt"], "additionalProperties": false, "properties": completion },
        "ChatRequest": { "type": "object", "required": ["messages"], "additionalProperties": false, "properties": chat },
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn example(path: &str, method: &hyper::Method, auth: &str) -> String {
    let post_route = *method == hyper::Method::POST;
    let delete = *method == hyper::Method::DELETE;
    let post = |body: &str| {
        format!(
            "curl -s localhost:PORT{path}{auth} -H 'Content-Type: application/json' -d '{body}'"
        )
    };
    match path {
        "/embed" | "/" if post_route => {
            post(r#"{"inputs": ["A man is eating food.", "A man is riding a horse."]}"#)
        }
        "/embed_all" => post(r#"{"inputs": "A man is eating food."}"#),
        "/similarity" => post(
            r#"{"inputs": {"source_sentence": "A man is eating food.", "sentences": ["A man is eating a meal.", "A man is riding a horse."]}}"#,
        ),
        "/v1/embeddings" => {
            post(r#"{"input": "A man is eating food.", "model": "all-MiniLM-L6-v2"}"#)
        }
        "/rerank" => post(
            r#"{"query": "What is a panda?", "texts": ["The giant panda is a bear native to China.", "Paris is in France."]}"#,
        ),
        "/v1/rerank" => post(
            r#"{"query": "What is a panda?", "documents": ["The giant panda is a bear native to China.", "Paris is in France."], "top_n": 1}"#,
        ),
        "/predict" => post(r#"{"inputs": "I loved this film."}"#),
        "/tokenize" => post(r#"{"inputs": "A man is eating food."}"#),
        "/decode" => post(r#"{"ids": [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]}"#),
        "/generate" => post(r#"{"text": "Once upon a time"}"#),
        "/generate_stream" => format!(
            "curl -sN localhost:PORT{path}{auth} -H 'Content-Type: application/json' -d '{}'",
            r#"{"inputs": "Once upon a time", "parameters": {"max_new_tokens": 20}}"#
        ),
        "/v1/completions" => post(r#"{"prompt": "Once upon a time", "max_tokens": 20}"#),
        "/v1/chat/completions" => {
            post(r#"{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 40}"#)
        }
        "/v1/jobs" => post(r#"{"route": "/embed", "body": {"inputs": "A man is eating food."}}"#),
        "/v1/jobs/{id}" if delete => format!("curl -s -X DELETE localhost:PORT{path}{auth}"),
        "/healthz" | "/readyz" | "/health" => format!("curl -si localhost:PORT{path}"),
        "/v1/models" => format!("curl -s localhost:PORT{path}{auth}"),
        _ => format!("curl -s localhost:PORT{path}{auth}"),
    }
}

/// The index page: what this server is, its model, and every route (`routes`, as method and
/// path) with a curl example.
pub fn index_page(state: &AppState, routes: &[(Method, &'static str)]) -> Response<Body> {
    let port = state.config.port.to_string();
    let auth = if state.config.api_key.is_some() {
        " -H 'Authorization: Bearer $API_KEY'"
    } else {
        ""
    };
    let info = state.lifecycle.loaded_info();
    let model = info.as_ref().map_or_else(
        || crate::model::files::model_id(&state.config.model),
        |i| i.id.clone(),
    );
    let facts = info.map_or("loading…".to_string(), |i| match i.task {
        crate::model::Task::Embedding => format!(
            "embeddings: {} dimensions, up to {} tokens per input, {:?} pooling, {} weights on the {} kernels",
            i.dimensions, i.max_input_length, i.pooling, i.dtype, i.kernel
        ),
        crate::model::Task::Reranking | crate::model::Task::TextClassification => format!(
            "{}: a cross-encoder with {} label(s), up to {} tokens per text or pair, {} weights on the {} kernels",
            i.task.name(),
            i.classifier.as_ref().map_or(0, |c| c.labels.len()),
            i.max_input_length,
            i.dtype,
            i.kernel
        ),
        crate::model::Task::TextGeneration => format!(
            "text generation with continuous batching: a context of {} tokens, {} weights (4-bit GGUF blocks kept as stored, where the file has them) on the {} kernels",
            i.max_input_length, i.dtype, i.kernel
        ),
    });
    let mut rows = String::new();
    for (method, path) in routes {
        let summary = openapi()["paths"][*path][method.as_str().to_lowercase()]["summary"]
            .as_str()
            .unwrap_or("");
        rows.push_str(&format!(
            "<tr><td><code>{} {}</code></td><td>{}</td><td><pre>{}</pre></td></tr>\n",
            method,
            path,
            escape(summary),
            escape(&example(path, method, auth).replace("PORT", &port))
        ));
    }
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zerobatch</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
td{{vertical-align:top;padding:.4em;border-bottom:1px solid #ddd}}pre{{margin:0;white-space:pre-wrap}}</style></head>
<body><h1>zerobatch {version}</h1>
<p>An inference server for serverless containers: embedding requests are grouped into
batches by a dynamic micro-batcher and run by a fixed pool of CPU inference threads;
generation requests join a continuously batched step loop. The task follows from the model
loaded; the routes of another task answer 404, naming the model's task.</p>
<p>Model: <b>{model}</b> ({facts}).</p>
<p>Full API description: <a href="/openapi.json">/openapi.json</a>. Errors are JSON
<code>{{"error": "...", "error_type": "..."}}</code>.</p>
<table><tr><th>Route</th><th>What</th><th>Example</th></tr>
{rows}</table></body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        model = escape(&model),
        facts = escape(&facts),
    );
    let mut r = Response::new(Full::new(Bytes::from(html)).boxed_unsync());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
