//! The connector's inbound HTTPS ingest endpoint (443 on the appliance): Hyper-V hosts push
//! the file ranges a session asked for. HTTP/1.1 over rustls (ring), one thread per
//! connection (at most [`MAX_CONNECTIONS`]), keep-alive, `Expect: 100-continue` answered after
//! the head was checked (so a refused push does not send its body).
//!
//! Per push: the head is parsed ([`super::codec`]); the session must exist and the bearer
//! token match (else 401, the same answer for both); the file id must be one of the
//! session's and the range inside what the session asked for (else 409); the body must be
//! exactly `Content-Length` bytes (a connection closed earlier stores nothing) with the
//! announced SHA-256 (else 422). Then it is stored durably in the file's spool (201; a range
//! already held answers 200). Refusals are counted ([`IngestStats`]) and logged.

use super::codec::{self, CodecError, PushRequest};
use super::ranges::RangeSet;
use super::spool::SpoolFile;
use crate::error::{Error, Result};
use crate::trust::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection idle (or a body stalled) this long is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// The endpoint's certificate and key.
pub struct IngestIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl IngestIdentity {
    /// A self-signed certificate for this run, naming `names` (IPs or DNS names).
    pub fn generate(names: &[String]) -> Result<Self> {
        let mut names: Vec<String> = names.to_vec();
        names.push("localhost".into());
        names.dedup();
        let c = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Usage(format!("ingest certificate: {e}")))?;
        Ok(IngestIdentity {
            cert: c.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into()),
        })
    }

    /// A certificate and key given as PEM files (the first certificate is the one pinned).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let bad = |p: &Path, e: rustls::pki_types::pem::Error| Error::BadFile {
            path: p.display().to_string(),
            detail: format!("not a PEM certificate/key: {e}"),
        };
        Ok(IngestIdentity {
            cert: CertificateDer::from_pem_file(cert).map_err(|e| bad(cert, e))?,
            key: PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert)
    }

    /// The certificate as PEM (for clients that take a CA file, like curl).
    pub fn cert_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.cert);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// Refusals and acceptances since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestStats {
    pub accepted: u64,
    pub accepted_bytes: u64,
    /// Pushes of ranges already held.
    pub repeated: u64,
    pub bad_request: u64,
    pub bad_token: u64,
    pub not_asked: u64,
    pub bad_checksum: u64,
    pub truncated: u64,
}

/// One file of a session: the ranges asked for and where they go.
pub struct SessionFile {
    pub asked: RangeSet,
    pub spool: Arc<SpoolFile>,
}

/// What a session was pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionStats {
    pub pushes: u64,
    pub bytes: u64,
    pub repeated: u64,
    pub refused: u64,
}

struct Session {
    token: String,
    files: Vec<SessionFile>,
    stats: Mutex<SessionStats>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    accepted_bytes: AtomicU64,
    repeated: AtomicU64,
    bad_request: AtomicU64,
    bad_token: AtomicU64,
    not_asked: AtomicU64,
    bad_checksum: AtomicU64,
    truncated: AtomicU64,
}

struct Shared {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tls: Arc<rustls::ServerConfig>,
    connections: AtomicUsize,
    stop: AtomicBool,
    counters: Counters,
}

