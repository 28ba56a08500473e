//! The admin password (argon2id, default parameters: 19 MiB, 2 passes) and the one-time setup
//! code that unlocks the first password step when no password was preset. The password policy
//! itself is the web contract's `AdminPassword` (shared with the web layer's test double).
//!
//! Every hash and check runs on the [`HashPool`]: at most [`HASH_SLOTS`] at once, so a burst
//! of logins costs at most `HASH_SLOTS × 19 MiB`, whatever gets past the login limiter.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::time::Duration;

/// Password hashes computed at once (each takes 19 MiB and tens of milliseconds of a core).
pub const HASH_SLOTS: usize = 2;
/// How long a login waits for a hash slot before it is answered "busy" (429).
pub const LOGIN_WAIT: Duration = Duration::from_secs(2);
/// How long a password change waits for a hash slot.
pub const CHANGE_WAIT: Duration = Duration::from_secs(30);

/// The bounded pool every argon2 computation of the service runs on.
pub struct HashPool {
    slots: tokio::sync::Semaphore,
}

impl Default for HashPool {
    fn default() -> Self {
        HashPool {
            slots: tokio::sync::Semaphore::new(HASH_SLOTS),
        }
    }
}

impl HashPool {
    /// Run `f` (a hash or a check) on a blocking thread once a slot is free; `None` when no
    /// slot came free within `wait`, or the task failed.
    pub async fn run<T: Send + 'static>(
        &self,
        wait: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = tokio::time::timeout(wait, self.slots.acquire())
            .await
            .ok()?
            .ok()?;
        let r = tokio::task::spawn_blocking(f).await.ok();
        drop(permit);
        r
    }
}

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_pool_runs_at_most_two_at_once_and_says_busy_after_the_wait() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Arc::new(HashPool::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(Duration::from_millis(150), move || {
                    let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(most.load(Ordering::SeqCst), HASH_SLOTS);
        // 100 ms each, two at a time, 150 ms of patience: some ran, the rest were told busy.
        assert!((2..8).contains(&done), "{done} ran");
    }
}
