//! The only code that talks to the network: HTTPS to one host (`host:port`) with a pinned
//! certificate, the session cookie, bounded reply sizes, 503 backoff and a cap on parallel
//! requests. SOAP bodies go in and out as bytes; parsing happens elsewhere.
//!
//! A `/folder` or NFC request answered 401 or 403 while a session cookie was sent means the
//! vCenter session expired or was terminated (`SessionManager.TerminateSession`); when a
//! [`Reauth`] is installed the endpoint logs in again (once per stale cookie, whoever notices
//! first) and repeats the request once.

use crate::error::{Error, Result};
use crate::trust::{Fingerprint, HostVerifier, Seen, Thumbprint};
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Parallel requests per host (ESXi hostd answers 503 when there are too many).
pub const DEFAULT_MAX_PARALLEL: usize = 4;
/// Attempts on HTTP 503 before giving up; the wait doubles from 200 ms.
pub const RETRIES_ON_503: u32 = 6;

/// Install ring as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A counting semaphore: at most `max` requests in flight.
#[derive(Debug)]
struct Limiter {
    in_flight: Mutex<usize>,
    cv: Condvar,
    max: usize,
}

struct Permit<'a>(&'a Limiter);

impl Limiter {
    fn acquire(&self) -> Permit<'_> {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.max {
            n = self.cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        self.0.cv.notify_one();
    }
}

/// Logs a session in again after the server stopped honouring its cookie.
pub trait Reauth: Send + Sync {
    /// Log in again, unless the cookie changed since `failed_cookie` was sent (another request
    /// already did).
    fn relogin(&self, ep: &Endpoint, failed_cookie: Option<&str>) -> Result<()>;
}

/// HTTPS to one `host:port`.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    client: reqwest::blocking::Client,
    pins: Vec<Fingerprint>,
    thumbprints: Vec<Thumbprint>,
    seen: Seen,
    limiter: Limiter,
    cookie: Mutex<Option<String>>,
    reauth: Mutex<Option<Arc<dyn Reauth>>>,
}

/// An HTTP reply: status and body (bounded).
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub set_cookie: Option<String>,
}

impl Endpoint {
    pub fn new(host: &str, port: u16, pins: Vec<Fingerprint>, max_parallel: usize) -> Result<Self> {
        Self::with_thumbprints(host, port, pins, Vec::new(), max_parallel)
    }

