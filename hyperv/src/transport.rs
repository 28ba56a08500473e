//! The only code that talks to the network: `POST /wsman` over HTTPS with the server
//! certificate pinned by SHA-256 fingerprint (no accept-any mode) and Basic authentication.

use crate::error::{Error, Result};
use crate::trust::Fingerprint;
use godwit_trust::{PinFailure, SeenFingerprint};
use std::io::Read;
use std::time::Duration;

/// Largest reply body read (MaxEnvelopeSize is 150 KiB; leave room for odd servers).
pub const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;

/// A user and password; the password never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An HTTP status and body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Sends one SOAP body, returns the HTTP reply. Test doubles implement this too.
pub trait Transport {
    /// `host:port`, for error messages.
    fn authority(&self) -> String;
    fn post(&self, what: &str, body: String) -> Result<HttpReply>;
}

/// WinRM over HTTPS (5986) with a pinned certificate and Basic auth.
pub struct HttpsTransport {
    host: String,
    port: u16,
    creds: Credentials,
    client: reqwest::blocking::Client,
    pins: Vec<Fingerprint>,
    seen: SeenFingerprint,
}

use godwit_trust::authority;

impl HttpsTransport {
    /// `read_timeout` must exceed the WS-Man OperationTimeout (a Receive may block that long).
    pub fn new(
        host: &str,
        port: u16,
        creds: Credentials,
        pins: Vec<Fingerprint>,
        read_timeout: Duration,
    ) -> Result<Self> {
        let (tls, seen) = godwit_trust::pinned_client_config(&pins)
            .map_err(|e| Error::Usage(format!("TLS setup: {e}")))?;
        let client = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15))
            .timeout(read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Transport {
                host: authority(host, port),
                what: "HTTP client setup".into(),
                source: e,
            })?;
        Ok(HttpsTransport {
            host: host.to_string(),
            port,
            creds,
            client,
            pins,
            seen,
        })
    }

    /// The fingerprint the server showed on the last handshake.
    pub fn seen_fingerprint(&self) -> Option<Fingerprint> {
        godwit_trust::last_seen(&self.seen)
    }

    fn map_send_error(&self, what: &str, e: reqwest::Error) -> Error {
        let host = self.authority();
        match godwit_trust::pin_failure(&self.pins, self.seen_fingerprint()) {
            Some(PinFailure::Unpinned { seen }) => Error::Unpinned {
                host,
                fingerprint: seen.to_string(),
            },
            Some(PinFailure::Mismatch { expected, seen }) => Error::PinMismatch {
                host,
                expected,
                got: seen.to_string(),
            },
            None => Error::Transport {
                host,
                what: what.to_string(),
                source: e,
            },
        }
    }
}

impl Transport for HttpsTransport {
    fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    fn post(&self, what: &str, body: String) -> Result<HttpReply> {
        let url = format!("https://{}/wsman", self.authority());
        let resp = self
            .client
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/soap+xml;charset=UTF-8",
            )
            .basic_auth(&self.creds.user, Some(&self.creds.password))
            .body(body)
            .send()
            .map_err(|e| self.map_send_error(what, e))?;
        let status = resp.status().as_u16();
        if status == 401 {
            return Err(Error::AuthFailed {
                host: self.authority(),
                user: self.creds.user.clone(),
            });
        }
        let mut bytes = Vec::new();
        resp.take(MAX_REPLY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Http {
                host: self.authority(),
                what: what.to_string(),
                status,
                detail: format!("reading the reply: {e}"),
            })?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_REPLY_BYTES {
            return Err(Error::Http {
                host: self.authority(),
                what: what.to_string(),
                status,
                detail: format!("reply larger than {MAX_REPLY_BYTES} bytes"),
            });
        }
        let body = String::from_utf8(bytes).map_err(|e| Error::Http {
            host: self.authority(),
            what: what.to_string(),
            status,
            detail: format!("reply is not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        })?;
        Ok(HttpReply { status, body })
    }
}
