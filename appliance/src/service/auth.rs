//! The admin password (argon2id, default parameters: 19 MiB, 2 passes) and the one-time setup
//! code that unlocks the first password step when no password was preset.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Shortest admin password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Setup-code alphabet: no 0/O, 1/I/L look-alikes.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// An argon2id PHC string for `secret` with a random salt.
pub fn hash(secret: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing: {e}"))
}

/// Whether `secret` matches the PHC string (false on a malformed hash).
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A fresh setup code, `XXXX-XXXX-XXXX-XXXX` (16 symbols of 31: ~79 bits).
pub fn new_setup_code() -> String {
    let mut out = String::with_capacity(19);
    for i in 0..16 {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        let n = rand::random_range(0..CODE_ALPHABET.len());
        out.push(char::from(CODE_ALPHABET[n]));
    }
    out
}

/// What the operator typed, made comparable with the printed code (case, spaces, dashes).
pub fn normalise_code(s: &str) -> String {
    let c: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    c.as_bytes()
        .chunks(4)
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Password policy; `None` when acceptable.
pub fn password_problem(p: &str) -> Option<String> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Some(format!("use at least {MIN_PASSWORD_LEN} characters"));
    }
    if p.trim() != p {
        return Some("no leading or trailing spaces".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_secret() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterx", &h));
        assert!(!verify("correct horse battery", "not a hash"));
    }

    #[test]
    fn setup_codes_are_random_and_normalise() {
        let a = new_setup_code();
        assert_eq!(a.len(), 19);
        assert_ne!(a, new_setup_code());
        assert_eq!(normalise_code(&a.to_lowercase().replace('-', " ")), a);
    }

    #[test]
    fn password_policy() {
        assert!(password_problem("short").is_some());
        assert!(password_problem(" leading-space-pw").is_some());
        assert!(password_problem("long enough pw").is_none());
    }
}
