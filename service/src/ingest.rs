//! The Hyper-V host-push ingest on the service's one HTTPS port (design §3: the hosts reach
//! the connector on 443 inbound, the port of the web UI): `PUT /ingest/v1/<session>/<file>/<offset>`
//! is routed here, outside the web layer's session and CSRF guard: each push carries the
//! one-time bearer token of its session instead, and [`godwit_hyperv::ingest::registry`] decides
//! what it gets exactly as on `godwit replicate`'s own listener (same codec checks, same
//! answers). Bodies are bounded by the codec (`Content-Length` at most 8 MiB, no chunked
//! bodies), at most [`MAX_PUSHES`] are handled at once, and a stalled body is dropped after
//! [`IO_TIMEOUT`].
//!
//! The uploader pins the certificate the listener serves now (an uploaded one included,
//! [`ServiceIngest::set_pin`]); it is told the ingest URL setting (`PUT /api/v1/settings/ingest`,
//! changed without a restart, [`ServiceIngest::set_configured_url`]), else `godwit serve
//! --ingest-url`, else the address of the service's WinRM connection to that host as the host
//! sees it, with the bound port.
//!
//! Pushed bytes wait in the jobs' spools until their transfer has read them; all jobs share
//! one [`SpoolBudget`] (256 MiB by default), so a push that would overflow it gets 503 with
//! `Retry-After` and the host's uploader waits.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use godwit_hyperv::Fingerprint;
use godwit_hyperv::ingest::budget::{DEFAULT_SPOOL_LIMIT, SpoolBudget};
use godwit_hyperv::ingest::codec::{self, CodecError};
use godwit_hyperv::ingest::registry::{Admitted, Reply};
use godwit_hyperv::ingest::{IngestConfig, IngestRegistry, IngestUrl};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Pushes handled at once (each holds up to 8 MiB); more are answered 503 (the uploader
/// retries).
pub const MAX_PUSHES: usize = 32;
/// A body that stalls this long is dropped (nothing stored).
pub const IO_TIMEOUT: Duration = godwit_hyperv::ingest::server::IO_TIMEOUT;
/// How long the body of a refused push is read (and dropped) so its sender sees the answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's ingest: the sessions, where hosts connect, the certificate they pin.
pub struct ServiceIngest {
    registry: Arc<IngestRegistry>,
    /// The ingest URL setting (wins over everything).
    configured: RwLock<Option<String>>,
    /// `godwit serve --ingest-url`.
    flag: RwLock<Option<String>>,
    /// The port the hosts reach the listener on, once bound.
    port: RwLock<Option<u16>>,
    pin: Mutex<Option<Fingerprint>>,
    slots: tokio::sync::Semaphore,
    budget: Arc<SpoolBudget>,
    /// The most the spools of all jobs may hold at once (lowered to the data partition's free
    /// space by each cycle).
    spool_limit: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ServiceIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceIngest")
            .field("configured", &self.configured_url())
            .finish_non_exhaustive()
    }
}

impl Default for ServiceIngest {
    fn default() -> Self {
        ServiceIngest {
            registry: Arc::new(IngestRegistry::new()),
            configured: RwLock::new(None),
            flag: RwLock::new(None),
            port: RwLock::new(None),
            pin: Mutex::new(None),
            slots: tokio::sync::Semaphore::new(MAX_PUSHES),
            budget: Arc::new(SpoolBudget::new(DEFAULT_SPOOL_LIMIT)),
            spool_limit: std::sync::atomic::AtomicU64::new(DEFAULT_SPOOL_LIMIT),
        }
    }
}

impl ServiceIngest {
    pub fn new() -> Arc<ServiceIngest> {
        Arc::new(ServiceIngest::default())
    }

