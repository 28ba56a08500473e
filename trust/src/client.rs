//! What every pinned HTTPS client (vSphere, WinRM) builds the same way: the `host:port`
//! authority, a rustls client configuration that trusts exactly the pins and records the
//! fingerprint it was shown, and the verdict on a failed handshake (unpinned or mismatched).

use crate::{Fingerprint, PinnedVerifier};
use std::sync::{Arc, Mutex};

/// The fingerprint the server showed on the last handshake, shared with the verifier.
pub type SeenFingerprint = Arc<Mutex<Option<Fingerprint>>>;

/// `host:port`, IPv6 hosts in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A rustls client configuration (ring, safe default TLS versions, no client certificate)
/// that accepts exactly `pins`, and the cell where it records the fingerprint it was shown.
pub fn pinned_client_config(
    pins: &[Fingerprint],
) -> Result<(rustls::ClientConfig, SeenFingerprint), rustls::Error> {
    let seen: SeenFingerprint = Arc::new(Mutex::new(None));
    let verifier = Arc::new(PinnedVerifier::new(pins.to_vec(), seen.clone()));
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    Ok((tls, seen))
}

/// Why a handshake was refused by the pinning, if it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinFailure {
    /// No pin was given; the server showed `seen`.
    Unpinned { seen: Fingerprint },
    /// The server showed `seen`, which is none of the pins (`expected`: "A or B").
    Mismatch { expected: String, seen: Fingerprint },
}

/// The pinning verdict after a failed request: `None` when the server's certificate was not
/// the problem (no handshake happened, or the certificate was a pinned one).
pub fn pin_failure(pins: &[Fingerprint], seen: Option<Fingerprint>) -> Option<PinFailure> {
    let seen = seen?;
    if pins.contains(&seen) {
        None
    } else if pins.is_empty() {
        Some(PinFailure::Unpinned { seen })
    } else {
        Some(PinFailure::Mismatch {
            expected: pins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            seen,
        })
    }
}

/// The fingerprint recorded in `seen` (a poisoned lock still yields its value).
pub fn last_seen(seen: &SeenFingerprint) -> Option<Fingerprint> {
    *seen.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(authority("h", 5986), "h:5986");
        assert_eq!(authority("::1", 443), "[::1]:443");
    }

    #[test]
    fn pin_failure_names_what_was_seen() {
        let a = Fingerprint([1; 32]);
        let b = Fingerprint([2; 32]);
        assert_eq!(pin_failure(&[a], None), None);
        assert_eq!(pin_failure(&[a], Some(a)), None);
        assert_eq!(
            pin_failure(&[], Some(b)),
            Some(PinFailure::Unpinned { seen: b })
        );
        match pin_failure(&[a, a], Some(b)) {
            Some(PinFailure::Mismatch { expected, seen }) => {
                assert_eq!(seen, b);
                assert_eq!(expected, format!("{a} or {a}"));
            }
            other => panic!("{other:?}"),
        }
        let (_cfg, seen) = pinned_client_config(&[a]).unwrap();
        assert_eq!(last_seen(&seen), None);
    }
}
