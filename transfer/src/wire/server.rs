//! The staging server: accepts TLS connections on TCP 1500, checks the pairing token and serves
//! the chunk store. Many connections at once; each one's memory is bounded by the chunk window
//! (frames in flight) and a global limit on chunks being verified; a silent or trickling peer is
//! dropped (handshake, frame and idle timeouts). Every chunk is decompressed and re-hashed
//! before it is stored.

use super::frame::{self, ErrorCode, Frame, HELLO_MAGIC, INDEX_PART, PROTOCOL_VERSION};
use super::tls::ServerIdentity;
use crate::chunk::decode_chunk;
use crate::digest::secrets_equal;
use crate::error::{Error, Result};
use crate::index::{SyncId, check_vm_name};
use crate::store::ChunkStore;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time for the TLS handshake and the Hello frame.
    pub handshake_timeout: Duration,
    /// Longest silence between frames.
    pub idle_timeout: Duration,
    /// Time to receive the rest of a frame once its length has arrived.
    pub frame_timeout: Duration,
    pub max_connections: usize,
    /// Chunk frames a client may have in flight on one connection.
    pub window: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
            max_connections: 256,
            window: 8,
        }
    }
}

struct Shared {
    store: Arc<dyn ChunkStore>,
    token: String,
    opts: ServerOptions,
    tls: tokio_rustls::TlsAcceptor,
    conns: Arc<Semaphore>,
    /// Chunks being decompressed and hashed, server-wide (bounds CPU and memory).
    verifying: Semaphore,
}