    /// `godwit serve --ingest-url` (`https://HOST[:PORT]`, checked), if given.
    pub fn set_flag_url(&self, url: Option<String>) {
        *self.flag.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// The port the listener was bound to.
    pub fn set_port(&self, port: u16) {
        *self.port.write().unwrap_or_else(|e| e.into_inner()) = Some(port);
    }

    /// The ingest URL setting (`None`: derived per host); takes effect for the next cycle.
    pub fn set_configured_url(&self, url: Option<String>) {
        *self.configured.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// The ingest URL setting, if set.
    pub fn configured_url(&self) -> Option<String> {
        self.configured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `--ingest-url`, if given.
    pub fn flag_url(&self) -> Option<String> {
        self.flag.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The bound port, once the listener runs.
    pub fn port(&self) -> Option<u16> {
        *self.port.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The spool limit setting (`None`: [`DEFAULT_SPOOL_LIMIT`]); the next cycle uses it, lowered
    /// to the data partition's free space.
    pub fn set_spool_limit(&self, bytes: Option<u64>) {
        // The shared rule (IngestSettings::spool_limit_bytes) keeps it at two pushes or more.
        const _: () = assert!(
            godwit_hyperv::ingest::push::MIN_SPOOL_BYTES
                <= godwit_webui::backend::SPOOL_LIMIT_MIN_MIB << 20
        );
        self.spool_limit.store(
            bytes.unwrap_or(DEFAULT_SPOOL_LIMIT),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The spools now: (bytes held, most held at once since the start, the limit setting).
    pub fn spool_figures(&self) -> (u64, u64, u64) {
        (
            self.budget.used(),
            self.budget.peak(),
            self.spool_limit.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    /// The spool budget all jobs share.
    #[cfg(test)]
    pub fn budget(&self) -> Arc<SpoolBudget> {
        self.budget.clone()
    }

    /// The certificate the listener serves (again after an upload replaced it).
    pub fn set_pin(&self, der: &[u8]) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fingerprint::of_der(der));
    }

    pub fn stats(&self) -> godwit_hyperv::ingest::IngestStats {
        self.registry.stats()
    }

    /// A cycle's configuration (spools under `spool_dir`), once the listener is running: the
    /// URL setting, else `--ingest-url`, else the WinRM connection's local address and the
    /// bound port.
    pub fn config(&self, spool_dir: PathBuf, align: u64) -> Option<IngestConfig> {
        let pin = (*self.pin.lock().unwrap_or_else(|e| e.into_inner()))?;
        let url = match self.configured_url().or_else(|| self.flag_url()) {
            Some(u) => IngestUrl::Fixed(u),
            None => IngestUrl::LocalAddressOfWinRm { port: self.port()? },
        };
        Some(IngestConfig {
            sessions: self.registry.clone(),
            pin,
            url,
            spool_dir,
            align,
            budget: self.budget.clone(),
            spool_limit: self.spool_limit.load(std::sync::atomic::Ordering::SeqCst),
        })
    }
}

/// The route, to merge into the service's router outside the web layer's guard.
pub fn router(ingest: Arc<ServiceIngest>) -> axum::Router {
    axum::Router::new()
        .route("/ingest/v1/{*rest}", axum::routing::any(push))
        .with_state(ingest)
}

fn answer(r: &Reply, version: Version) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(r.body.clone())).into_response();
    let h = resp.headers_mut();
    if let Some(secs) = r.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if r.status == 401 {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"godwit-ingest\""),
        );
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if r.close && version <= Version::HTTP_11 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The head as the codec checks it on the other listener (request target with its query,
/// header fields in order; a value that is not text is refused like a bad header line).
fn parse(req: &axum::http::request::Parts) -> Result<codec::PushRequest, CodecError> {
    let mut fields = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        let v = value.to_str().map_err(|_| {
            CodecError::HeaderLine(format!("{}: <{} bytes, not text>", name, value.len()))
        })?;
        fields.push((name.as_str(), v));
    }
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |p| p.as_str());
    codec::parse_fields(
        req.method.as_str(),
        target,
        req.version <= Version::HTTP_10,
        fields,
    )
}

/// Read exactly `want` bytes of `body` (`Err(got)`: it ended, failed or stalled first, or
/// ran longer).
async fn read_body(body: axum::body::Body, want: usize) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(want);
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            if out.len() + chunk.len() > want {
                break;
            }
            out.extend_from_slice(&chunk);
        }
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, read).await;
    if out.len() == want {
        Ok(out)
    } else {
        Err(out.len())
    }
}

/// Read and drop up to `len` bytes of a refused push's body (nothing is kept), for at most
/// [`DRAIN_TIMEOUT`].
async fn drain(body: axum::body::Body, len: u64) {
    let mut stream = body.into_data_stream();
    let mut left = len;
    let read = async {
        while left > 0 {
            match stream.next().await {
                Some(Ok(chunk)) => left = left.saturating_sub(chunk.len() as u64),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}

async fn push(State(ingest): State<Arc<ServiceIngest>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let version = parts.version;
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let r = match parse(&parts) {
        Ok(r) => r,
        Err(e) => return answer(&ingest.registry.bad_request(&e, peer), version),
    };
    let admitted: Admitted = match ingest.registry.admit(&r, peer) {
        Ok(a) => a,
        Err(reply) => {
            // Without `Expect: 100-continue` the body is on its way: read it (the codec
            // bounded it) so the sender sees the answer instead of a reset. With it, hyper
            // sends no `100 Continue` unless the body is read, so nothing more comes.
            if !r.expect_continue {
                drain(body, r.length).await;
            }
            return answer(&reply, version);
        }
    };
    let Ok(_slot) = ingest.slots.try_acquire() else {
        tracing::warn!(
            "ingest: {MAX_PUSHES} pushes are being stored already; one answered 503 (the host retries)"
        );
        let reply = Reply::busy(
            "the connector is busy storing other pushes; retry".into(),
            godwit_hyperv::ingest::budget::RETRY_AFTER_SECS,
        );
        return answer(&reply, version);
    };
    let want = usize::try_from(r.length).unwrap_or(usize::MAX);
    let reply = match read_body(body, want).await {
        Ok(bytes) => match tokio::task::spawn_blocking(move || admitted.store(&bytes)).await {
            Ok(reply) => reply,
            Err(e) => Reply {
                status: 500,
                body: serde_json::json!({ "error": format!("storing the push failed: {e}") }),
                close: true,
                retry_after: None,
            },
        },
        Err(got) => admitted.truncated(got),
    };
    answer(&reply, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_hyperv::ingest::RangeSet;
    use godwit_hyperv::ingest::registry::SessionFile;
    use godwit_hyperv::ingest::spool::SpoolFile;
    use sha2::{Digest, Sha256};

    #[test]
    fn pushes_through_the_route_are_checked_and_only_good_ones_stored() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ingest = ServiceIngest::new();
        let spool = Arc::new(
            SpoolFile::open(dir.path(), r"C:\VMs\a.vhdx", 1 << 20, "1", ingest.budget()).unwrap(),
        );
        let t = ingest.registry.open_session(vec![SessionFile {
            asked: RangeSet::from_ranges([(4096, 12288)]),
            spool: spool.clone(),
        }]);
        let data = vec![5u8; 4096];
        let sha = hex::encode(Sha256::digest(&data));
        let call = |offset: u64, body: Vec<u8>, length: usize, sha: &str, token: &str| {
            let req = axum::http::Request::builder()
                .method("PUT")
                .uri(format!("/ingest/v1/{}/0/{offset}", t.id))
                .header("authorization", format!("Bearer {token}"))
                .header("content-length", length.to_string())
                .header("x-godwit-sha256", sha)
                .body(axum::body::Body::from(body))
                .unwrap();
            let resp = rt.block_on(push(State(ingest.clone()), req));
            let status = resp.status().as_u16();
            let www = resp.headers().get("www-authenticate").cloned();
            let body = rt
                .block_on(axum::body::to_bytes(resp.into_body(), 1 << 16))
                .unwrap();
            (status, www, String::from_utf8_lossy(&body).into_owned())
        };
        let tok = t.token.as_str();
        assert_eq!(call(4096, data.clone(), 4096, &sha, tok).0, 201);
        assert_eq!(call(4096, data.clone(), 4096, &sha, tok).0, 200);
        let (s, _, b) = call(8192, data.clone(), 4096, &"00".repeat(32), tok);
        assert_eq!(s, 422, "{b}");
        // A body that ends before its Content-Length: nothing stored.
        let (s, _, b) = call(8192, data[..100].to_vec(), 4096, &sha, tok);
        assert_eq!(s, 400, "{b}");
        assert!(b.contains("body ended after 100 of 4096 bytes"), "{b}");
        let (s, _, b) = call(0, data.clone(), 4096, &sha, tok);
        assert_eq!(s, 409, "{b}");
        let (s, www, b) = call(8192, data.clone(), 4096, &sha, "wrong-token");
        assert_eq!(s, 401, "{b}");
        assert_eq!(www.unwrap(), "Bearer realm=\"godwit-ingest\"");
        assert_eq!(
            spool.received().iter().collect::<Vec<_>>(),
            vec![(4096, 8192)]
        );
        let st = ingest.stats();
        assert_eq!(
            (
                st.accepted,
                st.repeated,
                st.bad_checksum,
                st.truncated,
                st.not_asked,
                st.bad_token
            ),
            (1, 1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn heads_split_by_hyper_parse_as_the_raw_ones() {
        let raw = "PUT /ingest/v1/9226b4dbbe4e4dce/1/8388608 HTTP/1.1\r\nHost: h\r\n\
                   Authorization: Bearer tok-1\r\nContent-Length: 700\r\n\
                   X-Godwit-Sha256: "
            .to_string()
            + &"ab".repeat(32)
            + "\r\nExpect: 100-continue\r\n\r\n";
        let (want, _) = codec::parse_request_head(raw.as_bytes()).unwrap().unwrap();
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri("/ingest/v1/9226b4dbbe4e4dce/1/8388608")
            .header("host", "h")
            .header("authorization", "Bearer tok-1")
            .header("content-length", "700")
            .header("x-godwit-sha256", "ab".repeat(32))
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(parse(&parts).unwrap(), want);
        // A query string is refused as on the raw listener, and so is a value that is not text.
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri("/ingest/v1/9226b4dbbe4e4dce/1/8388608?x=1")
            .body(())
            .unwrap();
        let e = parse(&req.into_parts().0).unwrap_err();
        assert!(e.to_string().contains("offset"), "{e}");
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri("/ingest/v1/s/1/0")
            .header(
                "authorization",
                HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
            )
            .body(())
            .unwrap();
        let e = parse(&req.into_parts().0).unwrap_err();
        assert!(matches!(e, CodecError::HeaderLine(_)), "{e}");
        let req = axum::http::Request::builder()
            .method("GET")
            .uri("/ingest/v1/s/1/0")
            .body(())
            .unwrap();
        assert_eq!(parse(&req.into_parts().0).unwrap_err().status(), 405);
    }
}
