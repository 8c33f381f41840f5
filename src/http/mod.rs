//! The HTTP front end: hyper 1.x over tokio, HTTP/1.1, no framework.
//!
//! This box parses, validates, authenticates and tokenizes (see `routes`), then hands inputs
//! to the queue; no model work runs on tokio threads. It also owns the connections, which
//! matters for a clean drain:
//! - after SIGTERM (during `--shutdown-delay-ms`) every response carries `Connection: close`,
//!   so keep-alive clients move to other replicas while this one still accepts;
//! - to stop, the accept loop makes the kernel drop new SYNs, lets handshakes under way
//!   finish, takes every connection in the accept backlog, then closes the listener: none is
//!   reset, and new clients are refused;
//! - the connections then finish their requests and close (see [`Connections::drain`]).
//!
//! Limits that keep one client from taking the replica down for everyone: the number of
//! connections (`connections`), a header timeout that also closes idle keep-alive
//! connections, a deadline for the whole body, a global budget of body bytes in flight, and
//! a bound on concurrent large tokenizations (`routes`).

pub mod api;
pub mod body;
pub mod connections;
pub mod docs;
pub mod error;
pub mod generate;
pub mod jobs;
pub mod routes;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::ServeConfig;
use crate::lifecycle::Lifecycle;
use crate::metrics;
use crate::queue::Queue;
use connections::{Admission, ConnectionGate, ConnectionSlot};

