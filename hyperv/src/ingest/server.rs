//! The connector's inbound HTTPS ingest endpoint (443 on the appliance): Hyper-V hosts push
//! the file ranges a session asked for. HTTP/1.1 over rustls (ring), one thread per
//! connection, keep-alive, `Expect: 100-continue` answered after the head was checked (so a
//! refused push does not send its body).
//!
//! Anyone who reaches the port can open connections, so none can be hoarded: at most
//! [`MAX_CONNECTIONS`] at once and [`MAX_PER_CLIENT`] from one address (more are closed at
//! once); a TLS handshake must finish within [`HANDSHAKE_TIMEOUT`], a request head within
//! [`HEAD_TIMEOUT`] of its first byte, a kept-alive connection sends its next request within
//! [`IDLE_TIMEOUT`], and a body stalls at most [`IO_TIMEOUT`].
//!
//! What a push gets is decided by [`super::registry`] (shared with the service's route on
//! its own HTTPS port); this module is the listener and the HTTP/1.1 framing around it.

use super::codec;
use super::registry::{IngestRegistry, Reply};
pub use super::registry::{IngestStats, SessionFile, SessionStats, SessionTicket};
use crate::error::{Error, Result};
use crate::trust::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections from one client address at once; more are closed at once.
pub const MAX_PER_CLIENT: usize = 8;
/// A body that stalls this long is dropped (nothing stored).
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// The TLS handshake must be done this long after the connection was accepted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must be complete this long after its first byte.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection with no new request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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

struct Shared {
    registry: Arc<IngestRegistry>,
    tls: Arc<rustls::ServerConfig>,
    connections: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    stop: AtomicBool,
}

impl Shared {
    /// Take a connection slot for `ip` (total and per client), or say why not.
    fn admit(&self, ip: IpAddr) -> std::result::Result<(), String> {
        let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let mine = m.get(&ip).copied().unwrap_or(0);
        if mine >= MAX_PER_CLIENT {
            return Err(format!(
                "{MAX_PER_CLIENT} connections from this address are open already; one closed"
            ));
        }
        if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{MAX_CONNECTIONS} connections are open already; one closed"
            ));
        }
        m.insert(ip, mine + 1);
        Ok(())
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running ingest endpoint; stops when dropped.
pub struct IngestServer {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
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
            registry: Arc::new(IngestRegistry::new()),
            tls: Arc::new(tls),
            connections: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
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

    /// The sessions and counters behind this endpoint.
    pub fn registry(&self) -> Arc<IngestRegistry> {
        self.shared.registry.clone()
    }

    /// Open a session for `files` (file id = index) with a fresh one-time token.
    pub fn open_session(&self, files: Vec<SessionFile>) -> SessionTicket {
        self.shared.registry.open_session(files)
    }

    /// End a session (its token stops working) and return what it received.
    pub fn close_session(&self, id: &str) -> Option<SessionStats> {
        self.shared.registry.close_session(id)
    }

    pub fn stats(&self) -> IngestStats {
        self.shared.registry.stats()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
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
        let Ok(peer) = tcp.peer_addr() else { continue };
        let ip = peer.ip();
        if let Err(why) = shared.admit(ip) {
            shared.registry.refusal_log().note(Some(ip), 503, &why);
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ingest-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(tcp, &s) {
                    tracing::debug!(%peer, error = %e, "ingest connection ended");
                }
                s.leave(ip);
            });
        if spawned.is_err() {
            shared.leave(ip);
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn respond(tls: &mut Tls, r: &Reply) -> std::io::Result<()> {
    tls.write_all(&codec::encode_response_with(
        r.status,
        &r.body,
        r.close,
        r.retry_after,
    ))?;
    tls.flush()
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

/// Read timeout for the next read: what is left until `deadline`, at most `cap`.
fn until(tcp: &TcpStream, deadline: Instant, cap: Duration, what: &str) -> std::io::Result<()> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| timed_out(what))?;
    tcp.set_read_timeout(Some(left.min(cap)))
}

fn serve_connection(tcp: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let peer = tcp.peer_addr().ok().map(|p| p.ip());
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let mut conn =
        rustls::ServerConnection::new(shared.tls.clone()).map_err(std::io::Error::other)?;
    // The handshake, within its deadline (a client that never finishes it is closed).
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut sock = tcp;
    while conn.is_handshaking() {
        until(
            &sock,
            deadline,
            HANDSHAKE_TIMEOUT,
            "TLS handshake not finished",
        )?;
        conn.complete_io(&mut sock)?;
    }
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let served = serve_requests(&mut tls, shared, peer);
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

fn serve_requests(tls: &mut Tls, shared: &Shared, peer: Option<IpAddr>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let registry = &shared.registry;
    loop {
        // Read a head: the first byte within the idle timeout, the rest within the head's.
        let idle_deadline = Instant::now() + IDLE_TIMEOUT;
        let mut head_deadline = (!buf.is_empty()).then(|| Instant::now() + HEAD_TIMEOUT);
        let (req, head_len) = loop {
            match codec::parse_request_head(&buf) {
                Ok(Some(v)) => break v,
                Ok(None) => {}
                Err(e) => return respond(tls, &registry.bad_request(&e, peer)),
            }
            match head_deadline {
                Some(d) => until(&tls.sock, d, HEAD_TIMEOUT, "request head not finished")?,
                None => until(&tls.sock, idle_deadline, IDLE_TIMEOUT, "idle connection")?,
            }
            let mut chunk = [0u8; 8192];
            let n = tls.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            head_deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
        };
        buf.drain(..head_len);
        tls.sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let admitted = match registry.admit(&req, peer) {
            Ok(a) => a,
            Err(reply) => {
                // Without `Expect: 100-continue` the body is on its way: read it (bounded by
                // the codec) so the sender sees the answer instead of a reset.
                if !req.expect_continue {
                    drain(tls, &mut buf, req.length);
                }
                respond(tls, &reply)?;
                if reply.close || req.expect_continue {
                    return Ok(());
                }
                continue;
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
                    let _ = respond(tls, &admitted.truncated(body.len()));
                    return Ok(());
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let reply = admitted.store(&body);
        respond(tls, &reply)?;
        if reply.close {
            return Ok(());
        }
    }
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