    /// Trust the pinned SHA-256 fingerprints and, besides, the SHA-1 thumbprints vCenter
    /// reported for this host (ESXi hosts behind vCenter, see [`crate::trust`]).
    pub fn with_thumbprints(
        host: &str,
        port: u16,
        pins: Vec<Fingerprint>,
        thumbprints: Vec<Thumbprint>,
        max_parallel: usize,
    ) -> Result<Self> {
        install_crypto_provider();
        let seen: Seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(HostVerifier::new(
            pins.clone(),
            thumbprints.clone(),
            seen.clone(),
        ));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
        let client = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Transport {
                host: authority(host, port),
                what: "HTTP client setup".into(),
                source: e,
            })?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
            client,
            pins,
            thumbprints,
            seen,
            limiter: Limiter {
                in_flight: Mutex::new(0),
                cv: Condvar::new(),
                max: max_parallel.max(1),
            },
            cookie: Mutex::new(None),
            reauth: Mutex::new(None),
        })
    }

    /// Install what logs the session in again on 401/403 (see the module doc).
    pub fn set_reauth(&self, r: Option<Arc<dyn Reauth>>) {
        *self.reauth.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn reauth(&self) -> Option<Arc<dyn Reauth>> {
        self.reauth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a 401/403 to a request that carried `sent_cookie`: log in again when that can
    /// help. `Ok(true)` means repeat the request.
    fn relogin_after(&self, status: u16, sent_cookie: Option<&str>) -> Result<bool> {
        if !matches!(status, 401 | 403) || sent_cookie.is_none() {
            return Ok(false);
        }
        let Some(r) = self.reauth() else {
            return Ok(false);
        };
        tracing::info!(host = %self.authority(), status, "session no longer honoured; logging in again");
        r.relogin(self, sent_cookie)?;
        Ok(true)
    }

    /// `host:port` (IPv6 hosts in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.authority())
    }

    pub fn set_cookie(&self, c: Option<String>) {
        *self.cookie.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    pub fn cookie(&self) -> Option<String> {
        self.cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate fingerprint the server showed on the last handshake.
    pub fn seen_fingerprint(&self) -> Option<Fingerprint> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(fp, _)| fp)
    }

    fn map_send_error(&self, what: &str, e: reqwest::Error) -> Error {
        let host = self.authority();
        let seen = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((fp, tp)) = seen
            && !self.pins.contains(&fp)
            && !self.thumbprints.contains(&tp)
        {
            if !self.thumbprints.is_empty() {
                let reported: Vec<String> =
                    self.thumbprints.iter().map(ToString::to_string).collect();
                return Error::HostUntrusted {
                    host,
                    fingerprint: fp.to_string(),
                    sha1: tp.to_string(),
                    why: format!(
                        "vCenter reports the SHA-1 thumbprint {} for it{}",
                        reported.join(" or "),
                        if self.pins.is_empty() {
                            String::new()
                        } else {
                            " and it matches no pin either".to_string()
                        }
                    ),
                };
            }
            return if self.pins.is_empty() {
                Error::Unpinned {
                    host,
                    fingerprint: fp.to_string(),
                }
            } else {
                Error::PinMismatch {
                    host,
                    expected: self
                        .pins
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    got: fp.to_string(),
                }
            };
        }
        Error::Transport {
            host,
            what: what.to_string(),
            source: e,
        }
    }

    /// Send a request built by `build`, retrying 503 with backoff and logging in again once
    /// on 401/403 (see the module doc); read at most `limit` bytes.
    fn send(
        &self,
        what: &str,
        limit: u64,
        build: &dyn Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut relogged = false;
        loop {
            let cookie = self.cookie();
            let r = self.send_once(what, limit, build, cookie.as_deref())?;
            if !relogged && self.relogin_after(r.0.as_u16(), cookie.as_deref())? {
                relogged = true;
                continue;
            }
            return Ok(r);
        }
    }

    /// One request (503 retried), holding a slot of the per-host cap only while it runs.
    fn send_once(
        &self,
        what: &str,
        limit: u64,
        build: &dyn Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
        cookie: Option<&str>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let _permit = self.limiter.acquire();
        let mut wait = Duration::from_millis(200);
        for attempt in 0..=RETRIES_ON_503 {
            let mut req = build(&self.client);
            if let Some(c) = cookie {
                req = req.header(reqwest::header::COOKIE, c);
            }
            let resp = req.send().map_err(|e| self.map_send_error(what, e))?;
            let status = resp.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < RETRIES_ON_503 {
                tracing::debug!(host = %self.authority(), what, ?wait, "503, backing off");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
                continue;
            }
            if resp.content_length().is_some_and(|l| l > limit) {
                return Err(self.too_large(what, limit));
            }
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            resp.take(limit + 1)
                .read_to_end(&mut body)
                .map_err(|e| Error::Http {
                    host: self.authority(),
                    what: what.to_string(),
                    status: status.as_u16(),
                    detail: format!("reading the body: {e}"),
                })?;
            if body.len() as u64 > limit {
                return Err(self.too_large(what, limit));
            }
            return Ok((status, headers, body));
        }
        Err(Error::Http {
            host: self.authority(),
            what: what.to_string(),
            status: 503,
            detail: format!("still busy after {RETRIES_ON_503} retries"),
        })
    }

    fn too_large(&self, what: &str, limit: u64) -> Error {
        Error::TooLarge {
            host: self.authority(),
            what: what.to_string(),
            limit,
        }
    }

    /// POST a SOAP envelope to `/sdk`. HTTP 200 and 500 (faults) return the body.
    pub fn post_soap(
        &self,
        method: &str,
        soap_action: &str,
        body: String,
        limit: u64,
    ) -> Result<Reply> {
        let url = format!("{}/sdk", self.base_url());
        let (status, headers, body) = self.send(method, limit, &|c| {
            c.post(&url)
                .header("Content-Type", "text/xml; charset=utf-8")
                .header("SOAPAction", soap_action)
                .body(body.clone())
        })?;
        let set_cookie = headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session="))
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        match status.as_u16() {
            200 | 500 => Ok(Reply {
                status: status.as_u16(),
                body,
                set_cookie,
            }),
            s => Err(Error::Http {
                host: self.authority(),
                what: method.to_string(),
                status: s,
                detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    /// Size of a file from HEAD `path_query` (Content-Length).
    pub fn head_size(&self, path_query: &str, what: &str) -> Result<u64> {
        let url = format!("{}{path_query}", self.base_url());
        let (status, headers, _) = self.send(what, 0, &|c| c.head(&url))?;
        if status.as_u16() == 404 {
            return Err(Error::NotFound {
                host: self.authority(),
                what: what.to_string(),
            });
        }
        if !status.is_success() {
            return Err(self.http_err(what, status.as_u16(), "HEAD failed"));
        }
        headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.http_err(what, status.as_u16(), "no Content-Length"))
    }

    fn http_err(&self, what: &str, status: u16, detail: &str) -> Error {
        Error::Http {
            host: self.authority(),
            what: what.to_string(),
            status,
            detail: detail.to_string(),
        }
    }

    /// GET `len` bytes at `offset` with a Range request; insists on 206 and a matching
    /// Content-Range. A 200 is the whole file: accepted only when the range asked for is the
    /// whole file (from 0, and exactly `len` bytes came back), as servers vary for small files.
    pub fn get_range(
        &self,
        path_query: &str,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset
            .checked_add(len - 1)
            .ok_or_else(|| Error::Usage(format!("{what}: range {offset}+{len} overflows")))?;
        let url = format!("{}{path_query}", self.base_url());
        let range = format!("bytes={offset}-{last}");
        let ignored = "the server ignored the Range header and sent more than the range";
        let (status, headers, body) = self
            .send(what, len, &|c| {
                c.get(&url).header(reqwest::header::RANGE, &range)
            })
            .map_err(|e| match e {
                Error::TooLarge { .. } => self.http_err(what, 200, ignored),
                e => e,
            })?;
        match status.as_u16() {
            206 => {}
            404 => {
                return Err(Error::NotFound {
                    host: self.authority(),
                    what: what.to_string(),
                });
            }
            200 if offset == 0 && body.len() as u64 == len => return Ok(body),
            200 => return Err(self.http_err(what, 200, ignored)),
            s => return Err(self.http_err(what, s, &format!("range {range} failed"))),
        }
        let cr = headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let expect = format!("bytes {offset}-{last}/");
        if !cr.starts_with(&expect) {
            return Err(self.http_err(
                what,
                206,
                &format!("Content-Range {cr:?} does not match {range}"),
            ));
        }
        if body.len() as u64 != len {
            return Err(self.http_err(what, 206, &format!("got {} bytes for {range}", body.len())));
        }
        Ok(body)
    }
}

impl Endpoint {
    /// GET `path_query` (no Range: NFC device URLs stream the whole file) into `out`, at most
    /// `limit` bytes, calling `progress` with the running total. The request may take
    /// `time_limit`; a cut connection or a short body is an error naming the file.
    pub fn download_to(
        &self,
        path_query: &str,
        out: &mut dyn std::io::Write,
        limit: u64,
        time_limit: Duration,
        what: &str,
        progress: &dyn Fn(u64),
    ) -> Result<u64> {
        let url = format!("{}{path_query}", self.base_url());
        let mut relogged = false;
        let (_permit, mut resp) = loop {
            let permit = self.limiter.acquire();
            let cookie = self.cookie();
            let mut req = self.client.get(&url).timeout(time_limit);
            if let Some(c) = &cookie {
                req = req.header(reqwest::header::COOKIE, c);
            }
            let resp = req.send().map_err(|e| self.map_send_error(what, e))?;
            let status = resp.status().as_u16();
            if !relogged && matches!(status, 401 | 403) && cookie.is_some() {
                drop(resp);
                drop(permit);
                if self.relogin_after(status, cookie.as_deref())? {
                    relogged = true;
                    continue;
                }
                return Err(self.http_err(what, status, "download refused"));
            }
            break (permit, resp);
        };
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(Error::NotFound {
                host: self.authority(),
                what: what.to_string(),
            });
        }
        if status != 200 {
            return Err(self.http_err(what, status, "download refused"));
        }
        let expected = resp.content_length();
        if expected.is_some_and(|l| l > limit) {
            return Err(self.too_large(what, limit));
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = resp.read(&mut buf).map_err(|e| {
                self.http_err(
                    what,
                    status,
                    &format!("download cut after {total} bytes: {e}"),
                )
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                return Err(self.too_large(what, limit));
            }
            out.write_all(&buf[..n]).map_err(|e| Error::File {
                path: what.to_string(),
                op: "write the downloaded file",
                source: e,
            })?;
            progress(total);
        }
        if let Some(l) = expected
            && l != total
        {
            return Err(self.http_err(
                what,
                status,
                &format!("download ended after {total} of {l} bytes"),
            ));
        }
        Ok(total)
    }
}

pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
