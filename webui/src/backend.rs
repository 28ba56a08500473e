//! The contract between the web layer and the appliance core.
//!
//! The web layer (HTML pages and the REST API) owns HTTP: routing, sessions, CSRF, login rate
//! limiting, form parsing and rendering. It holds no business rules: every form or JSON body
//! becomes one of the typed commands below and goes to a [`Backend`], which the `godwit serve`
//! service in `appliance/` implements (settings store, job engine, sources, checks).
//! Validation that is a business rule (address syntax, a fingerprint that must match the
//! probed one) lives in the backend and comes back as [`CommandError::Invalid`] with per-field
//! messages, which the pages show next to the field and the API returns as 422. Rules both
//! sides must apply alike are validated types here ([`AdminPassword`], the password policy),
//! so the service and the web layer's test double refuse the same input with the same message.
//!
//! Secrets (passwords, tokens, S3 keys) travel inward only, as [`Secret`]: views never carry
//! them, `Secret` has no `Serialize` and its `Debug` is redacted.

pub use crate::password::{AdminPassword, WeakPassword};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// A secret value from a form or a JSON body. Never serialised, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is used (hashing, a login, a store write).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandError {
    /// Bad values; each names the form field (same name as the JSON member) it belongs to.
    #[error("invalid input: {}", .fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Invalid { fields: Vec<FieldError> },
    /// The thing named does not exist (HTTP 404).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The state does not allow it now, e.g. the wizard step order or a running job (HTTP 409).
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// A remote system refused or failed (source login, TLS, staging server) (HTTP 502).
    #[error("{message}")]
    Remote { message: String },
    /// Anything else (HTTP 500). The message is safe to show: no secrets.
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl CommandError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        CommandError::Invalid {
            fields: vec![FieldError {
                field: field.to_owned(),
                message: message.into(),
            }],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub type CommandResult<T> = Result<T, CommandError>;

// ---------------------------------------------------------------------------------------------
// Setup and authentication
// ---------------------------------------------------------------------------------------------

/// The wizard's steps, in order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum WizardStep {
    Password,
    Network,
    Staging,
    Sources,
    Checks,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetupStatus {
    /// An admin password exists (preset by a vApp property, or set in the wizard).
    pub password_set: bool,
    /// The first step not yet completed; `Done` once the wizard has been finished.
    pub next_step: WizardStep,
    /// Appliance version, hostname, addresses: shown on the login page and the console.
    pub version: String,
    pub hostname: String,
    pub addresses: Vec<String>,
}

/// First step of the wizard: set the admin password. When no password exists yet, the
/// one-time setup code printed on the console/log must be given (like a router's).
#[derive(Debug, Clone, Deserialize)]
pub struct SetAdminPassword {
    pub setup_code: Option<Secret>,
    /// The current password, required when one is already set (a password change).
    pub current_password: Option<Secret>,
    pub new_password: Secret,
    pub confirm_password: Secret,
}

impl SetAdminPassword {
    /// The new password when it passes the policy ([`crate::password`]) and the confirmation
    /// matches; else the field errors (`new_password`, `confirm_password`). Every backend
    /// runs this same rule before it checks the setup code or the current password.
    pub fn checked_new_password(&self) -> Result<AdminPassword, Vec<FieldError>> {
        match AdminPassword::try_from(self.new_password.clone()) {
            Err(e) => Err(vec![FieldError {
                field: "new_password".into(),
                message: e.message().to_owned(),
            }]),
            Ok(_) if self.new_password != self.confirm_password => Err(vec![FieldError {
                field: "confirm_password".into(),
                message: "does not match the new password".into(),
            }]),
            Ok(p) => Ok(p),
        }
    }
}

/// What checking a password against the admin password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Correct,
    Wrong,
    /// Too many password checks are running at once (each costs ~19 MiB and tens of ms); the
    /// password was not checked. The web layer answers 429 with a short Retry-After.
    Busy,
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AddressMode {
    Dhcp,
    Static {
        /// `192.0.2.10/24`
        address: String,
        gateway: String,
    },
}

/// Network settings: applied to the system on the appliance, stored only in dev mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkSettings {
    pub hostname: String,
    #[serde(flatten)]
    pub address: AddressMode,
    pub dns_servers: Vec<String>,
    pub ntp_servers: Vec<String>,
    /// `http://[user@]host:port`; the proxy password, if any, is kept separately as a secret.
    pub proxy: Option<String>,
}

/// What became of the network settings last saved: on the appliance they are applied to the
/// system (`applying`, then `applied` or `failed`); elsewhere (dev mode) only `stored`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkStatus {
    /// `stored`, `applying`, `applied` or `failed`
    pub state: String,
    /// One sentence for the settings page.
    pub message: String,
    /// RFC 3339
    pub at: String,
}

