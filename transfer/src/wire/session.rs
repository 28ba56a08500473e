//! One paired connection on the staging server: requests from a connector whose token names
//! it, answered from the store. A connector reads and writes only its own VMs (the store's
//! owner records, store/access.rs); its token is checked again before each sync starts and
//! before each commit, so a revoked token stops working on open connections too.

use super::frame::{ErrorCode, Frame, INDEX_PART};
use super::server::{Shared, read_frame};
use crate::chunk::decode_chunk;
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{SyncId, SyncIndex, check_vm_name};
use crate::store::ChunkStore;
use crate::store::access::TokenRecord;
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

pub(super) struct Session {
    sh: Arc<Shared>,
    peer: String,
    tx: mpsc::Sender<Vec<u8>>,
    leases: Vec<String>,
    upload: Vec<u8>,
    window: Arc<Semaphore>,
    connector: String,
    token: String,
}

fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::NotFound { .. } => ErrorCode::NotFound,
        Error::MissingChunks { .. } => ErrorCode::MissingChunks,
        Error::Forbidden { .. } => ErrorCode::Forbidden,
        Error::Integrity { .. } => ErrorCode::BadChunk,
        Error::Usage(_) | Error::Malformed { .. } => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

fn failed(id: u32, e: &Error) -> Frame {
    Frame::Failed {
        id,
        code: code_of(e),
        message: e.to_string(),
    }
}