/// Serve until the listener fails. Logs every refused or failed connection with its peer.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn ChunkStore>,
    identity: &ServerIdentity,
    opts: ServerOptions,
) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        store,
        token: identity.token.clone(),
        tls: tokio_rustls::TlsAcceptor::from(identity.server_config()?),
        conns: Arc::new(Semaphore::new(opts.max_connections)),
        verifying: Semaphore::new(cpus.max(2)),
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
        let Ok(permit) = shared.conns.clone().try_acquire_owned() else {
            tracing::warn!(
                "refused {peer}: {} connections already open",
                shared.opts.max_connections
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let sh = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sh, tcp, peer).await {
                tracing::warn!("{peer}: {e}");
                eprintln!("staging: {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn connection(sh: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) -> Result<()> {
    let p = peer.to_string();
    let hs = sh.opts.handshake_timeout;
    let mut first = [0u8; 1];
    let n = timeout(hs, tcp.peek(&mut first))
        .await
        .map_err(|_| Error::protocol(&p, "refused: nothing received within the handshake timeout"))?
        .map_err(|e| Error::network(&p, e.to_string()))?;
    if n == 0 {
        return Ok(());
    }
    if first[0] != 0x16 {
        let mut tcp = tcp;
        let _ = tcp.write_all(b"godwit staging server: this port speaks TLS 1.2 or newer only; plaintext refused\n").await;
        let _ = tcp.shutdown().await;
        return Err(Error::protocol(
            &p,
            format!(
                "refused: plaintext connection (first byte {:#04x}, not a TLS handshake)",
                first[0]
            ),
        ));
    }
    let tls = match timeout(hs, sh.tls.accept(tcp)).await {
        Err(_) => return Err(Error::protocol(&p, "refused: TLS handshake timed out")),
        Ok(Err(e)) => return Err(Error::protocol(&p, describe_tls_error(&e))),
        Ok(Ok(s)) => s,
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    // Hello: versions and token.
    let hello = match timeout(hs, read_frame(&mut rd, &p, hs)).await {
        Err(_) => {
            return Err(Error::protocol(
                &p,
                "refused: no Hello within the handshake timeout",
            ));
        }
        Ok(Err(e)) => {
            let f = Frame::Refused {
                code: ErrorCode::BadRequest,
                message: format!("expected Hello: {e}"),
            };
            let _ = wr.write_all(&f.to_bytes()).await;
            let _ = wr.shutdown().await;
            return Err(Error::protocol(&p, format!("refused before Hello: {e}")));
        }
        Ok(Ok(h)) => h,
    };
    let refuse = |code, msg: String| Frame::Refused { code, message: msg };
    let reply = match hello {
        Some(Frame::Hello {
            magic,
            min_version,
            max_version,
            token,
        }) => {
            if magic != HELLO_MAGIC {
                Err(refuse(
                    ErrorCode::BadRequest,
                    "not a godwit client (bad Hello magic)".into(),
                ))
            } else if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
                Err(refuse(
                    ErrorCode::BadVersion,
                    format!(
                        "client speaks protocol versions {min_version}..={max_version}; this server speaks {PROTOCOL_VERSION}"
                    ),
                ))
            } else if !secrets_equal(token.as_bytes(), sh.token.as_bytes()) {
                Err(refuse(
                    ErrorCode::BadToken,
                    "pairing token not accepted".into(),
                ))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(refuse(
            ErrorCode::BadRequest,
            "the first frame must be Hello".into(),
        )),
        None => return Ok(()),
    };
    if let Err(f) = reply {
        let msg = match &f {
            Frame::Refused { message, .. } => message.clone(),
            _ => String::new(),
        };
        let _ = wr.write_all(&f.to_bytes()).await;
        let _ = wr.shutdown().await;
        return Err(Error::protocol(&p, format!("refused: {msg}")));
    }
    wr.write_all(
        &Frame::Welcome {
            version: PROTOCOL_VERSION,
            window: sh.opts.window,
        }
        .to_bytes(),
    )
    .await
    .map_err(|e| Error::network(&p, e.to_string()))?;
    tracing::info!("{p}: client accepted");

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
            if rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut conn = Conn {
        sh: sh.clone(),
        peer: p.clone(),
        tx,
        leases: Vec::new(),
        upload: Vec::new(),
        window: Arc::new(Semaphore::new(usize::try_from(sh.opts.window).unwrap_or(8))),
    };
    let result = conn.serve(&mut rd).await;
    for l in std::mem::take(&mut conn.leases) {
        let _ = sh.store.end_sync(&l).await;
    }
    if let Err(e) = &result
        && !matches!(e, Error::Network { .. })
    {
        let _ = conn
            .tx
            .send(
                Frame::Refused {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                }
                .to_bytes(),
            )
            .await;
    }
    drop(conn);
    let _ = writer.await;
    result
}

fn describe_tls_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    let any = |keys: &[&str]| keys.iter().any(|k| s.contains(k));
    if any(&[
        "PeerIncompatible",
        "peer is incompatible",
        "ProtocolVersion",
        "protocol version",
    ]) {
        format!(
            "refused: TLS handshake failed: the client's TLS is incompatible; TLS 1.2 or newer is required ({s})"
        )
    } else if any(&[
        "BadCertificate",
        "bad certificate",
        "UnknownCA",
        "AccessDenied",
    ]) {
        format!(
            "refused: the client rejected this server's certificate (its pinned fingerprint is for another server?): {s}"
        )
    } else {
        format!("refused: TLS handshake failed: {s}")
    }
}

/// Read one frame: the length within `idle` (None on a clean close), the rest within the
/// frame timeout. The length is checked before the body is allocated.
async fn read_frame<R: AsyncRead + Unpin>(
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

struct Conn {
    sh: Arc<Shared>,
    peer: String,
    tx: mpsc::Sender<Vec<u8>>,
    leases: Vec<String>,
    upload: Vec<u8>,
    window: Arc<Semaphore>,
}

fn failed(id: u32, code: ErrorCode, e: &Error) -> Frame {
    Frame::Failed {
        id,
        code,
        message: e.to_string(),
    }
}

impl Conn {
    async fn send(&self, f: Frame) -> Result<()> {
        self.tx
            .send(f.to_bytes())
            .await
            .map_err(|_| Error::network(&self.peer, "connection closed"))
    }

    async fn serve<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<()> {
        loop {
            // Wait for room in the window before reading another frame: a client that floods
            // chunks is slowed by TCP, not buffered here.
            let permit = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::network(&self.peer, "closing"))?;
            let f = match timeout(
                self.sh.opts.idle_timeout,
                read_frame(rd, &self.peer, self.sh.opts.frame_timeout),
            )
            .await
            {
                Err(_) => {
                    return Err(Error::protocol(
                        &self.peer,
                        format!(
                            "idle for {} s, closing",
                            self.sh.opts.idle_timeout.as_secs()
                        ),
                    ));
                }
                Ok(r) => r?,
            };
            let Some(f) = f else { return Ok(()) };
            match f {
                Frame::PutChunk { id, digest, data } => {
                    let sh = self.sh.clone();
                    let tx = self.tx.clone();
                    let peer = self.peer.clone();
                    tokio::spawn(async move {
                        let reply = put_chunk(&sh, &peer, id, digest, data).await;
                        let _ = tx.send(reply.to_bytes()).await;
                        drop(permit);
                    });
                }
                other => {
                    drop(permit);
                    self.request(other).await?;
                }
            }
        }
    }

    async fn request(&mut self, f: Frame) -> Result<()> {
        let store = self.sh.store.clone();
        match f {
            Frame::Have { id, digests } => {
                let reply = match store.has_chunks(digests).await {
                    Ok(have) => Frame::HaveReply { id, have },
                    Err(e) => failed(id, ErrorCode::Internal, &e),
                };
                self.send(reply).await
            }
            Frame::GetChunk { id, digest } => {
                let reply = match store.get_chunk(digest).await {
                    Ok(b) => Frame::ChunkData {
                        id,
                        data: b.to_vec(),
                    },
                    Err(e @ Error::NotFound { .. }) => failed(id, ErrorCode::NotFound, &e),
                    Err(e) => failed(id, ErrorCode::Internal, &e),
                };
                self.send(reply).await
            }
            Frame::ListSyncs { id, vm, disk } => {
                let reply = match store.list_syncs(&vm, disk).await {
                    Ok(v) => Frame::SyncList {
                        id,
                        syncs: v.iter().map(|s| s.to_string()).collect(),
                    },
                    Err(e) => failed(id, ErrorCode::BadRequest, &e),
                };
                self.send(reply).await
            }
            Frame::GetIndex { id, vm, disk, sync } => {
                let r = match SyncId::parse(&sync) {
                    Ok(s) => store.get_index(&vm, disk, &s).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(b) => {
                        let total = b.len() as u64;
                        let mut off = 0usize;
                        loop {
                            let end = (off + INDEX_PART).min(b.len());
                            self.send(Frame::IndexData {
                                id,
                                total,
                                offset: off as u64,
                                data: b[off..end].to_vec(),
                            })
                            .await?;
                            off = end;
                            if off >= b.len() {
                                break;
                            }
                        }
                        Ok(())
                    }
                    Err(e @ Error::NotFound { .. }) => {
                        self.send(failed(id, ErrorCode::NotFound, &e)).await
                    }
                    Err(e) => self.send(failed(id, ErrorCode::BadRequest, &e)).await,
                }
            }
            Frame::PutIndex {
                id,
                total,
                offset,
                data,
            } => {
                if offset == 0 {
                    self.upload.clear();
                }
                if offset != self.upload.len() as u64 {
                    let e = Error::protocol(
                        &self.peer,
                        format!("index part at {offset}, expected {}", self.upload.len()),
                    );
                    return self.send(failed(id, ErrorCode::BadRequest, &e)).await;
                }
                self.upload.extend_from_slice(&data);
                if (self.upload.len() as u64) < total {
                    return self.send(Frame::Done { id }).await;
                }
                let idx = Bytes::from(std::mem::take(&mut self.upload));
                let reply = match store.commit_index(idx).await {
                    Ok(s) => {
                        tracing::info!("{}: committed sync {s}", self.peer);
                        Frame::Committed {
                            id,
                            sync: s.to_string(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("{}: commit refused: {e}", self.peer);
                        failed(id, ErrorCode::BadRequest, &e)
                    }
                };
                self.send(reply).await
            }
            Frame::BeginSync { id, vm, disk } => {
                let r = match check_vm_name(&vm) {
                    Ok(()) => store.begin_sync(&vm, disk).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(l) => {
                        self.leases.push(l.clone());
                        self.send(Frame::SyncBegun { id, lease: l }).await
                    }
                    Err(e) => self.send(failed(id, ErrorCode::BadRequest, &e)).await,
                }
            }
            Frame::EndSync { id, lease } => {
                if let Some(pos) = self.leases.iter().position(|l| *l == lease) {
                    self.leases.swap_remove(pos);
                    let _ = store.end_sync(&lease).await;
                }
                self.send(Frame::Done { id }).await
            }
            other => Err(Error::protocol(
                &self.peer,
                format!("unexpected frame from a client: {}", frame_name(&other)),
            )),
        }
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Refused { .. } => "Refused",
        Frame::HaveReply { .. } => "HaveReply",
        Frame::Stored { .. } => "Stored",
        Frame::ChunkData { .. } => "ChunkData",
        Frame::SyncList { .. } => "SyncList",
        Frame::IndexData { .. } => "IndexData",
        Frame::Committed { .. } => "Committed",
        Frame::SyncBegun { .. } => "SyncBegun",
        Frame::Done { .. } => "Done",
        Frame::Failed { .. } => "Failed",
        _ => "request",
    }
}

async fn put_chunk(
    sh: &Shared,
    peer: &str,
    id: u32,
    digest: crate::digest::ChunkDigest,
    data: Vec<u8>,
) -> Frame {
    let Ok(_cpu) = sh.verifying.acquire().await else {
        return failed(
            id,
            ErrorCode::Internal,
            &Error::Usage("shutting down".into()),
        );
    };
    let what = format!("chunk {digest} from {peer}");
    let checked =
        tokio::task::spawn_blocking(move || decode_chunk(&data, Some(digest), &what).map(|_| data))
            .await;
    let data = match checked {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::warn!("{peer}: rejected: {e}");
            eprintln!("staging: {peer}: rejected: {e}");
            return failed(id, ErrorCode::BadChunk, &e);
        }
        Err(e) => return failed(id, ErrorCode::Internal, &Error::Usage(e.to_string())),
    };
    match sh.store.put_chunk(digest, Bytes::from(data)).await {
        Ok(()) => Frame::Stored { id },
        Err(e) => failed(id, ErrorCode::Internal, &e),
    }
}
