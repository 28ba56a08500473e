//! The ingest endpoint's request handling, apart from any listener: the open sessions and
//! their one-time tokens, and what one push gets. Used by [`super::server`] (its own HTTPS
//! listener, `godwit replicate --ingest-listen`) and by the service's axum route on its one
//! HTTPS port (`godwit serve`).
//!
//! A push's head is parsed by [`super::codec`]; then [`IngestRegistry::admit`]: the session must
//! exist and the bearer token match (else 401, the same answer for both); the file id must be
//! one of the session's and the range inside what the session asked for (else 409). The body
//! must be exactly `Content-Length` bytes ([`Admitted::truncated`] otherwise: nothing stored)
//! with the announced SHA-256 (else 422); then [`Admitted::store`] makes it durable in the
//! file's spool (201; a range already held answers 200). Every refusal is counted
//! ([`IngestStats`]) and logged.

use super::codec::{CodecError, PushRequest};
use super::ranges::RangeSet;
use super::spool::SpoolFile;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Refusals and acceptances since the endpoint started.
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

impl IngestStats {
    /// Every refused push, whatever the reason.
    pub fn refused(&self) -> u64 {
        self.bad_request + self.bad_token + self.not_asked + self.bad_checksum + self.truncated
    }
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

/// A session's id and one-time token, for the uploader.
#[derive(Debug, Clone)]
pub struct SessionTicket {
    pub id: String,
    pub token: String,
}

struct Session {
    token: String,
    files: Vec<SessionFile>,
    stats: Mutex<SessionStats>,
}

impl Session {
    fn stats(&self) -> std::sync::MutexGuard<'_, SessionStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// The answer to one request: HTTP status, a JSON body, and whether the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    pub close: bool,
}

impl Reply {
    fn error(status: u16, msg: String, close: bool) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": msg }),
            close,
        }
    }
}

/// The open sessions and the endpoint's counters.
#[derive(Default)]
pub struct IngestRegistry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for IngestRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestRegistry")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl IngestRegistry {
    pub fn new() -> IngestRegistry {
        IngestRegistry::default()
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
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), s);
        SessionTicket { id, token }
    }

    /// End a session (its token stops working) and return what it received.
    pub fn close_session(&self, id: &str) -> Option<SessionStats> {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        let st = s.stats().clone();
        Some(st)
    }

    pub fn stats(&self) -> IngestStats {
        let c = &self.counters;
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

    /// A head the codec refused: counted, logged, answered (the connection ends).
    pub fn bad_request(&self, e: &CodecError) -> Reply {
        self.counters.bad_request.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(status = e.status(), "ingest request refused: {e}");
        Reply::error(e.status(), e.to_string(), true)
    }

    /// Check a parsed head against the sessions: `Ok` means read the body and
    /// [`Admitted::store`] it; `Err` is the refusal to send (the connection ends; without
    /// `Expect: 100-continue` the caller reads and drops the body first, at most
    /// `r.length` bytes, so the sender sees the answer instead of a reset).
    pub fn admit(&self, r: &PushRequest) -> Result<Admitted, Reply> {
        let c = &self.counters;
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.session)
            .cloned();
        // Constant-time enough: compare digests of the tokens.
        let ok = session
            .as_ref()
            .is_some_and(|s| Sha256::digest(&s.token) == Sha256::digest(&r.token));
        let refuse = |status: u16, msg: String| {
            tracing::warn!(status, session = %r.session, file = r.file_id, offset = r.offset, len = r.length, "ingest push refused: {msg}");
            Reply::error(status, msg, true)
        };
        let Some(s) = session.filter(|_| ok) else {
            c.bad_token.fetch_add(1, Ordering::Relaxed);
            return Err(refuse(401, "unknown session or wrong token".into()));
        };
        let end = r.offset + r.length;
        let idx = usize::try_from(r.file_id).unwrap_or(usize::MAX);
        let asked = s
            .files
            .get(idx)
            .is_some_and(|f| f.asked.contains(r.offset, end));
        if !asked || r.length == 0 {
            c.not_asked.fetch_add(1, Ordering::Relaxed);
            s.stats().refused += 1;
            return Err(refuse(
                409,
                format!(
                    "range {}+{} of file {} was not asked for in this session",
                    r.offset, r.length, r.file_id
                ),
            ));
        }
        Ok(Admitted {
            session: s,
            idx,
            req: r.clone(),
            counters: self.counters.clone(),
        })
    }
}

/// A push whose head was accepted; its body comes next.
pub struct Admitted {
    session: Arc<Session>,
    idx: usize,
    req: PushRequest,
    counters: Arc<Counters>,
}

impl Admitted {
    pub fn request(&self) -> &PushRequest {
        &self.req
    }

    /// The body ended after `got` of the announced bytes: nothing is stored (the connection
    /// ends).
    pub fn truncated(self, got: usize) -> Reply {
        let want = self.req.length;
        self.counters.truncated.fetch_add(1, Ordering::Relaxed);
        self.session.stats().refused += 1;
        tracing::warn!(session = %self.req.session, file = self.req.file_id, offset = self.req.offset, got, want, "ingest push truncated: the connection ended before Content-Length; nothing stored");
        Reply::error(
            400,
            format!("body ended after {got} of {want} bytes; nothing stored"),
            true,
        )
    }

    /// Check the body (exactly the announced length, by the caller) against the announced
    /// SHA-256 and store it durably. Blocking: the spool syncs to disk.
    pub fn store(self, body: &[u8]) -> Reply {
        let (r, c) = (&self.req, &self.counters);
        let digest: [u8; 32] = Sha256::digest(body).into();
        if digest != r.sha256 {
            c.bad_checksum.fetch_add(1, Ordering::Relaxed);
            self.session.stats().refused += 1;
            let msg = format!(
                "SHA-256 of the {} bytes is {}, not the announced {}; nothing stored",
                body.len(),
                hex::encode(digest),
                hex::encode(r.sha256)
            );
            tracing::warn!(session = %r.session, file = r.file_id, offset = r.offset, "ingest push refused: {msg}");
            return Reply::error(422, msg, r.close);
        }
        let file = &self.session.files[self.idx];
        match file.spool.store(r.offset, body, digest) {
            Ok(new) => {
                let mut st = self.session.stats();
                if new {
                    c.accepted.fetch_add(1, Ordering::Relaxed);
                    c.accepted_bytes.fetch_add(r.length, Ordering::Relaxed);
                    st.pushes += 1;
                    st.bytes += r.length;
                } else {
                    c.repeated.fetch_add(1, Ordering::Relaxed);
                    st.repeated += 1;
                }
                Reply {
                    status: if new { 201 } else { 200 },
                    body: serde_json::json!({ "stored": r.length }),
                    close: r.close,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest spool write failed");
                Reply::error(
                    503,
                    format!("the connector could not store the range: {e}"),
                    true,
                )
            }
        }
    }
}
