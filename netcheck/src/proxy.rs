//! HTTP proxy check: `CONNECT host:port` through the proxy, then a TLS handshake inside the
//! tunnel, judged like a direct one (so a proxy that intercepts TLS shows up by its issuer).
//!
//! Fuzz entry point: [`parse_connect_response`].

use crate::dns::NameResolver;
use crate::plan::{Endpoint, ProxyAuth, ProxyUrl, Role, Target};
use crate::result::{CheckKind, CheckResult};
use crate::tcp::connect;
use crate::tls::{TlsContext, handshake, judge};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest proxy response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// The status line of a proxy's answer to CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    pub status: u16,
    pub reason: String,
    /// Bytes up to and including the blank line that ends the head.
    pub head_len: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectResponseError {
    #[error("incomplete response head ({0} bytes so far)")]
    Incomplete(usize),
    #[error("response head longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("bad status line at byte 0: {0:?}")]
    BadStatusLine(String),
}

/// Parse a proxy's response head (`HTTP/1.x NNN reason\r\n...\r\n\r\n`). Pure.
pub fn parse_connect_response(bytes: &[u8]) -> Result<ConnectResponse, ConnectResponseError> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if bytes.len() >= MAX_HEAD {
            ConnectResponseError::TooLong
        } else {
            ConnectResponseError::Incomplete(bytes.len())
        });
    };
    if end + 4 > MAX_HEAD {
        return Err(ConnectResponseError::TooLong);
    }
    let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap_or(end);
    let line = String::from_utf8_lossy(&bytes[..line_end]).into_owned();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().to_string();
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c) && code.len() == 3);
    match status {
        Some(status) if version.starts_with("HTTP/1.") => Ok(ConnectResponse {
            status,
            reason,
            head_len: end + 4,
        }),
        _ => Err(ConnectResponseError::BadStatusLine(line)),
    }
}

/// Encode a CONNECT request (the matching encoder, for tests and fuzz seeds).
pub fn encode_connect_request(dest: &Endpoint) -> Vec<u8> {
    encode_connect_request_with_auth(dest, None)
}

/// Standard base64 with padding (RFC 4648 §4), for the Basic credentials. Pure.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A CONNECT request, with `Proxy-Authorization: Basic` when credentials are given.
pub fn encode_connect_request_with_auth(dest: &Endpoint, auth: Option<&ProxyAuth>) -> Vec<u8> {
    let auth_line = match auth {
        Some(a) => format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64_encode(format!("{}:{}", a.user, a.password).as_bytes())
        ),
        None => String::new(),
    };
    format!(
        "CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{auth_line}User-Agent: godwit-netcheck\r\n\r\n"
    )
    .into_bytes()
}

