//! Certificate pinning: the shared [`godwit_trust`] crate (SHA-256 fingerprints, known-hosts
//! trust files), its errors as this crate's [`Error`], and [`HostVerifier`], which also accepts
//! a certificate by the SHA-1 thumbprint vCenter reports for an ESXi host.
//!
//! vCenter hands out NFC device URLs on the ESXi hosts behind it together with each host's
//! `sslThumbprint` ("SSL thumbprint for the host the URL refers to",
//! <https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest/data-structures/HttpNfcLeaseDeviceUrl>).
//! That thumbprint arrives over the vCenter session whose certificate is pinned, so trusting
//! the host by it is trusting vCenter's word, as govmomi does (`nfc/lease.go`:
//! `l.c.SetThumbprint(u.Host, device.SslThumbprint)`). Nothing else is ever accepted.

use crate::error::Error;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::sync::{Arc, Mutex};

pub use godwit_trust::{Fingerprint, PinnedVerifier, TrustStore};

impl From<godwit_trust::Error> for Error {
    fn from(e: godwit_trust::Error) -> Self {
        match e {
            godwit_trust::Error::File { path, source } => Error::File {
                path,
                op: "read",
                source,
            },
            godwit_trust::Error::BadFile { path, detail } => Error::BadFile { path, detail },
            e @ godwit_trust::Error::BadFingerprint { .. } => Error::Usage(e.to_string()),
        }
    }
}

/// A SHA-1 certificate thumbprint as vSphere shows it (`AB:CD:...`, 20 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint(pub [u8; 20]);

impl Thumbprint {
    pub fn of_der(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let mut out = [0u8; 20];
        out.copy_from_slice(d.as_ref());
        Thumbprint(out)
    }

    /// 40 hex digits, with or without colons, any case. `None` for anything else (vCenter
    /// sends an empty string when it has no thumbprint).
    pub fn parse(s: &str) -> Option<Self> {
        let hex_only: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex_only).ok()?;
        Some(Thumbprint(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a server showed on its last handshake.
pub type Seen = Arc<Mutex<Option<(Fingerprint, Thumbprint)>>>;

/// Accepts a certificate whose SHA-256 fingerprint is pinned, or whose SHA-1 thumbprint is one
/// vCenter reported for that host; records what it was shown so a refusal can name it.
pub struct HostVerifier {
    pins: Vec<Fingerprint>,
    thumbprints: Vec<Thumbprint>,
    seen: Seen,
    /// Signature checks only (its pins are never consulted).
    signatures: PinnedVerifier,
}

impl fmt::Debug for HostVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostVerifier")
            .field("pins", &self.pins)
            .field("thumbprints", &self.thumbprints)
            .finish_non_exhaustive()
    }
}

impl HostVerifier {
    pub fn new(pins: Vec<Fingerprint>, thumbprints: Vec<Thumbprint>, seen: Seen) -> Self {
        HostVerifier {
            pins,
            thumbprints,
            seen,
            signatures: PinnedVerifier::with_hook(Vec::new(), |_| {}),
        }
    }
}

impl ServerCertVerifier for HostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of_der(end_entity.as_ref());
        let tp = Thumbprint::of_der(end_entity.as_ref());
        if let Ok(mut s) = self.seen.lock() {
            *s = Some((fp, tp));
        }
        if self.pins.contains(&fp) || self.thumbprints.contains(&tp) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_parse_and_show_like_vsphere() {
        let t = Thumbprint::of_der(b"cert");
        let shown = t.to_string();
        assert_eq!(shown.len(), 59);
        assert_eq!(Thumbprint::parse(&shown), Some(t));
        assert_eq!(
            Thumbprint::parse(&shown.replace(':', "").to_lowercase()),
            Some(t)
        );
        for bad in ["", "AB:CD", "zz", &format!("{shown}:00")] {
            assert_eq!(Thumbprint::parse(bad), None, "{bad}");
        }
        // SHA-1 of "cert", checked against sha1sum.
        assert_eq!(
            shown.replace(':', "").to_lowercase(),
            "cd1b5069963d9878f92f1cfbe77f8912cdd5b2ed"
        );
    }
}
