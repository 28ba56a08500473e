//! TLS check: handshake, then describe what was presented — protocol version, subject and
//! SANs against the name, validity, SHA-256 fingerprint, trust (CA, pin or self-signed) and
//! an issuer that hints at TLS interception. The handshake always completes (a recording
//! verifier accepts everything) so a bad certificate can be described, not just refused;
//! nothing is sent over the connection.

use crate::plan::{Fingerprint, Role, Target};
use crate::result::{CheckKind, CheckResult};
use crate::tcp::connect;
use crate::x509::{CertInfo, UnixTime, parse_certificate};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime as RustlsTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};

/// Certificates expiring sooner than this warn.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Issuer words that suggest a TLS-inspecting proxy or security product re-signed the
/// certificate.
const INTERCEPTION_HINTS: &[&str] = &[
    "zscaler",
    "fortinet",
    "fortigate",
    "palo alto",
    "paloalto",
    "blue coat",
    "bluecoat",
    "symantec web",
    "sophos",
    "netskope",
    "forcepoint",
    "websense",
    "check point",
    "checkpoint",
    "barracuda",
    "umbrella",
    "mcafee",
    "skyhigh",
    "squid",
    "inspection",
    "intercept",
    "mitm",
    "untangle",
    "kaspersky",
    "eset",
    "avast",
    "bitdefender",
    "watchguard",
    "sonicwall",
    "iboss",
    "menlo",
    "proxy",
    "firewall",
    "cato networks",
    "trend micro",
];

/// Trust anchors and the crypto provider shared by every TLS check of a run.
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
}

impl TlsContext {
    /// Load the system bundle (if present) and an extra CA file (must load if given).
    pub fn load(system: Option<&Path>, extra: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let mut add = |path: &Path, required: bool| -> Result<(), String> {
            let iter = match CertificateDer::pem_file_iter(path) {
                Ok(it) => it,
                Err(e) if !required => {
                    tracing::debug!("no system CA bundle at {}: {e}", path.display());
                    return Ok(());
                }
                Err(e) => {
                    return Err(format!(
                        "{}: cannot read CA certificates: {e}",
                        path.display()
                    ));
                }
            };
            let certs: Vec<CertificateDer<'static>> = iter
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if required && added == 0 {
                return Err(format!(
                    "{}: no usable CA certificate in the file",
                    path.display()
                ));
            }
            Ok(())
        };
        if let Some(p) = system {
            add(p, false)?;
        }
        if let Some(p) = extra {
            add(p, true)?;
        }
        Ok(Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots),
        })
    }
}

/// Structured handshake details, for the wizard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsDetails {
    pub version: String,
    pub cipher_suite: String,
    pub subject: String,
    pub issuer: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// `SHA256:<HEX>` of the DER leaf certificate.
    pub fingerprint: String,
    pub self_signed: bool,
    /// Chains to a trusted CA (system store or `--ca-file`), name and time included.
    pub ca_trusted: bool,
    pub pinned: bool,
}

/// What the recording verifier saw.
#[derive(Debug)]
struct Seen {
    chain: Vec<CertificateDer<'static>>,
    verdict: Result<(), rustls::Error>,
}

#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: RustlsTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.inner {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Seen { chain, verdict });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Outcome of a handshake over some stream.
pub struct Handshake {
    pub version: String,
    pub cipher_suite: String,
    chain: Vec<CertificateDer<'static>>,
    verdict: Result<(), rustls::Error>,
}

/// Run a TLS handshake over `stream` as a client for `host`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &TlsContext,
    host: &str,
    stream: S,
) -> Result<Handshake, String> {
    let inner = if ctx.roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::clone(&ctx.roots),
                Arc::clone(&ctx.provider),
            )
            .build()
            .map_err(|e| e.to_string())?,
        )
    };
    let verifier = Arc::new(RecordingVerifier {
        inner,
        provider: Arc::clone(&ctx.provider),
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&ctx.provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("`{host}`: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    let version = conn.protocol_version().map_or_else(
        || "unknown".into(),
        |v| format!("{v:?}").replace("TLSv1_", "TLS 1."),
    );
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite()));
    let seen = verifier
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or("the server presented no certificate")?;
    Ok(Handshake {
        version,
        cipher_suite,
        chain: seen.chain,
        verdict: seen.verdict,
    })
}

/// Does the certificate name `host`? (SAN dNSName with a single left-most wildcard label, or
/// SAN iPAddress; the CN is not used, as in browsers and webpki.)
pub fn names_host(info: &CertInfo, host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return info.ip_addresses.contains(&ip);
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    info.dns_names.iter().any(|pattern| {
        let p = pattern.trim_end_matches('.').to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => p == host,
        }
    })
}

