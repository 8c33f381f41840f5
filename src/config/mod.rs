//! Every option of the server, parsed once by clap (flags and environment variables) and
//! validated before anything starts.
//!
//! Each flag also reads the environment variable named in its help, so the same binary is
//! configured by flags on a laptop and by env vars in a container manifest. The manifests in
//! `container/` are checked against `zerobatch --help` by `tests/manifests.rs`.
//!
//! Plain values only: the queue URL ([`queue_url`]) and the Azure credentials are parsed here
//! and turned into clients by the broker; nothing here imports a layer above it (the dtype and
//! kernel-level types it parses into are the models' and kernels', below it).

pub mod queue_url;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use queue_url::{
    AzureCredentials, AzureTarget, BadQueueUrl, QueueUrl, RedisTarget, DEFAULT_GROUP,
};

fn parse_dtype(s: &str) -> Result<crate::model::DtypeChoice, String> {
    s.parse()
}

fn parse_reasoning_format(s: &str) -> Result<crate::generate::reasoning::ReasoningFormat, String> {
    s.parse()
}

fn parse_kernel_level(s: &str) -> Result<crate::kernels::KernelLevel, String> {
    s.parse()
}

/// The default model: small, fast, and the most used sentence-embedding model.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

const ENV_HELP: &str = "\
Other environment variables read:
  HF_HOME         Hugging Face cache directory used for hub downloads [default: ~/.cache/huggingface]
  HF_ENDPOINT     a mirror of the hub to download from instead of the hub itself
  HF_HUB_OFFLINE  when 1, never contact the hub: the model must already be in the cache
  HF_TOKEN        token for private or gated models on the hub
  RUST_LOG        log filter, e.g. info or zerobatch=debug [default: info]
  LOG_FORMAT      text or json [default: text]";

/// Command line of the `zerobatch` binary.
#[derive(Debug, Parser)]
#[command(name = "zerobatch", version, about, after_help = ENV_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// Subcommands besides serving (the default).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download the model's files into the Hugging Face cache and print the local directory
    /// (for `owner/name:QUANT`, the GGUF file's path). Used when building a container image so
    /// that a cold start never downloads.
    Download {
        /// Hub id of the model, `owner/name:QUANT` for a GGUF file of that quantization (or a
        /// local directory, which is only checked).
        #[arg(long, env = "MODEL", default_value = DEFAULT_MODEL)]
        model: String,
        /// Hub revision (branch, tag or commit).
        #[arg(long, env = "MODEL_REVISION", default_value = "main")]
        revision: String,
    },
}

