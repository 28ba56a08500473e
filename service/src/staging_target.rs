//! Where the service's jobs write and its exports read: the configured staging server
//! (pinned TLS + pairing token), or an S3 bucket written directly as a Godwit store with the
//! credentials from the settings.
//!
//! A staging target of staging servers lists several servers of ONE store (issue 21): each run
//! and each export picks one ([`Fleet::order`]: least busy first, round robin among equals,
//! servers whose last attempt failed last) and, when it is down or drops mid-run, goes on
//! through the next one from what the store already holds ([`FleetTarget`]).
//!
//! The bucket is reached through the transfer crate's S3 backend with the credentials of the
//! settings, and only those ([`S3Config`]: no instance metadata, no profile lookup).

use super::store::{StagingRecord, StagingServer};
use godwit_transfer::digest::Fingerprint;
use godwit_transfer::replicate::{Connect, Direct};
use godwit_transfer::store::s3::{S3Backend, S3Config};
use godwit_transfer::store::{Backend, BoxFut, ChunkStore, Store};
use godwit_transfer::wire::client::StagingClient;
use object_store::aws::AmazonS3;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to reach S3 (the staging bucket's settings, or the service's environment).
#[derive(Clone)]
pub struct S3Access {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Access {
    /// The S3 settings of a staging record, if it is a bucket.
    pub fn of(rec: &StagingRecord) -> Option<(S3Access, String, String)> {
        match rec {
            StagingRecord::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            } => Some((
                S3Access {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.clone(),
                },
                bucket.clone(),
                prefix.clone(),
            )),
            StagingRecord::Server { .. } => None,
        }
    }

    fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
        }
    }

    /// An `object_store` client for `bucket`, with these credentials only.
    pub fn client(&self, bucket: &str, sha256_checksums: bool) -> Result<AmazonS3, String> {
        self.config()
            .client(bucket, sha256_checksums)
            .map_err(|e| e.to_string())
    }
}

/// What a run or an export writes to / reads from: for staging servers a [`FleetTarget`] that
/// records on `fleet` which server `user` goes through. Blocking (call off the runtime).
pub fn connector(
    rec: &StagingRecord,
    handle: &tokio::runtime::Handle,
    fleet: &Arc<Fleet>,
    user: User,
) -> Result<Arc<dyn Connect>, String> {
    match rec {
        StagingRecord::Server { servers, token } => {
            FleetTarget::new(servers, token, fleet.clone(), user).map(|t| Arc::new(t) as _)
        }
        StagingRecord::S3 { .. } => {
            let store = handle.block_on(open_s3_store(rec))?;
            Ok(Arc::new(Direct(store)))
        }
    }
}

/// Who uses a staging server: a job's run or an export, by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum User {
    Job(String),
    Export(String),
}

/// How a staging server fared, as the service last saw it (in memory: a restarted service
/// knows nothing until it connects or checks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerState {
    /// `None` until tried.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    /// Unix seconds of the last connection a run or an export made through it.
    pub last_used: Option<u64>,
    /// Unix seconds of the last attempt (use or check).
    pub last_checked: Option<u64>,
    /// Runs and exports going through it now.
    pub in_use: u32,
}

