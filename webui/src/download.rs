//! A finished export's file as an HTTPS download (`GET /api/v1/exports/{id}/download`):
//! `Content-Length`, one byte range at a time (RFC 9110 §14: `Range: bytes=A-B`, `A-`, `-N`;
//! `206` with `Content-Range`, `416` when nothing of it is in the file), `If-Range` against the
//! strong `ETag` (the file's SHA-256), so a broken download resumes where it stopped; and the
//! file's SHA-256 three ways: `Digest: SHA-256=<base64>` (RFC 3230), `Repr-Digest:
//! sha-256=:<base64>:` (RFC 9530) and `X-Checksum-SHA256: <hex>`.
//!
//! [`parse_range`] is pure (the header is untrusted: fuzzed in `fuzz/fuzz_targets/webui_range.rs`).

use crate::backend::ExportFile;
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range (absent, not `bytes=`, several ranges, malformed): send it all (RFC
    /// 9110 lets a server ignore a Range it does not support).
    Full,
    /// Bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// A well-formed range wholly past the end: `416`.
    Unsatisfiable,
}

/// Longest Range header looked at.
const MAX_RANGE_LEN: usize = 200;

/// Parse one `Range` value against a file of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> RangeAnswer {
    if value.len() > MAX_RANGE_LEN {
        return RangeAnswer::Full;
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last N bytes.
        let Some(n) = num(b) else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        start,
        end: end.min(len - 1),
    }
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `attachment; filename="..."` with anything but a safe ASCII name replaced.
fn disposition(name: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    value(&format!("attachment; filename=\"{safe}\""))
}

/// The response for `f` given the request's headers.
pub async fn respond(f: ExportFile, req: &HeaderMap) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let etag = format!("\"{}\"", f.sha256);
    let mut range = req
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeAnswer::Full, |v| parse_range(v, f.len));
    if let Some(ir) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && ir.trim() != etag
    {
        // The file is not the one the client has part of: start over.
        range = RangeAnswer::Full;
    }
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(&etag));
    h.insert(header::CONTENT_DISPOSITION, disposition(&f.file_name));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(raw) = hex::decode(&f.sha256) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        h.insert("digest", value(&format!("SHA-256={b64}")));
        h.insert("repr-digest", value(&format!("sha-256=:{b64}:")));
        h.insert("x-checksum-sha256", value(&f.sha256));
    }
    let (status, start, count) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, f.len),
        RangeAnswer::Partial { start, end } => {
            h.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{}", f.len)),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, value(&format!("bytes */{}", f.len)));
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
    };
    h.insert(header::CONTENT_LENGTH, value(&count.to_string()));
    let mut file = tokio::fs::File::from_std(f.file);
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return crate::error::ApiError(crate::backend::CommandError::Internal {
            message: format!("reading the export: {e}"),
        })
        .into_response();
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 << 10);
    (status, h, Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(
            parse_range("bytes=0-99", 1000),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=500-", 1000),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-100", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-5000", 1000),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(
            parse_range("bytes=900-5000", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        for ignored in [
            "",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(parse_range(ignored, 1000), Full, "{ignored:?}");
        }
    }

    #[test]
    fn names_in_disposition_are_plain() {
        assert_eq!(
            disposition("a\"b\r\n.vmdk"),
            HeaderValue::from_static("attachment; filename=\"a_b__.vmdk\"")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_range_stays_inside_the_file(v in ".{0,60}", len in 0u64..u64::MAX) {
            if let RangeAnswer::Partial { start, end } = parse_range(&v, len) {
                proptest::prop_assert!(start <= end && end < len);
            }
        }
    }
}
