//! One connection: its deadlines (request head, idle keep-alive, stalled
//! writes) and the requests on it, each followed from its head to the end
//! of its response.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::ConnectionSettings;

/// Serves one connection until it closes, times out, or is drained by
/// `stop` (the request in progress is answered, then it closes).
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    router: Router,
    http: Arc<http1::Builder>,
    settings: ConnectionSettings,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new(&settings));
    let io = TokioIo::new(Watched {
        slot: Some(slot),
        stream,
        activity: activity.clone(),
        read_timer: None,
        write_timer: None,
        write_stalled_since: None,
    });
    let connection = http.serve_connection(
        io,
        Requests {
            router,
            activity,
            peer,
        },
    );
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    let outcome = loop {
        tokio::select! {
            outcome = connection.as_mut() => break outcome,
            () = stop.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    // The client's doing (a reset, a head that never came, garbage):
    // not the operator's concern, and an attack would flood the log.
    if let Err(error) = outcome {
        tracing::debug!(%error, "connection ended");
    }
}

/// "Nothing yet" in [`Activity`]'s instants.
const NONE: u64 = u64::MAX;

/// What a connection is doing, shared by its IO, which enforces the
/// deadlines, and its service, which sees requests begin and end. All of it
/// is touched from the connection's own task only; atomics make it `Sync`.
struct Activity {
    opened: Instant,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// Requests whose response has not been written in full.
    in_flight: AtomicUsize,
    /// When the last response ended (ms after `opened`); NONE before the
    /// first.
    idle_since_ms: AtomicU64,
    /// When the first byte of a head not yet complete arrived (ms after
    /// `opened`); NONE when none has.
    head_since_ms: AtomicU64,
}

impl Activity {
    fn new(settings: &ConnectionSettings) -> Self {
        Self {
            opened: Instant::now(),
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(NONE),
            head_since_ms: AtomicU64::new(NONE),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == NONE
        {
            self.head_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Until when a read may wait, and what it was waiting for. None while
    /// a request is in flight: its body has a deadline of its own (see
    /// `guards`), and a response (an event stream, a long-poll) may take
    /// as long as it takes.
    fn read_deadline(&self) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head_since = self.head_since_ms.load(Ordering::Relaxed);
        if head_since != NONE {
            return Some((
                self.at(head_since) + self.header_read_timeout,
                "the request head did not arrive within the header read timeout",
            ));
        }
        match self.idle_since_ms.load(Ordering::Relaxed) {
            // A new connection owes its first request at once.
            NONE => Some((
                self.opened + self.header_read_timeout,
                "no request head within the header read timeout of connecting",
            )),
            idle_since => Some((
                self.at(idle_since) + self.idle_timeout,
                "idle for the idle timeout",
            )),
        }
    }
}

/// A request in flight, from its head until its response is written (or
/// abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since_ms.store(NONE, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0
                .idle_since_ms
                .store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The router as hyper calls it, following each request.
struct Requests {
    router: Router,
    activity: Arc<Activity>,
    /// The client's address, for the request's log line.
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Tracked;

    fn call(&self, mut request: Request<Incoming>) -> Tracked {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let in_flight = InFlight::begin(self.activity.clone());
        let mut router = self.router.clone();
        Tracked {
            inner: router.call(request),
            in_flight: Some(in_flight),
        }
    }
}

struct Tracked {
    inner: RouteFuture<Infallible>,
    in_flight: Option<InFlight>,
}

impl Future for Tracked {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Ok(response) = ready!(Pin::new(&mut this.inner).poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that ends its request's flight when hyper is done with
/// it: written, or dropped with the connection.
struct TrackedBody {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, failing a read that waits past the connection's deadline
/// and a write that makes no progress for the idle timeout (a client that
/// stopped reading).
struct Watched {
    /// Declared before the socket, so dropped before it: a client that saw
    /// the connection close finds its slot free.
    slot: Option<OwnedSemaphorePermit>,
    stream: TcpStream,
    activity: Arc<Activity>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    write_stalled_since: Option<Instant>,
}

/// `slot`'s timer, set to `deadline`; made on first use.
fn timer_at(slot: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) -> Pin<&mut Sleep> {
    let timer = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut()
}

impl Watched {
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.write_stalled_since = None;
            return poll;
        }
        let since = *self.write_stalled_since.get_or_insert_with(Instant::now);
        let deadline = since + self.activity.idle_timeout;
        if timer_at(&mut self.write_timer, deadline)
            .poll(cx)
            .is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the idle timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let Some((deadline, waiting_for)) = this.activity.read_deadline() else {
                    return Poll::Pending;
                };
                if timer_at(&mut this.read_timer, deadline).poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, waiting_for)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        // hyper flushes after every response but, once idle, reads again
        // only when the socket becomes readable: the idle deadline is set
        // here, and its expiry wakes the task, whose next read fails.
        if let Some((deadline, _)) = this.activity.read_deadline()
            && timer_at(&mut this.read_timer, deadline).poll(cx).is_ready()
        {
            cx.waker().wake_by_ref();
        }
        this.watch_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Free the slot before the client can see the close.
        this.slot = None;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
