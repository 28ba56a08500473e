//! The service's persistent state in one redb file (`DATA/godwit.redb`, mode 0600): settings
//! (secrets included — they live here and nowhere else), jobs, job events, exports and the
//! multipart upload state of S3 exports (so a restarted service resumes them).
//! Every write is one ACID transaction, so a `kill -9` leaves either the old or the new record.
//!
//! Records holding secrets have no `Debug` and are never logged; views are built from them
//! field by field (see `super::views`).

use godwit_transfer::s3_export::UploadState;
use godwit_webui::backend::{
    CommandError, ExportView, JobEvent, JobState, NetworkSettings, NetworkStatus, Schedule,
    SourceKind,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("job_events");
const EXPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("exports");
/// The multipart upload of a running S3 export (id, finished parts), by export id.
const EXPORT_UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("export_uploads");
const SETTINGS_KEY: &str = "settings";

/// Most events kept per job (older ones are dropped as new ones arrive).
pub const MAX_EVENTS_PER_JOB: u64 = 500;

/// Default number of transfers run at once (K).
pub const DEFAULT_MAX_CONCURRENT_JOBS: u32 = 2;

// --- Staging servers (issue 21): several servers of one store -------------------------------

/// One staging server of the store: where it listens and the certificate the operator approved
/// for it (each server is pinned on its own).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagingServer {
    /// `host:port`
    pub address: String,
    /// `SHA256:<hex>` the operator approved.
    pub fingerprint: String,
}

/// The staging target. `Server` lists the staging servers of ONE store (never empty) and the
/// one connector token they all take (tokens are kept in the store, so every server of the
/// store accepts the same token: docs/store-format.md). A record stored before several servers
/// were possible (`{"kind":"server","address":..,"fingerprint":..,"token":..}`) reads as a list
/// of one ([`StoredStaging`]).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", from = "StoredStaging")]
pub enum StagingRecord {
    Server {
        servers: Vec<StagingServer>,
        token: String,
    },
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        prefix: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

/// What a stored staging record may look like: today's, or one server's from before issue 21.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredStaging {
    Server {
        #[serde(default)]
        servers: Vec<StagingServer>,
        /// Before issue 21: the one server.
        #[serde(default)]
        address: Option<String>,
        #[serde(default)]
        fingerprint: Option<String>,
        token: String,
    },
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        prefix: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

impl From<StoredStaging> for StagingRecord {
    fn from(s: StoredStaging) -> StagingRecord {
        match s {
            StoredStaging::Server {
                mut servers,
                address,
                fingerprint,
                token,
            } => {
                if let (Some(address), Some(fingerprint)) = (address, fingerprint)
                    && !servers.iter().any(|x| x.address == address)
                {
                    servers.insert(
                        0,
                        StagingServer {
                            address,
                            fingerprint,
                        },
                    );
                }
                StagingRecord::Server { servers, token }
            }
            StoredStaging::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            } => StagingRecord::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            },
        }
    }
}

// --- end staging servers -----------------------------------------------------------------------

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    pub id: String,
    pub kind: SourceKind,
    /// `host:port`
    pub address: String,
    pub username: String,
    pub password: String,
    /// `SHA256:<hex>` the operator approved.
    pub fingerprint: String,
    /// SCVMM: the WinRM HTTPS port of the Hyper-V hosts (5986 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// SCVMM: the hosts whose certificate the operator approved (trust on approval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_pins: Vec<HostPin>,
    /// vSphere: changed block tracking for this source's jobs (issue 18); `None` = the
    /// service's default (on, unless `godwit serve --no-cbt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<bool>,
}

/// One approved Hyper-V host certificate of an SCVMM source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPin {
    /// VMM's name for the host or its address (`host` or `host:port`), lower case.
    pub host: String,
    /// `SHA256:<hex>`
    pub fingerprint: String,
}

