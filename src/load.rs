//! Loading the model named by `--model` and starting its service, on the loader thread, while
//! the front end already answers (bind first, then load).
//!
//! The task follows from the model: a GGUF file (local, or `owner/name:QUANT` from the hub), or
//! a checkpoint whose `model_type` is `gpt2`, generates; every other checkpoint embeds. Every step (resolving the files, reading them, the
//! weights, the warm-up pass, starting the threads) runs under `catch_unwind`: a panic that some
//! model file reaches fails the load like any other error, with the reason in the log and in
//! `/readyz`, and the process exits non-zero so the platform restarts it. A load never ends in
//! a replica that says "loading" for ever.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{available_cores, ServeConfig};
use crate::embed::batcher::BatchLimits;
use crate::embed::{EmbedService, EmbedSettings};
use crate::error::panic_message;
use crate::generate::engine::{Engine, EngineLimits};
use crate::generate::service::{GenerateService, GenerateSettings};
use crate::generate::{self, GenerationSource};
use crate::lifecycle::{Lifecycle, Serving};
use crate::metrics;
use crate::model::{self, LoadOptions, ModelError};
use crate::offload::Offload;

/// Milliseconds rounded to hundredths, for log fields (no float noise like 1.2379559999999998).
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Logs a start-up phase and exports it as `zerobatch_startup_seconds{phase}`.
pub fn startup_phase(name: &'static str, took: Duration) {
    metrics::record_startup_phase(name, took);
    tracing::info!(phase = name, ms = millis(took), "start-up phase done");
}

/// Runs `step`; a panic in it becomes an error naming `what` was being done.
fn guarded<T>(what: &str, step: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        Err(format!(
            "{what} panicked (a bug: please report it with the model's files): {}",
            panic_message(&panic)
        ))
    })
}

