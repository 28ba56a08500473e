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
//! file's spool (201; a range already held answers 200). A push whose bytes do not fit in the
//! spool budget gets 503 with `Retry-After` (the uploader waits and sends it again). A push of
//! no bytes to a file of the session is the uploader's probe: 200, nothing stored.
//!
//! Every refusal is counted ([`IngestStats`]); refusals are logged aggregated per client
//! address ([`RefusalLog`]: the first in full, then one line "N refused pushes from ADDR in the
//! last minute"), since anyone who reaches the port can send them.

use super::codec::{CodecError, PushRequest};
use super::ranges::RangeSet;
use super::spool::SpoolFile;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Pushes answered 503 because the spool was full (the uploader sends them again).
    pub spool_full: u64,
    /// Probes answered (an uploader proving it reaches the endpoint).
    pub probes: u64,
}

impl IngestStats {
    /// Every refused push, whatever the reason (503s for a full spool are not refusals).
    pub fn refused(&self) -> u64 {
        self.bad_request + self.bad_token + self.not_asked + self.bad_checksum + self.truncated
    }
}

/// How long refusals from one address are summed up before their summary line.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);
/// Addresses tracked one by one; refusals from more are summed under "other addresses".
pub const REFUSAL_LOG_ADDRESSES: usize = 1024;

struct RefusalWindow {
    start: Instant,
    count: u64,
    last: String,
}

/// Refusals logged per client address: the first of a period in full, the rest as one line
/// "N refused pushes from ADDR in the last minute" when the period is over (at the next
/// refusal, or [`RefusalLog::flush`]). A burst of refused pushes costs a line or two.
pub struct RefusalLog {
    period: Duration,
    windows: Mutex<HashMap<String, RefusalWindow>>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_LOG_PERIOD)
    }
}

impl RefusalLog {
    pub fn new(period: Duration) -> RefusalLog {
        RefusalLog {
            period,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn summary(addr: &str, w: &RefusalWindow) {
        if w.count > 1 {
            tracing::warn!(
                "{} refused pushes from {addr} in the last minute (the last: {})",
                w.count,
                w.last
            );
        }
    }

    /// Log the summaries of periods that are over.
    pub fn flush(&self, all: bool) {
        let now = Instant::now();
        let mut m = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|addr, w| {
            let over = all || now.duration_since(w.start) >= self.period;
            if over {
                RefusalLog::summary(addr, w);
            }
            !over
        });
    }

    /// One refusal from `peer`, `status` and why.
    pub fn note(&self, peer: Option<IpAddr>, status: u16, msg: &str) {
        self.flush(false);
        let mut m = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut addr = peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string());
        if !m.contains_key(&addr) && m.len() >= REFUSAL_LOG_ADDRESSES {
            addr = "other addresses".to_string();
        }
        let last = format!("{status}: {msg}");
        match m.get_mut(&addr) {
            Some(w) => {
                w.count += 1;
                w.last = last;
            }
            None => {
                tracing::warn!(
                    status,
                    "ingest push from {addr} refused: {msg} (further refusals from {addr} are summed up for a minute)"
                );
                m.insert(
                    addr,
                    RefusalWindow {
                        start: Instant::now(),
                        count: 1,
                        last,
                    },
                );
            }
        }
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        self.flush(true);
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
    spool_full: AtomicU64,
    probes: AtomicU64,
}

/// The answer to one request: HTTP status, a JSON body, whether the connection ends, and for
/// a 503 how many seconds to wait (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    pub close: bool,
    pub retry_after: Option<u32>,
}

impl Reply {
    fn error(status: u16, msg: String, close: bool) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": msg }),
            close,
            retry_after: None,
        }
    }

    /// `503` with `Retry-After` (the connection stays open).
    pub fn busy(msg: String, retry_after: u32) -> Reply {
        Reply {
            status: 503,
            body: serde_json::json!({ "error": msg }),
            close: false,
            retry_after: Some(retry_after),
        }
    }
}