impl SourceRecord {
    /// What the API shows of it (no password).
    pub fn view(&self) -> godwit_webui::backend::SourceView {
        godwit_webui::backend::SourceView {
            id: self.id.clone(),
            kind: self.kind,
            address: self.address.clone(),
            username: self.username.clone(),
            fingerprint: godwit_webui::validate::Fingerprint::display(&self.fingerprint),
            host_port: self.host_port,
            host_pins: self
                .host_pins
                .iter()
                .map(|p| godwit_webui::backend::HostPinView {
                    host: p.host.clone(),
                    fingerprint: godwit_webui::validate::Fingerprint::display(&p.fingerprint),
                })
                .collect(),
            name: godwit_webui::backend::source_name(&self.address),
            cbt: self.cbt.unwrap_or(true),
        }
    }
}

/// Everything the wizard and the settings pages write.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct Settings {
    pub network: Option<NetworkSettings>,
    /// Whether `network` was applied to the system or only stored.
    #[serde(default)]
    pub network_status: Option<NetworkStatus>,
    pub staging: Option<StagingRecord>,
    #[serde(default)]
    pub sources: Vec<SourceRecord>,
    #[serde(default)]
    pub max_concurrent_jobs: Option<u32>,
    /// argon2id PHC string.
    pub admin_password_hash: Option<String>,
    /// argon2id PHC string of the one-time setup code; `None` once a password is set.
    pub setup_code_hash: Option<String>,
    #[serde(default)]
    pub checks_run: bool,
    #[serde(default)]
    pub wizard_done: bool,
    /// The URL Hyper-V hosts push to (`None`: each host's WinRM connection's local address).
    #[serde(default)]
    pub ingest_url: Option<String>,
    /// The spool limit of Hyper-V host pushes, MiB (`None`: 256 MiB).
    #[serde(default)]
    pub ingest_spool_limit_mib: Option<u64>,
    // Operator pages (issue 18).
    /// Bandwidth limits (the concurrency is `max_concurrent_jobs`).
    #[serde(default)]
    pub transfer: Option<godwit_webui::backend::TransferSettings>,
    /// The last checks run, shown again on every visit.
    #[serde(default)]
    pub last_checks: Option<godwit_webui::backend::ChecksReport>,
}

impl Settings {
    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent_jobs
            .unwrap_or(DEFAULT_MAX_CONCURRENT_JOBS)
            .max(1)
    }

    pub fn source(&self, id: &str) -> Option<&SourceRecord> {
        self.sources.iter().find(|s| s.id == id)
    }

    /// Every secret value held, for the support bundle's last-line scrub.
    pub fn secrets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sources.iter().map(|s| s.password.clone()).collect();
        match &self.staging {
            Some(StagingRecord::Server { token, .. }) => v.push(token.clone()), // one per store
            Some(StagingRecord::S3 {
                secret_access_key, ..
            }) => v.push(secret_access_key.clone()),
            None => {}
        }
        v.retain(|s| s.len() >= 4);
        v
    }
}