/// Where replicas go: a Godwit staging server (TCP 1500) or an S3-compatible bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SetStagingTarget {
    Server {
        /// `host` or `host:port` (1500 by default)
        address: String,
        /// `SHA256:<hex>` as the staging server printed it; hex with or without colons.
        fingerprint: String,
        token: Secret,
    },
    S3 {
        /// `https://host[:port]`; empty for AWS itself.
        endpoint: Option<String>,
        region: String,
        bucket: String,
        prefix: String,
        access_key_id: String,
        secret_access_key: Secret,
    },
}

/// The staging target as shown: never the token or the secret key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StagingView {
    None,
    Server {
        address: String,
        fingerprint: String,
    },
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        prefix: String,
        access_key_id: String,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Vsphere,
    Hyperv,
    Scvmm,
}

/// Step one of adding a source: connect, show the certificate, trust nothing yet.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeSource {
    pub kind: SourceKind,
    /// `host` or `host:port` (443 for vSphere, 5986 for WinRM by default)
    pub address: String,
}

/// What the operator must approve before a source is trusted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateView {
    pub address: String,
    /// `SHA256:<HEX>`
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub subject_alt_names: Vec<String>,
}

/// Step two: the operator approved `approved_fingerprint`; log in with it pinned and store.
#[derive(Debug, Clone, Deserialize)]
pub struct AddSource {
    pub kind: SourceKind,
    pub address: String,
    pub username: String,
    pub password: Secret,
    pub approved_fingerprint: String,
    /// SCVMM only: the WinRM HTTPS port of the Hyper-V hosts VMM names (5986 when absent).
    #[serde(default)]
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceView {
    pub id: String,
    pub kind: SourceKind,
    pub address: String,
    pub username: String,
    pub fingerprint: String,
    /// SCVMM only: the Hyper-V hosts' WinRM HTTPS port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// SCVMM only: the hosts whose certificate the operator approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_pins: Vec<HostPinView>,
    /// What the operator knows the source by: its vCenter / Hyper-V host / VMM name (the host
    /// part of `address`), shown instead of `id` (issue 18).
    #[serde(default)]
    pub name: String,
    /// Changed block tracking for this source's jobs (issue 18, settings): on, each run reads
    /// only what changed since the last one (vSphere CBT, Hyper-V RCT); off, every run reads
    /// every disk whole.
    #[serde(default = "cbt_on")]
    pub cbt: bool,
}

fn cbt_on() -> bool {
    true
}

/// Turn changed block tracking on or off for one source's jobs (from their next run).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetSourceCbt {
    pub enabled: bool,
}

/// An update bundle received by `POST /api/v1/update` (issue 18): verified (the signed header
/// against the update key and every file's SHA-256) before anything is installed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateView {
    pub version: String,
    /// Bytes received.
    pub bytes: u64,
    /// The slot files it carries.
    pub files: Vec<String>,
    /// Installed into the inactive system slot (the appliance only; the next boot tries it).
    pub installed: bool,
    /// What was done, in words.
    pub message: String,
}

/// A Hyper-V host of an SCVMM source and the certificate fingerprint approved for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPinView {
    /// VMM's name for the host, or its address (`host` or `host:port`).
    pub host: String,
    /// `SHA256:<hex>`
    pub fingerprint: String,
}

/// Approve the certificate of one Hyper-V host of an SCVMM source (trust on approval: a job on
/// that host is refused, naming the fingerprint to approve, until this is called).
#[derive(Debug, Clone, Deserialize)]
pub struct ApproveHost {
    /// VMM's name for the host, or its address, as the refusal names it.
    pub host: String,
    pub approved_fingerprint: String,
}

/// The appliance's own HTTPS certificate: generated at first start, or uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpsCertificateView {
    /// `SHA256:<hex>` of the leaf certificate, as the console prints it.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub subject_alt_names: Vec<String>,
    /// Certificates served: the leaf and any intermediates.
    pub chain_length: usize,
    /// True when an administrator uploaded it; false for the generated self-signed one.
    pub uploaded: bool,
    /// Whole days until `not_after` (negative once it has expired).
    #[serde(default)]
    pub expires_in_days: i64,
    /// True when it expires within [`RENEWAL_NOTICE_DAYS`]: the settings page and the console
    /// say so.
    #[serde(default)]
    pub renewal_due: bool,
    /// What happens before it expires, one sentence: a generated certificate is replaced by a
    /// new one automatically (its fingerprint changes); an uploaded one must be replaced by
    /// the administrator.
    #[serde(default)]
    pub renewal: String,
}

/// How many days before the HTTPS certificate expires it is renewed (generated) or the
/// administrator is told to upload a new one (uploaded).
pub const RENEWAL_NOTICE_DAYS: i64 = 30;

/// Replace the HTTPS certificate. The chain is PEM, leaf first, then intermediates; the key
/// is a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) that must match the leaf. The new
/// certificate is served at once (no restart) and kept across restarts.
#[derive(Debug, Clone, Deserialize)]
pub struct InstallCertificate {
    pub certificate_pem: String,
    pub private_key_pem: Secret,
}

