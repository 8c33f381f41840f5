//! The connections: accepting them (within the connection limit), serving each with hyper,
//! and closing them for the drain.
//!
//! - after SIGTERM (during `--shutdown-delay-ms`) every response carries `Connection: close`,
//!   so keep-alive clients move to other replicas while this one still accepts;
//! - to stop, the accept loop makes the kernel drop new SYNs, lets handshakes under way
//!   finish, takes every connection in the accept backlog, then closes the listener: none is
//!   reset, and new clients are refused;
//! - the connections then finish their requests and close (see [`Connections::drain`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::connections::{self, Admission, ConnectionSlot};
use super::error::ApiError;
use super::reply::Body;
use super::routes;
use super::stalled_writes::StalledWrites;
use super::state::{AppState, InflightGuard};
use crate::metrics;

async fn service(
    state: Arc<AppState>,
    req: Request<hyper::body::Incoming>,
    admission: Admission,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = routes::route_label(req.uri().path());
    let probe = routes::is_probe(route);
    let _inflight = InflightGuard::new(&state, probe);
    let result = if admission == Admission::ProbesOnly && !probe {
        Err(ApiError::ConnectionLimit(state.connections.max()))
    } else {
        routes::handle(state.clone(), req).await
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() && e.status() != StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(route, "{e}");
            }
            e.into_response()
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
    let io = StalledWrites::new(stream, state.config.client_timeout());
    let state = state.clone();
    let svc = service_fn(move |req| service(state.clone(), req, admission));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(admission == Admission::Full)
        .serve_connection(TokioIo::new(io), svc);
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
