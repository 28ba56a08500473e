//! The connector's side of TCP 1500: a TLS connection pinned to the server's fingerprint,
//! authenticated by the pairing token, carrying many requests at once (each frame has a request
//! id), so chunk sends are pipelined. Implements [`ChunkStore`], so replication and export use a
//! staging server exactly like a local or S3 store.

use super::frame::{self, ErrorCode, Frame, HELLO_MAGIC, INDEX_PART, MAX_HAVE, PROTOCOL_VERSION};
use super::tls::client_config;
use crate::digest::{ChunkDigest, Fingerprint};
use crate::error::{Error, Result};
use crate::index::SyncId;
use crate::store::{BoxFut, ChunkStore};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A request with no answer for this long means the link is stalled: give up and reconnect.
/// `GODWIT_REPLY_TIMEOUT_SECS` overrides it (slow links, tests).
pub fn reply_timeout() -> Duration {
    let secs = std::env::var("GODWIT_REPLY_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// With several addresses for one name, how long each may take to answer before the next is
/// tried: a dead first address (no RST: a host down, a firewall dropping) must not use up the
/// whole [`CONNECT_TIMEOUT`]. `GODWIT_CONNECT_ADDRESS_TIMEOUT_SECS` overrides it.
fn per_address_timeout() -> Duration {
    let secs = std::env::var("GODWIT_CONNECT_ADDRESS_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// TCP to `addr` (`host:port`): the name resolved (system resolver: /etc/hosts, DNS), then each
/// address tried in the resolver's order, each with its own timeout when there are several.
/// The error names every address tried and why it failed.
async fn connect_tcp(addr: &str) -> Result<TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(addr))
        .await
        .map_err(|_| Error::network(addr, "staging server: name resolution timed out"))?
        .map_err(|e| Error::network(addr, format!("staging server: resolving the name: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::network(
            addr,
            "staging server: the name resolves to no address",
        ));
    }
    let each = if addrs.len() > 1 {
        per_address_timeout().min(CONNECT_TIMEOUT)
    } else {
        CONNECT_TIMEOUT
    };
    let mut failed = Vec::new();
    for a in &addrs {
        match timeout(each, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                if !failed.is_empty() {
                    eprintln!(
                        "godwit: {addr}: connected to {a} (tried first: {})",
                        failed.join("; ")
                    );
                }
                return Ok(s);
            }
            Ok(Err(e)) => failed.push(format!("{a}: {e}")),
            Err(_) => failed.push(format!("{a}: timed out after {} s", each.as_secs())),
        }
    }
    Err(Error::network(
        addr,
        format!("staging server: TCP connect: {}", failed.join("; ")),
    ))
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>;

pub struct StagingClient {
    peer: String,
    connector: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU32,
    dead: Arc<AtomicBool>,
    window: u32,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for StagingClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl StagingClient {
    /// Connect to `addr` (`host:port`; a name with several addresses is tried address by
    /// address), check the certificate against the pinned fingerprints, present `token`.
    pub async fn connect(addr: &str, pins: &[Fingerprint], token: &str) -> Result<StagingClient> {
        let peer = addr.to_string();
        let tcp = connect_tcp(addr).await?;
        let _ = tcp.set_nodelay(true);
        let (cfg, verifier) = client_config(pins)?;
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let name = rustls::pki_types::ServerName::try_from("godwit-staging")
            .map_err(|e| Error::Usage(e.to_string()))?;
        let tls = match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Err(_) => return Err(Error::network(&peer, "TLS handshake timed out")),
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let seen = verifier.seen.lock().ok().and_then(|s| *s);
                return Err(match seen {
                    Some(fp) if !pins.contains(&fp) => Error::protocol(
                        &peer,
                        format!(
                            "server certificate fingerprint {fp} does not match the pinned {}; refusing to connect (check --target-fingerprint)",
                            pins.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    _ => Error::network(&peer, format!("TLS handshake: {e}")),
                });
            }
        };
        let (mut rd, mut wr) = tokio::io::split(tls);
        let hello = Frame::Hello {
            magic: HELLO_MAGIC,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            token: token.to_string(),
        };
        wr.write_all(&hello.to_bytes())
            .await
            .map_err(|e| Error::network(&peer, e.to_string()))?;
        wr.flush()
            .await
            .map_err(|e| Error::network(&peer, e.to_string()))?;
        let (window, connector) = match timeout(CONNECT_TIMEOUT, read_frame(&mut rd, &peer)).await {
            Err(_) => return Err(Error::network(&peer, "no answer to Hello")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Frame::Welcome {
                version,
                window,
                connector,
            })) if version == PROTOCOL_VERSION => (window.clamp(1, 256), connector),
            Ok(Ok(Frame::Refused { code, message })) => {
                return Err(match code {
                    ErrorCode::BadToken => Error::protocol(
                        &peer,
                        format!(
                            "the staging server refused the pairing token (check --token-file or GODWIT_TOKEN): {message}"
                        ),
                    ),
                    ErrorCode::BadVersion => {
                        Error::protocol(&peer, format!("protocol version mismatch: {message}"))
                    }
                    ErrorCode::Busy => {
                        Error::network(&peer, format!("the staging server is busy: {message}"))
                    }
                    _ => Error::protocol(
                        &peer,
                        format!("the staging server refused the connection: {message}"),
                    ),
                });
            }
            Ok(Ok(other)) => {
                return Err(Error::protocol(
                    &peer,
                    format!("unexpected answer to Hello: {other:?}"),
                ));
            }
        };
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let dead = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(32);
        let d2 = dead.clone();
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() || (rx.is_empty() && wr.flush().await.is_err()) {
                    d2.store(true, Ordering::SeqCst);
                    break;
                }
            }
        });
        let (p2, d3, peer2) = (pending.clone(), dead.clone(), peer.clone());
        let reader = tokio::spawn(async move {
            let mut index_parts: HashMap<u32, Vec<u8>> = HashMap::new();
            loop {
                let f = match read_frame(&mut rd, &peer2).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!("{peer2}: reader stops: {e}");
                        break;
                    }
                };
                let (id, f) = match f {
                    Frame::IndexData {
                        id,
                        total,
                        offset,
                        data,
                    } => {
                        let buf = index_parts.entry(id).or_default();
                        if offset != buf.len() as u64 {
                            break;
                        }
                        buf.extend_from_slice(&data);
                        if (buf.len() as u64) < total {
                            continue;
                        }
                        let all = index_parts.remove(&id).unwrap_or_default();
                        (
                            id,
                            Frame::IndexData {
                                id,
                                total,
                                offset: 0,
                                data: all,
                            },
                        )
                    }
                    Frame::Refused { code, message } => {
                        tracing::warn!("{peer2}: server closed the session: {code:?} {message}");
                        // Every request still waiting learns why (a server older than a
                        // request refuses it this way: `space` reads that as unknown).
                        if let Ok(mut m) = p2.lock() {
                            for (_, s) in m.drain() {
                                let _ = s.send(Frame::Refused {
                                    code,
                                    message: message.clone(),
                                });
                            }
                        }
                        break;
                    }
                    f => match reply_id(&f) {
                        Some(id) => (id, f),
                        None => break,
                    },
                };
                if let Some(s) = p2.lock().ok().and_then(|mut m| m.remove(&id)) {
                    let _ = s.send(f);
                }
            }
            d3.store(true, Ordering::SeqCst);
            if let Ok(mut m) = p2.lock() {
                m.clear();
            }
        });
        Ok(StagingClient {
            peer,
            connector,
            tx,
            pending,
            next_id: AtomicU32::new(1),
            dead,
            window,
            reader,
            writer,
        })
    }

    /// The connector the server knows our token by.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Chunk frames the server lets us keep in flight.
    pub fn window(&self) -> u32 {
        self.window
    }

    async fn call(&self, make: impl FnOnce(u32) -> Frame) -> Result<Frame> {
        self.call_bytes(|id| make(id).to_bytes()).await
    }

    /// Send the frame `make` encodes for a fresh request id; wait for its reply. The server
    /// closing the session (`Refused`) is an error.
    async fn call_bytes(&self, make: impl FnOnce(u32) -> Vec<u8>) -> Result<Frame> {
        match self.call_raw(make).await? {
            Frame::Refused { message, .. } => Err(Error::network(
                &self.peer,
                format!("the server closed the session: {message}"),
            )),
            f => Ok(f),
        }
    }

    /// How much room the staging server's store has left: `None` when it cannot tell (an S3
    /// store) or is too old to know the question (it refuses an unknown frame type with code
    /// 3 and closes the session, so ask on a connection of its own).
    pub async fn store_space(&self) -> Result<Option<crate::store::StoreSpace>> {
        match self
            .call_raw(|id| Frame::GetSpace { id }.to_bytes())
            .await?
        {
            Frame::Space { space, .. } => Ok(space),
            Frame::Refused {
                code: ErrorCode::BadRequest,
                ..
            } => Ok(None),
            f => Err(self.unexpected(&f)),
        }
    }

    /// [`Self::call_bytes`], with a `Refused` answer returned as it came.
    async fn call_raw(&self, make: impl FnOnce(u32) -> Vec<u8>) -> Result<Frame> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Error::network(&self.peer, "connection lost"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (s, r) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(id, s);
        }
        self.tx
            .send(make(id))
            .await
            .map_err(|_| Error::network(&self.peer, "connection lost"))?;
        let limit = reply_timeout();
        match timeout(limit, r).await {
            Err(_) => {
                self.dead.store(true, Ordering::SeqCst);
                self.reader.abort();
                if let Ok(mut m) = self.pending.lock() {
                    m.clear();
                }
                Err(Error::network(
                    &self.peer,
                    format!("no reply within {} s (stalled link)", limit.as_secs()),
                ))
            }
            Ok(Err(_)) => Err(Error::network(&self.peer, "connection lost")),
            Ok(Ok(Frame::Failed { code, message, .. })) => Err(match code {
                ErrorCode::NotFound => Error::NotFound { what: message },
                ErrorCode::BadChunk => Error::integrity(&self.peer, message),
                ErrorCode::MissingChunks => Error::MissingChunks {
                    what: self.peer.clone(),
                    reason: message,
                },
                ErrorCode::Forbidden => Error::Forbidden {
                    what: self.peer.clone(),
                    reason: message,
                },
                ErrorCode::Busy | ErrorCode::Internal => Error::network(&self.peer, message),
                _ => Error::protocol(&self.peer, message),
            }),
            Ok(Ok(f)) => Ok(f),
        }
    }

    fn unexpected(&self, f: &Frame) -> Error {
        Error::protocol(&self.peer, format!("unexpected reply {f:?}"))
    }
}

