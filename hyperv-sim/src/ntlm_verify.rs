//! The simulator's own check of an NTLMv2 AUTHENTICATE (MS-NLMP 3.3.2), pure over bytes.
//!
//! Why: sspi 0.23's server proves the password only through the MIC. A client that sends no
//! MIC (Go's Azure/go-ntlmssp, used by the masterzen WinRM client) was accepted with ANY
//! password. A real Windows host checks the NTLMv2 response itself, so the simulator does too:
//! NTProofStr = HMAC-MD5(NTOWFv2, ServerChallenge ‖ blob) must equal the first 16 bytes of the
//! NtChallengeResponse, with NTOWFv2 = HMAC-MD5(MD4(UTF-16LE(password)),
//! UTF-16LE(UPPER(user) ‖ domain)) for the user and domain the message names.

use hmac::{Hmac, KeyInit, Mac};
use md4::{Digest, Md4};

type HmacMd5 = Hmac<md5::Md5>;

/// Why an AUTHENTICATE was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("NTLM {what}: malformed ({detail})")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
    #[error("NTLM: user {0:?} is not the account this host knows")]
    UnknownUser(String),
    #[error("NTLM: the NTLMv2 response does not match the password")]
    WrongPassword,
    #[error("NTLM: only NTLMv2 responses are accepted")]
    NotV2,
}

fn bad(what: &'static str, detail: &'static str) -> VerifyError {
    VerifyError::Malformed { what, detail }
}

/// The 8-byte server challenge of a CHALLENGE message.
pub fn server_challenge(challenge: &[u8]) -> Result<[u8; 8], VerifyError> {
    if !challenge.starts_with(b"NTLMSSP\0") || challenge.get(8) != Some(&2) {
        return Err(bad("CHALLENGE", "not a type 2 message"));
    }
    challenge
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("CHALLENGE", "shorter than 32 bytes"))
}

/// A (length, offset) field of a message, bounds-checked.
fn field<'a>(msg: &'a [u8], at: usize, what: &'static str) -> Result<&'a [u8], VerifyError> {
    let hdr = msg
        .get(at..at + 8)
        .ok_or_else(|| bad(what, "header cut short"))?;
    let len = usize::from(u16::from_le_bytes([hdr[0], hdr[1]]));
    let off = usize::try_from(u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]))
        .map_err(|_| bad(what, "offset out of range"))?;
    off.checked_add(len)
        .and_then(|end| msg.get(off..end))
        .ok_or_else(|| bad(what, "field points past the message"))
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16le(b: &[u8], what: &'static str) -> Result<String, VerifyError> {
    if !b.len().is_multiple_of(2) {
        return Err(bad(what, "odd UTF-16 length"));
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| bad(what, "not UTF-16"))
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <HmacMd5 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// NTOWFv2 of MS-NLMP 3.3.2.
pub fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash = Md4::digest(utf16le(password));
    hmac_md5(
        &nt_hash,
        &[&utf16le(&user.to_uppercase()), &utf16le(domain)],
    )
}

/// Check an AUTHENTICATE (type 3, Unicode) against the account `user` / `password` and the
/// server challenge that was sent. User names compare case-insensitively, as Windows does.
pub fn verify_authenticate(
    auth: &[u8],
    server_challenge: &[u8; 8],
    user: &str,
    password: &str,
) -> Result<(), VerifyError> {
    if !auth.starts_with(b"NTLMSSP\0") || auth.get(8) != Some(&3) {
        return Err(bad("AUTHENTICATE", "not a type 3 message"));
    }
    let nt = field(auth, 20, "AUTHENTICATE NtChallengeResponse")?;
    let domain = from_utf16le(field(auth, 28, "AUTHENTICATE DomainName")?, "DomainName")?;
    let wire_user = from_utf16le(field(auth, 36, "AUTHENTICATE UserName")?, "UserName")?;
    // The account may be configured as `DOMAIN\user` or `user@domain` (a domain account): the
    // message carries the user and the domain apart.
    let (want_domain, want_user) = match (user.split_once('\\'), user.split_once('@')) {
        (Some((d, u)), _) => (Some(d), u),
        (None, Some((u, d))) => (Some(d), u),
        _ => (None, user),
    };
    let domain_ok = want_domain.is_none_or(|d| {
        d.eq_ignore_ascii_case(&domain)
            || d.split('.')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(&domain))
    });
    if !wire_user.eq_ignore_ascii_case(want_user) || !domain_ok {
        return Err(VerifyError::UnknownUser(wire_user));
    }
    // An NTLMv2 response: 16-byte proof, then the blob (at least 28 bytes).
    if nt.len() < 16 + 28 {
        return Err(VerifyError::NotV2);
    }
    let (proof, blob) = nt.split_at(16);
    let key = ntowf_v2(password, &wire_user, &domain);
    let want = hmac_md5(&key, &[server_challenge, blob]);
    if want.as_slice() == proof {
        Ok(())
    } else {
        Err(VerifyError::WrongPassword)
    }
}