/// Check one proxy: CONNECT to `dest` and a TLS handshake through the tunnel, or, with no
/// destination, only that the proxy accepts TCP connections.
pub async fn check(
    proxy: &ProxyUrl,
    dest: Option<&Target>,
    ctx: &TlsContext,
    resolver: &NameResolver,
    using_dns_servers: bool,
    timeout: Duration,
) -> CheckResult {
    let deadline = Instant::now() + timeout;
    let target = match dest {
        Some(d) => format!("{proxy} → {}", d.endpoint),
        None => proxy.to_string(),
    };
    let proxy_target = Target {
        endpoint: proxy.endpoint.clone(),
        role: Role::AdHoc,
        purpose: String::new(),
        fingerprint: None,
    };
    let (mut stream, _) = match connect(&proxy.endpoint, resolver, deadline).await {
        Ok(s) => s,
        Err(f) => {
            return CheckResult::fail(
                CheckKind::Proxy,
                target,
                f.value(timeout),
                format!(
                    "{} The proxy is needed to reach the internet-side peers.",
                    f.remediation(
                        &proxy_target.endpoint,
                        &proxy_target.role,
                        using_dns_servers
                    )
                ),
            );
        }
    };
    let Some(dest) = dest else {
        return CheckResult::pass(
            CheckKind::Proxy,
            target,
            "accepts TCP connections (no TLS destination given to tunnel to)",
        );
    };
    let work = async {
        stream
            .write_all(&encode_connect_request_with_auth(
                &dest.endpoint,
                proxy.auth.as_ref(),
            ))
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        let resp = loop {
            // Read byte-wise chunks until the head is complete; the TLS bytes after the head
            // only come after we speak, so over-reading is impossible here.
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the proxy closed the connection without answering".to_string());
            }
            head.extend_from_slice(&buf[..n]);
            match parse_connect_response(&head) {
                Ok(r) => break r,
                Err(ConnectResponseError::Incomplete(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        };
        if resp.status != 200 {
            return Ok(Err(resp));
        }
        handshake(ctx, &dest.endpoint.host, stream).await.map(Ok)
    };
    let d = &dest.endpoint;
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(Ok(Ok(h))) => {
            let mut r = judge(dest, CheckKind::Proxy, target, &h);
            r.value = format!("CONNECT 200; {}", r.value);
            r
        }
        Ok(Ok(Err(resp))) => {
            let remediation = match (resp.status, &proxy.auth) {
                (401 | 407, None) => format!(
                    "The proxy {proxy} requires authentication: give the proxy as \
                     http://USER@{}/ and its password in GODWIT_PROXY_PASSWORD (or \
                     --proxy-password-file), or allow unauthenticated CONNECT from the \
                     connector's address to {d}.",
                    proxy.endpoint
                ),
                (401 | 407, Some(a)) => format!(
                    "The proxy {proxy} rejected the credentials of user {:?} (Basic): check the \
                     user name and the password given in GODWIT_PROXY_PASSWORD or \
                     --proxy-password-file, and that the proxy allows that user to CONNECT to {d}.",
                    a.user
                ),
                (403 | 405, _) => format!(
                    "The proxy {proxy} refuses CONNECT to {d}: allowlist {} port {} for the \
                     connector (outbound through the proxy).",
                    d.host, d.port
                ),
                (502..=504, _) => format!(
                    "The proxy {proxy} could not reach {d} ({} {}): allow the proxy to connect \
                     to TCP port {} of {} (outbound from the proxy), and check the name resolves \
                     there.",
                    resp.status, resp.reason, d.port, d.host
                ),
                _ => format!(
                    "The proxy {proxy} answered CONNECT to {d} with {} {}.",
                    resp.status, resp.reason
                ),
            };
            CheckResult::fail(
                CheckKind::Proxy,
                target,
                format!("CONNECT answered {} {}", resp.status, resp.reason),
                remediation,
            )
        }
        Ok(Err(e)) => CheckResult::fail(
            CheckKind::Proxy,
            target,
            e.clone(),
            format!(
                "The tunnel through {proxy} to {d} failed ({e}): check the proxy's logs and its CONNECT rules for port {}.",
                d.port
            ),
        ),
        Err(_) => CheckResult::fail(
            CheckKind::Proxy,
            target,
            format!("no answer within {} s", timeout.as_secs_f32()),
            format!(
                "The proxy {proxy} accepted the connection but did not complete CONNECT to {d} \
                 in time: allow the proxy to reach TCP port {} of {} (outbound from the proxy).",
                d.port, d.host
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_status_lines() {
        let r = parse_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.head_len),
            (200, "Connection established", 39)
        );
        let r = parse_connect_response(
            b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(r.status, 407);
        assert_eq!(
            parse_connect_response(b"HTTP/1.1 200 OK\r\n"),
            Err(ConnectResponseError::Incomplete(17))
        );
        assert!(matches!(
            parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ConnectResponseError::BadStatusLine(_))
        ));
        assert_eq!(
            parse_connect_response(&vec![b'a'; MAX_HEAD]),
            Err(ConnectResponseError::TooLong)
        );
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn request_with_basic_auth() {
        let e = Endpoint::parse("vc.corp:443", None).unwrap();
        let auth = ProxyAuth {
            user: "Aladdin".into(),
            password: "open sesame".into(),
        };
        let req = String::from_utf8(encode_connect_request_with_auth(&e, Some(&auth))).unwrap();
        // RFC 7617's example credentials.
        assert!(
            req.contains("\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn request_encoding() {
        let e = Endpoint::parse("[::1]:443", None).unwrap();
        let req = String::from_utf8(encode_connect_request(&e)).unwrap();
        assert!(req.starts_with("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn status_round_trip(status in 100u16..600, reason in "[A-Za-z ]{0,30}") {
            let head = format!("HTTP/1.1 {status} {reason}\r\nX: y\r\n\r\n");
            let r = parse_connect_response(head.as_bytes()).unwrap();
            prop_assert_eq!(r.status, status);
            prop_assert_eq!(r.reason, reason);
            prop_assert_eq!(r.head_len, head.len());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_connect_response(&bytes);
        }
    }
}
