//! Sessions kept in memory, with a ceiling. tower-sessions' `MemoryStore` keeps every session
//! until the process ends, and every anonymous page view (the login page carries a CSRF token)
//! creates one, so a client looping on `/login` would grow memory without bound. This store
//! holds at most `max` sessions: over the ceiling it drops expired ones, then anonymous ones
//! (never logged in) closest to expiry, and only then logged-in ones.
//!
//! With a [`SessionVault`] (the appliance's store), logged-in sessions are also written there
//! under the SHA-256 of their id — never the id itself, so a copy of the store lets nobody in —
//! and a session the memory does not know is looked up there: a restart does not log the
//! admin out. Anonymous sessions stay in memory only, and a session's rolling expiry is
//! written at most once a minute, so page views do not become disk writes.
//!
//! A login also ends: its record carries the time of the login (`auth_at`), and a login older
//! than the absolute lifetime (`max_age`, however busy the session was), or older than the
//! last password change ([`BoundedMemoryStore::revoke_all`]), is not loaded again: such a
//! session is anonymous from then on.

use crate::security::{SESSION_AUTH, SESSION_AUTH_AT};
use async_trait::async_trait;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};
use tower_sessions::{
    SessionStore,
    cookie::time::OffsetDateTime,
    session::{Id, Record},
    session_store,
};

/// Durable storage for logged-in sessions, keyed by the hex SHA-256 of the session id.
/// Calls are short and blocking (an embedded database).
pub trait SessionVault: Send + Sync + 'static {
    /// Store (or replace) a session record (opaque JSON) that expires at `expires_unix`.
    fn put(&self, id_sha256: &str, record: &[u8], expires_unix: i64);
    /// The record, if stored and not expired.
    fn get(&self, id_sha256: &str) -> Option<Vec<u8>>;
    fn remove(&self, id_sha256: &str);
    /// Drop every stored session (the admin password changed).
    fn remove_all(&self);
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Rolling expiry changes are written to the vault at most this often (seconds).
const VAULT_REFRESH_SECS: i64 = 60;

#[derive(Clone)]
pub(crate) struct BoundedMemoryStore {
    sessions: Arc<Mutex<HashMap<Id, Record>>>,
    max: usize,
    vault: Option<Arc<dyn SessionVault>>,
    /// What the vault holds for each session id: (data as JSON, expiry written).
    written: Arc<Mutex<HashMap<Id, (String, i64)>>>,
    /// Absolute lifetime of a login, in milliseconds.
    max_age_ms: i64,
    /// Logins before this (ms since the epoch) were revoked by a password change.
    revoked_before_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for BoundedMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMemoryStore")
            .field("max", &self.max)
            .field("vault", &self.vault.is_some())
            .finish_non_exhaustive()
    }
}

/// The vault key of a session id.
pub(crate) fn id_sha256(id: &Id) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.to_string().as_bytes()))
}

