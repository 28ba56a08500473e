//! Sessions kept in memory, with a ceiling. tower-sessions' `MemoryStore` keeps every session
//! until the process ends, and every anonymous page view (the login page carries a CSRF token)
//! creates one, so a client looping on `/login` would grow memory without bound. This store
//! holds at most `max` sessions: over the ceiling it drops expired ones, then anonymous ones
//! (never logged in) closest to expiry, and only then logged-in ones.

use crate::security::SESSION_AUTH;
use async_trait::async_trait;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tower_sessions::{
    SessionStore,
    cookie::time::OffsetDateTime,
    session::{Id, Record},
    session_store,
};

#[derive(Debug, Clone)]
pub(crate) struct BoundedMemoryStore {
    sessions: Arc<Mutex<HashMap<Id, Record>>>,
    max: usize,
}

impl BoundedMemoryStore {
    pub(crate) fn new(max: usize) -> Self {
        BoundedMemoryStore {
            sessions: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
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
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let mut map = self.lock();
        if !map.contains_key(&record.id) {
            make_room(&mut map, self.max);
        }
        map.insert(record.id, record.clone());
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let now = OffsetDateTime::now_utc();
        Ok(self.lock().get(id).filter(|r| r.expiry_date > now).cloned())
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.lock().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_sessions::cookie::time::Duration;

    fn record(minutes: i64, auth: bool) -> Record {
        let mut data = HashMap::new();
        if auth {
            data.insert(SESSION_AUTH.to_owned(), serde_json::Value::Bool(true));
        }
        Record {
            id: Id::default(),
            data,
            expiry_date: OffsetDateTime::now_utc() + Duration::minutes(minutes),
        }
    }

    #[tokio::test]
    async fn never_holds_more_than_max_and_keeps_logged_in_sessions() {
        let store = BoundedMemoryStore::new(100);
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
        let store = BoundedMemoryStore::new(2);
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
}
