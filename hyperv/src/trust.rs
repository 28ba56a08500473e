//! Certificate pinning: SHA-256 fingerprints of the server certificate, given on the command
//! line or in a known-hosts style trust file. There is no accept-any mode: an unpinned or
//! mismatched certificate fails the handshake, and the error shows the fingerprint seen.

use crate::error::{Error, Result};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Accepts `SHA256:AB:CD:...`, `ab:cd...`, `abcd...`: hex with or without colons, any case,
    /// with or without the `SHA256:` prefix.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hex_digits)
            .map_err(|_| format!("fingerprint {s:?} is not hexadecimal"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "fingerprint {s:?} has {} bytes; a SHA-256 fingerprint has 32",
                b.len()
            )
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

    /// Parse a trust file's text; errors name the line.
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, "read", e))?;
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

/// Accepts exactly the pinned certificates; records the fingerprint it was shown.
#[derive(Debug)]
pub struct PinnedVerifier {
    pins: Vec<Fingerprint>,
    seen: Arc<Mutex<Option<Fingerprint>>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pins: Vec<Fingerprint>, seen: Arc<Mutex<Option<Fingerprint>>>) -> Self {
        PinnedVerifier {
            pins,
            seen,
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
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp);
        }
        if self.pins.contains(&fp) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {fp} is not pinned"
            )))
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
        assert!(
            Fingerprint::parse("SHA256:abcd")
                .unwrap_err()
                .contains("32")
        );
        assert!(Fingerprint::parse("zz").is_err());
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
        assert!(e.contains("line 1"), "{e}");
    }
}
