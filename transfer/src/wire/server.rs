//! The staging server: accepts TLS connections on TCP 1500, checks the connector's token
//! against the store and serves the chunk store. Several servers may serve one store.
//!
//! Connections are counted in two stages, so unauthenticated sockets cannot lock paired
//! connectors out (security issue, finding 4): a socket that has not finished TLS and a good
//! `Hello` holds a *pre-auth* slot (`max_preauth`), and must finish within the pre-auth timeout
//! (`handshake_timeout`, 10 s); only then does it take one of `max_connections` slots. Each
//! session's memory is bounded by the chunk window and a global limit on chunks being
//! verified; a silent or trickling peer is dropped. Refusals of unauthenticated peers are
//! logged once per kind and per 10 s, with a count of those suppressed.

use super::frame::{self, ErrorCode, Frame, HELLO_MAGIC, PROTOCOL_VERSION};
use super::session::Session;
use super::tls::ServerIdentity;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::access::TokenRecord;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Pre-auth timeout: TLS handshake and a good `Hello`, from the TCP accept.
    pub handshake_timeout: Duration,
    /// Longest silence between frames.
    pub idle_timeout: Duration,
    /// Time to receive the rest of a frame once its length has arrived.
    pub frame_timeout: Duration,
    /// Paired (authenticated) connections at once.
    pub max_connections: usize,
    /// Connections still in TLS / Hello at once; more are closed at accept.
    pub max_preauth: usize,
    /// Chunk frames a client may have in flight on one connection.
    pub window: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_preauth: 64,
            window: 8,
        }
    }
}

pub(super) struct Shared {
    pub store: Arc<Store>,
    pub opts: ServerOptions,
    tls: tokio_rustls::TlsAcceptor,
    preauth: Arc<Semaphore>,
    conns: Arc<Semaphore>,
    /// Chunks being decompressed and hashed, server-wide (bounds CPU and memory).
    pub verifying: Semaphore,
    refusals: RefusalLog,
}

/// Log a refusal of an unauthenticated peer at most once per kind and 10 s.
#[derive(Default)]
struct RefusalLog {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RefusalLog {
    fn note(&self, kind: &'static str, msg: &str) {
        let Ok(mut m) = self.kinds.lock() else { return };
        let now = Instant::now();
        match m.get_mut(kind) {
            Some((since, suppressed)) if now.duration_since(*since) < Duration::from_secs(10) => {
                *suppressed += 1;
            }
            slot => {
                let before = slot.map_or(0, |(_, n)| *n);
                if before > 0 {
                    tracing::warn!("{before} more refusals ({kind}) in the last 10 s");
                    eprintln!("staging: {before} more refusals ({kind}) in the last 10 s");
                }
                tracing::warn!("{msg}");
                eprintln!("staging: {msg}");
                m.insert(kind, (now, 0));
            }
        }
    }
}

/// Serve until the listener fails.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    identity: &ServerIdentity,
    opts: ServerOptions,
) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        store,
        tls: tokio_rustls::TlsAcceptor::from(identity.server_config()?),
        preauth: Arc::new(Semaphore::new(opts.max_preauth.max(1))),
        conns: Arc::new(Semaphore::new(opts.max_connections.max(1))),
        verifying: Semaphore::new(cpus.max(2)),
        refusals: RefusalLog::default(),
        opts,
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(pre) = shared.preauth.clone().try_acquire_owned() else {
            shared.refusals.note(
                "pre-auth cap",
                &format!(
                    "refused {peer}: {} connections already in the TLS/Hello stage",
                    shared.opts.max_preauth
                ),
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let sh = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sh, tcp, peer, pre).await {
                tracing::warn!("{peer}: {e}");
                eprintln!("staging: {peer}: {e}");
            }
        });
    }
}

type Halves = (
    ReadHalf<TlsStream<TcpStream>>,
    WriteHalf<TlsStream<TcpStream>>,
);

async fn connection(
    sh: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    pre: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let p = peer.to_string();
    let limit = sh.opts.handshake_timeout;
    let authed = match timeout(limit, handshake(&sh, tcp, &p)).await {
        Err(_) => {
            sh.refusals.note(
                "pre-auth timeout",
                &format!(
                    "{p}: refused: no TLS handshake and Hello within the handshake timeout ({} s)",
                    limit.as_secs()
                ),
            );
            return Ok(());
        }
        Ok(Err((kind, e))) => {
            sh.refusals.note(kind, &e.to_string());
            return Ok(());
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(a))) => a,
    };
    drop(pre);
    let ((rd, mut wr), rec, token) = authed;
    let Ok(permit) = sh.conns.clone().try_acquire_owned() else {
        let f = Frame::Refused {
            code: ErrorCode::Busy,
            message: format!(
                "busy: {} connectors already connected; try another staging server or later",
                sh.opts.max_connections
            ),
        };
        let _ = wr.write_all(&f.to_bytes()).await;
        let _ = wr.shutdown().await;
        return Err(Error::protocol(
            &p,
            format!(
                "refused connector {}: {} paired connections already open",
                rec.connector, sh.opts.max_connections
            ),
        ));
    };
    wr.write_all(
        &Frame::Welcome {
            version: PROTOCOL_VERSION,
            window: sh.opts.window,
            connector: rec.connector.clone(),
        }
        .to_bytes(),
    )
    .await
    .map_err(|e| Error::network(&p, e.to_string()))?;
    tracing::info!("{p}: connector {} accepted", rec.connector);
    let r = Session::run(sh, p, rd, wr, rec, token).await;
    drop(permit);
    r
}

