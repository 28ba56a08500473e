//! The push request as it arrives on the ingest endpoint (pure, fuzzed):
//!
//! ```text
//! PUT /ingest/v1/<session>/<file-id>/<offset> HTTP/1.1
//! Host: connector:443
//! Authorization: Bearer <token>
//! Content-Length: <bytes, at most 8 MiB>
//! X-Godwit-Sha256: <64 hex digits of the body's SHA-256>
//! [Expect: 100-continue]
//! [Connection: close]
//! ```
//!
//! [`parse_request_head`] reads the head only (the body follows on the connection); every
//! refusal names what is wrong and maps to an HTTP status ([`CodecError::status`]).
//! [`encode_request_head`] is its inverse (the simulator's uploader and the tests use it).

/// Largest body of one push.
pub const MAX_PUSH_BYTES: u64 = 8 * 1024 * 1024;
/// Largest request head (request line + headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 32;
/// Every push path starts with this.
pub const PATH_PREFIX: &str = "/ingest/v1/";
/// Longest session id and token.
pub const MAX_ID_CHARS: usize = 128;

/// One parsed push request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub session: String,
    pub file_id: u32,
    pub offset: u64,
    pub length: u64,
    /// The bearer token.
    pub token: String,
    /// SHA-256 of the body as the sender computed it.
    pub sha256: [u8; 32],
    /// `Expect: 100-continue`: the sender waits for `100 Continue` before the body.
    pub expect_continue: bool,
    /// `Connection: close` (else the connection is kept for the next push).
    pub close: bool,
}

/// Why a request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("request head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("request head is not UTF-8 text")]
    NotText,
    #[error("request line {0:?} is not `PUT /ingest/v1/<session>/<file-id>/<offset> HTTP/1.1`")]
    RequestLine(String),
    #[error("method {0:?} is not allowed: pushes are PUT")]
    Method(String),
    #[error("protocol {0:?} is not HTTP/1.1 or HTTP/1.0")]
    Version(String),
    #[error("path {path:?}: {why}")]
    Path { path: String, why: String },
    #[error("header line {0:?} is not `Name: value`")]
    HeaderLine(String),
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("header {0} is given twice")]
    Duplicate(String),
    #[error("no Authorization: Bearer <token> header")]
    NoToken,
    #[error("Authorization header is not `Bearer <token>`")]
    BadToken,
    #[error("no Content-Length header (chunked bodies are not accepted)")]
    NoLength,
    #[error("Transfer-Encoding {0:?} is not accepted: send Content-Length")]
    TransferEncoding(String),
    #[error("no X-Godwit-Sha256 header")]
    NoDigest,
    #[error("header {name} value {value:?}: {why}")]
    Value {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("push of {0} bytes is larger than the {MAX_PUSH_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("range {offset}+{length} overflows 64 bits")]
    Overflow { offset: u64, length: u64 },
}

impl CodecError {
    /// The HTTP status the endpoint answers with.
    pub fn status(&self) -> u16 {
        match self {
            CodecError::NoToken | CodecError::BadToken => 401,
            CodecError::Method(_) => 405,
            CodecError::NoLength | CodecError::TransferEncoding(_) => 411,
            CodecError::TooLarge(_) => 413,
            CodecError::HeadTooLarge => 431,
            CodecError::Version(_) => 505,
            _ => 400,
        }
    }
}

/// Where the head ends: the index just past `\r\n\r\n`, if present.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn id_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Decimal digits without sign or leading zeros.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_path(path: &str) -> Result<(String, u32, u64), CodecError> {
    let bad = |why: &str| CodecError::Path {
        path: path.chars().take(200).collect(),
        why: why.to_string(),
    };
    let rest = path
        .strip_prefix(PATH_PREFIX)
        .ok_or_else(|| bad("does not start with /ingest/v1/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [session, file, offset] = parts.as_slice() else {
        return Err(bad("is not /ingest/v1/<session>/<file-id>/<offset>"));
    };
    if !id_ok(session, b"-") {
        return Err(bad("session id is not 1-128 letters, digits or '-'"));
    }
    let file_id = decimal(file)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("file id is not a decimal number below 2^32"))?;
    let offset = decimal(offset).ok_or_else(|| bad("offset is not a decimal number"))?;
    Ok((session.to_string(), file_id, offset))
}

