//! Login rate limiting: per client and per account, counted before the password is checked.
//!
//! Every password check (form or JSON login, HTTP Basic, the setup code, the current password
//! of a change) first takes an [`Attempt`] from [`LoginLimiter::begin`], which counts it as a
//! failure at once; only a correct password takes it back ([`Attempt::succeeded`]). So a burst
//! of simultaneous guesses is cut at the limit before any hash runs, not after.
//!
//! - **Per client**: at most `max_failures` failures (in flight included) per minute. A client
//!   that reaches the limit is locked out for a minute, then 2, 4, 8, up to
//!   [`MAX_CLIENT_LOCKOUT`] when it goes on (exponential back-off; forgotten after an hour
//!   without failures or after a correct password). A client is its IP address (IPv6: its
//!   /64, what one host usually has) — or, for a browser that logged in correctly before, its
//!   *device cookie* ([`DEVICE_COOKIE`], OWASP's "device cookies"): an attacker who shares the
//!   admin's address (NAT, proxy) cannot lock the admin's browser out.
//! - **Per account** (the one admin account): after [`ACCOUNT_FREE_FAILURES`] failures within
//!   [`ACCOUNT_WINDOW`] from anywhere, each further attempt must wait 1 s, 2 s, 4 s ... at most
//!   [`MAX_ACCOUNT_DELAY`] after the previous one, so guessing from many addresses is slowed
//!   just as much. Device-cookie clients are exempt: the admin's known browser never waits for
//!   the attacker, and any other client waits at most [`MAX_ACCOUNT_DELAY`] — never forever.

use sha2::Digest as _;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Cookie naming a browser that logged in correctly before.
pub const DEVICE_COOKIE: &str = "godwit_device";
/// The longest a client is locked out at once.
pub const MAX_CLIENT_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Account-wide failures allowed within [`ACCOUNT_WINDOW`] before attempts are spaced out.
pub const ACCOUNT_FREE_FAILURES: usize = 5;
/// Window of the account-wide count.
pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest wait the account back-off imposes between two attempts.
pub const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(60);
/// Clients tracked at most; beyond, new clients are refused (fail closed) until some expire.
const MAX_TRACKED_CLIENTS: usize = 100_000;
/// Device cookies remembered at most (oldest forgotten first).
const MAX_DEVICES: usize = 1000;
/// A client's lockout count is forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Who an attempt is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// An IPv4 address, or an IPv6 address with its last 64 bits cleared.
    Addr(IpAddr),
    /// SHA-256 of a device cookie the limiter issued at a correct login.
    Device([u8; 32]),
}

impl ClientKey {
    pub(crate) fn addr(ip: IpAddr) -> ClientKey {
        ClientKey::Addr(match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut o = v6.octets();
                    o[8..].fill(0);
                    IpAddr::V6(o.into())
                }
            },
        })
    }

    fn is_device(&self) -> bool {
        matches!(self, ClientKey::Device(_))
    }
}

#[derive(Default)]
struct Bucket {
    /// Failures (and attempts in flight) within the window, oldest first.
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    /// Lockouts so far (the next one lasts `window * 2^lockouts`).
    lockouts: u32,
    last_failure: Option<Instant>,
}

#[derive(Default)]
struct Account {
    failures: VecDeque<Instant>,
    /// When the last attempt counted here started.
    last_attempt: Option<Instant>,
}

#[derive(Default)]
struct State {
    clients: HashMap<ClientKey, Bucket>,
    account: Account,
    devices: HashSet<[u8; 32]>,
    device_order: VecDeque<[u8; 32]>,
}

/// See the module docs.
pub(crate) struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    state: Mutex<State>,
}