/// Build an AUTHENTICATE carrying an NTLMv2 response for `password` (tests and fuzz seeds).
pub fn encode_authenticate(
    server_challenge: &[u8; 8],
    user: &str,
    domain: &str,
    password: &str,
    blob: &[u8],
) -> Vec<u8> {
    let key = ntowf_v2(password, user, domain);
    let mut nt = hmac_md5(&key, &[server_challenge, blob]).to_vec();
    nt.extend_from_slice(blob);
    let (d, u) = (utf16le(domain), utf16le(user));
    let mut msg = b"NTLMSSP\0\x03\0\0\0".to_vec();
    let mut payload = Vec::new();
    let base = 64usize;
    let mut put = |msg: &mut Vec<u8>, data: &[u8]| {
        let off = base + payload.len();
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&u32::try_from(off).unwrap_or(u32::MAX).to_le_bytes());
        payload.extend_from_slice(data);
    };
    put(&mut msg, &[]); // LmChallengeResponse
    put(&mut msg, &nt);
    put(&mut msg, &d);
    put(&mut msg, &u);
    put(&mut msg, &[]); // Workstation
    put(&mut msg, &[]); // EncryptedRandomSessionKey
    msg.extend_from_slice(&0x0000_0001u32.to_le_bytes()); // NegotiateFlags: UNICODE
    msg.extend_from_slice(&payload);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CH: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const BLOB: [u8; 32] = [0x01; 32];

    /// MS-NLMP 4.2.4.1.1: NTOWFv2("Password", "User", "Domain").
    #[test]
    fn ntowf_v2_matches_the_published_example() {
        assert_eq!(
            hex::encode(ntowf_v2("Password", "User", "Domain")),
            "0c868a403bfd7a93a3001ef22ef02e3f"
        );
    }

    #[test]
    fn right_password_passes_wrong_one_and_other_user_fail() {
        let m = encode_authenticate(&CH, "Administrator", "", "S3cret", &BLOB);
        assert_eq!(
            verify_authenticate(&m, &CH, "administrator", "S3cret"),
            Ok(())
        );
        assert_eq!(
            verify_authenticate(&m, &CH, "Administrator", "nope"),
            Err(VerifyError::WrongPassword)
        );
        assert_eq!(
            verify_authenticate(&m, &[0; 8], "Administrator", "S3cret"),
            Err(VerifyError::WrongPassword),
            "a response to another challenge (replay) fails"
        );
        assert!(matches!(
            verify_authenticate(&m, &CH, "Guest", "S3cret"),
            Err(VerifyError::UnknownUser(_))
        ));
        let short = encode_authenticate(&CH, "Administrator", "", "S3cret", &[1; 4]);
        assert_eq!(
            verify_authenticate(&short, &CH, "Administrator", "S3cret"),
            Err(VerifyError::NotV2)
        );
    }

    #[test]
    fn server_challenge_is_read_from_a_challenge() {
        let mut c = b"NTLMSSP\0\x02\0\0\0".to_vec();
        c.resize(24, 0);
        c.extend_from_slice(&CH);
        assert_eq!(server_challenge(&c), Ok(CH));
        assert!(server_challenge(&c[..30]).is_err());
        assert!(server_challenge(b"NTLMSSP\0\x01\0\0\0").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(user in "[A-Za-z]{1,12}", domain in "[A-Z]{0,8}", pw in "\\PC{0,16}",
                       blob in proptest::collection::vec(any::<u8>(), 28..64)) {
            let m = encode_authenticate(&CH, &user, &domain, &pw, &blob);
            prop_assert_eq!(verify_authenticate(&m, &CH, &user, &pw), Ok(()));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = verify_authenticate(&bytes, &CH, "Administrator", "pw");
            let _ = server_challenge(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_messages(at in 0usize..200, byte in any::<u8>()) {
            let mut m = encode_authenticate(&CH, "Administrator", "", "pw", &BLOB);
            if at < m.len() { m[at] = byte; }
            let _ = verify_authenticate(&m, &CH, "Administrator", "pw");
        }
    }
}