/// A replication job as persisted. Times are Unix seconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub source_id: String,
    /// The VM's name when the job was created, and what its disks are stored under in staging
    /// (vSphere: a renamed VM is followed by `vm_moref`; this name stays).
    pub vm: String,
    /// vSphere: the VM's MoRef value, resolved when the job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_moref: Option<String>,
    /// vSphere: the VM's instance UUID (guards a reused MoRef; finds a re-registered VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_instance_uuid: Option<String>,
    pub schedule: Schedule,
    pub state: JobState,
    pub runs_completed: u32,
    /// Failed runs in a row (drives the backoff; reset by a good run).
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_run: Option<u64>,
    pub last_sync: Option<u64>,
    pub created: u64,
    /// Set while a run is active (`Snapshotting`/`Transferring`/`RemovingSnapshot`).
    pub run_started: Option<u64>,
    /// Cancel asked for while the run was active.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The replica: disks, the run's phases, the lag's origin, the typed error (issue #18).
    #[serde(default)]
    pub replica: crate::job::view::ReplicaRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {what}: {detail}")]
    Db {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: record {key:?} is not valid JSON: {detail}")]
    Record {
        path: String,
        key: String,
        detail: String,
    },
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Internal {
            message: e.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

pub struct Store {
    db: redb::Database,
    path: String,
    /// A file of [`RESERVE_BYTES`] beside the database, given back to the file system when the
    /// data partition is full so the store can still record what happens (a run asked for, a
    /// run that failed for want of space): redb refuses every write after a failed commit
    /// until it is reopened, so the store must never meet a full disk in a commit.
    reserve: std::path::PathBuf,
}

/// Room kept for the store's own commits (a job record and its timeline line need a few pages).
pub const RESERVE_BYTES: u64 = 512 << 10;

/// Write the reserve file when it is missing and there is room for it (best effort: a full
/// partition at start-up simply has no reserve until space returns).
fn make_reserve(path: &Path) {
    use std::io::Write;
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
        return;
    }
    let free =
        super::space::space(path.parent().unwrap_or(Path::new("."))).map_or(0, |s| s.available);
    if free < RESERVE_BYTES.saturating_mul(4) {
        return;
    }
    let zeros = vec![0u8; 64 << 10];
    let made = std::fs::File::create(path).and_then(|mut f| {
        for _ in 0..(RESERVE_BYTES / (64 << 10)) {
            f.write_all(&zeros)?;
        }
        f.sync_all()
    });
    if let Err(e) = made {
        tracing::warn!(path = %path.display(), error = %e, "store reserve not written");
        let _ = std::fs::remove_file(path);
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain records cannot fail (no maps with non-string keys, no floats).
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Open (or create) the store; the file is made mode 0600 since it holds secrets.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let p = path.display().to_string();
        let err = |what: &'static str| {
            let p = p.clone();
            move |e: &dyn std::fmt::Display| StoreError::Db {
                path: p,
                what,
                detail: e.to_string(),
            }
        };
        let db = redb::Database::create(path).map_err(|e| err("open")(&e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err("chmod 0600")(&e))?;
        let reserve = path.with_extension("reserve");
        make_reserve(&reserve);
        let s = Store {
            db,
            path: p,
            reserve,
        };
        let tx = s.begin_write()?;
        {
            tx.open_table(CONFIG)
                .map_err(|e| s.db_err("create tables", e))?;
            tx.open_table(JOBS)
                .map_err(|e| s.db_err("create tables", e))?;
            tx.open_table(EVENTS)
                .map_err(|e| s.db_err("create tables", e))?;
            tx.open_table(EXPORTS)
                .map_err(|e| s.db_err("create tables", e))?;
            tx.open_table(EXPORT_UPLOADS)
                .map_err(|e| s.db_err("create tables", e))?;
        }
        tx.commit().map_err(|e| s.db_err("commit", e))?;
        Ok(s)
    }

    /// The database, for tables kept by sibling modules (sessions).
    pub(super) fn db(&self) -> &redb::Database {
        &self.db
    }

    pub(super) fn db_err(&self, what: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            what,
            detail: e.to_string(),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, key: &str, bytes: &[u8]) -> StoreResult<T> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
            path: self.path.clone(),
            key: key.to_string(),
            detail: e.to_string(),
        })
    }

    /// Before a write: when the partition has less room than the reserve, give the reserve back
    /// (logged); when it has plenty again, take it anew.
    fn keep_headroom(&self) {
        let dir = self.reserve.parent().unwrap_or(Path::new("."));
        let Ok(free) = super::space::space(dir).map(|s| s.available) else {
            return;
        };
        if free < RESERVE_BYTES && self.reserve.exists() {
            match std::fs::remove_file(&self.reserve) {
                Ok(()) => tracing::warn!(
                    free_bytes = free,
                    "data partition full: the store's reserve is released so its commits still fit"
                ),
                Err(e) => tracing::warn!(error = %e, "store reserve not released"),
            }
        } else if free >= RESERVE_BYTES.saturating_mul(64) && !self.reserve.exists() {
            make_reserve(&self.reserve);
        }
    }

    fn begin_write(&self) -> StoreResult<redb::WriteTransaction> {
        self.keep_headroom();
        self.db
            .begin_write()
            .map_err(|e| self.db_err("begin write", e))
    }

    fn read_all<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&str, &[u8]>,
    ) -> StoreResult<Vec<T>> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("begin read", e))?;
        let t = tx
            .open_table(def)
            .map_err(|e| self.db_err("open table", e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err("scan", e))? {
            let (k, v) = row.map_err(|e| self.db_err("scan", e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn read_one<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> StoreResult<Option<T>> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("begin read", e))?;
        let t = tx
            .open_table(def)
            .map_err(|e| self.db_err("open table", e))?;
        match t.get(key).map_err(|e| self.db_err("get", e))? {
            Some(v) => Ok(Some(self.decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn settings(&self) -> StoreResult<Settings> {
        Ok(self.read_one(CONFIG, SETTINGS_KEY)?.unwrap_or_default())
    }

    /// Read-modify-write the settings in one transaction. `f` may refuse with a command error,
    /// in which case nothing is written.
    pub fn update_settings<T>(
        &self,
        f: impl FnOnce(&mut Settings) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        let tx = self.begin_write()?;
        let out = {
            let mut t = tx
                .open_table(CONFIG)
                .map_err(|e| self.db_err("open table", e))?;
            let mut s: Settings = match t.get(SETTINGS_KEY).map_err(|e| self.db_err("get", e))? {
                Some(v) => self.decode(SETTINGS_KEY, v.value())?,
                None => Settings::default(),
            };
            let out = f(&mut s)?;
            t.insert(SETTINGS_KEY, json(&s).as_slice())
                .map_err(|e| self.db_err("insert", e))?;
            out
        };
        tx.commit().map_err(|e| self.db_err("commit", e))?;
        Ok(out)
    }

    /// Write the settings record as given bytes (a record from an older service).
    #[cfg(test)]
    fn put_raw_settings_for_test(&self, bytes: &[u8]) {
        let tx = self.begin_write().unwrap();
        tx.open_table(CONFIG)
            .unwrap()
            .insert(SETTINGS_KEY, bytes)
            .unwrap();
        tx.commit().unwrap();
    }

    pub fn jobs(&self) -> StoreResult<Vec<JobRecord>> {
        let mut v: Vec<JobRecord> = self.read_all(JOBS)?;
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    pub fn job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        self.read_one(JOBS, id)
    }

    /// Write a job record and, when given, one timeline event, in one transaction.
    pub fn put_job(&self, job: &JobRecord, event: Option<&str>) -> StoreResult<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(JOBS)
                .map_err(|e| self.db_err("open table", e))?;
            t.insert(job.id.as_str(), json(job).as_slice())
                .map_err(|e| self.db_err("insert", e))?;
            if let Some(msg) = event {
                let mut ev = tx
                    .open_table(EVENTS)
                    .map_err(|e| self.db_err("open table", e))?;
                let next = ev
                    .range((job.id.as_str(), 0)..=(job.id.as_str(), u64::MAX))
                    .map_err(|e| self.db_err("scan", e))?
                    .next_back()
                    .transpose()
                    .map_err(|e| self.db_err("scan", e))?
                    .map_or(0, |(k, _)| k.value().1 + 1);
                let e = JobEvent {
                    at: super::time::rfc3339(super::time::now()),
                    message: msg.to_string(),
                };
                ev.insert((job.id.as_str(), next), json(&e).as_slice())
                    .map_err(|e| self.db_err("insert", e))?;
                if next >= MAX_EVENTS_PER_JOB {
                    ev.remove((job.id.as_str(), next - MAX_EVENTS_PER_JOB))
                        .map_err(|e| self.db_err("remove", e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.db_err("commit", e))
    }

    pub fn delete_job(&self, id: &str) -> StoreResult<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(JOBS)
                .map_err(|e| self.db_err("open table", e))?;
            t.remove(id).map_err(|e| self.db_err("remove", e))?;
            let mut ev = tx
                .open_table(EVENTS)
                .map_err(|e| self.db_err("open table", e))?;
            ev.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(|e| self.db_err("remove", e))?;
        }
        tx.commit().map_err(|e| self.db_err("commit", e))
    }

    pub fn events(&self, job_id: &str) -> StoreResult<Vec<JobEvent>> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("begin read", e))?;
        let t = tx
            .open_table(EVENTS)
            .map_err(|e| self.db_err("open table", e))?;
        let mut out = Vec::new();
        for row in t
            .range((job_id, 0)..=(job_id, u64::MAX))
            .map_err(|e| self.db_err("scan", e))?
        {
            let (_, v) = row.map_err(|e| self.db_err("scan", e))?;
            out.push(self.decode(job_id, v.value())?);
        }
        Ok(out)
    }

    pub fn put_export(&self, e: &ExportView) -> StoreResult<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(EXPORTS)
                .map_err(|e| self.db_err("open table", e))?;
            t.insert(e.id.as_str(), json(e).as_slice())
                .map_err(|e| self.db_err("insert", e))?;
        }
        tx.commit().map_err(|e| self.db_err("commit", e))
    }

    /// Drop export `id`'s record (an upload state is dropped by aborting its upload).
    pub fn delete_export(&self, id: &str) -> StoreResult<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(EXPORTS)
                .map_err(|e| self.db_err("open table", e))?;
            t.remove(id).map_err(|e| self.db_err("remove", e))?;
        }
        tx.commit().map_err(|e| self.db_err("commit", e))
    }

    pub fn exports(&self) -> StoreResult<Vec<ExportView>> {
        self.read_all(EXPORTS)
    }

    pub fn export(&self, id: &str) -> StoreResult<Option<ExportView>> {
        self.read_one(EXPORTS, id)
    }

    /// The S3 upload state of export `id`, if one is recorded.
    pub fn upload_state(&self, id: &str) -> StoreResult<Option<UploadState>> {
        self.read_one(EXPORT_UPLOADS, id)
    }

    /// Record (`Some`) or drop (`None`) the S3 upload state of export `id`; durable on return.
    pub fn put_upload_state(&self, id: &str, st: Option<&UploadState>) -> StoreResult<()> {
        let tx = self.begin_write()?;
        {
            let mut t = tx
                .open_table(EXPORT_UPLOADS)
                .map_err(|e| self.db_err("open table", e))?;
            match st {
                Some(st) => t.insert(id, json(st).as_slice()).map(|_| ()),
                None => t.remove(id).map(|_| ()),
            }
            .map_err(|e| self.db_err("insert", e))?;
        }
        tx.commit().map_err(|e| self.db_err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            source_id: "s".into(),
            vm: "vm".into(),
            vm_moref: None,
            vm_instance_uuid: None,
            schedule: Schedule::Once,
            state: JobState::Scheduled,
            runs_completed: 0,
            failures: 0,
            last_error: None,
            next_run: Some(1),
            last_sync: None,
            created: 1,
            run_started: None,
            cancel_requested: false,
            replica: Default::default(),
        }
    }

    #[test]
    fn records_survive_reopen_and_events_are_per_job_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.redb");
        {
            let s = Store::open(&p).unwrap();
            s.update_settings(|st| {
                st.checks_run = true;
                Ok(())
            })
            .unwrap();
            s.put_job(&job("a"), Some("created")).unwrap();
            s.put_job(&job("b"), Some("other")).unwrap();
            let mut a = job("a");
            a.state = JobState::Transferring;
            s.put_job(&a, Some("transferring")).unwrap();
        }
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = Store::open(&p).unwrap();
        assert!(s.settings().unwrap().checks_run);
        assert_eq!(s.job("a").unwrap().unwrap().state, JobState::Transferring);
        let ev: Vec<String> = s
            .events("a")
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(ev, ["created", "transferring"]);
        s.delete_job("a").unwrap();
        assert!(s.job("a").unwrap().is_none());
        assert!(s.events("a").unwrap().is_empty());
        assert_eq!(s.events("b").unwrap().len(), 1);
    }

    #[test]
    fn upload_state_survives_reopen_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.redb");
        let st = UploadState {
            bucket: "b".into(),
            key: "exports/x.raw".into(),
            sync_id: "s1".into(),
            format: "Raw".into(),
            upload_id: "u-1".into(),
            part_size: 8 << 20,
            parts: vec![godwit_transfer::s3_export::PartRecord {
                number: 0,
                content_id: "etag-0".into(),
                sha256: "ab".repeat(32),
            }],
        };
        {
            let s = Store::open(&p).unwrap();
            assert_eq!(s.upload_state("exp-1").unwrap(), None);
            s.put_upload_state("exp-1", Some(&st)).unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.upload_state("exp-1").unwrap(), Some(st));
        s.put_upload_state("exp-1", None).unwrap();
        assert_eq!(s.upload_state("exp-1").unwrap(), None);
        // Dropping what is not there is no error.
        s.put_upload_state("exp-1", None).unwrap();
    }

    #[test]
    fn a_refused_update_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("g.redb")).unwrap();
        let r: Result<(), _> = s.update_settings(|st| {
            st.wizard_done = true;
            Err(CommandError::field("x", "no"))
        });
        assert!(r.is_err());
        assert!(!s.settings().unwrap().wizard_done);
    }

    #[test]
    fn vsphere_jobs_keep_the_vm_identity_and_old_records_still_load() {
        let mut j = job("j1");
        j.vm_moref = Some("vm-60".into());
        j.vm_instance_uuid = Some("5000aaaa-0000-0000-0000-000000000001".into());
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<JobRecord>(&text).unwrap(), j);
        // A record written before the identity was kept.
        let mut old: serde_json::Value = serde_json::to_value(job("j2")).unwrap();
        old.as_object_mut().unwrap().remove("vm_moref");
        let back: JobRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.vm_moref, None);
        assert!(!serde_json::to_string(&back).unwrap().contains("vm_moref"));
    }

    // Staging servers (issue 21).
    #[test]
    fn an_old_one_server_staging_record_reads_as_a_list_of_one() {
        let fp = format!("SHA256:{}", "AB".repeat(32));
        let old = format!(
            r#"{{"kind":"server","address":"stage.example:1500","fingerprint":"{fp}","token":"tok-1"}}"#
        );
        let rec: StagingRecord = serde_json::from_str(&old).unwrap();
        let one = StagingServer {
            address: "stage.example:1500".into(),
            fingerprint: fp.clone(),
        };
        assert!(
            rec == StagingRecord::Server {
                servers: vec![one.clone()],
                token: "tok-1".into()
            }
        );
        // Written back in today's shape, and read again unchanged.
        let text = serde_json::to_string(&rec).unwrap();
        assert!(
            text.contains(r#""servers":[{"address":"stage.example:1500""#),
            "{text}"
        );
        assert!(serde_json::from_str::<StagingRecord>(&text).unwrap() == rec);
        // Through the store, as a whole settings record written by an older service.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("g.redb")).unwrap();
        let mut settings = serde_json::to_value(Settings::default()).unwrap();
        settings["staging"] = serde_json::from_str(&old).unwrap();
        s.put_raw_settings_for_test(&serde_json::to_vec(&settings).unwrap());
        let back = s.settings().unwrap().staging.unwrap();
        assert!(back == rec);
        // An S3 record is unchanged by the conversion.
        let s3 = StagingRecord::S3 {
            endpoint: None,
            region: "r".into(),
            bucket: "b".into(),
            prefix: "p".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
        };
        let t = serde_json::to_string(&s3).unwrap();
        assert!(serde_json::from_str::<StagingRecord>(&t).unwrap() == s3);
    }

    #[test]
    fn events_are_capped_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("g.redb")).unwrap();
        for i in 0..(MAX_EVENTS_PER_JOB + 20) {
            s.put_job(&job("a"), Some(&format!("e{i}"))).unwrap();
        }
        let ev = s.events("a").unwrap();
        assert_eq!(u64::try_from(ev.len()).unwrap(), MAX_EVENTS_PER_JOB);
        assert_eq!(
            ev.last().unwrap().message,
            format!("e{}", MAX_EVENTS_PER_JOB + 19)
        );
    }
}