/// Options of the server.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free port, for tests).
    #[arg(long, env = "PORT", default_value_t = 80)]
    pub port: u16,

    /// Model to serve: a local directory in Hugging Face layout, or a hub id downloaded into
    /// the Hugging Face cache (a BERT or XLM-RoBERTa model embeds, reranks or classifies, a
    /// GPT-2 one generates); or a
    /// `.gguf` file, a directory holding one, or `owner/name:QUANT`, the hub repository's GGUF
    /// file of that quantization (text generation: llama, qwen2, qwen3, phi3, smollm3 and gemma3
    /// architectures).
    #[arg(long, env = "MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Hub revision (branch, tag or commit) when --model is a hub id.
    #[arg(long, env = "MODEL_REVISION", default_value = "main")]
    pub revision: String,

    /// Number format of the linear layers: f32, bf16, int16, int8, or auto (for embeddings bf16
    /// where the CPU has AVX-512 BF16 or AMX, int16 on AVX2 and AVX-512 without BF16, else
    /// f32; for BERT and XLM-R rerankers and classifiers
    /// int16 where the CPU has AVX2 or better, else f32, since bf16 moves their scores by more
    /// than 1e-3; ModernBERT's f32; measured in docs/benchmarks.md). LayerNorm, softmax,
    /// attention and the residual stream stay in f32.
    #[arg(long, env = "DTYPE", default_value = "auto", value_parser = parse_dtype)]
    pub dtype: crate::model::DtypeChoice,

    /// Highest kernel path to use: scalar, avx2, avx512-vnni, avx512-bf16 or amx (default: the
    /// best this CPU has). For measuring and testing the other paths on a better CPU.
    #[arg(long, env = "ZEROBATCH_KERNEL_CAP", value_parser = parse_kernel_level)]
    pub kernel_cap: Option<crate::kernels::KernelLevel>,

    /// Inference threads. Default: the cores this process may use.
    #[arg(long, env = "WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// Most sequences in one batch.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,

    /// Most padded tokens (sequences × longest sequence) in one batch.
    #[arg(long, env = "MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,

    /// How long a free worker may wait for a fuller batch, in milliseconds. 0: never wait.
    #[arg(long, env = "MAX_BATCH_DELAY_MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// Most sequences waiting for a worker; beyond it requests get 503 at once.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,

    /// How long a request may wait for its answer before it gets 503, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most bytes of request bodies held at once, over all connections. A request whose body
    /// does not fit waits for room (up to 2 s), then gets 503 with Retry-After; this bounds
    /// the memory that concurrent large requests can take.
    #[arg(long, env = "MAX_INFLIGHT_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,

    /// Longest time to receive a whole request body, however slowly it trickles, in
    /// milliseconds; after it the request gets 408 and the connection closes.
    #[arg(long, env = "CLIENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_timeout_ms: u64,

    /// Longest time to receive a request's headers, in milliseconds; it also closes a
    /// keep-alive connection that stays idle this long between requests.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 30_000)]
    pub header_timeout_ms: u64,

    /// Most open client connections. Past it, a few more are served for the probes only
    /// (/healthz, /readyz, /metrics; other routes get 503), then new connections are closed at
    /// once. Default: sized to the process's file-descriptor limit, at most 8192.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<NonZeroUsize>,

    /// Generation: KV-cache tokens over all running sequences. A request reserves its prompt
    /// plus its max_new_tokens when it joins the batch and waits in the queue until that fits;
    /// one that could never fit gets 413. The cache is f16: 23 KB per token for SmolLM2-135M.
    #[arg(long, env = "MAX_BATCH_TOTAL_TOKENS", default_value_t = 8192)]
    pub max_batch_total_tokens: usize,

    /// Generation: most prompt tokens read in one step, over all sequences; longer prompts are
    /// read in chunks so that running streams keep flowing.
    #[arg(long, env = "MAX_PREFILL_TOKENS", default_value_t = 512)]
    pub max_prefill_tokens: usize,

    /// Generation: bytes of keys and values kept from earlier prompts, so that a prompt that
    /// starts as one of them (a shared system prompt, a tool list, a conversation so far)
    /// prefills only the rest. Least recently used blocks of 16 tokens go first past it; 0
    /// switches reuse off. Default: half the KV-cache budget (--max-batch-total-tokens times
    /// the model's bytes per token).
    #[arg(long, env = "PREFIX_CACHE_BYTES")]
    pub prefix_cache_bytes: Option<usize>,

    /// Generation: bytes of compiled grammars (JSON schemas, regexes, Lark, tool-call
    /// grammars) kept for requests that send the same one again, as estimated from each
    /// grammar's text and lexer; least recently used go first past it (and past 32 grammars).
    /// 0 switches the cache off.
    #[arg(long, env = "GRAMMAR_CACHE_BYTES", default_value_t = crate::generate::grammar::compile::DEFAULT_CACHE_BYTES)]
    pub grammar_cache_bytes: usize,

    /// Generation: new tokens when a request does not say (TGI's `max_new_tokens`; OpenAI's
    /// routes default to 16 as OpenAI does).
    #[arg(long, env = "DEFAULT_MAX_NEW_TOKENS", default_value_t = 100)]
    pub default_max_new_tokens: usize,

    /// Generation: read control tokens that chat messages spell (`<|im_end|>` typed by a
    /// user) as control tokens, as the rendered prompt's text says. Off by default: message
    /// contents are plain text, so a user cannot forge turns.
    #[arg(long, env = "PARSE_SPECIAL_IN_CHAT")]
    pub parse_special_in_chat: bool,

    /// Generation: a reasoning model's thinking text (between its chat template's `<think>`
    /// tags) in chat answers: `auto` or `deepseek` answer it as `message.reasoning_content`,
    /// `none` keeps it in `content` as the model wrote it (llama.cpp's `--reasoning-format`).
    /// A request's `reasoning_format` overrides it.
    #[arg(long, env = "REASONING_FORMAT", default_value = "auto", value_parser = parse_reasoning_format)]
    pub reasoning_format: crate::generate::reasoning::ReasoningFormat,

    /// Most inputs in one request (texts, pairs, a rerank's passages); more is 413. Also
    /// spelled --max-client-batch-size, TEI's name.
    #[arg(
        long,
        env = "MAX_CLIENT_BATCH",
        default_value_t = 64,
        visible_alias = "max-client-batch-size"
    )]
    pub max_client_batch: usize,

    /// When set, every route except /healthz and /readyz needs `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// How long requests that arrive while the model loads wait for it, in milliseconds.
    #[arg(long, env = "COLD_START_TIMEOUT_MS", default_value_t = 120_000)]
    pub cold_start_timeout_ms: u64,

    /// After SIGTERM, how long to keep serving (with /readyz at 503) so that load balancers
    /// stop routing here, in milliseconds.
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 5_000)]
    pub shutdown_delay_ms: u64,

    /// After SIGTERM, the most time until the process exits, in milliseconds; requests still
    /// unfinished then get 503.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 25_000)]
    pub shutdown_timeout_ms: u64,

    /// Also take jobs from a queue broker:
    /// redis[s]://[USER:PASS@]HOST:PORT/STREAM[?group=GROUP&results=STREAM]
    /// (a Redis >= 7 stream read by a consumer group, default group "zerobatch"), or
    /// azure-queue://ACCOUNT/QUEUE[?endpoint=URL&blob_endpoint=URL&results=QUEUE] (an Azure
    /// storage queue; credentials from AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN, or the
    /// managed identity). Enables /v1/jobs. Without it the server takes HTTP requests only.
    #[arg(long, env = "QUEUE_URL", hide_env_values = true, value_parser = QueueUrlParser)]
    pub queue: Option<QueueUrl>,

    /// How long a job taken by a replica may stay idle before another replica takes it over,
    /// in milliseconds (a running job resets it while it runs).
    #[arg(long, env = "QUEUE_VISIBILITY_TIMEOUT_MS", default_value_t = 60_000)]
    pub queue_visibility_timeout_ms: u64,

    /// Deliveries after which a job that never finished goes to the dead-letter stream.
    #[arg(long, env = "QUEUE_MAX_DELIVERIES", default_value_t = 5)]
    pub queue_max_deliveries: u64,

    /// Most queue jobs this replica holds at once (taken from the broker, not yet answered).
    /// The default keeps each worker's next full batch waiting while other jobs are in round
    /// trips to the broker (docs/benchmarks.md, "Queue drain"); the text of the jobs held is
    /// bounded as well, by --max-inflight-body-bytes.
    #[arg(long, env = "QUEUE_MAX_JOBS", default_value_t = 256)]
    pub queue_max_jobs: usize,

    /// How long a job's state and result are kept in the broker after its last change, in
    /// milliseconds.
    #[arg(long, env = "QUEUE_RESULT_TTL_MS", default_value_t = 86_400_000)]
    pub queue_result_ttl_ms: u64,

    /// This replica's consumer name in the group. Default: the host name and process id.
    #[arg(long, env = "QUEUE_CONSUMER")]
    pub queue_consumer: Option<String>,

    /// For rediss://: a PEM file of the CA certificates that sign the Redis server's
    /// certificate, when they are not among the system's roots (a private CA).
    #[arg(long, env = "QUEUE_TLS_CA_FILE")]
    pub queue_tls_ca_file: Option<std::path::PathBuf>,

    /// For azure-queue://: the storage account's key (Shared Key signing; Azurite's
    /// development key for local runs). On Azure prefer the managed identity (no key at all).
    #[arg(long, env = "AZURE_STORAGE_KEY", hide_env_values = true)]
    pub azure_storage_key: Option<String>,

    /// For azure-queue://: a SAS token (an account SAS for the queue and blob services, with
    /// read, add, update, process, write, delete and create permissions).
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    pub azure_storage_sas_token: Option<String>,

    /// For azure-queue:// with a user-assigned managed identity: its client id (default: the
    /// system-assigned identity).
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,
}