fn reply_id(f: &Frame) -> Option<u32> {
    match f {
        Frame::HaveReply { id, .. }
        | Frame::Stored { id }
        | Frame::ChunkData { id, .. }
        | Frame::SyncList { id, .. }
        | Frame::Committed { id, .. }
        | Frame::SyncBegun { id, .. }
        | Frame::Done { id }
        | Frame::Space { id, .. }
        | Frame::Failed { id, .. } => Some(*id),
        _ => None,
    }
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, peer: &str) -> Result<Frame> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len)
        .await
        .map_err(|e| Error::network(peer, format!("read: {e}")))?;
    let n = frame::check_length(len).map_err(|e| Error::protocol(peer, e.to_string()))?;
    let mut body = vec![0u8; n];
    rd.read_exact(&mut body)
        .await
        .map_err(|e| Error::network(peer, format!("read: {e}")))?;
    Frame::decode_body(&body).map_err(|e| Error::protocol(peer, e.to_string()))
}

impl ChunkStore for StagingClient {
    fn describe(&self) -> String {
        format!("staging://{}", self.peer)
    }

    fn has_chunks(&self, digests: Vec<ChunkDigest>) -> BoxFut<'_, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(digests.len());
            for batch in digests.chunks(MAX_HAVE) {
                let n = batch.len();
                match self
                    .call(|id| Frame::Have {
                        id,
                        digests: batch.to_vec(),
                    })
                    .await?
                {
                    Frame::HaveReply { have, .. } if have.len() == n => out.extend(have),
                    f => return Err(self.unexpected(&f)),
                }
            }
            Ok(out)
        })
    }

    fn put_chunk(&self, digest: ChunkDigest, encoded: Bytes) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let frame = move |id| Frame::put_chunk_bytes(id, &digest, &encoded);
            match self.call_bytes(frame).await? {
                Frame::Stored { .. } => Ok(()),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    fn get_chunk(&self, digest: ChunkDigest) -> BoxFut<'_, Bytes> {
        Box::pin(async move {
            match self.call(|id| Frame::GetChunk { id, digest }).await? {
                Frame::ChunkData { data, .. } => Ok(Bytes::from(data)),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    fn list_syncs<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, Vec<SyncId>> {
        Box::pin(async move {
            match self
                .call(|id| Frame::ListSyncs {
                    id,
                    vm: vm.to_string(),
                    disk,
                })
                .await?
            {
                Frame::SyncList { syncs, .. } => syncs.iter().map(|s| SyncId::parse(s)).collect(),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    fn get_index<'a>(&'a self, vm: &'a str, disk: u32, sync: &'a SyncId) -> BoxFut<'a, Bytes> {
        Box::pin(async move {
            match self
                .call(|id| Frame::GetIndex {
                    id,
                    vm: vm.to_string(),
                    disk,
                    sync: sync.to_string(),
                })
                .await?
            {
                Frame::IndexData { data, .. } => Ok(Bytes::from(data)),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    fn commit_index(&self, index: Bytes) -> BoxFut<'_, SyncId> {
        Box::pin(async move {
            let total = index.len() as u64;
            let mut off = 0usize;
            loop {
                let end = (off + INDEX_PART).min(index.len());
                let part = index[off..end].to_vec();
                let o = off as u64;
                let f = self
                    .call(|id| Frame::PutIndex {
                        id,
                        total,
                        offset: o,
                        data: part,
                    })
                    .await?;
                off = end;
                match f {
                    Frame::Done { .. } if off < index.len() => {}
                    Frame::Committed { sync, .. } if off >= index.len() => {
                        return SyncId::parse(&sync);
                    }
                    f => return Err(self.unexpected(&f)),
                }
            }
        })
    }

    fn begin_sync<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, String> {
        Box::pin(async move {
            match self
                .call(|id| Frame::BeginSync {
                    id,
                    vm: vm.to_string(),
                    disk,
                })
                .await?
            {
                Frame::SyncBegun { lease, .. } => Ok(lease),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    fn end_sync<'a>(&'a self, lease: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match self
                .call(|id| Frame::EndSync {
                    id,
                    lease: lease.to_string(),
                })
                .await?
            {
                Frame::Done { .. } => Ok(()),
                f => Err(self.unexpected(&f)),
            }
        })
    }

    /// See [`StagingClient::store_space`]: an old server closes the session on it.
    fn space(&self) -> BoxFut<'_, Option<crate::store::StoreSpace>> {
        Box::pin(self.store_space())
    }
}
