//! Connections for both listeners: the accept loop with a connection cap, TLS handshakes (each on its
//! own task, under the header-read timeout, so a slow handshake never holds the accept loop), and the
//! HTTP listener's connection driver (hyper) with header-read and idle timeouts and HTTP/2 keep-alive.
//! The gRPC listener hands the same [`Conn`]s to tonic, which applies its own HTTP/2 settings.

use super::tls::TlsState;
use crate::config::Limits;
use crate::metrics;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Seconds from the config as a `Duration` (validated finite and ≥ 0 at load).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An accepted connection: plain TCP or TLS over it. Holds one of its listener's connection slots
/// and the open-connections gauge until it is dropped.
pub struct Conn {
    io: ConnIo,
    remote: SocketAddr,
    local: SocketAddr,
    listener: &'static str,
    _slot: OwnedSemaphorePermit,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn new(
        io: ConnIo,
        remote: SocketAddr,
        local: SocketAddr,
        listener: &'static str,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        metrics::connections_open(listener, 1.0);
        Conn { io, remote, local, listener, _slot: slot }
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::connections_open(self.listener, -1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What tonic may ask of a connection (`Request::remote_addr`).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo { local: self.local, remote: self.remote }
    }
}

/// Accepts on `listener` on its own task and yields ready connections: at most
/// `limits.max_connections` open at once (beyond it a connection is closed as soon as it is
/// accepted, counted in `slate_connections_refused_total{reason="max_connections"}`), TLS handshakes
/// done concurrently under `limits.header_read_timeout_s`. The task ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    limits: &Limits,
    tls: Option<Arc<TlsState>>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = secs(limits.header_read_timeout_s);
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (ECONNABORTED, EMFILE...): log, back off a moment, go on.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                metrics::connection_refused(name, metrics::REFUSE_MAX_CONNECTIONS);
                tracing::debug!(listener = name, %remote, "connection refused: limits.max_connections open");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(remote);
            match &tls {
                None => {
                    if tx.send(Ok(Conn::new(ConnIo::Plain(tcp), remote, local, name, slot))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let conn =
                                    Conn::new(ConnIo::Tls(Box::new(stream)), remote, local, name, slot);
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => {
                                metrics::connection_refused(name, metrics::REFUSE_TLS);
                                tracing::debug!(listener = name, %remote, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                metrics::connection_refused(name, metrics::REFUSE_TLS);
                                tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Requests in flight on one connection and when the last one ended (ms since the connection opened),
/// for the idle timeout.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has had nothing in flight (zero while a request is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// Counts a request in flight from its call until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(a))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is finished or dropped.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on the HTTP listener's connections until `stop` turns true, then lets every
/// connection finish its in-flight requests (HTTP/1.1 closes after the current response, HTTP/2 sends
/// GOAWAY) and returns when all have closed. Dropping the future closes every connection at once.
pub async fn serve_http(
    conns: impl Stream<Item = io::Result<Conn>> + Send + 'static,
    router: axum::Router,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) {
    use futures::StreamExt;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(secs(limits.header_read_timeout_s))
        .keep_alive(true);
    let keepalive = (limits.keepalive_interval_s > 0.0).then(|| secs(limits.keepalive_interval_s));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(secs(limits.keepalive_timeout_s));
    let builder = Arc::new(builder);
    let idle_timeout = secs(limits.idle_timeout_s);
    let mut tasks = tokio::task::JoinSet::new();
    let mut conns = Box::pin(conns);
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            c = conns.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
            // Reap finished connections as we go so the set stays the size of the open ones.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        });
        let tracked = Arc::clone(&activity);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let guard = InFlight::new(&tracked);
            let mut router = router.clone();
            async move {
                use tower::Service;
                let resp = router.call(req.map(axum::body::Body::new)).await?;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|inner| axum::body::Body::new(TrackedBody { inner, _in_flight: guard })),
                )
            }
        });
        let builder = Arc::clone(&builder);
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let io = TokioIo::new(conn);
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let mut tick = tokio::time::interval(
                idle_timeout.min(Duration::from_secs(1)).max(Duration::from_millis(10)),
            );
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !closing => {
                        if activity.idle_for() >= idle_timeout {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    // Stop accepting (dropping the stream ends the accept task), then drain the open connections.
    drop(conns);
    while tasks.join_next().await.is_some() {}
}