/// The open sessions and the endpoint's counters.
#[derive(Default)]
pub struct IngestRegistry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    counters: Arc<Counters>,
    refusals: Arc<RefusalLog>,
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
            spool_full: g(&c.spool_full),
            probes: g(&c.probes),
        }
    }

    /// The log refusals go to (also for the listeners' own refusals: too many connections).
    pub fn refusal_log(&self) -> &RefusalLog {
        &self.refusals
    }

    /// A head the codec refused: counted, logged (aggregated), answered (the connection ends).
    pub fn bad_request(&self, e: &CodecError, peer: Option<IpAddr>) -> Reply {
        self.counters.bad_request.fetch_add(1, Ordering::Relaxed);
        self.refusals.note(peer, e.status(), &e.to_string());
        Reply::error(e.status(), e.to_string(), true)
    }

    /// Check a parsed head against the sessions: `Ok` means read the body and
    /// [`Admitted::store`] it; `Err` is the refusal to send (the connection ends; without
    /// `Expect: 100-continue` the caller reads and drops the body first, at most
    /// `r.length` bytes, so the sender sees the answer instead of a reset).
    pub fn admit(&self, r: &PushRequest, peer: Option<IpAddr>) -> Result<Admitted, Reply> {
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
            self.refusals.note(peer, status, &msg);
            Reply::error(status, msg, true)
        };
        let Some(s) = session.filter(|_| ok) else {
            c.bad_token.fetch_add(1, Ordering::Relaxed);
            return Err(refuse(401, "unknown session or wrong token".into()));
        };
        let end = r.offset + r.length;
        let idx = usize::try_from(r.file_id).unwrap_or(usize::MAX);
        if r.length == 0 && idx < s.files.len() {
            // The uploader's probe: it reaches the endpoint, its token is good.
            c.probes.fetch_add(1, Ordering::Relaxed);
            return Err(Reply {
                status: 200,
                body: serde_json::json!({ "probe": "reachable" }),
                close: r.close,
                retry_after: None,
            });
        }
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
        let file = &s.files[idx];
        if !file.spool.received().contains(r.offset, end)
            && !file.spool.budget().try_reserve(r.length)
        {
            c.spool_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(session = %r.session, used = file.spool.budget().used(), limit = file.spool.budget().limit(), "spool full: push answered 503");
            return Err(Reply::busy(
                format!(
                    "the connector's spool is full ({} of {} bytes held); retry in {} s",
                    file.spool.budget().used(),
                    file.spool.budget().limit(),
                    super::budget::RETRY_AFTER_SECS
                ),
                super::budget::RETRY_AFTER_SECS,
            ));
        }
        let reserved = if file.spool.received().contains(r.offset, end) {
            0
        } else {
            r.length
        };
        Ok(Admitted {
            session: s,
            idx,
            req: r.clone(),
            counters: self.counters.clone(),
            refusals: self.refusals.clone(),
            peer,
            reserved,
        })
    }
}