/// One counted password check; see [`LoginLimiter::begin`]. Dropped without an outcome it
/// stays counted as a failure.
pub(crate) struct Attempt {
    limiter: Arc<LoginLimiter>,
    key: ClientKey,
    at: Instant,
    counts_for_account: bool,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("key", &self.key)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl Attempt {
    /// The password was right: the attempt is taken back, the client's and the account's
    /// failures are forgotten.
    pub(crate) fn succeeded(self) {
        let mut st = self.limiter.lock();
        st.clients.remove(&self.key);
        st.account.failures.clear();
    }

    /// The password was wrong: it stays counted.
    pub(crate) fn failed(self) {}

    /// Nothing was checked (the backend was busy, or the request had no password to check):
    /// the attempt is taken back.
    pub(crate) fn abandoned(self) {
        let mut st = self.limiter.lock();
        if let Some(b) = st.clients.get_mut(&self.key)
            && let Some(i) = b.failures.iter().rposition(|t| *t == self.at)
        {
            b.failures.remove(i);
        }
        if self.counts_for_account
            && let Some(i) = st.account.failures.iter().rposition(|t| *t == self.at)
        {
            st.account.failures.remove(i);
        }
    }
}

impl LoginLimiter {
    pub(crate) fn new(max_failures_per_minute: u32) -> Self {
        LoginLimiter {
            max_failures: usize::try_from(max_failures_per_minute.max(1)).unwrap_or(usize::MAX),
            window: Duration::from_secs(60),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key to count a request from `ip` against: its device cookie's when that is one
    /// this limiter issued, else its address.
    pub(crate) fn client_key(&self, ip: IpAddr, device_cookie: Option<&str>) -> ClientKey {
        if let Some(c) = device_cookie {
            let h: [u8; 32] = sha2::Sha256::digest(c.as_bytes()).into();
            if self.lock().devices.contains(&h) {
                return ClientKey::Device(h);
            }
        }
        ClientKey::addr(ip)
    }

    /// A fresh device cookie value for a browser that just logged in correctly.
    pub(crate) fn issue_device(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let token = hex::encode(bytes);
        let h: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut st = self.lock();
        if st.devices.insert(h) {
            st.device_order.push_back(h);
        }
        while st.device_order.len() > MAX_DEVICES {
            if let Some(old) = st.device_order.pop_front() {
                st.devices.remove(&old);
            }
        }
        token
    }

    /// Forget every device cookie (the password changed: whoever knew the old one is a
    /// stranger again).
    pub(crate) fn forget_devices(&self) {
        let mut st = self.lock();
        st.devices.clear();
        st.device_order.clear();
    }

    /// Count an attempt for `key` now, before the password is checked; `Err(retry_after)` when
    /// the client or the account must wait.
    pub(crate) fn begin(self: &Arc<Self>, key: ClientKey) -> Result<Attempt, Duration> {
        self.begin_at(key, Instant::now())
    }

    pub(crate) fn begin_at(
        self: &Arc<Self>,
        key: ClientKey,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let mut st = self.lock();
        let st = &mut *st;
        if !st.clients.contains_key(&key) && st.clients.len() >= MAX_TRACKED_CLIENTS {
            let window = self.window;
            st.clients.retain(|_, b| {
                b.locked_until.is_some_and(|t| t > now)
                    || b.last_failure
                        .is_some_and(|t| now.duration_since(t) < window.max(FORGET_AFTER))
            });
            if st.clients.len() >= MAX_TRACKED_CLIENTS {
                return Err(self.window);
            }
        }
        let bucket = st.clients.entry(key).or_default();
        while bucket
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            bucket.failures.pop_front();
        }
        if bucket
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= FORGET_AFTER)
        {
            bucket.lockouts = 0;
        }
        if let Some(until) = bucket.locked_until {
            if until > now {
                return Err(until - now);
            }
            bucket.locked_until = None;
        }
        if bucket.failures.len() >= self.max_failures {
            // Only attempts in flight fill the window: they end within moments.
            return Err(Duration::from_secs(1));
        }
        let counts_for_account = !key.is_device();
        if counts_for_account {
            let acct = &mut st.account;
            while acct
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) >= ACCOUNT_WINDOW)
            {
                acct.failures.pop_front();
            }
            if let Some(wait) = account_delay(acct.failures.len())
                && let Some(last) = acct.last_attempt
            {
                let ready = last + wait;
                if ready > now {
                    return Err(ready - now);
                }
            }
            acct.failures.push_back(now);
            acct.last_attempt = Some(now);
            // Bounded: only the count within the window matters, and it saturates the delay.
            while acct.failures.len() > ACCOUNT_FREE_FAILURES + 64 {
                acct.failures.pop_front();
            }
        }
        let bucket = st.clients.entry(key).or_default();
        bucket.failures.push_back(now);
        bucket.last_failure = Some(now);
        if bucket.failures.len() >= self.max_failures {
            let factor = 1u32 << bucket.lockouts.min(10);
            let lockout = (self.window * factor).min(MAX_CLIENT_LOCKOUT);
            bucket.locked_until = Some(now + lockout);
            bucket.lockouts = bucket.lockouts.saturating_add(1);
        }
        Ok(Attempt {
            limiter: Arc::clone(self),
            key,
            at: now,
            counts_for_account,
        })
    }
}