/// The interception product an issuer name hints at, if any.
pub fn interception_hint(issuer: &str) -> Option<&'static str> {
    let lower = issuer.to_ascii_lowercase();
    INTERCEPTION_HINTS
        .iter()
        .copied()
        .find(|w| lower.contains(w))
}

fn now() -> UnixTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    UnixTime(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Judge a completed handshake. `via` describes a proxy tunnel, if any.
pub fn judge(t: &Target, kind: CheckKind, target: String, h: &Handshake) -> CheckResult {
    let e = &t.endpoint;
    let Some(leaf) = h.chain.first() else {
        return CheckResult::fail(
            kind,
            target,
            "no certificate",
            "The server sent no certificate.",
        );
    };
    let info = match parse_certificate(leaf) {
        Ok(i) => i,
        Err(err) => {
            return CheckResult::fail(
                kind,
                target,
                format!("unreadable certificate: {err}"),
                format!(
                    "The certificate of {} cannot be parsed ({err}); replace it.",
                    e.host
                ),
            );
        }
    };
    let fp = Fingerprint(Sha256::digest(leaf.as_ref()).into());
    let now = now();
    let expired = now > info.not_after;
    let not_yet = now < info.not_before;
    let name_ok = names_host(&info, &e.host);
    let self_signed = info.is_self_issued();
    let ca_trusted = h.verdict.is_ok();
    let pin_state = t.fingerprint.map(|p| p == fp);
    let details = TlsDetails {
        version: h.version.clone(),
        cipher_suite: h.cipher_suite.clone(),
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        dns_names: info.dns_names.clone(),
        ip_addresses: info.ip_addresses.iter().map(ToString::to_string).collect(),
        not_before: info.not_before.to_utc_string(),
        not_after: info.not_after.to_utc_string(),
        fingerprint: fp.to_string(),
        self_signed,
        ca_trusted,
        pinned: pin_state == Some(true),
    };
    let mut sans: Vec<String> = info.dns_names.clone();
    sans.extend(details.ip_addresses.iter().cloned());
    let trust = match (pin_state, ca_trusted, self_signed) {
        (Some(true), _, _) => "pinned fingerprint matches".to_string(),
        (Some(false), _, _) => "FINGERPRINT DIFFERS FROM THE PINNED ONE".to_string(),
        (None, true, _) => "trusted CA".to_string(),
        (None, false, true) => "self-signed".to_string(),
        (None, false, false) => format!("untrusted issuer ({})", verdict_text(&h.verdict)),
    };
    let value = format!(
        "{}; subject {}; SAN [{}]; issuer {}; valid {} .. {}; {}; {}",
        h.version,
        info.subject,
        sans.join(", "),
        info.issuer,
        details.not_before,
        details.not_after,
        fp,
        trust
    );
    let peer = format!("{} ({})", e, t.role.peer());
    let pin_help = format!(
        "compare {fp} with the certificate on {} (e.g. in its management UI) and pin it \
         (`fingerprint = \"{fp}\"` in the settings, or accept it in the wizard)",
        e.host
    );
    let mut fails: Vec<String> = Vec::new();
    let mut warns: Vec<String> = Vec::new();
    if pin_state == Some(false) {
        fails.push(format!(
            "{peer} presents a different certificate than the pinned one: it was replaced, or \
             something intercepts TCP port {} between the connector and {}. If the change is \
             expected, {pin_help}.",
            e.port, e.host
        ));
    }
    if expired {
        fails.push(format!(
            "The certificate of {peer} expired on {}: renew it on {}.",
            details.not_after, e.host
        ));
    } else if not_yet {
        fails.push(format!(
            "The certificate of {peer} is valid only from {}: either it was just issued with a \
             future date or the connector's clock is wrong (see the NTP check).",
            details.not_before
        ));
    } else if i64::try_from(EXPIRY_WARNING.as_secs()).is_ok_and(|w| info.not_after.0 - now.0 < w) {
        warns.push(format!(
            "The certificate of {peer} expires on {}: renew it before then.",
            details.not_after
        ));
    }
    if !name_ok {
        let text = format!(
            "The certificate of {peer} names [{}], not {}: reissue it with {} in its subject \
             alternative names, or connect by a name it carries.",
            sans.join(", "),
            e.host,
            e.host
        );
        // Pinned by a matching fingerprint, the certificate is authenticated by its hash and
        // the connector never looks at its names (issue 18): nothing to warn about.
        if pin_state != Some(true) {
            fails.push(text)
        }
    }
    if pin_state.is_none() && !ca_trusted {
        if let Some(product) = interception_hint(&info.issuer) {
            fails.push(format!(
                "The certificate of {peer} was issued by \"{}\", which looks like a TLS \
                 inspection device ({product}). Exempt {} port {} from TLS interception on \
                 that device: the connector pins certificates and replication must be end to \
                 end.",
                info.issuer, e.host, e.port
            ));
        } else if self_signed {
            warns.push(format!(
                "{peer} uses a self-signed certificate: {pin_help}, or install a certificate \
                 from your CA and pass the CA with --ca-file."
            ));
        } else if !expired && name_ok {
            fails.push(format!(
                "The certificate of {peer} is issued by \"{}\", which the connector does not \
                 trust ({}): add that CA with --ca-file (or in the wizard), or {pin_help}. If \
                 you do not know this issuer, something may be intercepting TLS.",
                info.issuer,
                verdict_text(&h.verdict)
            ));
        }
    }
    if t.role == Role::StagingServer && h.version != "TLS 1.3" && h.version != "TLS 1.2" {
        fails.push(format!(
            "{peer} negotiated {}: replication needs TLS 1.2 or newer.",
            h.version
        ));
    }
    let mut r = if !fails.is_empty() {
        fails.extend(warns);
        CheckResult::fail(kind, target, value, fails.join(" "))
    } else if !warns.is_empty() {
        CheckResult::warn(kind, target, value, warns.join(" "))
    } else {
        CheckResult::pass(kind, target, value)
    };
    r.tls = Some(details);
    r
}

fn verdict_text(v: &Result<(), rustls::Error>) -> String {
    match v {
        Ok(()) => "trusted".into(),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "unknown issuer".into()
        }
        Err(e) => e.to_string(),
    }
}