/// A running ingest endpoint; stops when dropped.
pub struct IngestServer {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A session's id and one-time token, for the uploader.
#[derive(Debug, Clone)]
pub struct SessionTicket {
    pub id: String,
    pub token: String,
}

impl IngestServer {
    /// Listen on `listen` (port 0 picks one) with `identity`.
    pub fn start(listen: SocketAddr, identity: IngestIdentity) -> Result<IngestServer> {
        let fingerprint = identity.fingerprint();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![identity.cert], identity.key)
        })
        .map_err(|e| Error::Usage(format!("ingest TLS setup: {e}")))?;
        let listener = TcpListener::bind(listen).map_err(|e| {
            Error::Usage(format!("ingest endpoint: cannot listen on {listen}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Usage(format!("ingest endpoint: {e}")))?;
        let shared = Arc::new(Shared {
            sessions: Mutex::new(HashMap::new()),
            tls: Arc::new(tls),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ingest-accept".into())
            .spawn(move || accept_loop(&listener, &s2))
            .map_err(|e| Error::Usage(format!("ingest endpoint thread: {e}")))?;
        tracing::info!(%addr, %fingerprint, "ingest endpoint listening");
        Ok(IngestServer {
            addr,
            fingerprint,
            shared,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SHA-256 the uploader pins.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Open a session for `files` (file id = index) with a fresh one-time token.
    pub fn open_session(&self, files: Vec<SessionFile>) -> SessionTicket {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let s = Arc::new(Session {
            token: token.clone(),
            files,
            stats: Mutex::new(SessionStats::default()),
        });
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), s);
        SessionTicket { id, token }
    }

    /// End a session (its token stops working) and return what it received.
    pub fn close_session(&self, id: &str) -> Option<SessionStats> {
        let s = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        let st = s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(st)
    }

    pub fn stats(&self) -> IngestStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IngestStats {
            accepted: g(&c.accepted),
            accepted_bytes: g(&c.accepted_bytes),
            repeated: g(&c.repeated),
            bad_request: g(&c.bad_request),
            bad_token: g(&c.bad_token),
            not_asked: g(&c.not_asked),
            bad_checksum: g(&c.bad_checksum),
            truncated: g(&c.truncated),
        }
    }
}

impl std::fmt::Debug for IngestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestServer")
            .field("addr", &self.addr)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Drop for IngestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(tcp) = conn else { continue };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("ingest endpoint: too many connections; one closed");
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ingest-conn".into())
            .spawn(move || {
                let peer = tcp.peer_addr().ok();
                if let Err(e) = serve_connection(tcp, &s) {
                    tracing::debug!(?peer, error = %e, "ingest connection ended");
                }
                s.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

enum Verdict {
    Accept(Arc<Session>, usize),
    Refuse(u16, String),
}

fn check(shared: &Shared, r: &PushRequest) -> Verdict {
    let c = &shared.counters;
    let session = shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&r.session)
        .cloned();
    // Constant-time enough: compare digests of the tokens.
    let ok = session
        .as_ref()
        .is_some_and(|s| Sha256::digest(&s.token) == Sha256::digest(&r.token));
    let Some(s) = session.filter(|_| ok) else {
        c.bad_token.fetch_add(1, Ordering::Relaxed);
        return Verdict::Refuse(401, "unknown session or wrong token".into());
    };
    let end = r.offset + r.length;
    let idx = usize::try_from(r.file_id).unwrap_or(usize::MAX);
    let asked = s
        .files
        .get(idx)
        .is_some_and(|f| f.asked.contains(r.offset, end));
    if !asked || r.length == 0 {
        c.not_asked.fetch_add(1, Ordering::Relaxed);
        s.stats.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
        return Verdict::Refuse(
            409,
            format!(
                "range {}+{} of file {} was not asked for in this session",
                r.offset, r.length, r.file_id
            ),
        );
    }
    Verdict::Accept(s, idx)
}

fn respond(
    tls: &mut Tls,
    status: u16,
    body: serde_json::Value,
    close: bool,
) -> std::io::Result<()> {
    tls.write_all(&codec::encode_response(status, &body, close))?;
    tls.flush()
}

fn serve_connection(tcp: TcpStream, shared: &Shared) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(shared.tls.clone()).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let served = serve_requests(&mut tls, shared);
    // End the TLS session cleanly whatever happened (the peer reads the last answer).
    tls.conn.send_close_notify();
    let _ = tls.flush();
    linger(&tls.sock);
    served
}

/// Close like HTTP servers do: stop sending, then read and drop what the peer still sends
/// (a body after a refused head) for a moment, so closing does not reset the connection
/// before the peer has read the answer.
fn linger(tcp: &TcpStream) {
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    while total < 2 * codec::MAX_PUSH_BYTES && t0.elapsed() < Duration::from_secs(2) {
        match (&*tcp).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
}

fn serve_requests(tls: &mut Tls, shared: &Shared) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let c = &shared.counters;
    loop {
        // Read a head.
        let (req, head_len) = loop {
            match codec::parse_request_head(&buf) {
                Ok(Some(v)) => break v,
                Ok(None) => {}
                Err(e) => {
                    c.bad_request.fetch_add(1, Ordering::Relaxed);
                    return refuse_codec(tls, &e);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tls.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..head_len);
        let (session, idx) = match check(shared, &req) {
            Verdict::Accept(s, i) => (s, i),
            Verdict::Refuse(status, msg) => {
                // Without `Expect: 100-continue` the body is on its way: read it (bounded by
                // the codec) so the sender sees the answer instead of a reset.
                if !req.expect_continue {
                    drain(tls, &mut buf, req.length);
                }
                tracing::warn!(status, session = %req.session, file = req.file_id, offset = req.offset, len = req.length, "ingest push refused: {msg}");
                return respond(tls, status, serde_json::json!({ "error": msg }), true);
            }
        };
        if req.expect_continue && buf.is_empty() {
            tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            tls.flush()?;
        }
        // The body: exactly Content-Length bytes (the codec bounded it).
        let want = usize::try_from(req.length).map_err(std::io::Error::other)?;
        let mut body = Vec::with_capacity(want);
        let take = buf.len().min(want);
        body.extend(buf.drain(..take));
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < want {
            let room = (want - body.len()).min(chunk.len());
            match tls.read(&mut chunk[..room]) {
                Ok(0) | Err(_) => {
                    c.truncated.fetch_add(1, Ordering::Relaxed);
                    session
                        .stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .refused += 1;
                    tracing::warn!(session = %req.session, file = req.file_id, offset = req.offset, got = body.len(), want, "ingest push truncated: the connection ended before Content-Length; nothing stored");
                    let msg = format!(
                        "body ended after {} of {want} bytes; nothing stored",
                        body.len()
                    );
                    let _ = respond(tls, 400, serde_json::json!({ "error": msg }), true);
                    return Ok(());
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if digest != req.sha256 {
            c.bad_checksum.fetch_add(1, Ordering::Relaxed);
            session
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .refused += 1;
            let msg = format!(
                "SHA-256 of the {} bytes is {}, not the announced {}; nothing stored",
                body.len(),
                hex::encode(digest),
                hex::encode(req.sha256)
            );
            tracing::warn!(session = %req.session, file = req.file_id, offset = req.offset, "ingest push refused: {msg}");
            respond(tls, 422, serde_json::json!({ "error": msg }), req.close)?;
        } else {
            let file = &session.files[idx];
            match file.spool.store(req.offset, &body, digest) {
                Ok(new) => {
                    let mut st = session.stats.lock().unwrap_or_else(|e| e.into_inner());
                    if new {
                        c.accepted.fetch_add(1, Ordering::Relaxed);
                        c.accepted_bytes.fetch_add(req.length, Ordering::Relaxed);
                        st.pushes += 1;
                        st.bytes += req.length;
                    } else {
                        c.repeated.fetch_add(1, Ordering::Relaxed);
                        st.repeated += 1;
                    }
                    drop(st);
                    let status = if new { 201 } else { 200 };
                    respond(
                        tls,
                        status,
                        serde_json::json!({ "stored": req.length }),
                        req.close,
                    )?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "ingest spool write failed");
                    let msg = format!("the connector could not store the range: {e}");
                    respond(tls, 503, serde_json::json!({ "error": msg }), true)?;
                    return Ok(());
                }
            }
        }
        if req.close {
            return Ok(());
        }
    }
}

fn refuse_codec(tls: &mut Tls, e: &CodecError) -> std::io::Result<()> {
    tracing::warn!(status = e.status(), "ingest request refused: {e}");
    respond(
        tls,
        e.status(),
        serde_json::json!({ "error": e.to_string() }),
        true,
    )
}

fn drain(tls: &mut Tls, buf: &mut Vec<u8>, len: u64) {
    let mut left = len.saturating_sub(buf.len() as u64);
    buf.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let room = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        match tls.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_pem_files_keep_their_fingerprint_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["connector".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        let id = IngestIdentity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(id.fingerprint(), Fingerprint::of_der(c.cert.der()));
        assert_eq!(
            id.cert_pem().trim(),
            c.cert.pem().trim().replace("\r\n", "\n")
        );
        let server = IngestServer::start("127.0.0.1:0".parse().unwrap(), id).unwrap();
        assert_eq!(server.fingerprint(), Fingerprint::of_der(c.cert.der()));
        std::fs::write(&key, "not a key").unwrap();
        let e = IngestIdentity::from_pem_files(&cert, &key)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("k.pem") && e.contains("PEM"), "{e}");
    }
}
