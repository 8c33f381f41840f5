//! The `zerobatch` binary: parse the configuration, bind the port at once, serve until
//! SIGTERM/SIGINT, drain, exit (non-zero if the model could not be loaded).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use zerobatch::config::{Cli, Command};
use zerobatch::server::{self, Outcome};

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: container log collectors would store the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Keeps `RUST_BACKTRACE=1` for panics but stops it from unwinding the stack for every error
/// value a library builds: the Azure SDK builds (and drops) one for each optional header it
/// finds absent, several per request, so with `RUST_BACKTRACE=1` an idle replica polling its
/// queue spent about a sixth of its CPU unwinding (perf, 2026-12-07). `RUST_LIB_BACKTRACE`
/// set by the user still wins. Called before any thread starts (setting a variable is not
/// thread-safe).
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    zerobatch::alloc::configure();
    quiet_library_backtraces();
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Some(Command::Download { model, revision }) => {
            use zerobatch::model::{files, gguf_hub, hub::Hub};
            // A GGUF on the hub: the path of its file (the first part, when split); else the
            // checkpoint's directory.
            let path = match gguf_hub::GgufRef::parse(&model) {
                Some(gguf) => gguf.and_then(|g| gguf_hub::resolve(&g, &revision, &Hub::from_env())),
                None => files::resolve(&model, &revision).map(|files| {
                    files
                        .weights
                        .parent()
                        .map(std::path::Path::to_path_buf)
                        .unwrap_or_default()
                }),
            };
            match path {
                Ok(path) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => serve(cli.serve, process_start),
    }
}

/// The first SIGTERM/SIGINT starts the drain; a further one skips the rest of the shutdown
/// delay. One listener logs each signal once.
fn shutdown_signals() -> server::ShutdownSignals<
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()> + Send + 'static,
> {
    let (count_tx, count_rx) = tokio::sync::watch::channel(0u32);
    match zerobatch::lifecycle::TerminationSignals::new() {
        Ok(mut signals) => {
            tokio::spawn(async move {
                loop {
                    let name = signals.next().await;
                    let n = *count_tx.borrow() + 1;
                    if n == 1 {
                        tracing::info!("{name} received: draining");
                    }
                    count_tx.send_replace(n);
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGTERM/SIGINT: {e}"),
    }
    let wait_for = |n: u32| {
        let mut rx = count_rx.clone();
        async move {
            if rx.wait_for(|c| *c >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    server::ShutdownSignals {
        first: wait_for(1),
        second: wait_for(2),
    }
}

fn serve(config: zerobatch::config::ServeConfig, process_start: Instant) -> ExitCode {
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let threads = zerobatch::config::available_cores().min(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = match server::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot listen on {addr}: {e}");
                return None;
            }
        };
        Some(server::run(config, listener, shutdown_signals(), process_start).await)
    });
    // Workers may still be blocked in the queue; they end with the process.
    runtime.shutdown_background();
    match outcome {
        Some(Outcome::Drained) => ExitCode::SUCCESS,
        Some(Outcome::LoadFailed) | None => ExitCode::FAILURE,
    }
}
