//! The admin password policy, as a validated type both sides of [`crate::backend`] use: the
//! service (`godwit serve`) and the web layer's test double build an [`AdminPassword`] from
//! what was typed, so they refuse the same passwords with the same message.
//!
//! A password is accepted when it
//! - is [`MIN_CHARS`] to [`MAX_CHARS`] characters long, without leading or trailing spaces or
//!   control characters, and
//! - is not easy to guess by zxcvbn's estimate (the `zxcvbn` crate, Dropbox's estimator): at
//!   least 10^8 guesses ([`MIN_SCORE`] = 3). zxcvbn matches the password against its list of
//!   the 30,000 passwords most common in public breaches (so `Password123!` or `qwertyuiop12` are
//!   refused as common), English words, names, keyboard rows, repeats, sequences and dates, and
//!   against this appliance's own words (`godwit`, `admin`, ...). Its warning and suggestion
//!   are the refusal's message.

use crate::backend::Secret;

/// Shortest password accepted.
pub const MIN_CHARS: usize = 12;
/// Longest password accepted (the hash input and zxcvbn's work stay bounded).
pub const MAX_CHARS: usize = 128;
/// zxcvbn score required: 3 = at least 10^8 guesses.
pub const MIN_SCORE: zxcvbn::Score = zxcvbn::Score::Three;

/// Words an attacker would try first on this appliance (zxcvbn's user inputs).
const CONTEXT_WORDS: &[&str] = &[
    "godwit",
    "admin",
    "administrator",
    "appliance",
    "connector",
    "migration",
    "staging",
    "vsphere",
    "hyperv",
];

/// What the forms show next to the field before anything is typed.
pub const REQUIREMENTS: &str = "12 to 128 characters, not a common or easily guessed password: \
                                a few unrelated words work well";

/// Why a password was refused; its text is what the field error shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WeakPassword(String);

impl WeakPassword {
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// An admin password that passed the policy. Holds the secret; `Debug` is redacted.
#[derive(Debug, Clone)]
pub struct AdminPassword(Secret);

impl AdminPassword {
    /// The password itself, for hashing.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl TryFrom<Secret> for AdminPassword {
    type Error = WeakPassword;

    fn try_from(s: Secret) -> Result<Self, WeakPassword> {
        check(s.expose())?;
        Ok(AdminPassword(s))
    }
}

impl TryFrom<String> for AdminPassword {
    type Error = WeakPassword;

    fn try_from(s: String) -> Result<Self, WeakPassword> {
        AdminPassword::try_from(Secret::new(s))
    }
}

impl TryFrom<&str> for AdminPassword {
    type Error = WeakPassword;

    fn try_from(s: &str) -> Result<Self, WeakPassword> {
        AdminPassword::try_from(Secret::new(s))
    }
}

fn check(p: &str) -> Result<(), WeakPassword> {
    let n = p.chars().count();
    if n < MIN_CHARS {
        return Err(WeakPassword(format!(
            "use at least {MIN_CHARS} characters (a few unrelated words work well)"
        )));
    }
    if n > MAX_CHARS {
        return Err(WeakPassword(format!("use at most {MAX_CHARS} characters")));
    }
    if p.trim() != p {
        return Err(WeakPassword("no leading or trailing spaces".into()));
    }
    if p.chars().any(char::is_control) {
        return Err(WeakPassword("no control characters".into()));
    }
    let estimate = zxcvbn::zxcvbn(p, CONTEXT_WORDS);
    if estimate.score() < MIN_SCORE {
        let mut msg = String::from("too easy to guess");
        if let Some(f) = estimate.feedback() {
            if let Some(w) = f.warning() {
                msg.push_str(&format!(": {w}"));
            } else {
                msg.push('.');
            }
            for s in f.suggestions() {
                msg.push_str(&format!(" {s}"));
            }
        } else {
            msg.push_str(". Add another word or two; uncommon words are better.");
        }
        return Err(WeakPassword(msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &str) -> String {
        AdminPassword::try_from(p)
            .map(|_| ())
            .expect_err(p)
            .message()
            .to_owned()
    }

    #[test]
    fn short_long_spaced_and_control_passwords_are_refused() {
        assert!(refused("short").contains("at least 12"));
        assert!(refused(&"x".repeat(MAX_CHARS + 1)).contains("at most 128"));
        assert!(refused(" tangerine-orbit-cello").contains("spaces"));
        assert!(refused("tangerine-orbit-cello\u{7}").contains("control"));
    }

    #[test]
    fn common_and_guessable_passwords_are_refused_with_the_reason() {
        // The example, breached favourites, keyboard rows, the appliance's own name.
        assert!(refused("aaaaaaaaaa").contains("at least"));
        for p in [
            "aaaaaaaaaaaa",
            "password1234",
            "Password123!",
            "qwertyuiop12",
            "123456789012",
            "godwitgodwit",
            "administrator1",
            "iloveyou2024",
        ] {
            let m = refused(p);
            assert!(m.starts_with("too easy to guess"), "{p}: {m}");
        }
        assert!(refused("password1234").contains("common"), "names why");
    }

    #[test]
    fn strong_passwords_are_accepted() {
        for p in [
            "correct-horse-battery",
            "tangerine-orbit-cello",
            "browser-admin-password-1",
            "browser-tangerine-orbit",
            "Kx9#mQ2$vL7!pR4",
            "purple elephants juggle quietly",
        ] {
            assert!(AdminPassword::try_from(p).is_ok(), "{p} refused");
        }
        let ok = AdminPassword::try_from("tangerine-orbit-cello").unwrap();
        assert_eq!(ok.expose(), "tangerine-orbit-cello");
        assert!(!format!("{ok:?}").contains("tangerine"));
    }
}
