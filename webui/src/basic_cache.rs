//! A short memory of successful HTTP Basic verifications, so that an API poller sending Basic
//! credentials on every request does not cost an Argon2 check (tens to hundreds of
//! milliseconds of CPU) per request.
//!
//! - Keyed: an entry is the HMAC-SHA256 of the password under a key drawn at start-up and kept
//!   only in memory, never the password or a plain hash of it (a memory dump gives no offline
//!   guessing target without the key, and the tag is useless in another process).
//! - Only successes are remembered: a wrong password is always checked (and counted by the
//!   login limiter), so the cache gives a guesser nothing.
//! - Short-lived: an entry holds for [`TTL_MS`] from the verification it remembers, then the next
//!   request verifies again.
//! - Bounded: at most [`CAPACITY`] entries; when full, the oldest is dropped.
//! - Invalidated by a password change: an entry counts only while a login made at its
//!   verification time would still hold ([`crate::session_store::BoundedMemoryStore::login_valid`],
//!   which a password change moves past every earlier login), and the change also clears it.

use crate::backend::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a successful verification is remembered.
pub(crate) const TTL_MS: i64 = 60_000;
/// Most entries kept (distinct passwords verified within [`TTL_MS`]: normally one).
pub(crate) const CAPACITY: usize = 16;

pub(crate) struct BasicCache {
    key: [u8; 32],
    /// Tag of the password -> when it was verified (ms since the epoch).
    entries: Mutex<HashMap<[u8; 32], i64>>,
}

impl Default for BasicCache {
    fn default() -> Self {
        BasicCache {
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of `msg` under a 32-byte key.
fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

impl BasicCache {
    fn tag(&self, password: &Secret) -> [u8; 32] {
        hmac_sha256(&self.key, password.expose().as_bytes())
    }

    /// Whether `password` was verified within [`TTL_MS`] (as of `now_ms`) and `still_valid` holds
    /// for the time it was verified at (no password change since).
    pub(crate) fn hit(
        &self,
        password: &Secret,
        now_ms: i64,
        still_valid: impl Fn(i64) -> bool,
    ) -> bool {
        let tag = self.tag(password);
        let Ok(mut m) = self.entries.lock() else {
            return false;
        };
        match m.get(&tag) {
            Some(&at) if now_ms.saturating_sub(at) < TTL_MS && at <= now_ms && still_valid(at) => {
                true
            }
            Some(_) => {
                m.remove(&tag);
                false
            }
            None => false,
        }
    }

    /// Remember that `password` was verified correct at `now_ms`.
    pub(crate) fn remember(&self, password: &Secret, now_ms: i64) {
        let tag = self.tag(password);
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        m.retain(|_, at| now_ms.saturating_sub(*at) < TTL_MS);
        if m.len() >= CAPACITY
            && !m.contains_key(&tag)
            && let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(tag, now_ms);
    }

    /// Forget every verification (the password changed).
    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Secret {
        Secret::new(x)
    }

    #[test]
    fn hmac_matches_rfc4231_style_vector() {
        // HMAC-SHA256 with a 32-byte key of 0x0b and "Hi There" (checked with
        // `openssl dgst -sha256 -mac HMAC -macopt hexkey:0b...0b`).
        let tag = hmac_sha256(&[0x0b; 32], b"Hi There");
        assert_eq!(
            hex::encode(tag),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn remembers_for_the_ttl_only_and_only_while_valid() {
        let c = BasicCache::default();
        assert!(!c.hit(&s("pw"), 1_000, |_| true));
        c.remember(&s("pw"), 1_000);
        assert!(c.hit(&s("pw"), 1_000 + TTL_MS - 1, |_| true));
        assert!(!c.hit(&s("other"), 1_001, |_| true));
        // A password change after the verification: not a hit, and forgotten.
        assert!(!c.hit(&s("pw"), 2_000, |at| at >= 1_500));
        assert!(!c.hit(&s("pw"), 2_000, |_| true));
        c.remember(&s("pw"), 3_000);
        assert!(!c.hit(&s("pw"), 3_000 + TTL_MS, |_| true));
        c.remember(&s("pw"), 4_000);
        c.clear();
        assert!(!c.hit(&s("pw"), 4_001, |_| true));
    }

    #[test]
    fn bounded() {
        let c = BasicCache::default();
        for i in 0..(CAPACITY * 3) {
            c.remember(
                &s(&format!("pw{i}")),
                10_000 + i64::try_from(i).unwrap_or(0),
            );
        }
        assert_eq!(c.len(), CAPACITY);
        // The newest are kept, the oldest dropped.
        assert!(c.hit(&s(&format!("pw{}", CAPACITY * 3 - 1)), 20_000, |_| true));
        assert!(!c.hit(&s("pw0"), 20_000, |_| true));
    }
}
