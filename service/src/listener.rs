//! The limits of the service's one HTTPS listener (web UI, REST API, Hyper-V ingest): no
//! client can hoard connections or file descriptors.
//!
//! - **Caps**: at most [`Limits::per_client`] open connections per client address (IPv6: per
//!   /64) and [`Limits::total`] in all; a connection over a cap is closed at once, before TLS.
//! - **TLS handshake**: closed when it has not completed within [`Limits::handshake`].
//! - **Header read** (HTTP/1.1): a request head not complete within [`Limits::header_read`]
//!   closes the connection (hyper's `header_read_timeout`).
//! - **Idle**: a connection with no request in flight and nothing written to it for
//!   [`Limits::idle`] is closed, whatever it sends meanwhile: an idle keep-alive connection, a
//!   TLS connection that never sends a request, a request head trickled byte by byte, an
//!   HTTP/2 connection that only answers pings. A request being handled (a slow inventory, an
//!   8 MiB ingest push) or a response being written is not idle.
//!
//! Refused connections and failed handshakes are logged aggregated per address and minute
//! (`godwit_webui::audit`), never one line each.

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use godwit_webui::audit::{EventKind, EventLog};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection over a cap.
pub const REFUSED_CONNECTION: EventKind = EventKind {
    one: "connection refused (over the connection cap)",
    many: "connections refused (over the connection cap)",
};
/// A TLS handshake that failed or did not complete in time.
pub const FAILED_HANDSHAKE: EventKind = EventKind {
    one: "TLS handshake failed or timed out",
    many: "TLS handshakes failed or timed out",
};

/// The listener's limits; [`Limits::default`] is what `godwit serve` uses.
#[derive(Clone, Debug)]
pub struct Limits {
    pub per_client: usize,
    pub total: usize,
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A browser opens ~6 at once, a script a few, a Hyper-V host's uploader one.
            per_client: 32,
            // Well under the default 1024 file descriptors.
            total: 512,
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(20),
            idle: Duration::from_secs(30),
        }
    }
}

/// The address a connection is counted against (IPv6: its /64).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

struct Counts {
    limits: Limits,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    log: Arc<EventLog>,
}

/// Held by an open connection; gives its place back when dropped.
struct Slot {
    counts: Arc<Counts>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .counts
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counts {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let client = client_of(ip);
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.get(&client).copied().unwrap_or(0);
        if n >= self.limits.per_client || self.total.load(Ordering::SeqCst) >= self.limits.total {
            return None;
        }
        m.insert(client, n + 1);
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            counts: Arc::clone(self),
            client,
        })
    }
}

/// What a connection is doing: requests in flight, and when it last did something.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts one request in flight while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        a.touch();
        InFlight(Arc::clone(a))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's socket with its slot and its idle timer.
pub struct Guarded<T> {
    inner: T,
    _slot: Slot,
    activity: Arc<Activity>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Guarded<T> {
    /// `Ready(Err)` once the connection has been idle too long; else `Pending` (with the timer
    /// armed, so the task is woken when it expires).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.activity.in_flight.load(Ordering::SeqCst) > 0 {
            return Poll::Pending;
        }
        let deadline = self.activity.last() + self.idle;
        if Instant::now() >= deadline {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            ));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.activity.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service of one connection, counting its requests in flight.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> tower_service::Service<R> for Tracked<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let guard = InFlight::new(&self.activity);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// Admits a TCP connection under the caps and wraps it (before TLS).
#[derive(Clone)]
pub struct CapAcceptor {
    counts: Arc<Counts>,
}

impl<S> Accept<TcpStream, S> for CapAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Guarded<TcpStream>, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(e) => return std::future::ready(Err(e)),
        };
        let Some(slot) = self.counts.admit(ip) else {
            self.counts.log.note(&REFUSED_CONNECTION, client_of(ip));
            return std::future::ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "over the connection cap",
            )));
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        });
        let idle = self.counts.limits.idle;
        std::future::ready(Ok((
            Guarded {
                inner: stream,
                _slot: slot,
                activity: Arc::clone(&activity),
                idle,
                timer: Box::pin(tokio::time::sleep(idle)),
            },
            Tracked {
                inner: service,
                activity,
            },
        )))
    }
}

/// The whole acceptor: caps, then TLS (with its handshake timeout); failed handshakes logged.
#[derive(Clone)]
pub struct LimitedTls {
    tls: RustlsAcceptor<CapAcceptor>,
    log: Arc<EventLog>,
}

impl LimitedTls {
    pub fn new(config: RustlsConfig, limits: Limits, log: Arc<EventLog>) -> LimitedTls {
        let handshake = limits.handshake;
        let caps = CapAcceptor {
            counts: Arc::new(Counts {
                limits,
                per_client: Mutex::new(HashMap::new()),
                total: AtomicUsize::new(0),
                log: Arc::clone(&log),
            }),
        };
        LimitedTls {
            tls: RustlsAcceptor::new(config)
                .handshake_timeout(handshake)
                .acceptor(caps),
            log,
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitedTls {
    type Stream = <RustlsAcceptor<CapAcceptor> as Accept<TcpStream, S>>::Stream;
    type Service = Tracked<S>;
    type Future = BoxFuture<io::Result<(Self::Stream, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = stream.peer_addr().map(|a| client_of(a.ip()));
        let fut = self.tls.accept(stream, service);
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let r = fut.await;
            if let (Err(e), Ok(ip)) = (&r, ip)
                && e.kind() != io::ErrorKind::ConnectionRefused
            {
                log.note(&FAILED_HANDSHAKE, ip);
            }
            r
        })
    }
}

/// Apply the HTTP-level limits to the server's connection builder.
pub fn configure_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(256 * 1024);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(per_client: usize, total: usize) -> Arc<Counts> {
        Arc::new(Counts {
            limits: Limits {
                per_client,
                total,
                ..Limits::default()
            },
            per_client: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            log: EventLog::new(Duration::from_secs(60)),
        })
    }

    #[test]
    fn caps_per_client_and_in_total_and_places_come_back() {
        let c = counts(2, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert!(c.admit(a).is_none(), "per client");
        let _b1 = c.admit(b).unwrap();
        assert!(c.admit("192.0.2.3".parse().unwrap()).is_none(), "total");
        drop(a1);
        assert!(c.admit(a).is_some());
        // IPv6: one /64 is one client.
        let c = counts(1, 10);
        let _x = c.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(c.admit("2001:db8::2".parse().unwrap()).is_none());
        assert!(c.admit("2001:db8:0:1::2".parse().unwrap()).is_some());
    }

    #[tokio::test]
    async fn an_idle_connection_errors_and_one_with_a_request_in_flight_does_not() {
        use tokio::io::AsyncReadExt;
        let c = counts(4, 4);
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        });
        let idle = Duration::from_millis(300);
        let mut g = Guarded {
            inner: server,
            _slot: c.admit("192.0.2.9".parse().unwrap()).unwrap(),
            activity: Arc::clone(&activity),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        };
        // A request in flight: a read waits as long as it takes.
        let busy = InFlight::new(&activity);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(1), g.read(&mut buf)).await;
        assert!(r.is_err(), "read returned while a request was in flight");
        drop(busy);
        // Nothing in flight: the read fails once the idle time has passed, counted from the
        // end of the request.
        let t0 = Instant::now();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        drop(client);
    }
}