impl Session {
    pub(super) async fn run<R, W>(
        sh: Arc<Shared>,
        peer: String,
        mut rd: R,
        mut wr: W,
        rec: TokenRecord,
        token: String,
    ) -> Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
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
        let window = usize::try_from(sh.opts.window).unwrap_or(8);
        let mut s = Session {
            sh: sh.clone(),
            peer,
            tx,
            leases: Vec::new(),
            upload: Vec::new(),
            window: Arc::new(Semaphore::new(window)),
            connector: rec.connector,
            token,
        };
        let result = s.serve(&mut rd).await;
        for l in std::mem::take(&mut s.leases) {
            let _ = sh.store.end_sync(&l).await;
        }
        if let Err(e) = &result
            && !matches!(e, Error::Network { .. })
        {
            let code = if matches!(e, Error::Forbidden { .. }) {
                ErrorCode::BadToken
            } else {
                ErrorCode::BadRequest
            };
            let f = Frame::Refused {
                code,
                message: e.to_string(),
            };
            let _ = s.tx.send(f.to_bytes()).await;
        }
        drop(s);
        let _ = writer.await;
        result
    }

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

    /// The token still valid (not revoked since the connection was paired)?
    async fn still_paired(&self) -> Result<()> {
        match self.sh.store.authenticate(&self.token).await? {
            Some(_) => Ok(()),
            None => Err(Error::Forbidden {
                what: format!("{} (connector {})", self.peer, self.connector),
                reason: "the token has been revoked".into(),
            }),
        }
    }

    /// Before a sync starts and before a commit: a revoked token fails the request and
    /// closes the connection.
    async fn paired_or_close(&self, id: u32) -> Result<()> {
        if let Err(e) = self.still_paired().await {
            self.send(failed(id, &e)).await?;
            return Err(e);
        }
        Ok(())
    }

    async fn request(&mut self, f: Frame) -> Result<()> {
        let store = self.sh.store.clone();
        match f {
            Frame::Have { id, digests } => {
                let reply = match store.has_chunks(digests).await {
                    Ok(have) => Frame::HaveReply { id, have },
                    Err(e) => failed(id, &e),
                };
                self.send(reply).await
            }
            Frame::GetChunk { id, digest } => {
                let reply = match store.get_chunk(digest).await {
                    Ok(b) => Frame::ChunkData {
                        id,
                        data: b.to_vec(),
                    },
                    Err(e) => failed(id, &e),
                };
                self.send(reply).await
            }
            Frame::ListSyncs { id, vm, disk } => {
                let r = async {
                    store.check_read(&vm, &self.connector).await?;
                    store.list_syncs(&vm, disk).await
                };
                let reply = match r.await {
                    Ok(v) => Frame::SyncList {
                        id,
                        syncs: v.iter().map(ToString::to_string).collect(),
                    },
                    Err(e) => failed(id, &e),
                };
                self.send(reply).await
            }
            Frame::GetIndex { id, vm, disk, sync } => {
                let r = async {
                    let s = SyncId::parse(&sync)?;
                    store.check_read(&vm, &self.connector).await?;
                    store.get_index(&vm, disk, &s).await
                };
                match r.await {
                    Ok(b) => self.send_index(id, &b).await,
                    Err(e) => self.send(failed(id, &e)).await,
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
                    return self.send(failed(id, &e)).await;
                }
                self.upload.extend_from_slice(&data);
                if (self.upload.len() as u64) < total {
                    return self.send(Frame::Done { id }).await;
                }
                let idx = Bytes::from(std::mem::take(&mut self.upload));
                self.paired_or_close(id).await?;
                let reply = match self.commit(idx).await {
                    Ok(s) => {
                        tracing::info!("{}: {} committed sync {s}", self.peer, self.connector);
                        Frame::Committed {
                            id,
                            sync: s.to_string(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!("{}: commit refused: {e}", self.peer);
                        failed(id, &e)
                    }
                };
                self.send(reply).await
            }
            Frame::BeginSync { id, vm, disk } => {
                self.paired_or_close(id).await?;
                let r = async {
                    check_vm_name(&vm)?;
                    store.claim_vm(&vm, &self.connector).await?;
                    store.begin_sync(&vm, disk).await
                };
                match r.await {
                    Ok(l) => {
                        self.leases.push(l.clone());
                        self.send(Frame::SyncBegun { id, lease: l }).await
                    }
                    Err(e) => self.send(failed(id, &e)).await,
                }
            }
            Frame::EndSync { id, lease } => {
                if let Some(pos) = self.leases.iter().position(|l| *l == lease) {
                    self.leases.swap_remove(pos);
                    let _ = store.end_sync(&lease).await;
                }
                self.send(Frame::Done { id }).await
            }
            // The room left in the store (docs/wire-protocol.md, GetSpace): statvfs of a
            // local store's directory, unknown for S3.
            Frame::GetSpace { id } => {
                let reply = match store.space().await {
                    Ok(space) => Frame::Space { id, space },
                    Err(e) => failed(id, &e),
                };
                self.send(reply).await
            }
            other => Err(Error::protocol(
                &self.peer,
                format!("unexpected frame from a client: {}", frame_name(&other)),
            )),
        }
    }

    async fn commit(&self, idx: Bytes) -> Result<SyncId> {
        let vm = SyncIndex::parse(&idx, "index to commit")?.vm;
        self.sh.store.claim_vm(&vm, &self.connector).await?;
        self.sh.store.commit_index(idx).await
    }

    async fn send_index(&self, id: u32, b: &[u8]) -> Result<()> {
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
                return Ok(());
            }
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

async fn put_chunk(sh: &Shared, peer: &str, id: u32, digest: ChunkDigest, data: Vec<u8>) -> Frame {
    let Ok(_cpu) = sh.verifying.acquire().await else {
        return failed(id, &Error::Usage("shutting down".into()));
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
            return Frame::Failed {
                id,
                code: ErrorCode::BadChunk,
                message: e.to_string(),
            };
        }
        Err(e) => return failed(id, &Error::Usage(e.to_string())),
    };
    match sh.store.put_chunk(digest, Bytes::from(data)).await {
        Ok(()) => Frame::Stored { id },
        Err(e) => Frame::Failed {
            id,
            code: ErrorCode::Internal,
            message: e.to_string(),
        },
    }
}
