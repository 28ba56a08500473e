//! The only code that talks to the network: `POST /wsman` over HTTPS with the server
//! certificate pinned by SHA-256 fingerprint (no accept-any mode) and Basic authentication.

use crate::error::{Error, Result};
use crate::trust::Fingerprint;
use godwit_trust::{PinFailure, SeenFingerprint};
use std::io::Read;
use std::sync::Mutex;
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
    /// The user the transport authenticates as (for messages).
    fn user(&self) -> String {
        String::new()
    }
    /// Another transport to the same host with its own connection (so a long-running command
    /// does not hold up the requests of another phase), where the transport can make one.
    fn another(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// WinRM over HTTPS (5986) with a pinned certificate and Basic auth.
pub struct HttpsTransport {
    host: String,
    port: u16,
    creds: Credentials,
    client: reqwest::blocking::Client,
    pins: Vec<Fingerprint>,
    seen: SeenFingerprint,
    read_timeout: Duration,
    /// Also serialises requests, so NTLM's legs stay on the one pooled connection.
    auth: Mutex<AuthMode>,
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
            .pool_max_idle_per_host(1)
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
            read_timeout,
            auth: Mutex::new(AuthMode::Basic),
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

/// How the host wants to be authenticated, learnt from its first 401.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    /// Basic over HTTPS (tried first).
    #[default]
    Basic,
    /// NTLM through `Negotiate`; `authenticated` once the pooled connection passed it.
    Ntlm { authenticated: bool },
}

/// The schemes a 401 reply offers (`WWW-Authenticate` headers).
fn offered(resp: &reqwest::blocking::Response) -> (bool, bool) {
    let mut basic = false;
    let mut ntlm = false;
    for v in resp
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for scheme in v.split(',') {
            let word = scheme.split_whitespace().next().unwrap_or("");
            basic |= word.eq_ignore_ascii_case("Basic");
            ntlm |= word.eq_ignore_ascii_case("Negotiate") || word.eq_ignore_ascii_case("NTLM");
        }
    }
    (basic, ntlm)
}

/// The NTLM token in a 401's `WWW-Authenticate: Negotiate <base64>` (or `NTLM <base64>`).
fn challenge_token(resp: &reqwest::blocking::Response) -> Option<Vec<u8>> {
    use base64::Engine;
    resp.headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, b64) = v.trim().split_once(' ')?;
            if scheme.eq_ignore_ascii_case("Negotiate") || scheme.eq_ignore_ascii_case("NTLM") {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
            } else {
                None
            }
        })
}

impl HttpsTransport {
    fn send(
        &self,
        what: &str,
        body: String,
        authorization: Option<String>,
    ) -> Result<reqwest::blocking::Response> {
        let url = format!("https://{}/wsman", self.authority());
        let mut req = self.client.post(url).header(
            reqwest::header::CONTENT_TYPE,
            "application/soap+xml;charset=UTF-8",
        );
        req = match authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        };
        req.body(body)
            .send()
            .map_err(|e| self.map_send_error(what, e))
    }

    fn auth_failed(&self) -> Error {
        Error::AuthFailed {
            host: self.authority(),
            user: self.creds.user.clone(),
        }
    }

    /// The three NTLM legs on one connection (requests are serialised by the caller):
    /// NEGOTIATE with an empty body, the CHALLENGE in the 401, AUTHENTICATE with the body.
    fn ntlm_post(&self, what: &str, body: String) -> Result<reqwest::blocking::Response> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut client = crate::ntlm::NtlmClient::new(&self.creds.user, &self.creds.password)
            .map_err(Error::Usage)?;
        let negotiate = client.negotiate().map_err(Error::Usage)?;
        let first = self.send(
            what,
            String::new(),
            Some(format!("Negotiate {}", b64.encode(negotiate))),
        )?;
        let challenge = (first.status().as_u16() == 401)
            .then(|| challenge_token(&first))
            .flatten();
        // Read the 401 to its end so the connection is reused for the last leg.
        let _ = first.bytes();
        let challenge = challenge.ok_or_else(|| self.auth_failed())?;
        let authenticate = client
            .authenticate(&challenge)
            .map_err(|e| Error::Protocol {
                host: self.authority(),
                what: "NTLM handshake".into(),
                detail: e,
            })?;
        self.send(
            what,
            body,
            Some(format!("Negotiate {}", b64.encode(authenticate))),
        )
    }

    /// Post with Basic, or NTLM once the host asked for it (its 401 offers Negotiate/NTLM
    /// and not Basic, as Windows does by default).
    fn post_authenticated(&self, what: &str, body: String) -> Result<reqwest::blocking::Response> {
        let mut mode = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if *mode == AuthMode::Basic {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.creds.user, self.creds.password));
            let resp = self.send(what, body.clone(), Some(format!("Basic {basic}")))?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            let (_basic, ntlm) = offered(&resp);
            let _ = resp.bytes();
            // Basic was refused. When the host offers Negotiate, try NTLM: Windows accepts Basic
            // only for local accounts, so a domain account is refused by Basic even where Basic
            // is enabled, and passes with NTLM.
            if !ntlm {
                return Err(self.auth_failed());
            }
            tracing::debug!(host = %self.authority(), "host wants NTLM (Negotiate)");
            *mode = AuthMode::Ntlm {
                authenticated: false,
            };
        }
        if *mode
            == (AuthMode::Ntlm {
                authenticated: true,
            })
        {
            let resp = self.send(what, body.clone(), None)?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            let _ = resp.bytes();
        }
        let resp = self.ntlm_post(what, body)?;
        let ok = resp.status().as_u16() != 401;
        *mode = AuthMode::Ntlm { authenticated: ok };
        if ok {
            Ok(resp)
        } else {
            Err(self.auth_failed())
        }
    }
}

impl Transport for HttpsTransport {
    fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    fn user(&self) -> String {
        self.creds.user.clone()
    }

    fn another(&self) -> Option<Self> {
        HttpsTransport::new(
            &self.host,
            self.port,
            self.creds.clone(),
            self.pins.clone(),
            self.read_timeout,
        )
        .ok()
    }

    fn post(&self, what: &str, body: String) -> Result<HttpReply> {
        let resp = self.post_authenticated(what, body)?;
        let status = resp.status().as_u16();
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
