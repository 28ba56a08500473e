//! A small, pure X.509 (DER) reader: just what the TLS check reports — subject, issuer,
//! validity, subject alternative names and the CA flag. Trust decisions are rustls-webpki's;
//! this only describes the certificate.
//!
//! Fuzz entry point: [`parse_certificate`].

use godwit_cursor::Reader as Cursor;
use std::net::IpAddr;

/// Seconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// `YYYY-MM-DD HH:MM:SS UTC`; a time outside the years -9999..=9999 (which no parsed
    /// certificate has) as `N s from the Unix epoch`.
    pub fn to_utc_string(self) -> String {
        match time::OffsetDateTime::from_unix_timestamp(self.0) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Err(_) => format!("{} s from the Unix epoch", self.0),
        }
    }
}

/// A described certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject as `CN=…, O=…` (RFC 4514 order is not attempted; attributes in DER order).
    pub subject: String,
    pub issuer: String,
    /// The subject's common name, if any.
    pub subject_cn: Option<String>,
    /// Raw DER of the subject and issuer names (equal for a self-issued certificate).
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// basicConstraints cA.
    pub is_ca: bool,
}

impl CertInfo {
    /// Issuer and subject are the same name.
    pub fn is_self_issued(&self) -> bool {
        self.subject_der == self.issuer_der
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum X509Error {
    #[error("certificate DER at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

fn bad(offset: usize, what: &'static str) -> X509Error {
    X509Error::Malformed { offset, what }
}

/// One DER element: tag, content and where the content starts in the whole input.
#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    offset: usize,
}

/// A reader of a sequence of DER elements, on the shared byte cursor.
struct Reader<'a> {
    cur: Cursor<'a>,
}

impl<'a> Reader<'a> {
    fn new(t: Tlv<'a>) -> Self {
        Self {
            cur: Cursor::with_base(t.content, "certificate", t.offset as u64),
        }
    }

    /// Offset of the next byte in the whole certificate.
    fn at(&self) -> usize {
        usize::try_from(self.cur.offset()).unwrap_or(usize::MAX)
    }

    fn at_end(&self) -> bool {
        self.cur.at_end()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.cur.peek_u8()
    }