/// Where the Hyper-V hosts push disk data: `https://HOST[:PORT]` as the hosts reach the
/// appliance (NAT, DNS name), or `null` for the default (the address each host's WinRM
/// connection comes from, and the service's port). Takes effect for the next run, no restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestSettings {
    #[serde(default)]
    pub url: Option<String>,
    /// The most pushed-but-not-yet-stored data all Hyper-V jobs may hold at once, in MiB
    /// (`null`: 256 MiB); lowered by each cycle to what the data partition has free.
    #[serde(default)]
    pub spool_limit_mib: Option<u64>,
}

/// Smallest spool limit: two pushes of 4 MiB must fit.
pub const SPOOL_LIMIT_MIN_MIB: u64 = 8;
/// Largest spool limit (1 TiB).
pub const SPOOL_LIMIT_MAX_MIB: u64 = 1 << 20;

impl IngestSettings {
    /// The spool limit in bytes (`None`: the default), or the field's error: one rule for
    /// every backend.
    pub fn spool_limit_bytes(&self) -> Result<Option<u64>, CommandError> {
        match self.spool_limit_mib {
            None => Ok(None),
            Some(m) if (SPOOL_LIMIT_MIN_MIB..=SPOOL_LIMIT_MAX_MIB).contains(&m) => {
                Ok(Some(m << 20))
            }
            Some(m) => Err(CommandError::field(
                "spool_limit_mib",
                format!(
                    "the spool limit {m} MiB is not between {SPOOL_LIMIT_MIN_MIB} MiB (two pushes) and {SPOOL_LIMIT_MAX_MIB} MiB"
                ),
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettingsView {
    pub network: Option<NetworkSettings>,
    /// Whether the network settings were applied to the system or only stored.
    #[serde(default)]
    pub network_status: Option<NetworkStatus>,
    pub staging: StagingView,
    pub sources: Vec<SourceView>,
    /// Max concurrent transfers (K).
    pub max_concurrent_jobs: u32,
    /// The Hyper-V push URL setting.
    #[serde(default)]
    pub ingest: IngestSettings,
    /// The data partition: job state, logs, spools and local exports live there.
    #[serde(default)]
    pub data_space: Option<DataSpaceView>,
}

/// Size and free space of the file system holding the service's data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataSpaceView {
    /// Where local exports are written (`/data/exports` on the appliance).
    pub exports_dir: String,
    pub total_bytes: u64,
    /// Available to the service now.
    pub free_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Checks, inventory, jobs, ledger
// ---------------------------------------------------------------------------------------------

/// One prerequisite check result, as `godwit check --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckView {
    pub check: String,
    pub target: String,
    /// `pass`, `warn` or `fail`
    pub status: String,
    pub value: String,
    pub remediation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskView {
    /// Index in the order the source lists the VM's disks (as `godwit export --disk N`).
    pub index: u32,
    pub label: String,
    pub capacity_bytes: u64,
    pub backing: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmView {
    pub source_id: String,
    pub name: String,
    pub power_state: String,
    pub guest_os: String,
    pub disks: Vec<DiskView>,
    pub eligible: bool,
    /// Why not eligible (or warnings when eligible).
    pub reasons: Vec<String>,
    /// SCVMM sources: the Hyper-V host that runs the VM (`name (address)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The source's name ([`SourceView::name`]), shown instead of `source_id`.
    #[serde(default)]
    pub source_name: String,
    /// vSphere: the VM's inventory folder path (`DC0/vm/Finance`), for the inventory tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Once,
    EveryHours { hours: u32 },
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateJob {
    pub source_id: String,
    pub vm: String,
    pub schedule: Schedule,
}

/// A job's state as persisted by the engine.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its next run (or for a transfer slot).
    Scheduled,
    Snapshotting,
    Transferring,
    RemovingSnapshot,
    /// A run failed; retried after `next_run`.
    RetryWait,
    /// One-time job finished.
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second over the last few seconds.
    pub throughput_bps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobView {
    pub id: String,
    pub source_id: String,
    pub vm: String,
    pub schedule: Schedule,
    pub state: JobState,
    pub progress: Option<Progress>,
    pub runs_completed: u32,
    pub last_error: Option<String>,
    /// RFC 3339
    pub next_run: Option<String>,
    pub last_sync: Option<String>,
    /// The source's name ([`SourceView::name`]), shown instead of `source_id`.
    #[serde(default)]
    pub source_name: String,
    /// The replication view (issue #18): lifecycle state, ETA, lag, disks, phases, typed error.
    #[serde(flatten)]
    pub replication: ReplicationView,
    /// Issue 21: the staging server (`host:port`) the current or last run went through since
    /// the service started; `null` for an S3 target or before a run.
    #[serde(default)]
    pub staging_target: Option<String>,
}

/// One entry of a job's timeline (history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobEvent {
    /// RFC 3339
    pub at: String,
    pub message: String,
}

/// Recent throughput samples for the dashboard chart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThroughputSample {
    /// Unix seconds
    pub at: u64,
    pub bytes_per_second: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntryView {
    pub source_id: String,
    pub vm: String,
    pub snapshot_name: String,
    /// `pending`, `created`, `removed`, `remove_failed`
    pub state: String,
    pub recorded_at: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Vmdk,
    Vhdx,
    Vhd,
    Raw,
}

/// Export the latest replica of one disk as an importable image.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateExport {
    pub job_id: String,
    pub disk: u32,
    pub format: ExportFormat,
    /// A file name or a path under the export directory (`/data/exports/` on the appliance;
    /// made new, never overwriting a file), or `s3://bucket/key`.
    pub destination: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportView {
    pub id: String,
    pub job_id: String,
    pub disk: u32,
    pub format: ExportFormat,
    pub destination: String,
    /// `running`, `done`, `failed`, `cancelled`
    pub state: String,
    /// SHA-256 of the disk's raw CONTENT (what `qemu-img convert -O raw` of the source hashes
    /// to), checked against the hash recorded at replication. Differs from `file_sha256` for
    /// every format but raw.
    pub sha256: Option<String>,
    /// SHA-256 of the exported FILE's bytes (what `sha256sum` of the download prints).
    #[serde(default)]
    pub file_sha256: Option<String>,
    // --- issue 18, typed export errors (wt-errors) ---
    /// Why it failed or stopped, typed like a job's error (`code`, `message`, `remediation`,
    /// `detail`). A record written before exports had typed errors holds a plain string: it
    /// reads back as `code: ""` with the string as `detail`, and the service classifies it.
    #[serde(default, deserialize_with = "export_error_compat")]
    pub error: Option<JobError>,
    // --- end typed export errors ---
    /// Size of the exported file in bytes, once done.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// A finished local export: `GET /api/v1/exports/{id}/download` serves its file.
    #[serde(default)]
    pub downloadable: bool,
    /// The VM whose disk this is (the job's VM).
    #[serde(default)]
    pub vm: String,
    /// Bytes of the disk's content read so far, and in all (allocated data, so a sparse disk is
    /// not over-estimated); both 0 until known.
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes per second since the export started (0 when unknown).
    #[serde(default)]
    pub throughput_bps: u64,
    /// Seconds left at the current rate (`null` when unknown or finished).
    #[serde(default)]
    pub eta_seconds: Option<u64>,
    /// RFC 3339: when it started, and when it ended (done, failed or cancelled).
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Issue 21: the staging server (`host:port`) the export reads through (the last one, once
    /// ended); `null` for an S3 target.
    #[serde(default)]
    pub staging_target: Option<String>,
}

// --- Staging servers (issue 21): several servers of one store ---------------------------------

/// One staging server of the store with its state as the service last saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagingServerView {
    /// `host:port`
    pub address: String,
    /// The approved certificate, `SHA256:AB:CD:…`
    pub fingerprint: String,
    /// Whether it answered and took the token at the last attempt (`null`: not tried yet).
    pub reachable: Option<bool>,
    /// What went wrong at the last attempt, if it failed.
    pub last_error: Option<String>,
    /// RFC 3339: the last connection a run or an export made through it.
    pub last_used: Option<String>,
    /// RFC 3339: the last attempt (a use or a check).
    pub last_checked: Option<String>,
    /// Runs and exports going through it now.
    pub in_use: u32,
}

/// Step one of adding a staging server: connect, show its certificate, trust nothing yet.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeStagingServer {
    /// `host` or `host:port` (1500 by default)
    pub address: String,
}

/// Step two: the operator approved `approved_fingerprint`; the server must answer with that
/// certificate and take the stored token before it is added.
#[derive(Debug, Clone, Deserialize)]
pub struct AddStagingServer {
    pub address: String,
    pub approved_fingerprint: String,
}

// --- end staging servers -----------------------------------------------------------------------

/// A finished local export's file, opened for a download.
#[derive(Debug)]
pub struct ExportFile {
    /// Opened read-only (never through a symlink).
    pub file: std::fs::File,
    pub len: u64,
    /// The file's name, for `Content-Disposition`.
    pub file_name: String,
    /// Hex SHA-256 of the file's bytes, as recorded when it was written.
    pub sha256: String,
}

// ---------------------------------------------------------------------------------------------
// Operator pages (issue 18): source names, bulk job creation, persisted check results, transfer
// settings, editing a source's credentials.
// ---------------------------------------------------------------------------------------------

/// What the operator knows a source by: the host part of its `host[:port]` address (the
/// vCenter's, Hyper-V host's or VMM server's name), shown instead of its id.
pub fn source_name(address: &str) -> String {
    let a = address.trim();
    if let Some(rest) = a.strip_prefix('[') {
        // `[v6]:port`
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host.into(),
        _ => a.to_string(),
    }
}

/// One VM of a bulk job creation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRef {
    pub source_id: String,
    pub vm: String,
}

/// Create one job per VM, all with the same schedule; each VM's outcome is reported.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateJobs {
    pub vms: Vec<VmRef>,
    pub schedule: Schedule,
}

/// Most VMs one bulk creation may name.
pub const MAX_BULK_VMS: usize = 1000;

impl CreateJobs {
    /// The shared rule: at least one VM, at most [`MAX_BULK_VMS`], each named once.
    pub fn check(&self) -> CommandResult<()> {
        if self.vms.is_empty() {
            return Err(CommandError::field("vms", "select at least one VM"));
        }
        if self.vms.len() > MAX_BULK_VMS {
            return Err(CommandError::field(
                "vms",
                format!(
                    "{} VMs selected; at most {MAX_BULK_VMS} at once",
                    self.vms.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.vms {
            if !seen.insert((&v.source_id, &v.vm)) {
                return Err(CommandError::field(
                    "vms",
                    format!("{} is selected twice", v.vm),
                ));
            }
        }
        Ok(())
    }
}

/// What became of one VM of a [`CreateJobs`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BulkJobResult {
    pub source_id: String,
    pub vm: String,
    /// `created` or `refused`
    pub outcome: String,
    /// The new job (created).
    #[serde(default)]
    pub job_id: Option<String>,
    /// Why not (refused): the backend's message.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The last prerequisite checks run, kept so the pages show them again, with when they ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChecksReport {
    /// RFC 3339
    pub at: String,
    pub results: Vec<CheckView>,
}

impl ChecksReport {
    /// How many checks failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|c| c.status == "fail").count()
    }
}

/// Bandwidth and concurrency of replication, applied from the next disk a job reads (no
/// restart).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferSettings {
    /// Limit of each transfer in Mbit/s (`null`: none).
    #[serde(default)]
    pub bandwidth_limit_mbps: Option<u64>,
    /// A lower limit during business hours (`null`: the same all day), Mbit/s.
    #[serde(default)]
    pub business_hours_limit_mbps: Option<u64>,
    /// Business hours in the appliance's clock (UTC), Monday to Friday: `[start, end)` hours.
    #[serde(default = "default_business_start")]
    pub business_hours_start: u8,
    #[serde(default = "default_business_end")]
    pub business_hours_end: u8,
    /// How many jobs transfer at once.
    pub max_concurrent_jobs: u32,
}

fn default_business_start() -> u8 {
    8
}
fn default_business_end() -> u8 {
    18
}

/// Largest limit (100 Gbit/s) and most concurrent transfers accepted.
pub const MAX_LIMIT_MBPS: u64 = 100_000;
pub const MAX_CONCURRENT_JOBS: u32 = 64;

impl TransferSettings {
    /// The shared rule for every backend; field errors name the JSON members.
    pub fn check(&self) -> CommandResult<()> {
        let mut fields = Vec::new();
        let mut bad = |f: &str, m: String| {
            fields.push(FieldError {
                field: f.into(),
                message: m,
            })
        };
        for (f, v) in [
            ("bandwidth_limit_mbps", self.bandwidth_limit_mbps),
            ("business_hours_limit_mbps", self.business_hours_limit_mbps),
        ] {
            if let Some(v) = v
                && !(1..=MAX_LIMIT_MBPS).contains(&v)
            {
                bad(
                    f,
                    format!("{v} Mbit/s is not between 1 and {MAX_LIMIT_MBPS} Mbit/s"),
                );
            }
        }
        if self.business_hours_start > 23 || self.business_hours_end > 24 {
            bad(
                "business_hours_start",
                "hours are 0 to 23 (start) and 1 to 24 (end)".into(),
            );
        } else if self.business_hours_start >= self.business_hours_end {
            bad(
                "business_hours_end",
                "business hours must end after they start".into(),
            );
        }
        if !(1..=MAX_CONCURRENT_JOBS).contains(&self.max_concurrent_jobs) {
            bad(
                "max_concurrent_jobs",
                format!("between 1 and {MAX_CONCURRENT_JOBS}"),
            );
        }
        if fields.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Invalid { fields })
        }
    }

    /// The limit in bytes per second at `unix_secs` (UTC), `None` for no limit.
    pub fn limit_bytes_per_sec_at(&self, unix_secs: u64) -> Option<u64> {
        let day = unix_secs / 86_400;
        // 1970-01-01 was a Thursday: 0 = Thursday, so Monday..Friday are 4,5,6,0,1.
        let weekday = (day + 3) % 7; // 0 = Monday
        let hour = (unix_secs % 86_400) / 3600;
        let business = weekday < 5
            && hour >= u64::from(self.business_hours_start)
            && hour < u64::from(self.business_hours_end);
        let mbps = match (business, self.business_hours_limit_mbps) {
            (true, Some(b)) => Some(self.bandwidth_limit_mbps.map_or(b, |l| l.min(b))),
            _ => self.bandwidth_limit_mbps,
        };
        mbps.map(|m| m.saturating_mul(125_000))
    }
}

/// An export's disk must be one of the VM's disks: else a refusal on the `disk` field naming
/// the ones it has (the rule every backend applies when the form is posted).
pub fn check_disk(vm: &VmView, disk: u32) -> CommandResult<()> {
    if vm.disks.iter().any(|d| d.index == disk) {
        return Ok(());
    }
    let have = vm
        .disks
        .iter()
        .map(|d| format!("{} ({})", d.index, d.label))
        .collect::<Vec<_>>()
        .join(", ");
    Err(CommandError::field(
        "disk",
        format!("{} has no disk {disk}; its disks are {have}", vm.name),
    ))
}

/// New credentials for a source: checked by logging in with them (the approved certificate
/// pinned) before they replace the stored ones.
#[derive(Debug, Clone, Deserialize)]
pub struct SetSourceCredentials {
    pub username: String,
    pub password: Secret,
}

// ---------------------------------------------------------------------------------------------
// Replication view (issue #18): lifecycle states, per-disk progress, phases, typed errors
// ---------------------------------------------------------------------------------------------

/// Where a job is in its replication lifecycle (like AWS MGN's), derived from its state, its
/// last consistent replica and its failures.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    /// No consistent replica yet: the first full copy is running or waiting to start.
    #[default]
    InitialSync,
    /// A replica exists and an incremental run is copying what changed since.
    Backlog,
    /// In sync: the last run succeeded and the next one is scheduled.
    Continuous,
    /// Runs are failing (retrying, or given up): `stalled_reason` says why.
    Stalled,
    /// A replica exists and no further run is scheduled (a one-time job that completed):
    /// "Run now" takes it up again.
    Paused,
    /// The operator cancelled the job.
    Cancelled,
}

impl ReplicationState {
    pub fn label(self) -> &'static str {
        match self {
            ReplicationState::InitialSync => "initial sync",
            ReplicationState::Backlog => "backlog",
            ReplicationState::Continuous => "continuous",
            ReplicationState::Stalled => "stalled",
            ReplicationState::Paused => "paused",
            ReplicationState::Cancelled => "cancelled",
        }
    }