/// The service's staging servers' states, and which server each job and export goes through.
#[derive(Default)]
pub struct Fleet {
    states: Mutex<HashMap<String, ServerState>>,
    users: Mutex<HashMap<User, String>>,
    turn: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fleet {
    /// The state of the server at `address`.
    pub fn state(&self, address: &str) -> ServerState {
        lock(&self.states).get(address).cloned().unwrap_or_default()
    }

    /// The server `user` goes (or last went) through.
    pub fn server_of(&self, user: &User) -> Option<String> {
        lock(&self.users).get(user).cloned()
    }

    /// The order to try `servers` in (indexes): the ones not known down before the ones whose
    /// last attempt failed, the least busy first, and among equals round robin, so that
    /// successive runs spread over the servers.
    pub fn order(&self, servers: &[StagingServer]) -> Vec<usize> {
        let n = servers.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let states = lock(&self.states);
        let mut idx: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        // A stable sort keeps the round-robin order among equals.
        idx.sort_by_key(|&i| {
            let st = states.get(&servers[i].address);
            (
                st.is_some_and(|s| s.reachable == Some(false)),
                st.map_or(0, |s| s.in_use),
            )
        });
        idx
    }

    /// Record a connection attempt to `address` (`Ok` = it answered and took the token).
    pub fn record(&self, address: &str, outcome: Result<(), String>, used: bool) {
        let now = crate::time::now();
        let mut states = lock(&self.states);
        let st = states.entry(address.to_string()).or_default();
        st.last_checked = Some(now);
        match outcome {
            Ok(()) => {
                st.reachable = Some(true);
                st.last_error = None;
                if used {
                    st.last_used = Some(now);
                }
            }
            Err(e) => {
                st.reachable = Some(false);
                st.last_error = Some(e);
            }
        }
    }

    /// `user` now goes through `address` (and no longer through the one before).
    fn switch(&self, user: &User, from: Option<&str>, to: &str) {
        let mut states = lock(&self.states);
        if let Some(f) = from
            && let Some(st) = states.get_mut(f)
        {
            st.in_use = st.in_use.saturating_sub(1);
        }
        states.entry(to.to_string()).or_default().in_use += 1;
        drop(states);
        lock(&self.users).insert(user.clone(), to.to_string());
    }

    fn release(&self, address: &str) {
        if let Some(st) = lock(&self.states).get_mut(address) {
            st.in_use = st.in_use.saturating_sub(1);
        }
    }

    /// Connect to each server now (at most `wait` each, all at once) and record the outcome:
    /// what the settings page and `GET /api/v1/settings/staging/servers` show.
    pub async fn check(&self, servers: &[StagingServer], token: &str, wait: Duration) {
        let tries = servers.iter().map(|s| async move {
            let r = match Fingerprint::parse(&s.fingerprint) {
                Err(e) => Err(e.to_string()),
                Ok(pin) => match tokio::time::timeout(
                    wait,
                    StagingClient::connect(&s.address, &[pin], token),
                )
                .await
                {
                    Err(_) => Err(format!("no answer within {} s", wait.as_secs())),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(_client)) => Ok(()),
                },
            };
            (s.address.clone(), r)
        });
        for (address, r) in futures::future::join_all(tries).await {
            self.record(&address, r, false);
        }
    }
}

/// The staging servers of one store as one target for a run or an export: each connection
/// tries the server in use first (when there is one), then the others in [`Fleet::order`],
/// each with its own pinned certificate. A replication or export that loses its server
/// reconnects through this and resumes on another from what the store already has (the
/// transfer crate's retry loop: chunks the store holds are not sent again).
pub struct FleetTarget {
    servers: Vec<(StagingServer, Fingerprint)>,
    token: String,
    fleet: Arc<Fleet>,
    user: User,
    /// The server in use (index into `servers`).
    current: Mutex<Option<usize>>,
}

impl FleetTarget {
    pub fn new(
        servers: &[StagingServer],
        token: &str,
        fleet: Arc<Fleet>,
        user: User,
    ) -> Result<FleetTarget, String> {
        if servers.is_empty() {
            return Err("no staging server is configured".into());
        }
        let servers = servers
            .iter()
            .map(|s| {
                Fingerprint::parse(&s.fingerprint)
                    .map(|fp| (s.clone(), fp))
                    .map_err(|e| format!("staging server {}: {e}", s.address))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FleetTarget {
            servers,
            token: token.to_string(),
            fleet,
            user,
            current: Mutex::new(None),
        })
    }

    fn plan(&self) -> Vec<usize> {
        let list: Vec<StagingServer> = self.servers.iter().map(|(s, _)| s.clone()).collect();
        let mut order = self.fleet.order(&list);
        if let Some(c) = *lock(&self.current) {
            order.retain(|&i| i != c);
            order.insert(0, c);
        }
        order
    }
}

impl Drop for FleetTarget {
    fn drop(&mut self) {
        if let Some(c) = *lock(&self.current) {
            self.fleet.release(&self.servers[c].0.address);
        }
    }
}

impl Connect for FleetTarget {
    fn connect(&self) -> BoxFut<'_, Arc<dyn ChunkStore>> {
        Box::pin(async move {
            let mut refused: Option<godwit_transfer::Error> = None;
            let mut down: Option<godwit_transfer::Error> = None;
            for i in self.plan() {
                let (server, pin) = &self.servers[i];
                match StagingClient::connect(&server.address, &[*pin], &self.token).await {
                    Ok(c) => {
                        self.fleet.record(&server.address, Ok(()), true);
                        let mut cur = lock(&self.current);
                        if *cur != Some(i) {
                            let from = cur.map(|c| self.servers[c].0.address.as_str());
                            if from.is_some() {
                                tracing::warn!(user = ?self.user, from = ?from, to = %server.address, "staging server changed");
                            }
                            self.fleet.switch(&self.user, from, &server.address);
                            *cur = Some(i);
                        }
                        return Ok(Arc::new(c) as Arc<dyn ChunkStore>);
                    }
                    Err(e) => {
                        tracing::warn!(server = %server.address, error = %e, "staging server not usable");
                        self.fleet
                            .record(&server.address, Err(e.to_string()), false);
                        if e.is_retryable() {
                            down = Some(e);
                        } else {
                            refused.get_or_insert(e);
                        }
                    }
                }
            }
            // Every server down is worth retrying; a refusal (token, certificate) says more.
            Err(down.or(refused).unwrap_or_else(|| {
                godwit_transfer::Error::Usage("no staging server is configured".into())
            }))
        })
    }
}