/// A push whose head was accepted; its body comes next.
pub struct Admitted {
    session: Arc<Session>,
    idx: usize,
    req: PushRequest,
    counters: Arc<Counters>,
    refusals: Arc<RefusalLog>,
    peer: Option<IpAddr>,
    /// Bytes reserved in the spool budget for this push (given back unless stored).
    reserved: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.session.files[self.idx]
                .spool
                .budget()
                .release(self.reserved);
        }
    }
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
        let msg = format!("body ended after {got} of {want} bytes; nothing stored");
        self.refusals.note(self.peer, 400, &msg);
        Reply::error(400, msg, true)
    }

    /// Check the body (exactly the announced length, by the caller) against the announced
    /// SHA-256 and store it durably. Blocking: the spool syncs to disk.
    pub fn store(mut self, body: &[u8]) -> Reply {
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
            self.refusals.note(self.peer, 422, &msg);
            return Reply::error(422, msg, r.close);
        }
        let file = &self.session.files[self.idx];
        match file.spool.store(r.offset, body, digest) {
            Ok(new) => {
                // Stored: the reservation is held bytes now (store gave back any overlap).
                if new {
                    self.reserved = 0;
                }
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
                    retry_after: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::budget::SpoolBudget;
    use std::io::Write;

    /// Log lines written while `f` runs.
    fn log_lines(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || b2.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    fn push(session: &str, token: &str, offset: u64, length: u64) -> PushRequest {
        PushRequest {
            session: session.into(),
            file_id: 0,
            offset,
            length,
            token: token.into(),
            sha256: [0; 32],
            expect_continue: false,
            close: false,
        }
    }

    #[test]
    fn two_thousand_refused_pushes_add_a_few_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpoolBudget::new(1 << 20));
        let spool =
            Arc::new(SpoolFile::open(dir.path(), r"C:\a.vhdx", 1 << 20, "cp", budget).unwrap());
        let lines = log_lines(|| {
            let reg = IngestRegistry::new();
            let t = reg.open_session(vec![SessionFile {
                asked: RangeSet::from_ranges([(0, 4096)]),
                spool: spool.clone(),
            }]);
            let a: IpAddr = "192.0.2.7".parse().unwrap();
            let b: IpAddr = "192.0.2.8".parse().unwrap();
            for i in 0..2000u64 {
                let r = match i % 3 {
                    0 => reg.admit(&push(&t.id, "wrong", 0, 10), Some(a)),
                    1 => reg.admit(&push(&t.id, &t.token, 8192, 10), Some(a)),
                    _ => Err(reg.bad_request(&CodecError::NoDigest, Some(a))),
                };
                assert!(r.is_err());
            }
            assert!(reg.admit(&push("nope", "x", 0, 1), Some(b)).is_err());
            let st = reg.stats();
            assert_eq!(st.refused(), 2001);
            // The period ends (flushed at drop): the summary line.
        });
        let joined = lines.join("\n");
        assert!(lines.len() <= 4, "{} lines:\n{joined}", lines.len());
        assert!(
            joined.contains("2000 refused pushes from 192.0.2.7 in the last minute"),
            "{joined}"
        );
        assert!(joined.contains("192.0.2.8"), "{joined}");
    }

    #[test]
    fn pushes_that_do_not_fit_the_budget_get_503_and_probes_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpoolBudget::new(8192));
        let spool = Arc::new(
            SpoolFile::open(dir.path(), r"C:\a.vhdx", 1 << 20, "cp", budget.clone()).unwrap(),
        );
        let reg = IngestRegistry::new();
        let t = reg.open_session(vec![SessionFile {
            asked: RangeSet::from_ranges([(0, 1 << 20)]),
            spool: spool.clone(),
        }]);
        let probe = reg.admit(&push(&t.id, &t.token, 0, 0), None).err().unwrap();
        assert_eq!(probe.status, 200);
        let data = vec![1u8; 4096];
        let mut good = push(&t.id, &t.token, 0, 4096);
        good.sha256 = Sha256::digest(&data).into();
        let held = reg.admit(&good, None).ok().unwrap();
        let mut second = good.clone();
        second.offset = 4096;
        let in_flight = reg.admit(&second, None).ok().unwrap();
        let mut third = good.clone();
        third.offset = 8192;
        let full = reg.admit(&third, None).err().unwrap();
        assert_eq!((full.status, full.retry_after), (503, Some(1)));
        assert!(
            full.body["error"]
                .as_str()
                .unwrap()
                .contains("spool is full")
        );
        assert_eq!(held.store(&data).status, 201);
        // A push refused after admission (bad digest) gives its reservation back.
        let mut bad = in_flight.request().clone();
        bad.sha256 = [9; 32];
        drop(in_flight);
        let a = reg.admit(&bad, None).ok().unwrap();
        assert_eq!(a.store(&data).status, 422);
        assert_eq!(budget.used(), 4096);
        spool.release(0, 4096);
        assert_eq!(budget.used(), 0);
        let st = reg.stats();
        assert_eq!((st.probes, st.spool_full, st.accepted), (1, 1, 1));
    }
}