    /// One sentence, shown on hover.
    pub fn explanation(self) -> &'static str {
        match self {
            ReplicationState::InitialSync => {
                "No consistent replica yet: the first full copy of every disk is running or waiting to start."
            }
            ReplicationState::Backlog => {
                "A replica exists; a run is copying what changed since the last one."
            }
            ReplicationState::Continuous => {
                "In sync: the last run made a consistent replica and the next run is scheduled."
            }
            ReplicationState::Stalled => {
                "Runs are failing; the reason and what to do are shown with the job."
            }
            ReplicationState::Paused => {
                "A consistent replica exists and no further run is scheduled; Run now starts one."
            }
            ReplicationState::Cancelled => "The job was cancelled; Run now starts it again.",
        }
    }
}

// --- issue 18, typed export errors (wt-errors) ---
/// An export's `error`: a [`JobError`], or the plain string older records hold.
fn export_error_compat<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<JobError>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Typed(JobError),
        Plain(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Typed(e)) => Some(e),
        Some(Either::Plain(s)) => Some(JobError {
            code: String::new(),
            message: s.clone(),
            remediation: String::new(),
            detail: Some(s),
        }),
    })
}
// --- end typed export errors ---

/// A failure as the operator sees it: a stable code, one line saying what happened, one saying
/// what to do, and the raw detail for support.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobError {
    /// Stable, dotted: `vsphere.file_not_found`, `staging.unreachable`, ...
    pub code: String,
    pub message: String,
    pub remediation: String,
    /// The error as the component reported it (for support; may be long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One disk of a job's VM: the current run's progress on it and its last replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskProgress {
    pub index: u32,
    pub label: String,
    pub capacity_bytes: u64,
    /// Virtual bytes of the disk dealt with in the current (or last) run.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// `pending`, `reading`, `done`, `failed` (in the current or last run), or `idle`.
    pub state: String,
    pub throughput_bps: u64,
    /// The sync id of the disk's last replica.
    pub last_sync: Option<String>,
    /// SHA-256 of the last replica's raw content (`None` for an incremental run that did not
    /// read the whole disk).
    pub sha256: Option<String>,
}