/// The wait the account back-off imposes after `failures` recent failures.
fn account_delay(failures: usize) -> Option<Duration> {
    let over = failures.checked_sub(ACCOUNT_FREE_FAILURES)?;
    let secs = 1u64 << over.min(16);
    Some(Duration::from_secs(secs).min(MAX_ACCOUNT_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        ClientKey::addr(s.parse().unwrap())
    }

    #[test]
    fn attempts_in_flight_count_before_any_outcome() {
        let l = Arc::new(LoginLimiter::new(5));
        let now = Instant::now();
        // 100 simultaneous attempts from one address: 5 get through to the password check.
        let held: Vec<_> = (0..100)
            .filter_map(|_| l.begin_at(ip("192.0.2.1"), now).ok())
            .collect();
        assert_eq!(held.len(), 5);
        for a in held {
            a.failed();
        }
        assert!(l.begin_at(ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn a_correct_password_takes_the_attempt_back() {
        let l = Arc::new(LoginLimiter::new(3));
        let now = Instant::now();
        for _ in 0..10 {
            l.begin_at(ip("192.0.2.1"), now).unwrap().succeeded();
        }
        let a = l.begin_at(ip("192.0.2.1"), now).unwrap();
        a.abandoned();
        assert!(l.begin_at(ip("192.0.2.1"), now).is_ok());
    }

    #[test]
    fn lockouts_grow_exponentially_and_are_bounded() {
        let l = Arc::new(LoginLimiter::new(2));
        let mut now = Instant::now();
        // A device key: the account back-off (tested below) stays out of the way.
        let key = ClientKey::Device([7; 32]);
        let mut lockouts = Vec::new();
        for _ in 0..6 {
            let mut wait = None;
            for _ in 0..3 {
                match l.begin_at(key, now) {
                    Ok(a) => a.failed(),
                    Err(w) => {
                        wait = Some(w);
                        break;
                    }
                }
            }
            let w = wait.expect("locked out");
            lockouts.push(w.as_secs());
            now += w;
        }
        assert_eq!(lockouts, vec![60, 120, 240, 480, 900, 900]);
        // An hour without failures forgets the lockout count.
        now += FORGET_AFTER;
        l.begin_at(key, now).unwrap().failed();
        l.begin_at(key, now).unwrap().failed();
        assert_eq!(l.begin_at(key, now).unwrap_err().as_secs(), 60);
    }

    #[test]
    fn ipv6_clients_are_their_64() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
    }

    #[test]
    fn many_addresses_are_slowed_by_the_account_back_off_but_never_forever() {
        let l = Arc::new(LoginLimiter::new(5));
        let mut now = Instant::now();
        // 100 simultaneous guesses from 100 addresses: the account lets 5 through, then one
        // per back-off step.
        let through = (0..100u8)
            .filter_map(|i| l.begin_at(ip(&format!("198.51.100.{i}")), now).ok())
            .map(Attempt::failed)
            .count();
        assert_eq!(through, ACCOUNT_FREE_FAILURES);
        // The attacker keeps going from fresh addresses: the wait grows to its cap and no
        // further.
        let mut waits = Vec::new();
        for i in 0..10u8 {
            let w = l
                .begin_at(ip(&format!("203.0.113.{i}")), now)
                .expect_err("waits");
            waits.push(w.as_secs());
            now += w;
            l.begin_at(ip(&format!("203.0.113.{i}")), now)
                .unwrap()
                .failed();
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // The admin from yet another address gets a turn within the cap ...
        let admin = ip("192.0.2.99");
        let w = l.begin_at(admin, now).expect_err("waits its turn");
        assert!(w <= MAX_ACCOUNT_DELAY);
        now += w;
        l.begin_at(admin, now).unwrap().succeeded();
        // ... and a correct password resets the account's count.
        assert!(l.begin_at(ip("192.0.2.100"), now).is_ok());
    }

    #[test]
    fn a_known_device_is_neither_locked_by_its_address_nor_by_the_account() {
        let l = Arc::new(LoginLimiter::new(5));
        let now = Instant::now();
        let cookie = l.issue_device();
        let shared: IpAddr = "192.0.2.50".parse().unwrap();
        // The attacker behind the same address uses up the address and the account.
        for _ in 0..5 {
            l.begin_at(ClientKey::addr(shared), now).unwrap().failed();
        }
        assert!(l.begin_at(ClientKey::addr(shared), now).is_err());
        assert!(l.begin_at(ip("198.51.100.1"), now).is_err(), "account");
        // The admin's browser carries its device cookie.
        let key = l.client_key(shared, Some(&cookie));
        assert!(matches!(key, ClientKey::Device(_)));
        l.begin_at(key, now).unwrap().succeeded();
        // An unknown cookie is just the address.
        assert_eq!(
            l.client_key(shared, Some("forged")),
            ClientKey::addr(shared)
        );
        l.forget_devices();
        assert_eq!(l.client_key(shared, Some(&cookie)), ClientKey::addr(shared));
    }
}
