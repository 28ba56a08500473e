//! Checking an uploaded HTTPS certificate before it replaces the one the appliance serves.
//! Pure: PEM text in, a usable chain and key (or field errors) out. A refusal names the field
//! (`certificate_pem`, `private_key_pem`) and what is wrong; it never echoes the key.
//!
//! Refused: no PEM certificate or key; a DER the X.509 reader cannot read; a CA certificate
//! first (the leaf must come first); a certificate not yet valid or expired; one without
//! subject alternative names (browsers ignore the CN); a key that does not belong to the leaf
//! or that rustls/ring cannot sign with.

use godwit_netcheck::x509::{CertInfo, UnixTime, parse_certificate};
use godwit_webui::backend::{CommandError, HttpsCertificateView, RENEWAL_NOTICE_DAYS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest PEM text accepted per field (a chain of a few certificates is ~10 KiB).
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// A chain and key that passed every check.
pub struct CheckedUpload {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

const CERT: &str = "certificate_pem";
const KEY: &str = "private_key_pem";

/// Check an upload as of `now`.
pub fn check(
    cert_pem: &str,
    key_pem: &str,
    now: SystemTime,
) -> Result<CheckedUpload, CommandError> {
    if cert_pem.len() > MAX_PEM_BYTES {
        return Err(CommandError::field(
            CERT,
            format!("more than {MAX_PEM_BYTES} bytes"),
        ));
    }
    if key_pem.len() > MAX_PEM_BYTES {
        return Err(CommandError::field(
            KEY,
            format!("more than {MAX_PEM_BYTES} bytes"),
        ));
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::field(CERT, format!("not valid PEM: {}", pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(CommandError::field(
            CERT,
            "no certificate found (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    let mut infos = Vec::with_capacity(chain.len());
    for (i, c) in chain.iter().enumerate() {
        let info = parse_certificate(c.as_ref())
            .map_err(|e| CommandError::field(CERT, format!("certificate {}: {e}", i + 1)))?;
        infos.push(info);
    }
    let info = &infos[0];
    if info.is_ca {
        return Err(CommandError::field(
            CERT,
            format!(
                "the first certificate ({}) is a CA certificate; put the appliance's own certificate first, then the intermediates",
                info.subject
            ),
        ));
    }
    let now = unix(now);
    if now < info.not_before {
        return Err(CommandError::field(
            CERT,
            format!(
                "the certificate is not valid before {}",
                info.not_before.to_utc_string()
            ),
        ));
    }
    if now > info.not_after {
        return Err(CommandError::field(
            CERT,
            format!(
                "the certificate expired on {}",
                info.not_after.to_utc_string()
            ),
        ));
    }
    if info.dns_names.is_empty() && info.ip_addresses.is_empty() {
        return Err(CommandError::field(
            CERT,
            "the certificate names no host (no subject alternative names); browsers ignore the common name",
        ));
    }
    // Nothing about the key's bytes goes into a message.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        CommandError::field(
            KEY,
            "no usable PEM private key found (PKCS#8, PKCS#1 RSA or SEC1 EC; not encrypted)",
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| CommandError::field(KEY, "this key type is not supported"))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(CommandError::field(
            KEY,
            format!(
                "this key does not belong to the certificate {}",
                leaf_name(info)
            ),
        ));
    }
    Ok(CheckedUpload { chain, key })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Base64Decode(_) => "a block is not valid base64".into(),
        rustls::pki_types::pem::Error::MissingSectionEnd { .. } => "a block has no END line".into(),
        rustls::pki_types::pem::Error::IllegalSectionStart { .. } => {
            "a BEGIN line is malformed".into()
        }
        other => format!("{other:?}"),
    }
}

fn leaf_name(info: &CertInfo) -> String {
    info.subject_cn
        .clone()
        .unwrap_or_else(|| info.subject.clone())
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime(
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    )
}

/// Describe a chain for the settings page (the leaf; `chain_length` counts all) as of `now`,
/// with when it expires and what happens before (see [`renewal_text`]).
pub fn describe(
    chain: &[CertificateDer<'static>],
    uploaded: bool,
    now: SystemTime,
) -> HttpsCertificateView {
    let leaf = chain.first().map_or(&[][..], |c| c.as_ref());
    let fingerprint = godwit_trust::Fingerprint::of_der(leaf).to_string();
    match parse_certificate(leaf) {
        Ok(i) => {
            let mut names = i.dns_names.clone();
            names.extend(i.ip_addresses.iter().map(ToString::to_string));
            let days = (i.not_after.0 - unix(now).0).div_euclid(86_400);
            HttpsCertificateView {
                fingerprint,
                subject: i.subject,
                issuer: i.issuer,
                not_before: i.not_before.to_utc_string(),
                not_after: i.not_after.to_utc_string(),
                subject_alt_names: names,
                chain_length: chain.len(),
                uploaded,
                expires_in_days: days,
                renewal_due: days < RENEWAL_NOTICE_DAYS,
                renewal: renewal_text(uploaded, i.not_after, days),
            }
        }
        Err(e) => HttpsCertificateView {
            fingerprint,
            subject: format!("(unreadable: {e})"),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            subject_alt_names: Vec::new(),
            chain_length: chain.len(),
            uploaded,
            expires_in_days: 0,
            renewal_due: true,
            renewal: "The certificate cannot be read; upload a new one.".into(),
        },
    }
}

/// What happens before the certificate expires, in one sentence: a generated one is replaced
/// by a new one [`RENEWAL_NOTICE_DAYS`] before its end (at start, or by the check every few
/// hours); an uploaded one is the administrator's to replace.
pub fn renewal_text(uploaded: bool, not_after: UnixTime, days_left: i64) -> String {
    let end = not_after.to_utc_string();
    let end = end.get(..10).unwrap_or(&end);
    if uploaded {
        if days_left < 0 {
            format!("It expired on {end}: upload a renewed certificate.")
        } else {
            format!(
                "Upload a renewed certificate before {end}; this one is not renewed automatically."
            )
        }
    } else if days_left < RENEWAL_NOTICE_DAYS {
        "A new certificate is being generated automatically (within hours, or at the next start); its fingerprint will change.".to_string()
    } else {
        let from = UnixTime(not_after.0 - RENEWAL_NOTICE_DAYS * 86_400).to_utc_string();
        let from = from.get(..10).unwrap_or(&from);
        format!(
            "A new certificate is generated automatically from {from}, {RENEWAL_NOTICE_DAYS} days before it expires on {end}; its fingerprint will then change."
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use std::time::Duration;

    /// A leaf for `godwit.example.test` signed by a fresh CA: (chain PEM leaf + CA, key PEM).
    pub(crate) fn leaf_signed_by_a_ca() -> (String, String) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "Example Test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut p = CertificateParams::new(vec!["godwit.example.test".into()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "godwit.example.test");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let k = KeyPair::generate().unwrap();
        let leaf = p.signed_by(&k, &issuer).unwrap();
        (format!("{}{}", leaf.pem(), issuer.pem()), k.serialize_pem())
    }

    fn field_of(e: CommandError) -> (String, String) {
        match e {
            CommandError::Invalid { fields } => {
                (fields[0].field.clone(), fields[0].message.clone())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_leaf_with_its_key_and_chain_is_accepted() {
        let (c, k) = leaf_signed_by_a_ca();
        let up = check(&c, &k, SystemTime::now()).unwrap();
        assert_eq!(up.chain.len(), 2);
        let v = describe(&up.chain, true, SystemTime::now());
        assert_eq!(v.subject_alt_names, ["godwit.example.test"]);
        assert_eq!(v.chain_length, 2);
        assert!(v.subject.contains("godwit.example.test"), "{v:?}");
        assert!(v.issuer.contains("Example Test CA"), "{v:?}");
    }

    #[test]
    fn refusals_name_the_field_and_never_echo_the_key() {
        let (c, k) = leaf_signed_by_a_ca();
        let (other_c, other_k) = leaf_signed_by_a_ca();
        let now = SystemTime::now();
        // Another certificate's key.
        let (f, m) = field_of(check(&c, &other_k, now).err().unwrap());
        assert_eq!(f, KEY);
        assert!(m.contains("does not belong"), "{m}");
        assert!(!m.contains("PRIVATE"), "{m}");
        // Nothing that parses.
        let (f, _) = field_of(check("hello", &k, now).err().unwrap());
        assert_eq!(f, CERT);
        let (f, m) = field_of(
            check(
                &c,
                "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n",
                now,
            )
            .err()
            .unwrap(),
        );
        assert_eq!(f, KEY);
        assert!(!m.contains("QUJD"), "{m}");
        // The CA first.
        let ca_first: String = {
            let blocks: Vec<&str> = other_c
                .split_inclusive("-----END CERTIFICATE-----\n")
                .collect();
            format!("{}{}", blocks[1], blocks[0])
        };
        let (f, m) = field_of(check(&ca_first, &other_k, now).err().unwrap());
        assert_eq!(f, CERT);
        assert!(m.contains("CA certificate"), "{m}");
        // Expired (valid 2020-2099), not yet valid.
        let later = now + Duration::from_secs(200 * 365 * 86_400);
        let (f, m) = field_of(check(&c, &k, later).err().unwrap());
        assert_eq!(f, CERT);
        assert!(m.contains("expired"), "{m}");
        let (f, m) = field_of(check(&c, &k, UNIX_EPOCH).err().unwrap());
        assert_eq!(f, CERT);
        assert!(m.contains("not valid before"), "{m}");
        // Too large.
        let (f, _) = field_of(
            check(&"A".repeat(MAX_PEM_BYTES + 1), &k, now)
                .err()
                .unwrap(),
        );
        assert_eq!(f, CERT);
    }

    #[test]
    fn the_view_says_when_it_expires_and_what_happens_before() {
        // The CA-signed leaf is valid until 2099-01-01.
        let (c, k) = leaf_signed_by_a_ca();
        let up = check(&c, &k, SystemTime::now()).unwrap();
        let end = UNIX_EPOCH + Duration::from_secs(4_070_908_800); // 2099-01-01
        let v = describe(&up.chain, true, end - Duration::from_secs(40 * 86_400));
        assert_eq!(v.expires_in_days, 40);
        assert!(!v.renewal_due);
        assert!(
            v.renewal
                .contains("Upload a renewed certificate before 2099-01-01"),
            "{}",
            v.renewal
        );
        let v = describe(&up.chain, true, end - Duration::from_secs(10 * 86_400 + 5));
        assert_eq!(v.expires_in_days, 10);
        assert!(v.renewal_due);
        let v = describe(&up.chain, true, end + Duration::from_secs(86_400));
        assert!(
            v.expires_in_days < 0 && v.renewal.contains("expired"),
            "{v:?}"
        );
        // A generated one is renewed 30 days ahead.
        let v = describe(&up.chain, false, end - Duration::from_secs(400 * 86_400));
        assert!(
            v.renewal
                .contains("generated automatically from 2098-12-02")
                && v.renewal.contains("fingerprint will then change"),
            "{}",
            v.renewal
        );
        let v = describe(&up.chain, false, end - Duration::from_secs(5 * 86_400));
        assert!(
            v.renewal_due && v.renewal.contains("being generated"),
            "{}",
            v.renewal
        );
    }

    #[test]
    fn a_certificate_without_names_is_refused() {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "no-san");
        let k = KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        let (f, m) = field_of(
            check(&c.pem(), &k.serialize_pem(), SystemTime::now())
                .err()
                .unwrap(),
        );
        assert_eq!(f, CERT);
        assert!(m.contains("subject alternative names"), "{m}");
    }

    #[test]
    fn never_panics_on_any_text() {
        let now = SystemTime::now();
        for s in [
            "",
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "\u{0}\u{ff}",
        ] {
            assert!(check(s, s, now).is_err(), "{s:?}");
        }
    }
}