/// `attention q4_1; feed_forward q4_1+int8; …`, for the start-up log.
fn formats_line(formats: &std::collections::BTreeMap<&'static str, String>) -> String {
    formats
        .iter()
        .map(|(kind, format)| format!("{kind} {format}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the model and serves it on this thread until the process ends: the embedding
/// workers are joined here, the generation engine's step loop runs here. A failure at any
/// step is reported to `lifecycle` (which makes the process exit).
pub fn load_and_serve(
    config: ServeConfig,
    lifecycle: Arc<Lifecycle>,
    offload: Offload,
    process_start: Instant,
) {
    if let Err(reason) = guarded("loading the model", || {
        run(&config, &lifecycle, offload, process_start)
    }) {
        tracing::error!("cannot load the model: {reason}");
        lifecycle.failed(reason);
    }
}

fn run(
    config: &ServeConfig,
    lifecycle: &Arc<Lifecycle>,
    offload: Offload,
    process_start: Instant,
) -> Result<(), String> {
    let options = LoadOptions {
        dtype: config.dtype,
        kernel_cap: config.kernel_cap,
    };
    // A local file first; then a GGUF on the hub (owner/name:QUANT).
    if let Some(path) = generate::gguf_path(&config.model) {
        return serve_generation(
            config,
            lifecycle,
            GenerationSource::Gguf {
                id: generate::gguf_model_id(&path),
                path,
            },
            options,
            offload,
            process_start,
        );
    }
    if let Some(gguf) = model::gguf_hub::GgufRef::parse(&config.model) {
        let t = Instant::now();
        let path = gguf
            .and_then(|g| {
                model::gguf_hub::resolve(&g, &config.revision, &model::hub::Hub::from_env())
            })
            .map_err(|e| e.to_string())?;
        startup_phase("resolve", t.elapsed());
        return serve_generation(
            config,
            lifecycle,
            GenerationSource::Gguf {
                path,
                id: config.model.clone(),
            },
            options,
            offload,
            process_start,
        );
    }
    let t = Instant::now();
    let files =
        model::files::resolve(&config.model, &config.revision).map_err(|e| e.to_string())?;
    startup_phase("resolve", t.elapsed());
    if model::model_type(&files)
        .map_err(|e| e.to_string())?
        .as_deref()
        == Some("gpt2")
    {
        return serve_generation(
            config,
            lifecycle,
            GenerationSource::Gpt2(Box::new(files)),
            options,
            offload,
            process_start,
        );
    }
    let loaded = model::load_files(&files, options, startup_phase).map_err(|e| e.to_string())?;
    // Nothing is recorded before the metrics recorder is in place.
    metrics::wait_installed();
    tracing::info!(
        model = %loaded.info.id,
        dtype = %loaded.info.dtype,
        kernel = %loaded.info.kernel,
        "linear layers run in {} on the {} kernels",
        loaded.info.dtype,
        loaded.info.kernel
    );
    let settings = EmbedSettings {
        workers: config.worker_count(),
        cores: available_cores(),
        batch: BatchLimits {
            max_size: config.max_batch_size,
            max_tokens: config.max_batch_tokens,
        },
        batch_delay: config.max_batch_delay(),
        queue_capacity: config.queue_capacity,
        request_timeout: config.request_timeout(),
    };
    let warm_started = Instant::now();
    let on_warm = {
        let lifecycle = lifecycle.clone();
        Arc::new(move |warm: Result<(), String>| match warm {
            Ok(()) => {
                if lifecycle.worker_warm() {
                    startup_phase("warmup", warm_started.elapsed());
                    startup_phase("total", process_start.elapsed());
                    tracing::info!("ready to serve");
                }
            }
            Err(reason) => {
                tracing::error!("cannot load the model: {reason}");
                lifecycle.failed(reason);
            }
        })
    };
    let (service, pool) = EmbedService::start(loaded, settings, offload, on_warm)
        .map_err(|e| format!("cannot start the worker threads: {e}"))?;
    lifecycle.loaded(Serving::Encoder(service));
    pool.join();
    Ok(())
}

/// Loads a generation model, warms it up, and runs its engine on this thread.
fn serve_generation(
    config: &ServeConfig,
    lifecycle: &Arc<Lifecycle>,
    source: GenerationSource,
    options: LoadOptions,
    offload: Offload,
    process_start: Instant,
) -> Result<(), String> {
    let loaded = generate::load(&source, options, available_cores(), startup_phase)
        .map_err(|e: ModelError| e.to_string())?;
    // Nothing is recorded before the metrics recorder is in place.
    metrics::wait_installed();
    let c = loaded.model.shape();
    tracing::info!(
        model = %loaded.info.id,
        dtype = %loaded.info.dtype,
        kernel = %loaded.info.kernel,
        layers = c.n_layer,
        context = c.context,
        weights_mb = loaded.model.weight_bytes() / 1_000_000,
        "text generation on the {} kernels; weights: {}",
        loaded.info.kernel,
        formats_line(&loaded.info.weight_formats)
    );
    // Warm up before taking requests: one token through every layer faults in the weights.
    // A model that cannot run one step fails the load here, not at the first request.
    let warm_started = Instant::now();
    guarded("the warm-up step", || {
        let mut cache = loaded.model.new_cache(1);
        loaded.model.step(&mut [generate::decoder::StepInput {
            cache: &mut cache,
            tokens: &[0],
            want_logits: true,
        }]);
        Ok(())
    })?;
    let limits = EngineLimits {
        max_batch_total_tokens: config.max_batch_total_tokens,
        max_running: config.max_batch_size,
        prefill_chunk: config.max_prefill_tokens,
        prefix_cache_bytes: config
            .prefix_cache_bytes
            .unwrap_or(config.max_batch_total_tokens * c.cache.bytes_per_token() / 2),
    };
    tracing::info!(
        prefix_cache_mb = limits.prefix_cache_bytes / 1_000_000,
        "prefix cache: {}",
        if limits.prefix_cache_bytes == 0 {
            "off"
        } else {
            "on"
        }
    );
    let (engine, handle) = Engine::new(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        limits,
        config.queue_capacity,
    );
    let settings = GenerateSettings {
        default_max_new_tokens: config.default_max_new_tokens,
        parse_special_in_chat: config.parse_special_in_chat,
        split_reasoning: config.reasoning_format.splits(),
        grammar_cache_bytes: config.grammar_cache_bytes,
        request_timeout: config.request_timeout(),
    };
    let service = GenerateService::new(
        loaded.info,
        loaded.tokenizer,
        loaded.chat,
        loaded.defaults,
        handle,
        offload,
        settings,
    );
    lifecycle.loaded(Serving::Generation(Arc::new(service)));
    // One step loop serves every sequence, and it is warm.
    lifecycle.all_warm();
    startup_phase("warmup", warm_started.elapsed());
    startup_phase("total", process_start.elapsed());
    tracing::info!("ready to serve");
    engine.run(available_cores());
    Ok(())
}