/// TLS, then a `Hello` with a version we speak and a valid token. `Err((kind, error))` for a
/// refusal (already answered where the peer can read it); `Ok(None)` when the peer went away.
async fn handshake(
    sh: &Shared,
    tcp: TcpStream,
    p: &str,
) -> std::result::Result<Option<(Halves, TokenRecord, String)>, (&'static str, Error)> {
    let mut first = [0u8; 1];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| ("network", Error::network(p, e.to_string())))?;
    if n == 0 {
        return Ok(None);
    }
    if first[0] != 0x16 {
        let mut tcp = tcp;
        let _ = tcp.write_all(b"godwit staging server: this port speaks TLS 1.2 or newer only; plaintext refused\n").await;
        let _ = tcp.shutdown().await;
        return Err((
            "plaintext",
            Error::protocol(
                p,
                format!(
                    "refused: plaintext connection (first byte {:#04x}, not a TLS handshake)",
                    first[0]
                ),
            ),
        ));
    }
    let tls = sh.tls.accept(tcp).await.map_err(|e| {
        let (kind, msg) = describe_tls_error(&e);
        (kind, Error::protocol(p, msg))
    })?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let refuse = |code, message: String| Frame::Refused { code, message };
    let hello = match read_frame(&mut rd, p, sh.opts.handshake_timeout).await {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => {
            let f = refuse(ErrorCode::BadRequest, format!("expected Hello: {e}"));
            let _ = wr.write_all(&f.to_bytes()).await;
            let _ = wr.shutdown().await;
            return Err((
                "bad Hello",
                Error::protocol(p, format!("refused before Hello: {e}")),
            ));
        }
    };
    let (kind, f) = match hello {
        Frame::Hello {
            magic,
            min_version,
            max_version,
            token,
        } => {
            if magic != HELLO_MAGIC {
                (
                    "bad Hello",
                    refuse(
                        ErrorCode::BadRequest,
                        "not a godwit client (bad Hello magic)".into(),
                    ),
                )
            } else if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
                (
                    "version",
                    refuse(
                        ErrorCode::BadVersion,
                        format!(
                            "client speaks protocol versions {min_version}..={max_version}; this server speaks {PROTOCOL_VERSION} (upgrade the older side)"
                        ),
                    ),
                )
            } else {
                match sh.store.authenticate(&token).await {
                    Ok(Some(rec)) => return Ok(Some(((rd, wr), rec, token))),
                    Ok(None) => (
                        "bad token",
                        refuse(
                            ErrorCode::BadToken,
                            "pairing token not accepted (unknown or revoked)".into(),
                        ),
                    ),
                    Err(e) => (
                        "store",
                        refuse(ErrorCode::Busy, format!("cannot check the token now: {e}")),
                    ),
                }
            }
        }
        _ => (
            "bad Hello",
            refuse(
                ErrorCode::BadRequest,
                "the first frame must be Hello".into(),
            ),
        ),
    };
    let msg = match &f {
        Frame::Refused { message, .. } => message.clone(),
        _ => String::new(),
    };
    let _ = wr.write_all(&f.to_bytes()).await;
    let _ = wr.shutdown().await;
    Err((kind, Error::protocol(p, format!("refused: {msg}"))))
}

/// A refusal kind (for the log limiter) and the message.
fn describe_tls_error(e: &std::io::Error) -> (&'static str, String) {
    let s = e.to_string();
    let any = |keys: &[&str]| keys.iter().any(|k| s.contains(k));
    if any(&[
        "PeerIncompatible",
        "peer is incompatible",
        "ProtocolVersion",
        "protocol version",
    ]) {
        (
            "TLS version",
            format!(
                "refused: TLS handshake failed: the client's TLS is incompatible; TLS 1.2 or newer is required ({s})"
            ),
        )
    } else if any(&[
        "BadCertificate",
        "bad certificate",
        "UnknownCA",
        "AccessDenied",
    ]) {
        (
            "TLS certificate",
            format!(
                "refused: the client rejected this server's certificate (its pinned fingerprint is for another server?): {s}"
            ),
        )
    } else {
        ("TLS", format!("refused: TLS handshake failed: {s}"))
    }
}

/// Read one frame: the length (None on a clean close), then the rest within `body_timeout`.
/// The length is checked before the body is allocated.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    peer: &str,
    body_timeout: Duration,
) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::network(peer, e.to_string())),
    }
    let n = frame::check_length(len).map_err(|e| Error::protocol(peer, e.to_string()))?;
    let mut body = vec![0u8; n];
    timeout(body_timeout, rd.read_exact(&mut body))
        .await
        .map_err(|_| {
            Error::protocol(
                peer,
                format!(
                    "a {n}-byte frame did not arrive within {} s (slow client dropped)",
                    body_timeout.as_secs()
                ),
            )
        })?
        .map_err(|e| Error::network(peer, e.to_string()))?;
    Frame::decode_body(&body)
        .map(Some)
        .map_err(|e| Error::protocol(peer, e.to_string()))
}