    fn next(&mut self) -> Result<Tlv<'a>, X509Error> {
        let at = self.at();
        let tag = self
            .cur
            .u8("tag")
            .map_err(|_| bad(at, "element expected, input ends"))?;
        if tag & 0x1F == 0x1F {
            return Err(bad(at, "multi-byte tags are not used in certificates"));
        }
        let first = self
            .cur
            .u8("length")
            .map_err(|_| bad(at + 1, "length expected, input ends"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 {
                return Err(bad(at + 1, "indefinite or oversized length"));
            }
            let bytes = self
                .cur
                .take(n, "length bytes")
                .map_err(|_| bad(at + 2, "length bytes truncated"))?;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let offset = self.at();
        let content = self
            .cur
            .take(len, "content")
            .map_err(|_| bad(at, "element longer than its container"))?;
        Ok(Tlv {
            tag,
            content,
            offset,
        })
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, X509Error> {
        let at = self.at();
        let t = self.next()?;
        if t.tag == tag {
            Ok(t)
        } else {
            Err(bad(at, what))
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const OID_SAN: &[u8] = &[0x55, 0x1D, 0x11];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13];

/// Describe a DER certificate. Pure; never panics; rejects malformed input with the byte
/// offset of the problem.
pub fn parse_certificate(der: &[u8]) -> Result<CertInfo, X509Error> {
    let mut outer = Reader {
        cur: Cursor::new(der, "certificate"),
    };
    let cert = outer.expect(SEQUENCE, "Certificate must be a SEQUENCE")?;
    let mut c = Reader::new(cert);
    let tbs = c.expect(SEQUENCE, "tbsCertificate must be a SEQUENCE")?;
    let mut t = Reader::new(tbs);
    if t.peek_tag() == Some(0xA0) {
        t.next()?; // [0] version
    }
    t.expect(0x02, "serialNumber must be an INTEGER")?;
    t.expect(SEQUENCE, "signature AlgorithmIdentifier expected")?;
    let issuer = t.expect(SEQUENCE, "issuer Name expected")?;
    let validity = t.expect(SEQUENCE, "validity expected")?;
    let subject = t.expect(SEQUENCE, "subject Name expected")?;
    t.expect(SEQUENCE, "subjectPublicKeyInfo expected")?;
    let mut v = Reader::new(validity);
    let not_before = parse_time(v.next()?)?;
    let not_after = parse_time(v.next()?)?;
    let (subject_text, subject_cn) = render_name(subject)?;
    let (issuer_text, _) = render_name(issuer)?;
    let mut info = CertInfo {
        subject: subject_text,
        issuer: issuer_text,
        subject_cn,
        subject_der: subject.content.to_vec(),
        issuer_der: issuer.content.to_vec(),
        not_before,
        not_after,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        is_ca: false,
    };
    while !t.at_end() {
        let el = t.next()?;
        if el.tag == 0xA3 {
            let mut wrapper = Reader::new(el);
            let exts = wrapper.expect(SEQUENCE, "extensions must be a SEQUENCE")?;
            parse_extensions(exts, &mut info)?;
        }
    }
    Ok(info)
}

fn parse_extensions(exts: Tlv<'_>, info: &mut CertInfo) -> Result<(), X509Error> {
    let mut r = Reader::new(exts);
    while !r.at_end() {
        let ext = r.expect(SEQUENCE, "Extension must be a SEQUENCE")?;
        let mut e = Reader::new(ext);
        let oid = e.expect(OID, "extnID must be an OID")?;
        if e.peek_tag() == Some(BOOLEAN) {
            e.next()?; // critical
        }
        let value = e.expect(OCTET_STRING, "extnValue must be an OCTET STRING")?;
        let mut inner = Reader::new(value);
        if oid.content == OID_SAN {
            let names = inner.expect(SEQUENCE, "subjectAltName must be a SEQUENCE")?;
            let mut n = Reader::new(names);
            while !n.at_end() {
                let gn = n.next()?;
                match gn.tag {
                    0x82 => info
                        .dns_names
                        .push(String::from_utf8_lossy(gn.content).into_owned()),
                    0x87 => match gn.content.len() {
                        4 => {
                            let b: [u8; 4] =
                                gn.content.try_into().map_err(|_| bad(gn.offset, "IP"))?;
                            info.ip_addresses.push(IpAddr::from(b));
                        }
                        16 => {
                            let b: [u8; 16] =
                                gn.content.try_into().map_err(|_| bad(gn.offset, "IP"))?;
                            info.ip_addresses.push(IpAddr::from(b));
                        }
                        _ => return Err(bad(gn.offset, "iPAddress must be 4 or 16 bytes")),
                    },
                    _ => {}
                }
            }
        } else if oid.content == OID_BASIC_CONSTRAINTS {
            let bc = inner.expect(SEQUENCE, "basicConstraints must be a SEQUENCE")?;
            let mut b = Reader::new(bc);
            if b.peek_tag() == Some(BOOLEAN) {
                let flag = b.next()?;
                info.is_ca = flag.content.first().is_some_and(|v| *v != 0);
            }
        }
    }
    Ok(())
}

/// Render a Name as `CN=a, O=b`, and return its first CN.
fn render_name(name: Tlv<'_>) -> Result<(String, Option<String>), X509Error> {
    let mut parts = Vec::new();
    let mut cn = None;
    let mut rdns = Reader::new(name);
    while !rdns.at_end() {
        let set = rdns.expect(SET, "RelativeDistinguishedName must be a SET")?;
        let mut atvs = Reader::new(set);
        while !atvs.at_end() {
            let atv = atvs.expect(SEQUENCE, "AttributeTypeAndValue must be a SEQUENCE")?;
            let mut a = Reader::new(atv);
            let oid = a.expect(OID, "attribute type must be an OID")?;
            let value = a.next()?;
            let text = decode_string(value)?;
            let key = match oid.content {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x0A] => "O".to_string(),
                [0x55, 0x04, 0x0B] => "OU".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                other => oid_text(other),
            };
            if key == "CN" && cn.is_none() {
                cn = Some(text.clone());
            }
            parts.push(format!("{key}={text}"));
        }
    }
    Ok((parts.join(", "), cn))
}

fn decode_string(t: Tlv<'_>) -> Result<String, X509Error> {
    match t.tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0C | 0x13 | 0x16 | 0x12 | 0x1A => Ok(String::from_utf8_lossy(t.content).into_owned()),
        // TeletexString: treat as Latin-1
        0x14 => Ok(t.content.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1E => {
            if !t.content.len().is_multiple_of(2) {
                return Err(bad(t.offset, "BMPString of odd length"));
            }
            let units: Vec<u16> = t
                .content
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Ok(String::from_utf16_lossy(&units))
        }
        _ => Ok(format!("#{}", hex::encode(t.content))),
    }
}

fn oid_text(bytes: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in bytes {
        acc = (acc << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
        if acc > (u64::MAX >> 8) {
            return format!("#{}", hex::encode(bytes));
        }
    }
    arcs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn digits(bytes: &[u8], offset: usize) -> Result<i64, X509Error> {
    bytes.iter().try_fold(0i64, |acc, b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + i64::from(b - b'0'))
        } else {
            Err(bad(offset, "time contains a non-digit"))
        }
    })
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn parse_time(t: Tlv<'_>) -> Result<UnixTime, X509Error> {
    let c = t.content;
    let (year, rest) = match (t.tag, c.len()) {
        (0x17, 13) => {
            let yy = digits(&c[..2], t.offset)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &c[2..])
        }
        (0x18, 15) => (digits(&c[..4], t.offset)?, &c[4..]),
        _ => {
            return Err(bad(
                t.offset,
                "validity time must be UTCTime or GeneralizedTime in Z form",
            ));
        }
    };
    if rest[10] != b'Z' {
        return Err(bad(t.offset, "validity time must end in Z"));
    }
    let field = |r: std::ops::Range<usize>| -> Result<u8, X509Error> {
        u8::try_from(digits(&rest[r], t.offset)?).map_err(|_| bad(t.offset, "time out of range"))
    };
    let (month, day) = (field(0..2)?, field(2..4)?);
    let (hour, minute, second) = (field(4..6)?, field(6..8)?, field(8..10)?);
    let out_of_range = || bad(t.offset, "validity time out of range");
    let year = i32::try_from(year).map_err(|_| out_of_range())?;
    let month = time::Month::try_from(month).map_err(|_| out_of_range())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| out_of_range())?;
    // A leap second (`60`, which UTCTime and GeneralizedTime can carry) is the next second.
    let clock = time::Time::from_hms(hour, minute, second.min(59)).map_err(|_| out_of_range())?;
    let unix = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    Ok(UnixTime(unix + i64::from(second == 60)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn make(
        sans: Vec<String>,
        cn: &str,
        ca: bool,
        nb: (i32, u8, u8),
        na: (i32, u8, u8),
    ) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Godwit Test");
        p.not_before = rcgen::date_time_ymd(nb.0, nb.1, nb.2);
        p.not_after = rcgen::date_time_ymd(na.0, na.1, na.2);
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn rcgen_certificate_round_trips() {
        let der = make(
            vec!["vc1.lab.test".into(), "127.0.0.1".into(), "::1".into()],
            "vc1.lab.test",
            false,
            (2020, 1, 2),
            (2049, 12, 31),
        );
        let c = parse_certificate(&der).unwrap();
        assert_eq!(c.subject_cn.as_deref(), Some("vc1.lab.test"));
        assert_eq!(c.subject, "CN=vc1.lab.test, O=Godwit Test");
        assert!(c.is_self_issued());
        assert_eq!(c.dns_names, ["vc1.lab.test"]);
        assert_eq!(
            c.ip_addresses,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.not_before.to_utc_string(), "2020-01-02 00:00:00 UTC");
        assert_eq!(c.not_after.to_utc_string(), "2049-12-31 00:00:00 UTC");
        assert!(!c.is_ca);
        // GeneralizedTime for years from 2050.
        let ca = make(vec![], "Lab CA", true, (1999, 3, 4), (2051, 6, 7));
        let c = parse_certificate(&ca).unwrap();
        assert!(c.is_ca);
        assert_eq!(c.not_before.to_utc_string(), "1999-03-04 00:00:00 UTC");
        assert_eq!(c.not_after.to_utc_string(), "2051-06-07 00:00:00 UTC");
    }

    #[test]
    fn utc_strings() {
        assert_eq!(UnixTime(0).to_utc_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            UnixTime(951_782_400).to_utc_string(),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(UnixTime(-1).to_utc_string(), "1969-12-31 23:59:59 UTC");
        assert_eq!(
            UnixTime(i64::MAX).to_utc_string(),
            format!("{} s from the Unix epoch", i64::MAX)
        );
    }

    #[test]
    fn errors_carry_offsets() {
        assert_eq!(
            parse_certificate(&[0x02, 0x01, 0x00]),
            Err(X509Error::Malformed {
                offset: 0,
                what: "Certificate must be a SEQUENCE"
            })
        );
        assert!(matches!(
            parse_certificate(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(X509Error::Malformed { .. })
        ));
        assert!(parse_certificate(&[]).is_err());
    }

    proptest! {
        #[test]
        fn truncated_or_mutated_never_panics(cut in 0usize..600, pos in 0usize..600, byte: u8) {
            let der = make(vec!["a.test".into()], "a.test", false, (2020, 1, 1), (2030, 1, 1));
            let mut m = der.clone();
            if let Some(b) = m.get_mut(pos) { *b = byte; }
            let _ = parse_certificate(&m);
            let _ = parse_certificate(&der[..cut.min(der.len())]);
        }
    }
}