/// Open the bucket of an S3 staging record as a store.
pub async fn open_s3_store(rec: &StagingRecord) -> Result<Arc<dyn ChunkStore>, String> {
    let Some((access, bucket, prefix)) = S3Access::of(rec) else {
        return Err("not an S3 staging target".into());
    };
    let rest = if prefix.is_empty() {
        bucket
    } else {
        format!("{bucket}/{prefix}")
    };
    let backend = S3Backend::new(&access.config(), &rest).map_err(|e| e.to_string())?;
    let desc = backend.describe();
    let store = Store::open(Arc::new(backend))
        .await
        .map_err(|e| format!("{desc}: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(a: &str) -> StagingServer {
        StagingServer {
            address: a.into(),
            fingerprint: format!("SHA256:{}", "AB".repeat(32)),
        }
    }

    #[test]
    fn runs_take_the_least_busy_reachable_server_round_robin_among_equals() {
        let f = Fleet::default();
        let s = [server("a:1500"), server("b:1500"), server("c:1500")];
        // All equal: successive runs start on each server in turn.
        let mut firsts: Vec<usize> = (0..3).map(|_| f.order(&s)[0]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 1, 2]);
        // Busy servers go after an idle one.
        f.switch(&User::Job("j1".into()), None, "a:1500");
        f.switch(&User::Job("j2".into()), None, "b:1500");
        for _ in 0..3 {
            assert_eq!(f.order(&s)[0], 2);
        }
        // A server whose last attempt failed goes last, idle or not.
        f.record("c:1500", Err("connection refused".into()), false);
        for _ in 0..3 {
            let o = f.order(&s);
            assert_eq!(o.len(), 3);
            assert_eq!(o[2], 2, "{o:?}");
        }
        assert_eq!(f.state("c:1500").reachable, Some(false));
        assert_eq!(
            f.state("c:1500").last_error.as_deref(),
            Some("connection refused")
        );
        // A failover moves the run's count and its server.
        f.switch(&User::Job("j1".into()), Some("a:1500"), "b:1500");
        assert_eq!(f.state("a:1500").in_use, 0);
        assert_eq!(f.state("b:1500").in_use, 2);
        assert_eq!(
            f.server_of(&User::Job("j1".into())).as_deref(),
            Some("b:1500")
        );
        f.release("b:1500");
        assert_eq!(f.state("b:1500").in_use, 1);
        // Back up: reachable again, its error gone, its use recorded.
        f.record("c:1500", Ok(()), true);
        let c = f.state("c:1500");
        assert_eq!(c.reachable, Some(true));
        assert!(c.last_error.is_none() && c.last_used.is_some());
        assert!(Fleet::default().order(&[]).is_empty());
    }

    #[test]
    fn a_fleet_target_needs_a_server_and_valid_pins() {
        let f = Arc::new(Fleet::default());
        let u = User::Job("j".into());
        assert!(FleetTarget::new(&[], "tok", f.clone(), u.clone()).is_err());
        let mut bad = server("a:1500");
        bad.fingerprint = "SHA256:nothex".into();
        let e = FleetTarget::new(&[bad], "tok", f.clone(), u.clone())
            .err()
            .unwrap();
        assert!(e.contains("a:1500"), "{e}");
        assert!(FleetTarget::new(&[server("a:1500")], "tok", f, u).is_ok());
    }
}