/// What every handler shares.
pub struct AppState {
    pub config: ServeConfig,
    pub lifecycle: Arc<Lifecycle>,
    pub queue: Arc<Queue>,
    /// Bytes of request bodies that may be held at once (`--max-inflight-body-bytes`).
    pub body_budget: Arc<Semaphore>,
    /// Large tokenizations that may run at once (one per core, off the tokio threads).
    pub tokenize_slots: Arc<Semaphore>,
    pub connections: Arc<ConnectionGate>,
    /// The queue broker (`--queue`): job state for `/v1/jobs`, health for `/readyz`.
    pub broker: Option<Arc<crate::broker::Broker>>,
    inflight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    pub fn new(config: ServeConfig, lifecycle: Arc<Lifecycle>, queue: Arc<Queue>) -> Self {
        let max_connections = config.max_connections.map_or_else(
            || connections::default_max_connections(connections::raise_file_limit()),
            std::num::NonZeroUsize::get,
        );
        Self {
            body_budget: Arc::new(Semaphore::new(config.max_inflight_body_bytes)),
            tokenize_slots: Arc::new(Semaphore::new(crate::config::available_cores())),
            connections: ConnectionGate::new(max_connections),
            config,
            lifecycle,
            queue,
            broker: None,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// The same state with the queue broker used by `/v1/jobs` and `/readyz`.
    pub fn with_broker(mut self, broker: Arc<crate::broker::Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Waits until no request is being handled.
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A response body: whole (`Full`, most routes) or streamed (Server-Sent Events).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Counts a streamed response as in flight until its body ends, so that the drain waits for
/// streams to finish (the request's own guard ends when the headers are sent). Not in the
/// inflight gauge: the request was counted there already.
pub struct StreamGuard {
    state: Arc<AppState>,
}

impl StreamGuard {
    /// Starts counting.
    pub fn new(state: Arc<AppState>) -> Self {
        state.inflight.fetch_add(1, Ordering::AcqRel);
        Self { state }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.state.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

/// A JSON response with the given status.
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("response types always serialize");
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Counts a request as in flight for as long as it lives (every request, for the drain; the
/// `zerobatch_inflight_requests` gauge leaves out probes and scrapes, which are not load).
struct InflightGuard<'a> {
    state: &'a AppState,
    in_gauge: bool,
}

impl<'a> InflightGuard<'a> {
    fn new(state: &'a AppState, route: &str) -> Self {
        state.inflight.fetch_add(1, Ordering::AcqRel);
        let in_gauge = !matches!(route, "/healthz" | "/readyz" | "/metrics");
        if in_gauge {
            metrics::inflight_delta(1.0);
        }
        Self { state, in_gauge }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.in_gauge {
            metrics::inflight_delta(-1.0);
        }
        if self.state.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

async fn service(
    state: Arc<AppState>,
    req: Request<hyper::body::Incoming>,
    admission: Admission,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = routes::route_label(req.uri().path());
    let _inflight = InflightGuard::new(&state, route);
    let result = if admission == Admission::ProbesOnly && !routes::is_probe(route) {
        Err(error::ApiError::Unavailable {
            reason: format!(
                "the server holds its maximum of {} connections (--max-connections); this one answers only the probes; retry",
                state.connections.max()
            ),
            kind: "connection_limit",
            retry_after_secs: 1,
        })
    } else {
        routes::handle(state.clone(), req).await
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() && e.status() != StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(route, "{e}");
            }
            let close = e.closes_connection();
            let mut r = e.into_response().map(BodyExt::boxed_unsync);
            if close {
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    if state.lifecycle.is_draining() || admission == Admission::ProbesOnly {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    metrics::record_request(route, response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// The open connections, to be drained at shutdown.
pub struct Connections {
    graceful: GracefulShutdown,
    state: Arc<AppState>,
}

impl Connections {
    /// Lets connections finish: waits briefly for requests on connections accepted last to
    /// arrive, waits for every in-flight request, then closes idle keep-alive connections and
    /// waits for all connections to end.
    pub async fn drain(self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.state.wait_idle().await;
        self.graceful.shutdown().await;
    }
}

fn spawn_connection(stream: TcpStream, state: &Arc<AppState>, graceful: &GracefulShutdown) {
    let (admission, slot) = state.connections.admit();
    let Some(slot) = slot else {
        // Past the probe reserve too: closing now keeps the descriptor budget intact.
        drop(stream);
        return;
    };
    serve_connection(stream, state, graceful, admission, slot);
}

fn serve_connection(
    stream: TcpStream,
    state: &Arc<AppState>,
    graceful: &GracefulShutdown,
    admission: Admission,
    slot: ConnectionSlot,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = match admission {
        Admission::Full => state.config.header_timeout(),
        _ => connections::PROBE_HEADER_TIMEOUT.min(state.config.header_timeout()),
    };
    let state = state.clone();
    let svc = service_fn(move |req| service(state.clone(), req, admission));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(admission == Admission::Full)
        .serve_connection(TokioIo::new(stream), svc);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!("connection ended with an error: {e}");
        }
    });
}

/// Makes the kernel drop new connection attempts (TCP segments with SYN and without ACK) at
/// the listening socket, with a classic BPF filter; segments that complete handshakes already
/// under way still pass. After a moment for those to finish, the accept queue can be drained
/// and stays empty, so closing the listener resets nothing. Clients whose SYN was dropped
/// retry it and are then refused, as a closed port refuses. Without this, a connection
/// completing between the last `accept` and the `close` is reset by the kernel. Connections
/// already accepted or queued are separate sockets and are not affected.
#[cfg(target_os = "linux")]
fn refuse_new_handshakes(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // At the socket filter the packet starts at the TCP header; byte 13 holds the flags.
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program = [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0x12), // SYN | ACK
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0x02), // SYN alone?
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),                    // drop
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),             // keep
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: a valid socket descriptor and a correctly sized, live filter program (the
    // kernel copies it during the call).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn refuse_new_handshakes(_fd: i32) -> std::io::Result<()> {
    Ok(())
}

/// Accepts connections until `stop` turns true, then takes the connections already waiting in
/// the kernel's backlog, closes the listener and returns the open connections.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> Connections {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            biased;
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn_connection(stream, &state, &graceful),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    state.connections.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    // No new handshakes; accept the ones under way for a moment (they finish within a round
    // trip), then drain the queue and close.
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        if let Err(e) = refuse_new_handshakes(listener.as_raw_fd()) {
            tracing::warn!("could not stop new handshakes before closing the listener: {e}");
        }
    }
    let settle = tokio::time::sleep(Duration::from_millis(50));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = &mut settle => break,
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                spawn_connection(stream, &state, &graceful);
            },
        }
    }
    match listener.into_std() {
        Ok(std_listener) => {
            let mut taken = 0;
            while let Ok((stream, _)) = std_listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        spawn_connection(stream, &state, &graceful);
                        taken += 1;
                    }
                }
            }
            tracing::info!(backlog_connections = taken, "stopped accepting");
            drop(std_listener);
        }
        Err(e) => tracing::warn!("could not drain the accept backlog: {e}"),
    }
    Connections { graceful, state }
}
