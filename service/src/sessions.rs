//! Logged-in web sessions in the redb store, so that a restart of the service does not log
//! the admin out. Keys are the SHA-256 of the session id (the web layer hashes it; the id
//! itself is never stored), values the expiry (Unix seconds, 8 bytes big-endian) followed by
//! the session record. Expired rows are dropped when the store opens and whenever the table
//! is over [`MAX_SESSIONS`] rows.

use super::store::{Store, StoreResult};
use godwit_webui::SessionVault;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::sync::Arc;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("web_sessions");
/// Rows kept at most (a handful of admins' browsers; the web layer writes only logged-in ones).
pub const MAX_SESSIONS: u64 = 1000;

fn now_unix() -> i64 {
    i64::try_from(super::time::now()).unwrap_or(i64::MAX)
}

pub struct SessionTable {
    store: Arc<Store>,
    max: u64,
}

impl SessionTable {
    /// The table (created if missing), expired rows dropped.
    pub fn open(store: Arc<Store>) -> StoreResult<Arc<SessionTable>> {
        Self::with_max(store, MAX_SESSIONS)
    }

    fn with_max(store: Arc<Store>, max: u64) -> StoreResult<Arc<SessionTable>> {
        let t = SessionTable { store, max };
        t.purge(0)?;
        Ok(Arc::new(t))
    }

    /// Drop expired rows, then (if still over `keep`, when `keep` > 0) the soonest-expiring.
    fn purge(&self, keep: u64) -> StoreResult<()> {
        let s = &self.store;
        let tx = s
            .db()
            .begin_write()
            .map_err(|e| s.db_err("begin write", e))?;
        {
            let mut t = tx
                .open_table(SESSIONS)
                .map_err(|e| s.db_err("open table", e))?;
            let now = now_unix();
            let mut rows: Vec<(String, i64)> = Vec::new();
            for row in t.iter().map_err(|e| s.db_err("scan", e))? {
                let (k, v) = row.map_err(|e| s.db_err("scan", e))?;
                rows.push((k.value().to_string(), expiry_of(v.value())));
            }
            rows.sort_by_key(|(_, e)| *e);
            let expired = rows.iter().filter(|(_, e)| *e <= now).count();
            let over = if keep > 0 {
                usize::try_from((rows.len() as u64).saturating_sub(keep)).unwrap_or(usize::MAX)
            } else {
                0
            };
            for (k, _) in rows.iter().take(expired.max(over)) {
                t.remove(k.as_str()).map_err(|e| s.db_err("remove", e))?;
            }
        }
        tx.commit().map_err(|e| s.db_err("commit", e))
    }

    fn try_put(&self, key: &str, record: &[u8], expires: i64) -> StoreResult<u64> {
        let s = &self.store;
        let tx = s
            .db()
            .begin_write()
            .map_err(|e| s.db_err("begin write", e))?;
        let n = {
            let mut t = tx
                .open_table(SESSIONS)
                .map_err(|e| s.db_err("open table", e))?;
            let mut v = expires.to_be_bytes().to_vec();
            v.extend_from_slice(record);
            t.insert(key, v.as_slice())
                .map_err(|e| s.db_err("insert", e))?;
            t.len().map_err(|e| s.db_err("count", e))?
        };
        tx.commit().map_err(|e| s.db_err("commit", e))?;
        Ok(n)
    }

    fn try_get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let s = &self.store;
        let tx = s.db().begin_read().map_err(|e| s.db_err("begin read", e))?;
        let t = match tx.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(s.db_err("open table", e)),
        };
        let Some(v) = t.get(key).map_err(|e| s.db_err("get", e))? else {
            return Ok(None);
        };
        let v = v.value();
        if v.len() < 8 || expiry_of(v) <= now_unix() {
            return Ok(None);
        }
        Ok(Some(v[8..].to_vec()))
    }

    fn try_remove(&self, key: &str) -> StoreResult<()> {
        let s = &self.store;
        let tx = s
            .db()
            .begin_write()
            .map_err(|e| s.db_err("begin write", e))?;
        {
            let mut t = tx
                .open_table(SESSIONS)
                .map_err(|e| s.db_err("open table", e))?;
            t.remove(key).map_err(|e| s.db_err("remove", e))?;
        }
        tx.commit().map_err(|e| s.db_err("commit", e))
    }

    fn try_remove_all(&self) -> StoreResult<()> {
        let s = &self.store;
        let tx = s
            .db()
            .begin_write()
            .map_err(|e| s.db_err("begin write", e))?;
        {
            let mut t = tx
                .open_table(SESSIONS)
                .map_err(|e| s.db_err("open table", e))?;
            t.retain(|_, _| false).map_err(|e| s.db_err("clear", e))?;
        }
        tx.commit().map_err(|e| s.db_err("commit", e))
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<String> {
        let s = &self.store;
        let tx = s.db().begin_read().unwrap();
        let t = tx.open_table(SESSIONS).unwrap();
        t.iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().to_string())
            .collect()
    }
}

fn expiry_of(v: &[u8]) -> i64 {
    v.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

/// A key is the hex SHA-256 of a session id; anything else is refused.
fn valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|c| c.is_ascii_hexdigit())
}

impl SessionVault for SessionTable {
    fn put(&self, key: &str, record: &[u8], expires_unix: i64) {
        if !valid_key(key) {
            return;
        }
        match self.try_put(key, record, expires_unix) {
            Ok(n) if n > self.max => {
                if let Err(e) = self.purge(self.max) {
                    tracing::warn!(error = %e, "trimming stored sessions");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "storing a session"),
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if !valid_key(key) {
            return None;
        }
        self.try_get(key).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading a stored session");
            None
        })
    }

    fn remove(&self, key: &str) {
        if let Err(e) = self.try_remove(key) {
            tracing::warn!(error = %e, "removing a stored session");
        }
    }

    fn remove_all(&self) {
        if let Err(e) = self.try_remove_all() {
            tracing::error!(error = %e, "removing every stored session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_survive_reopen_expired_ones_do_not_and_the_table_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = "ab".repeat(32);
        let old = "cd".repeat(32);
        {
            let t = SessionTable::open(Arc::new(Store::open(&path).unwrap())).unwrap();
            t.put(&key, b"{\"record\":1}", now_unix() + 600);
            t.put(&old, b"{}", now_unix() - 1);
            t.put("not-a-hash", b"{}", now_unix() + 600);
            assert_eq!(t.get(&key).as_deref(), Some(&b"{\"record\":1}"[..]));
            assert_eq!(t.get(&old), None, "expired");
            assert_eq!(t.get("not-a-hash"), None);
        }
        let t = SessionTable::with_max(Arc::new(Store::open(&path).unwrap()), 8).unwrap();
        assert_eq!(t.get(&key).as_deref(), Some(&b"{\"record\":1}"[..]));
        assert_eq!(t.keys(), vec![key.clone()], "expired row purged at open");
        t.remove(&key);
        assert_eq!(t.get(&key), None);
        for i in 0..13u64 {
            t.put(
                &format!("{i:064x}"),
                b"{}",
                now_unix() + 600 + i64::try_from(i).unwrap(),
            );
        }
        assert!(t.keys().len() <= 8, "{}", t.keys().len());
        assert!(t.get(&format!("{:064x}", 12)).is_some(), "the latest kept");
        // A password change drops them all.
        t.remove_all();
        assert!(t.keys().is_empty());
    }
}