/// Parses `--queue` with a message that never shows the URL as given: clap's own message for a
/// value it could not parse quotes the value, which may hold a password.
#[derive(Clone)]
struct QueueUrlParser;

impl clap::builder::TypedValueParser for QueueUrlParser {
    type Value = QueueUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<QueueUrl, clap::Error> {
        let raw = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message + "\n")
        };
        let text = value
            .to_str()
            .ok_or_else(|| raw("--queue is not valid UTF-8".into()))?;
        text.parse().map_err(|e: BadQueueUrl| raw(e.to_string()))
    }
}

/// A reason the configuration cannot work, said before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--shutdown-delay-ms ({delay}) must be less than --shutdown-timeout-ms ({timeout})")]
    DelayNotUnderTimeout { delay: u64, timeout: u64 },
    #[error("--api-key must not be empty")]
    EmptyApiKey,
    #[error("--max-client-batch ({batch}) must not exceed --queue-capacity ({capacity}): such requests could never be queued")]
    ClientBatchOverQueue { batch: usize, capacity: usize },
    #[error("--max-inflight-body-bytes ({budget}) must be at least --max-body-bytes ({body}): a largest body could never be read")]
    BodyBudgetUnderBody { budget: usize, body: usize },
    #[error("--max-body-bytes ({0}) must be below 4 GiB")]
    BodyTooLarge(usize),
    #[error("--queue-visibility-timeout-ms ({0}) must be at least 1000")]
    VisibilityTooShort(u64),
}