impl BoundedMemoryStore {
    pub(crate) fn new(max: usize, vault: Option<Arc<dyn SessionVault>>, max_age: Duration) -> Self {
        BoundedMemoryStore {
            sessions: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
            vault,
            written: Arc::new(Mutex::new(HashMap::new())),
            max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
            revoked_before_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Whether a login made at `auth_at` (ms since the epoch) still holds now.
    pub(crate) fn login_valid(&self, auth_at: i64) -> bool {
        let now = now_ms();
        auth_at >= self.revoked_before_ms.load(Ordering::SeqCst)
            && auth_at <= now.saturating_add(60_000)
            && now.saturating_sub(auth_at) < self.max_age_ms
    }

    /// A record that is logged in and whose login still holds.
    fn valid(&self, r: &Record) -> bool {
        logged_in(r) && auth_at(r).is_some_and(|t| self.login_valid(t))
    }

    /// End every login made until now (the password changed): from memory and the vault.
    /// A login made afterwards (the session that changed the password logs in again) holds.
    pub(crate) fn revoke_all(&self) {
        self.revoked_before_ms.store(now_ms(), Ordering::SeqCst);
        self.lock().retain(|_, r| !logged_in(r));
        if let Some(vault) = &self.vault {
            self.written().clear();
            vault.remove_all();
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<Id, (String, i64)>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a logged-in session to the vault when its data changed or its expiry moved by
    /// more than [`VAULT_REFRESH_SECS`]; forget a session that is no longer logged in.
    fn write_through(&self, record: &Record) {
        let Some(vault) = &self.vault else { return };
        if !self.valid(record) {
            if self.written().remove(&record.id).is_some() || logged_in(record) {
                vault.remove(&id_sha256(&record.id));
            }
            return;
        }
        let data = serde_json::to_string(&record.data).unwrap_or_default();
        // Stored no longer than the login's absolute lifetime.
        let absolute_end = auth_at(record).map_or(0, |t| t.saturating_add(self.max_age_ms) / 1000);
        let expires = record.expiry_date.unix_timestamp().min(absolute_end);
        let fresh = self
            .written()
            .get(&record.id)
            .is_some_and(|(d, e)| *d == data && (expires - *e).abs() < VAULT_REFRESH_SECS);
        if fresh {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(record) {
            vault.put(&id_sha256(&record.id), &bytes, expires);
            let mut w = self.written();
            if w.len() >= self.max {
                // Only a cache of what was written: forgetting it costs a rewrite, no more.
                w.clear();
            }
            w.insert(record.id, (data, expires));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Record>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn logged_in(r: &Record) -> bool {
    r.data.get(SESSION_AUTH) == Some(&serde_json::Value::Bool(true))
}

fn auth_at(r: &Record) -> Option<i64> {
    r.data
        .get(SESSION_AUTH_AT)
        .and_then(serde_json::Value::as_i64)
}

/// Makes room for one more session.
fn make_room(map: &mut HashMap<Id, Record>, max: usize) {
    if map.len() < max {
        return;
    }
    let now = OffsetDateTime::now_utc();
    map.retain(|_, r| r.expiry_date > now);
    while map.len() >= max {
        let victim = map
            .iter()
            .min_by_key(|(_, r)| (logged_in(r), r.expiry_date))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                map.remove(&id);
            }
            None => break,
        }
    }
}

#[async_trait]
impl SessionStore for BoundedMemoryStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let mut map = self.lock();
        while map.contains_key(&record.id) {
            record.id = Id::default();
        }
        make_room(&mut map, self.max);
        map.insert(record.id, record.clone());
        drop(map);
        self.write_through(record);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let mut map = self.lock();
        if !map.contains_key(&record.id) {
            make_room(&mut map, self.max);
        }
        map.insert(record.id, record.clone());
        drop(map);
        self.write_through(record);
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let now = OffsetDateTime::now_utc();
        {
            let mut map = self.lock();
            if let Some(r) = map.get(id) {
                if r.expiry_date <= now || (logged_in(r) && !self.valid(r)) {
                    // Expired, or a login past its lifetime or revoked: gone.
                    map.remove(id);
                    return Ok(None);
                }
                return Ok(Some(r.clone()));
            }
        }
        // Not in memory: a session from before a restart?
        let Some(vault) = &self.vault else {
            return Ok(None);
        };
        let Some(bytes) = vault.get(&id_sha256(id)) else {
            return Ok(None);
        };
        let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
            vault.remove(&id_sha256(id));
            return Ok(None);
        };
        if r.id != *id || r.expiry_date <= now || !self.valid(&r) {
            vault.remove(&id_sha256(id));
            return Ok(None);
        }
        let data = serde_json::to_string(&r.data).unwrap_or_default();
        self.written()
            .insert(r.id, (data, r.expiry_date.unix_timestamp()));
        let mut map = self.lock();
        make_room(&mut map, self.max);
        map.insert(r.id, r.clone());
        Ok(Some(r))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.lock().remove(id);
        if let Some(vault) = &self.vault {
            self.written().remove(id);
            vault.remove(&id_sha256(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_sessions::cookie::time::Duration;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn record(minutes: i64, auth: bool) -> Record {
        let mut data = HashMap::new();
        if auth {
            data.insert(SESSION_AUTH.to_owned(), serde_json::Value::Bool(true));
            data.insert(SESSION_AUTH_AT.to_owned(), serde_json::json!(now_ms()));
        }
        Record {
            id: Id::default(),
            data,
            expiry_date: OffsetDateTime::now_utc() + Duration::minutes(minutes),
        }
    }

    #[tokio::test]
    async fn never_holds_more_than_max_and_keeps_logged_in_sessions() {
        let store = BoundedMemoryStore::new(100, None, DAY);
        let mut admin = record(30, true);
        store.create(&mut admin).await.unwrap();
        for _ in 0..1000 {
            store.create(&mut record(30, false)).await.unwrap();
            assert!(store.len() <= 100);
        }
        assert_eq!(store.len(), 100);
        assert!(
            store.load(&admin.id).await.unwrap().is_some(),
            "admin evicted"
        );
    }

    #[tokio::test]
    async fn expired_sessions_are_not_loaded_and_go_first() {
        let store = BoundedMemoryStore::new(2, None, DAY);
        let mut old = record(-1, true);
        store.create(&mut old).await.unwrap();
        assert!(store.load(&old.id).await.unwrap().is_none());
        let mut a = record(30, false);
        let mut b = record(30, false);
        store.create(&mut a).await.unwrap();
        store.create(&mut b).await.unwrap();
        assert!(store.load(&a.id).await.unwrap().is_some());
        assert!(store.load(&b.id).await.unwrap().is_some());
    }

    #[derive(Default)]
    struct MapVault(Mutex<HashMap<String, (Vec<u8>, i64)>>);

    impl SessionVault for MapVault {
        fn put(&self, id: &str, record: &[u8], expires: i64) {
            self.0
                .lock()
                .unwrap()
                .insert(id.to_string(), (record.to_vec(), expires));
        }
        fn get(&self, id: &str) -> Option<Vec<u8>> {
            self.0.lock().unwrap().get(id).map(|(r, _)| r.clone())
        }
        fn remove(&self, id: &str) {
            self.0.lock().unwrap().remove(id);
        }
        fn remove_all(&self) {
            self.0.lock().unwrap().clear();
        }
    }

    #[tokio::test]
    async fn revoking_ends_every_login_made_before_in_memory_and_in_the_vault() {
        let vault = Arc::new(MapVault::default());
        let store = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        let mut a = record(30, true);
        let mut b = record(30, true);
        let mut anon = record(30, false);
        for r in [&mut a, &mut b, &mut anon] {
            store.create(r).await.unwrap();
        }
        assert_eq!(vault.0.lock().unwrap().len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.revoke_all();
        assert!(vault.0.lock().unwrap().is_empty());
        assert!(store.load(&a.id).await.unwrap().is_none());
        assert!(
            store.load(&anon.id).await.unwrap().is_some(),
            "anonymous kept"
        );
        // A request of `b` still in flight saves it again: neither kept nor stored.
        store.save(&b).await.unwrap();
        assert!(store.load(&b.id).await.unwrap().is_none());
        assert!(vault.0.lock().unwrap().is_empty());
        // A login made after the change holds.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut c = record(30, true);
        store.create(&mut c).await.unwrap();
        assert!(store.load(&c.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_login_ends_at_its_absolute_lifetime_however_busy() {
        let vault = Arc::new(MapVault::default());
        let store = BoundedMemoryStore::new(
            10,
            Some(vault.clone()),
            std::time::Duration::from_secs(3600),
        );
        let mut old = record(30, true);
        // Logged in 61 minutes ago, active a second ago (idle expiry far away).
        old.data.insert(
            SESSION_AUTH_AT.to_owned(),
            serde_json::json!(now_ms() - 61 * 60_000),
        );
        store.create(&mut old).await.unwrap();
        assert!(vault.0.lock().unwrap().is_empty(), "not stored");
        assert!(store.load(&old.id).await.unwrap().is_none());
        // A login without its time (from before this rule) is not trusted either.
        let mut untimed = record(30, true);
        untimed.data.remove(SESSION_AUTH_AT);
        store.create(&mut untimed).await.unwrap();
        assert!(store.load(&untimed.id).await.unwrap().is_none());
        // A fresh login is stored no longer than its lifetime.
        let mut fresh = record(24 * 60, true);
        store.create(&mut fresh).await.unwrap();
        let stored = vault.0.lock().unwrap()[&id_sha256(&fresh.id)].1;
        let end = now_ms() / 1000 + 3600;
        assert!((end - stored).abs() <= 2, "{end} vs {stored}");
    }

    #[tokio::test]
    async fn logged_in_sessions_survive_a_new_store_under_their_hash_only() {
        let vault = Arc::new(MapVault::default());
        let store = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        let mut admin = record(30, true);
        let mut anon = record(30, false);
        store.create(&mut admin).await.unwrap();
        store.create(&mut anon).await.unwrap();
        // Only the logged-in one, under the SHA-256 of its id, never the id itself.
        let keys: Vec<String> = vault.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec![id_sha256(&admin.id)]);
        let id_text = admin.id.to_string();
        for (k, (v, _)) in vault.0.lock().unwrap().iter() {
            assert!(!k.contains(&id_text));
            assert_eq!(k.len(), 64);
            let _ = v;
        }
        // A restart: a new memory store over the same vault.
        let again = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        let got = again.load(&admin.id).await.unwrap().expect("session kept");
        assert_eq!(got.data, admin.data);
        assert!(again.load(&anon.id).await.unwrap().is_none());
        // Logout deletes it from the vault too.
        again.delete(&admin.id).await.unwrap();
        assert!(vault.0.lock().unwrap().is_empty());
        let third = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        assert!(third.load(&admin.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_vault_records_are_not_loaded_and_saves_are_throttled() {
        let vault = Arc::new(MapVault::default());
        let store = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        let mut old = record(-1, true);
        store.create(&mut old).await.unwrap();
        let fresh = BoundedMemoryStore::new(10, Some(vault.clone()), DAY);
        assert!(fresh.load(&old.id).await.unwrap().is_none());
        // Saving the same data with an expiry a few seconds later writes nothing new.
        let mut s = record(30, true);
        store.create(&mut s).await.unwrap();
        let first = vault.0.lock().unwrap()[&id_sha256(&s.id)].1;
        s.expiry_date += Duration::seconds(5);
        store.save(&s).await.unwrap();
        assert_eq!(vault.0.lock().unwrap()[&id_sha256(&s.id)].1, first);
        s.expiry_date += Duration::minutes(5);
        store.save(&s).await.unwrap();
        assert_ne!(vault.0.lock().unwrap()[&id_sha256(&s.id)].1, first);
    }
}