/// One step of the current (or last) run's checklist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhaseView {
    pub name: String,
    /// `done`, `running`, `pending`, `failed`
    pub state: String,
    /// RFC 3339, once done.
    pub at: Option<String>,
}

/// Where a job's last (or current) run spent its time, in milliseconds. Reading, hashing and
/// compressing are summed over the worker threads; sending and waiting for staging are the
/// sender's time writing to the connection and waiting for the staging server's
/// acknowledgements.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StageTimes {
    pub read_ms: u64,
    pub hash_ms: u64,
    pub compress_ms: u64,
    pub send_ms: u64,
    pub staging_wait_ms: u64,
    /// Wall-clock time of the disks' transfers.
    pub wall_ms: u64,
}

/// The replication view of a job (flattened into [`JobView`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationView {
    #[serde(default)]
    pub replication_state: ReplicationState,
    /// Why the job is stalled (the error's message), only when it is.
    #[serde(default)]
    pub stalled_reason: Option<String>,
    /// The current run's phase in words (`reading disk 1 of 2`), `None` when no run is active.
    #[serde(default)]
    pub phase: Option<String>,
    /// Seconds left in the running sync, from the allocated bytes left to read and the read
    /// rate; `None` when unknown (no run, or nothing measured yet).
    #[serde(default)]
    pub eta_seconds: Option<u64>,
    /// Seconds since the snapshot of the last consistent replica; `None` before the first.
    #[serde(default)]
    pub lag_seconds: Option<u64>,
    #[serde(default)]
    pub disks: Vec<DiskProgress>,
    /// The current (or last) run's checklist.
    #[serde(default)]
    pub phases: Vec<PhaseView>,
    /// The last run's failure, typed; `None` after a good run.
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub stages: Option<StageTimes>,
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