fn once<T>(slot: &Option<T>, canonical: &str) -> Result<(), CodecError> {
    if slot.is_some() {
        Err(CodecError::Duplicate(canonical.to_string()))
    } else {
        Ok(())
    }
}

/// Parse a request head. `Ok(None)`: no complete head in `buf` yet (read more). On success,
/// also the number of head bytes (the body starts there).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(PushRequest, usize)>, CodecError> {
    let Some(end) = head_end(&buf[..buf.len().min(MAX_HEAD_BYTES)]) else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Err(CodecError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end - 4]).map_err(|_| CodecError::NotText)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let words: Vec<&str> = line.split(' ').collect();
    let [method, path, version] = words.as_slice() else {
        return Err(CodecError::RequestLine(line.chars().take(200).collect()));
    };
    if *version != "HTTP/1.1" && *version != "HTTP/1.0" {
        return Err(CodecError::Version(version.chars().take(40).collect()));
    }
    let mut headers = Vec::new();
    for (n, h) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Err(CodecError::TooManyHeaders);
        }
        let (name, value) = h
            .split_once(':')
            .filter(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            })
            .ok_or_else(|| CodecError::HeaderLine(h.chars().take(200).collect()))?;
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(CodecError::HeaderLine(h.chars().take(200).collect()));
        }
        headers.push((name, value));
    }
    let r = parse_fields(method, path, *version == "HTTP/1.0", headers)?;
    Ok(Some((r, end)))
}

/// The checks of [`parse_request_head`] after the framing: for a server whose HTTP library
/// already split the request (the service's axum listener). `path` is the request target as
/// sent (query included), `close_by_default` is true for HTTP/1.0, `headers` are the header
/// fields as (name, value) in order (at most [`MAX_HEADERS`]).
pub fn parse_fields<'a>(
    method: &str,
    path: &str,
    close_by_default: bool,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<PushRequest, CodecError> {
    if method != "PUT" {
        return Err(CodecError::Method(method.chars().take(40).collect()));
    }
    let (session, file_id, offset) = parse_path(path)?;
    let mut token = None;
    let mut length = None;
    let mut digest = None;
    let mut expect_continue = false;
    let mut close = close_by_default;
    for (n, (name, value)) in headers.into_iter().enumerate() {
        if n >= MAX_HEADERS {
            return Err(CodecError::TooManyHeaders);
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "authorization" => {
                once(&token, "Authorization")?;
                let (scheme, t) = value.split_once(' ').ok_or(CodecError::BadToken)?;
                let t = t.trim_matches(' ');
                if !scheme.eq_ignore_ascii_case("Bearer") || !id_ok(t, b"-._~+/=") {
                    return Err(CodecError::BadToken);
                }
                token = Some(t.to_string());
            }
            "content-length" => {
                once(&length, "Content-Length")?;
                let v = decimal(value).ok_or_else(|| CodecError::Value {
                    name: "Content-Length",
                    value: value.chars().take(40).collect(),
                    why: "not a decimal number",
                })?;
                if v > MAX_PUSH_BYTES {
                    return Err(CodecError::TooLarge(v));
                }
                length = Some(v);
            }
            "x-godwit-sha256" => {
                once(&digest, "X-Godwit-Sha256")?;
                let mut d = [0u8; 32];
                hex::decode_to_slice(value, &mut d).map_err(|_| CodecError::Value {
                    name: "X-Godwit-Sha256",
                    value: value.chars().take(80).collect(),
                    why: "not 64 hex digits",
                })?;
                digest = Some(d);
            }
            "transfer-encoding" => {
                return Err(CodecError::TransferEncoding(
                    value.chars().take(40).collect(),
                ));
            }
            "expect" => {
                if !value.eq_ignore_ascii_case("100-continue") {
                    return Err(CodecError::Value {
                        name: "Expect",
                        value: value.chars().take(40).collect(),
                        why: "only 100-continue is understood",
                    });
                }
                expect_continue = true;
            }
            "connection" => {
                for t in value.split(',') {
                    let t = t.trim();
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                }
            }
            _ => {}
        }
    }
    let token = token.ok_or(CodecError::NoToken)?;
    let length = length.ok_or(CodecError::NoLength)?;
    let sha256 = digest.ok_or(CodecError::NoDigest)?;
    if offset.checked_add(length).is_none() {
        return Err(CodecError::Overflow { offset, length });
    }
    Ok(PushRequest {
        session,
        file_id,
        offset,
        length,
        token,
        sha256,
        expect_continue,
        close,
    })
}

