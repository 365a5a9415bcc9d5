//! The HTTP/1.1 server: an accept loop that caps concurrent connections,
//! refuses the ones over the cap with a problem, and survives running out
//! of file descriptors; per-connection deadlines (`conn`); the descriptor
//! limit (`fd`).

mod conn;
mod fd;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::server::conn::http1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fd::{
    DEFAULT_MAX_CONNECTIONS_CEILING, FDS_FOR_THE_REST, FdLimit, default_max_connections,
    raise_fd_limit,
};

use super::error::ApiError;
use super::guards::{MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MAX_URI_BYTES};

/// hyper's read buffer, which bounds a request head: past it hyper answers
/// 431 itself, without a body. Above Spool's own limits, so that those
/// answer first, with a problem; far below hyper's default (~400 KiB),
/// since every connection may fill it.
const HEAD_BUFFER_BYTES: usize = 64 * 1024;
const _: () = assert!(HEAD_BUFFER_BYTES > MAX_URI_BYTES + MAX_HEADER_BYTES + 1024);

/// Header fields hyper parses; past it hyper answers 431 itself, without a
/// body. Above Spool's own limit for the same reason.
const HEAD_FIELDS: usize = MAX_HEADER_FIELDS + 28;

/// Refusals under way at once; connections over the cap beyond these are
/// closed unanswered. Each holds a descriptor for at most `REFUSAL_TIME`.
const REFUSALS_AT_ONCE: usize = 64;
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// What a refused client may send before its connection is closed anyway.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// Waits after a failed accept (out of descriptors, memory): doubling from
/// the first to the last while it keeps failing.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_LAST: Duration = Duration::from_secs(1);

/// A repeated failure is logged at most this often, with how many times it
/// happened meanwhile.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How connections are served, resolved at start-up.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops
/// accepting, lets each connection finish the request it is serving, and
/// returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    stop: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.max_buf_size(HEAD_BUFFER_BYTES)
        .max_headers(HEAD_FIELDS)
        // Spool's own deadlines (`conn`) tell a slow head from an idle
        // keep-alive connection; hyper's timer would count both as one.
        .header_read_timeout(None);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let refusal = Refusal::new(settings.max_connections).await;
    let connections = TaskTracker::new();
    let mut accept_failures = Throttle::default();
    let mut over_cap = Throttle::default();
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                accepted
            }
            Err(error) if gone_before_accepted(&error) => continue,
            Err(error) => {
                // The connection waits in the backlog meanwhile; connections
                // that close free descriptors.
                if let Some(unlogged) = accept_failures.admit() {
                    tracing::error!(
                        %error,
                        failures_unlogged = unlogged,
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "cannot accept connections"
                    );
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_LAST);
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                connections.spawn(conn::serve(
                    stream,
                    peer,
                    slot,
                    router.clone(),
                    http.clone(),
                    settings,
                    stop.clone(),
                ));
            }
            Err(_) => {
                if let Some(unlogged) = over_cap.admit() {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        refusals_unlogged = unlogged,
                        "refusing connections: as many are open as SPOOL_MAX_CONNECTIONS allows"
                    );
                }
                refusal.send(stream);
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Accept errors that concern one connection, which its client gave up or
/// lost before it was accepted (Linux reports some network errors there).
fn gone_before_accepted(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
    )
}

/// The answer to a connection over the cap: written straight to the
/// socket, without hyper, so that refusing costs a descriptor for at most
/// [`REFUSAL_TIME`] and no memory beyond this shared answer.
struct Refusal {
    answer: Bytes,
    slots: Arc<Semaphore>,
}

impl Refusal {
    async fn new(max_connections: usize) -> Self {
        let response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "the service has {max_connections} connections open, as many as it takes; try again shortly"
            ),
        )
        .with_retry_after(1)
        .closing()
        .into_response();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let mut answer = format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or_default()
        );
        for (name, value) in &parts.headers {
            answer.push_str(&format!(
                "{name}: {}\r\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        answer.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut answer = answer.into_bytes();
        answer.extend_from_slice(&body);
        Self {
            answer: Bytes::from(answer),
            slots: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        }
    }

    fn send(&self, stream: TcpStream) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return;
        };
        let answer = self.answer.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REFUSAL_TIME, answer_and_close(stream, &answer)).await;
        });
    }
}

async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    // Closing with the client's request unread would send a reset, which
    // can destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES {
        let read = stream.read(&mut sink).await?;
        if read == 0 {
            break;
        }
        drained += read;
    }
    Ok(())
}

/// Lets a repeated event through to the log at most every [`LOG_EVERY`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// `Some(events left unlogged since the last line)` when a line is due.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}