/// Implemented by the appliance core. Every method is one command or one query; the web layer
/// calls nothing else. Futures are `Send` so handlers can run on any runtime thread.
pub trait Backend: Send + Sync + 'static {
    // setup and auth
    fn setup_status(&self) -> impl Future<Output = SetupStatus> + Send;
    fn set_admin_password(
        &self,
        cmd: SetAdminPassword,
    ) -> impl Future<Output = CommandResult<()>> + Send;
    /// Whether `password` is the admin password. Rate limiting is the web layer's job (it counts
    /// the attempt before calling this); bounding how many hashes run at once is the backend's
    /// (`Busy` when it cannot check now).
    fn verify_admin_password(
        &self,
        password: &Secret,
    ) -> impl Future<Output = PasswordCheck> + Send;

    // settings and the wizard
    fn settings(&self) -> impl Future<Output = SettingsView> + Send;
    fn set_network(&self, cmd: NetworkSettings) -> impl Future<Output = CommandResult<()>> + Send;
    fn set_staging(&self, cmd: SetStagingTarget) -> impl Future<Output = CommandResult<()>> + Send;
    /// Set (or with `url: null` clear) the URL Hyper-V hosts push to; a malformed URL is a
    /// field error on `url`.
    fn set_ingest(
        &self,
        cmd: IngestSettings,
    ) -> impl Future<Output = CommandResult<IngestSettings>> + Send;
    fn probe_source(
        &self,
        cmd: ProbeSource,
    ) -> impl Future<Output = CommandResult<CertificateView>> + Send;
    fn add_source(&self, cmd: AddSource) -> impl Future<Output = CommandResult<SourceView>> + Send;
    fn remove_source(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;
    /// Pin a Hyper-V host of an SCVMM source (NotFound for an unknown source, Conflict for a
    /// source that is not SCVMM, a field error for a malformed fingerprint or empty host).
    fn approve_source_host(
        &self,
        id: String,
        cmd: ApproveHost,
    ) -> impl Future<Output = CommandResult<SourceView>> + Send;
    fn run_checks(&self) -> impl Future<Output = CommandResult<Vec<CheckView>>> + Send;
    /// Marks the wizard finished; refused (Conflict) while earlier steps are missing.
    fn finish_wizard(&self) -> impl Future<Output = CommandResult<()>> + Send;
    /// The certificate the HTTPS listener serves now.
    fn https_certificate(&self)
    -> impl Future<Output = CommandResult<HttpsCertificateView>> + Send;
    /// Check and install an uploaded certificate; refusals name the field
    /// (`certificate_pem` or `private_key_pem`) and never echo the key.
    fn install_certificate(
        &self,
        cmd: InstallCertificate,
    ) -> impl Future<Output = CommandResult<HttpsCertificateView>> + Send;

    // operation
    fn inventory(&self, refresh: bool) -> impl Future<Output = CommandResult<Vec<VmView>>> + Send;
    fn create_job(&self, cmd: CreateJob) -> impl Future<Output = CommandResult<JobView>> + Send;
    fn jobs(&self) -> impl Future<Output = Vec<JobView>> + Send;
    fn job(&self, id: String) -> impl Future<Output = CommandResult<JobView>> + Send;
    fn job_events(&self, id: String) -> impl Future<Output = CommandResult<Vec<JobEvent>>> + Send;
    /// Start a run now (a scheduled job) or retry a failed one.
    fn run_job_now(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;
    fn cancel_job(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;
    fn delete_job(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;
    fn throughput(&self) -> impl Future<Output = Vec<ThroughputSample>> + Send;
    fn ledger(&self) -> impl Future<Output = Vec<LedgerEntryView>> + Send;
    fn create_export(
        &self,
        cmd: CreateExport,
    ) -> impl Future<Output = CommandResult<ExportView>> + Send;
    fn exports(&self) -> impl Future<Output = Vec<ExportView>> + Send;
    /// Cancel a running export (state `cancelled`; an S3 upload is aborted). NotFound for an
    /// unknown id, Conflict when it is not running.
    fn cancel_export(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;
    /// The file of a finished local export, for a download. NotFound for an unknown id,
    /// Conflict for an export that is not a finished local file (running, failed, S3) or
    /// whose file changed since it was written.
    fn export_file(&self, id: String) -> impl Future<Output = CommandResult<ExportFile>> + Send;
    /// Delete an export to free space: its local file and its record (an S3 object is left
    /// in the bucket). Conflict while it runs (cancel it first).
    fn delete_export(&self, id: String) -> impl Future<Output = CommandResult<()>> + Send;

    // diagnostics
    /// The last `lines` log lines (structured log, secrets never logged in the first place).
    fn logs(&self, lines: usize) -> impl Future<Output = Vec<String>> + Send;
    /// A `.tar.gz` with logs, settings (secrets redacted) and job timelines.
    fn support_bundle(&self) -> impl Future<Output = CommandResult<Vec<u8>>> + Send;
    /// Prometheus text exposition.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    // operator pages (issue 18)
    /// Create one job per VM with one schedule; every VM's outcome is reported (one refused
    /// VM does not stop the others). Refused as a whole only when the list itself is bad.
    fn create_jobs(
        &self,
        cmd: CreateJobs,
    ) -> impl Future<Output = CommandResult<Vec<BulkJobResult>>> + Send {
        async move {
            cmd.check()?;
            let mut out = Vec::with_capacity(cmd.vms.len());
            for v in cmd.vms {
                let r = self
                    .create_job(CreateJob {
                        source_id: v.source_id.clone(),
                        vm: v.vm.clone(),
                        schedule: cmd.schedule.clone(),
                    })
                    .await;
                out.push(match r {
                    Ok(j) => BulkJobResult {
                        source_id: v.source_id,
                        vm: v.vm,
                        outcome: "created".into(),
                        job_id: Some(j.id),
                        reason: None,
                    },
                    Err(e) => BulkJobResult {
                        source_id: v.source_id,
                        vm: v.vm,
                        outcome: "refused".into(),
                        job_id: None,
                        reason: Some(match e {
                            CommandError::Invalid { fields } => fields
                                .iter()
                                .map(|f| format!("{}: {}", f.field, f.message))
                                .collect::<Vec<_>>()
                                .join("; "),
                            CommandError::NotFound { message }
                            | CommandError::Conflict { message }
                            | CommandError::Remote { message }
                            | CommandError::Internal { message } => message,
                        }),
                    },
                });
            }
            Ok(out)
        }
    }
    /// The last checks run (by the wizard, the settings page or the API), `None` before any.
    fn last_checks(&self) -> impl Future<Output = Option<ChecksReport>> + Send;
    fn transfer_settings(&self) -> impl Future<Output = TransferSettings> + Send;
    /// Store and apply (no restart) bandwidth and concurrency settings.
    fn set_transfer_settings(
        &self,
        cmd: TransferSettings,
    ) -> impl Future<Output = CommandResult<TransferSettings>> + Send;
    /// Replace a source's user name and password after logging in with them.
    fn set_source_credentials(
        &self,
        id: String,
        cmd: SetSourceCredentials,
    ) -> impl Future<Output = CommandResult<SourceView>> + Send;
    /// Changed block tracking on or off for a source's jobs, from their next run (issue 18).
    fn set_source_cbt(
        &self,
        id: String,
        cmd: SetSourceCbt,
    ) -> impl Future<Output = CommandResult<SourceView>> + Send;
    /// Receive an update bundle (streamed; `declared` is its Content-Length), verify it and,
    /// on the appliance only, install it (issue 18).
    fn upload_update(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
    ) -> impl Future<Output = CommandResult<UpdateView>> + Send;

    // replication view (issue #18)
    /// Recent throughput samples of one job (NotFound for an unknown id).
    fn job_throughput(
        &self,
        id: String,
    ) -> impl Future<Output = CommandResult<Vec<ThroughputSample>>> + Send;

    // staging servers (issue 21)
    /// The staging servers of the store, each checked now (a few seconds at most); empty when
    /// the staging target is an S3 bucket or not set.
    fn staging_servers(&self) -> impl Future<Output = Vec<StagingServerView>> + Send;
    /// Connect to a would-be staging server and describe its certificate, trusting nothing.
    fn probe_staging_server(
        &self,
        cmd: ProbeStagingServer,
    ) -> impl Future<Output = CommandResult<CertificateView>> + Send;
    /// Add a server of the same store (Conflict unless the target is staging servers, or when
    /// it is listed already; Remote when it does not answer with the approved certificate or
    /// refuses the token).
    fn add_staging_server(
        &self,
        cmd: AddStagingServer,
    ) -> impl Future<Output = CommandResult<StagingServerView>> + Send;
    /// Remove a server (NotFound when not listed, Conflict for the last one).
    fn remove_staging_server(
        &self,
        address: String,
    ) -> impl Future<Output = CommandResult<()>> + Send;
}