/// The head [`parse_request_head`] parses back to `r` (`host` goes in the Host header).
pub fn encode_request_head(r: &PushRequest, host: &str) -> String {
    let mut s = format!(
        "PUT {PATH_PREFIX}{}/{}/{} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nX-Godwit-Sha256: {}\r\n",
        r.session,
        r.file_id,
        r.offset,
        r.token,
        r.length,
        hex::encode(r.sha256)
    );
    if r.expect_continue {
        s.push_str("Expect: 100-continue\r\n");
    }
    if r.close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s
}

/// A complete response: `status`, a one-line JSON body, `Connection: close` when `close`.
pub fn encode_response(status: u16, body: &serde_json::Value, close: bool) -> Vec<u8> {
    encode_response_with(status, body, close, None)
}

/// [`encode_response`] with a `Retry-After` header (seconds) when given.
pub fn encode_response_with(
    status: u16,
    body: &serde_json::Value,
    close: bool,
    retry_after: Option<u32>,
) -> Vec<u8> {
    let reason = match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let body = format!("{body}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"godwit-ingest\"\r\n");
    }
    if let Some(s) = retry_after {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Fuzz entry point: the head parser on arbitrary bytes.
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok(Some((r, end))) = parse_request_head(bytes) {
        assert!(end <= bytes.len());
        let again = encode_request_head(&r, "h");
        let back = parse_request_head(again.as_bytes());
        assert_eq!(back.ok().flatten().map(|(b, _)| b), Some(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PushRequest {
        PushRequest {
            session: "3f2a9c".into(),
            file_id: 2,
            offset: 1 << 33,
            length: 4 << 20,
            token: "tok-en_1".into(),
            sha256: [0xab; 32],
            expect_continue: true,
            close: false,
        }
    }

    fn parse(s: &str) -> Result<PushRequest, CodecError> {
        parse_request_head(s.as_bytes()).map(|o| o.expect("complete head").0)
    }

    #[test]
    fn head_round_trips_and_body_offset_is_reported() {
        let r = sample();
        let mut wire = encode_request_head(&r, "10.0.0.9:443").into_bytes();
        let head_len = wire.len();
        wire.extend_from_slice(b"BODY");
        let (back, end) = parse_request_head(&wire).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(end, head_len);
        assert_eq!(parse_request_head(&wire[..head_len - 1]).unwrap(), None);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let good = encode_request_head(&sample(), "h");
        let e = parse(&good.replace("Authorization: Bearer tok-en_1\r\n", "")).unwrap_err();
        assert_eq!((e.status(), e.clone()), (401, CodecError::NoToken));
        let e = parse(&good.replace("Bearer", "Basic")).unwrap_err();
        assert_eq!(e, CodecError::BadToken);
        let e = parse(&good.replace("PUT ", "POST ")).unwrap_err();
        assert_eq!(e.status(), 405);
        let e = parse(&good.replace("4194304", "8388609")).unwrap_err();
        assert_eq!(
            (e.status(), e.to_string()),
            (
                413,
                "push of 8388609 bytes is larger than the 8388608-byte limit".to_string()
            )
        );
        let e = parse(&good.replace("Content-Length: 4194304\r\n", "")).unwrap_err();
        assert_eq!(e.status(), 411);
        let e =
            parse(&good.replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n")).unwrap_err();
        assert_eq!(e.status(), 411);
        let e = parse(&good.replace(&"ab".repeat(32), "xyz")).unwrap_err();
        assert!(e.to_string().contains("X-Godwit-Sha256"), "{e}");
        let e = parse(&good.replace("/2/", "/02/")).unwrap_err();
        assert!(e.to_string().contains("file id"), "{e}");
        let e = parse(&good.replace("/2/", "/2/x/")).unwrap_err();
        assert!(e.to_string().contains("<session>"), "{e}");
        let e = parse(&good.replace("3f2a9c", "a b")).unwrap_err();
        assert!(matches!(e, CodecError::RequestLine(_)), "{e}");
        let e = parse(&good.replace("HTTP/1.1", "HTTP/2")).unwrap_err();
        assert_eq!(e.status(), 505);
        let dup = good.replace("\r\n\r\n", "\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(
            parse(&dup).unwrap_err(),
            CodecError::Duplicate("Content-Length".into())
        );
        let e = parse(&good.replace("\r\n\r\n", "\r\n folded\r\n\r\n")).unwrap_err();
        assert!(matches!(e, CodecError::HeaderLine(_)), "{e}");
        let e = parse(&good.replace(&(1u64 << 33).to_string(), &u64::MAX.to_string())).unwrap_err();
        assert!(matches!(e, CodecError::Overflow { .. }), "{e}");
        let many = good.replace("\r\n\r\n", &format!("{}\r\n\r\n", "\r\nX-A: 1".repeat(40)));
        assert_eq!(parse(&many).unwrap_err(), CodecError::TooManyHeaders);
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(
            parse_request_head(&huge).unwrap_err(),
            CodecError::HeadTooLarge
        );
        assert_eq!(
            parse_request_head(b"PUT \xff\r\n\r\n").unwrap_err(),
            CodecError::NotText
        );
        let r = encode_response(401, &serde_json::json!({"error": "x"}), true);
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(r.contains("Connection: close"), "{r}");
    }

    #[test]
    fn heads_real_clients_sent_parse() {
        // Captured from curl 7.88 (fuzz/corpus/hyperv_ingest/): a small body sent at once,
        // and a 1 MB one behind `Expect: 100-continue`.
        let small = include_bytes!("../../../fuzz/corpus/hyperv_ingest/curl-put-small.http");
        let (r, end) = parse_request_head(small).unwrap().unwrap();
        assert_eq!(
            (
                r.session.as_str(),
                r.file_id,
                r.offset,
                r.length,
                r.expect_continue
            ),
            ("9226b4dbbe4e4dce85637539c6961260", 0, 8_388_608, 700, false)
        );
        assert_eq!(small.len() - end, 700);
        assert_eq!(r.token, "5d1f0c9e2a7b4c3d8e9f0a1b2c3d4e5f");
        let big = include_bytes!("../../../fuzz/corpus/hyperv_ingest/curl-put-expect.http");
        let (r, _) = parse_request_head(big).unwrap().unwrap();
        assert_eq!(
            (r.file_id, r.length, r.expect_continue),
            (1, 1_100_000, true)
        );
        for seed in [
            &include_bytes!("../../../fuzz/corpus/hyperv_ingest/reqwest-style.http")[..],
            &include_bytes!("../../../fuzz/corpus/hyperv_ingest/dotnet-httpwebrequest-style.http")
                [..],
        ] {
            assert!(parse_request_head(seed).unwrap().is_some());
            fuzz_parse(seed);
        }
    }

    proptest! {
        #[test]
        fn any_request_round_trips(
            session in "[A-Za-z0-9-]{1,64}",
            token in "[A-Za-z0-9._~+/=-]{1,128}",
            file_id: u32,
            offset in 0u64..(u64::MAX / 2),
            length in 0u64..=MAX_PUSH_BYTES,
            sha256: [u8; 32],
            expect_continue: bool,
            close: bool,
        ) {
            let r = PushRequest { session, file_id, offset, length, token, sha256, expect_continue, close };
            let wire = encode_request_head(&r, "connector:443");
            let (back, end) = parse_request_head(wire.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(end, wire.len());
            // The same head split by an HTTP library (lower-case names, as hyper gives them).
            let mut lines = wire.trim_end().split("\r\n");
            let words: Vec<&str> = lines.next().unwrap().split(' ').collect();
            let fields: Vec<(String, &str)> = lines
                .map(|l| l.split_once(": ").unwrap())
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect();
            let split = parse_fields(
                words[0],
                words[1],
                false,
                fields.iter().map(|(n, v)| (n.as_str(), *v)),
            );
            prop_assert_eq!(split, Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_parse(&bytes);
        }
    }
}
