//! The HTTP/1 server loop, instead of `axum::serve`, which has no limits:
//! anyone who can reach the port could hold every connection open forever.
//!
//! - a connection limit: past `max_connections`, a new connection gets a
//!   JSON 503 and is closed, so the ones already open keep working;
//! - a header-read timeout (hyper's): a request's headers must arrive
//!   within `header_read_timeout`, counted from connecting or from the end
//!   of the previous answer, so slow-header clients and idle kept-alive
//!   connections do not hold a place;
//! - a write-stall timeout: an answer (an event stream included) that the
//!   client stops reading for `idle_timeout` ends the connection (bodies
//!   that stop arriving are cut off by the API's guard, per request).
//!
//! Each request carries the client address (`ConnectInfo<SocketAddr>`) for
//! the failed sign-in limit. Limits that bite are logged, at most every
//! ten seconds per kind, with how many were not logged.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::config::HttpConfig;
use crate::http::envelope::Envelope;

/// The connection-level limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`HttpConfig::header_read_timeout_secs`].
    pub header_read_timeout: Duration,
    /// See [`HttpConfig::idle_timeout_secs`].
    pub idle_timeout: Duration,
    /// See [`HttpConfig::max_connections`].
    pub max_connections: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            max_connections: c.max_connections,
        }
    }
}

/// Connections being refused at once at most; past it they are dropped
/// without an answer (a flood must not grow tasks).
const MAX_REFUSING: usize = 64;

/// Serves `app` on `listener` until `stop` resolves, then stops accepting
/// and waits for open connections to finish (callers bound that wait).
pub async fn serve(
    listener: TcpListener,
    app: Envelope,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = GracefulShutdown::new();
    let over_limit = Arc::new(Throttle::default());
    let no_request = Arc::new(Throttle::default());
    let stalled = Arc::new(Throttle::default());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the limit
                    // above should prevent it; do not spin meanwhile.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            if let Some(missed) = over_limit.hit() {
                tracing::warn!(%peer, max = limits.max_connections, not_logged = missed,
                    "connection limit reached (http.max_connections): refusing new connections");
            }
            if let Ok(slot) = Arc::clone(&refusing).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let served = Arc::new(AtomicU64::new(0));
        let tower = TowerToHyperService::new(app.clone());
        let counter = Arc::clone(&served);
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            counter.fetch_add(1, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&tower, req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(Watched::new(stream, limits.idle_timeout)), svc);
        let conn = graceful.watch(conn);
        let (no_request, stalled) = (Arc::clone(&no_request), Arc::clone(&stalled));
        let limits = limits.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() && served.load(Ordering::Relaxed) == 0 {
                    if let Some(missed) = no_request.hit() {
                        tracing::info!(%peer, secs = limits.header_read_timeout.as_secs(),
                            not_logged = missed,
                            "closed a connection that sent no request in time (http.header_read_timeout_secs)");
                    }
                } else if is_stall(&e) {
                    if let Some(missed) = stalled.hit() {
                        tracing::info!(%peer, secs = limits.idle_timeout.as_secs(),
                            not_logged = missed,
                            "closed a connection that stopped reading its answer (http.idle_timeout_secs)");
                    }
                } else {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_stall(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

/// Answers a connection over the limit with the one error shape and
/// closes it. The request is read (briefly, boundedly) before closing,
/// because closing with unread bytes resets the connection and the client
/// would see a reset instead of the answer.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the daemon has \
        as many connections open as http.max_connections allows; try again in a moment\"}}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let second = Duration::from_secs(1);
    let mut head = [0u8; 4096];
    // Most clients send their request at once; wait for it only a little.
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await;
    if tokio::time::timeout(second, stream.write_all(answer.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let mut drained = 0usize;
    let _ = tokio::time::timeout(second, async {
        while drained < 64 * 1024 {
            match stream.read(&mut head).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Logs a kind of event at most every ten seconds.
#[derive(Debug, Default)]
struct Throttle {
    last: Mutex<Option<Instant>>,
    missed: AtomicU64,
}

impl Throttle {
    /// `Some(events not logged since the last time)` when it is time to
    /// log again.
    fn hit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.missed.swap(0, Ordering::Relaxed))
    }
}

/// A TCP stream whose writes fail with `TimedOut` when the peer has
/// accepted nothing for `idle`: a client that stops reading cannot hold a
/// connection (and its event stream's buffers) forever.
struct Watched {
    io: TcpStream,
    idle: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    fn new(io: TcpStream, idle: Duration) -> Self {
        Self {
            io,
            idle,
            stall: None,
        }
    }

    /// After a write made no progress: starts the stall clock, or fails
    /// when it has run out.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let idle = self.idle;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer for the idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The client address of a request, when it came through [`serve`].
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}