impl ServeConfig {
    /// Checks what clap cannot: values that must be positive or ordered.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max-batch-size", self.max_batch_size),
            ("max-batch-tokens", self.max_batch_tokens),
            ("queue-capacity", self.queue_capacity),
            ("max-batch-total-tokens", self.max_batch_total_tokens),
            ("max-prefill-tokens", self.max_prefill_tokens),
            ("default-max-new-tokens", self.default_max_new_tokens),
            ("max-body-bytes", self.max_body_bytes),
            ("max-client-batch", self.max_client_batch),
            ("max-inflight-body-bytes", self.max_inflight_body_bytes),
            ("client-timeout-ms", self.client_timeout_ms as usize),
            ("header-timeout-ms", self.header_timeout_ms as usize),
            ("queue-max-jobs", self.queue_max_jobs),
            ("queue-max-deliveries", self.queue_max_deliveries as usize),
            ("queue-result-ttl-ms", self.queue_result_ttl_ms as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.queue_visibility_timeout_ms < 1000 {
            return Err(ConfigError::VisibilityTooShort(
                self.queue_visibility_timeout_ms,
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::Zero("request-timeout-ms"));
        }
        if self.shutdown_delay_ms >= self.shutdown_timeout_ms {
            return Err(ConfigError::DelayNotUnderTimeout {
                delay: self.shutdown_delay_ms,
                timeout: self.shutdown_timeout_ms,
            });
        }
        if self.api_key.as_deref() == Some("") {
            return Err(ConfigError::EmptyApiKey);
        }
        if self.max_body_bytes > u32::MAX as usize {
            return Err(ConfigError::BodyTooLarge(self.max_body_bytes));
        }
        if self.max_inflight_body_bytes < self.max_body_bytes {
            return Err(ConfigError::BodyBudgetUnderBody {
                budget: self.max_inflight_body_bytes,
                body: self.max_body_bytes,
            });
        }
        if self.max_client_batch > self.queue_capacity {
            return Err(ConfigError::ClientBatchOverQueue {
                batch: self.max_client_batch,
                capacity: self.queue_capacity,
            });
        }
        Ok(())
    }

    /// The number of inference threads: the flag, else the cores this process may use.
    pub fn worker_count(&self) -> usize {
        self.workers
            .map(NonZeroUsize::get)
            .unwrap_or_else(available_cores)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn cold_start_timeout(&self) -> Duration {
        Duration::from_millis(self.cold_start_timeout_ms)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn max_batch_delay(&self) -> Duration {
        Duration::from_millis(self.max_batch_delay_ms)
    }

    /// How to sign in to an Azure storage account (`--queue azure-queue://`).
    pub fn azure_credentials(&self) -> AzureCredentials {
        let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        AzureCredentials {
            account_key: nonempty(&self.azure_storage_key),
            sas_token: nonempty(&self.azure_storage_sas_token),
            client_id: nonempty(&self.azure_client_id),
        }
    }

    /// This replica's consumer name: `--queue-consumer`, else host name and process id
    /// (unique per replica on ACA and Kubernetes, where each replica has its own host name).
    pub fn queue_consumer(&self) -> String {
        self.queue_consumer.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "zerobatch".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// A configuration for tests: loopback, a free port, the given model, small limits.
    pub fn for_tests(model: &str) -> Self {
        let mut config = Cli::parse_from(["zerobatch", "--host", "127.0.0.1", "--port", "0"]).serve;
        config.model = model.to_string();
        config.workers = NonZeroUsize::new(2);
        config.shutdown_delay_ms = 0;
        config.shutdown_timeout_ms = 5_000;
        config
    }
}

/// Cores this process may run on (honours cgroup quotas and affinity masks), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let cli = Cli::parse_from(["zerobatch"]);
        let c = cli.serve;
        assert_eq!(c.port, 80);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.model, DEFAULT_MODEL);
        assert_eq!(c.max_batch_delay_ms, 0);
        assert_eq!(c.max_body_bytes, 2 * 1024 * 1024);
        assert_eq!(c.cold_start_timeout_ms, 120_000);
        assert_eq!(c.shutdown_timeout_ms, 25_000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn rejects_zero_limits_and_bad_shutdown_order() {
        let mut c = Cli::parse_from(["zerobatch"]).serve;
        c.max_batch_size = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Zero("max-batch-size"))
        ));
        let mut c = Cli::parse_from(["zerobatch"]).serve;
        c.shutdown_delay_ms = 30_000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DelayNotUnderTimeout { .. })
        ));
        let c = Cli::parse_from(["zerobatch", "--api-key", ""]).serve;
        assert!(matches!(c.validate(), Err(ConfigError::EmptyApiKey)));
        let c = Cli::parse_from(["zerobatch", "--queue-visibility-timeout-ms", "10"]).serve;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::VisibilityTooShort(10))
        ));
        assert!(Cli::try_parse_from(["zerobatch", "--queue", "redis://h:1"]).is_err());
        // clap's own message would quote the value: ours shows it with the password hidden.
        let e = Cli::try_parse_from(["zerobatch", "--queue", "redis://u:hunter2@h:1"])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("u:***@h:1"), "{e}");
        let c = Cli::parse_from(["zerobatch", "--queue", "redis://h:1/jobs"]).serve;
        assert!(c.queue.is_some() && c.validate().is_ok());
    }
}
