//! # godwit-trust
//!
//! Certificate pinning shared by every Godwit TLS client (vSphere, Hyper-V/WinRM, the staging
//! wire protocol): SHA-256 fingerprints given on the command line or in a known-hosts style
//! trust file, and a rustls verifier that accepts exactly the pinned certificates. There is no
//! accept-any mode: an unpinned or mismatched certificate fails the handshake, and the verifier
//! records the fingerprint it was shown so the caller can report it.

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

mod client;
pub use client::{
    PinFailure, SeenFingerprint, authority, last_seen, pin_failure, pinned_client_config,
};

/// Errors of this crate: a fingerprint that does not parse, or a trust file that cannot be
/// read or has a bad line (named).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fingerprint {text:?} {detail}")]
    BadFingerprint { text: String, detail: String },
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
    #[error("{path}: cannot read: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Accepts `SHA256:AB:CD:...`, `ab:cd...`, `abcd...`: hex with or without colons, any case,
    /// with or without the `SHA256:` prefix.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |detail: String| Error::BadFingerprint {
            text: s.to_string(),
            detail,
        };
        let t = s.trim();
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hex_digits).map_err(|_| bad("is not hexadecimal".to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            bad(format!(
                "has {} bytes; a SHA-256 fingerprint has 32",
                b.len()
            ))
        })?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Known-hosts style trust: lines of `HOST[:PORT] SHA256:hex`; `#` starts a comment.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    entries: Vec<(String, Fingerprint)>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse a trust file's text; errors name `origin` and the line.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(host), Some(fp), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::BadFile {
                    path: origin.to_string(),
                    detail: format!("line {}: expected `HOST[:PORT] SHA256:hex`", i + 1),
                });
            };
            let fp = Fingerprint::parse(fp).map_err(|e| Error::BadFile {
                path: origin.to_string(),
                detail: format!("line {}: {e}", i + 1),
            })?;
            entries.push((host.to_ascii_lowercase(), fp));
        }
        Ok(TrustStore { entries })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn add(&mut self, authority: &str, fp: Fingerprint) {
        self.entries.push((authority.to_ascii_lowercase(), fp));
    }

    /// Pins for `host:port`: entries for exactly that authority, or for the bare host.
    pub fn pins_for(&self, host: &str, port: u16) -> Vec<Fingerprint> {
        let host = host.to_ascii_lowercase();
        let full = format!("{host}:{port}");
        self.entries
            .iter()
            .filter(|(h, _)| *h == full || *h == host)
            .map(|(_, f)| *f)
            .collect()
    }
}

type SeenHook = Box<dyn Fn(Fingerprint) + Send + Sync>;

/// Accepts exactly the pinned certificates; reports the fingerprint it was shown (before
/// deciding) so a refusal can name it.
pub struct PinnedVerifier {
    pins: Vec<Fingerprint>,
    on_seen: SeenHook,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl PinnedVerifier {
    /// Records the fingerprint it was shown in `seen`.
    pub fn new(pins: Vec<Fingerprint>, seen: Arc<Mutex<Option<Fingerprint>>>) -> Self {
        Self::with_hook(pins, move |fp| {
            if let Ok(mut s) = seen.lock() {
                *s = Some(fp);
            }
        })
    }

    /// Calls `on_seen` with the fingerprint it was shown (for callers with their own type).
    pub fn with_hook(
        pins: Vec<Fingerprint>,
        on_seen: impl Fn(Fingerprint) + Send + Sync + 'static,
    ) -> Self {
        PinnedVerifier {
            pins,
            on_seen: Box::new(on_seen),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of_der(end_entity.as_ref());
        (self.on_seen)(fp);
        if self.pins.contains(&fp) {
            Ok(ServerCertVerified::assertion())
        } else {
            // AccessDenied on the wire, which servers report as "the client rejected this
            // server's certificate"; the caller names the fingerprint from what was seen.
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms_round_trip() {
        let fp = Fingerprint::of_der(b"cert");
        let shown = fp.to_string();
        assert!(shown.starts_with("SHA256:"));
        assert_eq!(Fingerprint::parse(&shown).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&shown.to_lowercase()).unwrap(), fp);
        let bare = hex::encode(fp.0);
        assert_eq!(Fingerprint::parse(&bare).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&bare.to_uppercase()).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&format!("sha256:{bare}")).unwrap(), fp);
        let e = Fingerprint::parse("SHA256:abcd").unwrap_err().to_string();
        assert!(e.contains("32") && e.contains("abcd"), "{e}");
        assert!(Fingerprint::parse("zz").is_err());
        assert!(Fingerprint::parse(&format!("{bare}00")).is_err());
        assert!(Fingerprint::parse("").is_err());
    }

    #[test]
    fn trust_file_lines_and_errors() {
        let fp = Fingerprint::of_der(b"x");
        let text = format!(
            "# hosts\nesx1.local:443 {fp}\n\nvc.local {}  # comment\n",
            hex::encode(fp.0)
        );
        let t = TrustStore::parse(&text, "trust").unwrap();
        assert_eq!(t.pins_for("ESX1.local", 443), vec![fp]);
        assert_eq!(t.pins_for("esx1.local", 8443), vec![]);
        assert_eq!(t.pins_for("vc.local", 9443), vec![fp]);
        let e = TrustStore::parse("host\n", "trust")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust: line 1"), "{e}");
        let e = TrustStore::parse("\nhost SHA256:00\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("32"), "{e}");
        let e = TrustStore::load(Path::new("/nonexistent/trust"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/trust"), "{e}");
    }

    #[test]
    fn verifier_accepts_only_pins_and_reports_what_it_saw() {
        let good = CertificateDer::from(b"good cert".to_vec());
        let bad = CertificateDer::from(b"other cert".to_vec());
        let seen = Arc::new(Mutex::new(None));
        let v = PinnedVerifier::new(vec![Fingerprint::of_der(b"good cert")], seen.clone());
        let name = ServerName::try_from("host").unwrap();
        assert!(
            v.verify_server_cert(&good, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let e = v
            .verify_server_cert(&bad, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let want = Fingerprint::of_der(b"other cert");
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )
            ),
            "{e}"
        );
        assert_eq!(*seen.lock().unwrap(), Some(want));
        assert!(!v.supported_verify_schemes().is_empty());
    }
}