/// The TLS check: connect, handshake, judge.
pub async fn check(
    t: &Target,
    ctx: &TlsContext,
    resolver: &crate::dns::NameResolver,
    using_dns_servers: bool,
    timeout: Duration,
) -> CheckResult {
    let target = t.endpoint.to_string();
    let deadline = Instant::now() + timeout;
    let (stream, addr) = match connect(&t.endpoint, resolver, deadline).await {
        Ok(s) => s,
        Err(f) => {
            return CheckResult::fail(
                CheckKind::Tls,
                target,
                f.value(timeout),
                f.remediation(&t.endpoint, &t.role, using_dns_servers),
            );
        }
    };
    match tokio::time::timeout_at(deadline.into(), handshake(ctx, &t.endpoint.host, stream)).await {
        Ok(Ok(h)) => judge(t, CheckKind::Tls, target, &h),
        Ok(Err(e)) => CheckResult::fail(
            CheckKind::Tls,
            target,
            format!("TLS handshake with {addr} failed: {e}"),
            format!(
                "TCP port {} of {} accepts connections but the TLS handshake failed: check that \
                 the service there speaks TLS 1.2 or 1.3 on that port and that nothing on the \
                 way (proxy, firewall with TLS inspection) tampers with it.",
                t.endpoint.port, t.endpoint.host
            ),
        ),
        Err(_) => CheckResult::fail(
            CheckKind::Tls,
            target,
            format!(
                "TLS handshake with {addr} did not finish within {} s",
                timeout.as_secs_f32()
            ),
            format!(
                "TCP port {} of {} accepts connections but sends no TLS answer: check that the \
                 service there speaks TLS on that port, and that no firewall stalls the \
                 handshake.",
                t.endpoint.port, t.endpoint.host
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dns: &[&str], ips: &[&str]) -> CertInfo {
        CertInfo {
            subject: String::new(),
            issuer: String::new(),
            subject_cn: None,
            subject_der: vec![],
            issuer_der: vec![],
            not_before: UnixTime(0),
            not_after: UnixTime(0),
            dns_names: dns.iter().map(ToString::to_string).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
            is_ca: false,
        }
    }

    #[test]
    fn name_matching() {
        let c = info(&["vc1.lab.test", "*.esx.lab.test"], &["10.0.0.5"]);
        assert!(names_host(&c, "vc1.lab.test"));
        assert!(names_host(&c, "VC1.lab.test."));
        assert!(names_host(&c, "h1.esx.lab.test"));
        assert!(!names_host(&c, "a.h1.esx.lab.test"));
        assert!(!names_host(&c, "esx.lab.test"));
        assert!(names_host(&c, "10.0.0.5"));
        assert!(!names_host(&c, "10.0.0.6"));
        assert!(!names_host(&c, "localhost.localdomain"));
    }

    #[test]
    fn interception_hints() {
        assert_eq!(
            interception_hint("CN=Zscaler Intermediate Root CA, O=Zscaler Inc."),
            Some("zscaler")
        );
        assert_eq!(interception_hint("CN=Lab Root CA, O=Godwit Test"), None);
    }
}
