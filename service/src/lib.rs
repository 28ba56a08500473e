//! # godwit-service
//!
//! The connector core behind `godwit serve` and the web UI. [`Appliance`] implements the web
//! layer's [`Backend`] contract over the redb store ([`store`]), the job engine ([`engine`]),
//! sources ([`sources`]), checks, exports and diagnostics ([`bundle`], [`logs`]).
//!
//! Secrets (admin password hash, setup-code hash, source passwords, staging token, S3 key) live
//! only in the store; every view is built field by field without them.

pub mod auth;
pub mod bundle;
mod commands;
pub mod engine;
// issue #18: typed errors with remediation
pub mod errors;
pub mod export;
pub mod export_files;
pub mod host_network;
pub mod https_identity;
pub mod ingest;
pub mod job;
pub mod listener;
pub mod logs;
pub mod memory;
pub mod network;
pub mod scvmm;
pub mod sessions;
pub mod sources;
pub mod space;
pub mod staging_space;
pub mod staging_target;
pub mod store;
pub mod time;
pub mod tls;
pub mod tls_upload;
pub mod update_upload;

use engine::{Engine, EngineOptions};
use godwit_webui::backend::*;
use logs::LogRing;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use store::{Settings, StagingRecord, Store};

/// What the service is told at start.
#[derive(Clone, Debug)]
pub struct ApplianceConfig {
    pub data: PathBuf,
    pub hostname: String,
    pub addresses: Vec<String>,
    pub engine: EngineOptions,
    /// Written to the settings at start when given (`--max-concurrent-jobs`).
    pub max_concurrent_jobs: Option<u32>,
    /// On the appliance (`--system-network FILE`): network settings are saved to this file
    /// (read at boot) and applied to the system; without it they are only stored.
    pub system_network: Option<PathBuf>,
    /// What applies them to the system (the binary's `system::net`) when `system_network` is
    /// set.
    pub system: Option<Arc<dyn host_network::ApplyNetwork>>,
    /// Where local exports are written (`--exports-dir`; default `DATA/exports`).
    pub exports_dir: Option<PathBuf>,
    /// Update bundle upload (issue 18): the public key bundles must be signed with
    /// (`--update-key`), and what installs a verified one (the appliance only).
    pub update_key: Option<PathBuf>,
    pub update: Option<Arc<dyn update_upload::InstallUpdate>>,
}

impl ApplianceConfig {
    /// The directory local exports go under.
    pub fn exports_dir(&self) -> PathBuf {
        self.exports_dir
            .clone()
            .unwrap_or_else(|| self.data.join("exports"))
    }
}

pub struct Appliance {
    store: Arc<Store>,
    engine: Arc<Engine>,
    cfg: ApplianceConfig,
    logs: LogRing,
    inventory: tokio::sync::Mutex<Option<Vec<VmView>>>,
    http_requests: AtomicU64,
    handle: tokio::runtime::Handle,
    /// Held while network settings are applied (one change at a time).
    net_apply: Arc<tokio::sync::Mutex<()>>,
    /// Running exports' cancel flags, by export id.
    export_flags: Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>>,
    /// Running exports' progress, by export id (issue 18).
    export_meters: Arc<std::sync::Mutex<HashMap<String, Arc<godwit_disk::progress::Meter>>>>,
    /// The listener's certificate, once `godwit serve` attached it.
    https: std::sync::Mutex<Option<https_identity::HttpsIdentity>>,
    /// The Hyper-V host-push ingest on the same listener, once attached.
    ingest: std::sync::OnceLock<Arc<ingest::ServiceIngest>>,
    /// Where every password hash and check runs (at most two at once).
    hashes: auth::HashPool,
    /// Whether the setup wizard is finished (the console banner follows it).
    setup_done: tokio::sync::watch::Sender<bool>,
    /// Update bundle upload (issue 18).
    updates: update_upload::Updates,
}

/// Lock a mutex, taking over one a panicking thread left poisoned (the data is plain).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Map a task join failure (a panic in blocking code) to a safe message.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> CommandResult<T> {
    r.map_err(|e| CommandError::Internal {
        message: format!("background task failed: {e}"),
    })
}

// --- issue 18, typed errors in the service (wt-errors) ---
/// Why the service could not open, or set its first secrets (anyhow only in the binary).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A file system step: what was being done, and why it failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A setting or secret could not be recorded or made.
    #[error("{0}")]
    Failed(String),
}

/// `map_err` for a file system step named `what`.
fn io_step(what: String) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |source| ServiceError::Io { what, source }
}

fn failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Failed(e.to_string())
}
// --- end typed errors in the service ---

fn random_id(prefix: &str) -> String {
    let b: [u8; 5] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

impl Appliance {
    /// Open the store in `cfg.data` (created mode 0700) and build the engine. Call
    /// [`Appliance::start`] to recover and run jobs.
    pub fn open(
        cfg: ApplianceConfig,
        logs: LogRing,
        handle: tokio::runtime::Handle,
    ) -> Result<Arc<Appliance>, ServiceError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&cfg.data)
            .map_err(io_step(format!("creating {}", cfg.data.display())))?;
        std::fs::set_permissions(&cfg.data, std::fs::Permissions::from_mode(0o700))
            .map_err(io_step(format!("chmod 0700 {}", cfg.data.display())))?;
        let store = Arc::new(Store::open(&cfg.data.join("godwit.redb"))?);
        if let Some(k) = cfg.max_concurrent_jobs {
            if k < 1 {
                return Err(failed("--max-concurrent-jobs must be at least 1"));
            }
            store
                .update_settings(|s| {
                    s.max_concurrent_jobs = Some(k);
                    Ok(())
                })
                .map_err(failed)?;
        }
        let (setup_done, _) = tokio::sync::watch::channel(store.settings()?.wizard_done);
        let engine = Engine::new(
            store.clone(),
            cfg.data.clone(),
            handle.clone(),
            cfg.engine.clone(),
        );
        let (update_key, update_installer) = (cfg.update_key.clone(), cfg.update.clone());
        Ok(Arc::new(Appliance {
            store,
            engine,
            cfg,
            logs,
            inventory: tokio::sync::Mutex::new(None),
            http_requests: AtomicU64::new(0),
            handle,
            net_apply: Arc::default(),
            export_flags: Arc::default(),
            export_meters: Arc::default(),
            https: std::sync::Mutex::new(None),
            ingest: std::sync::OnceLock::new(),
            hashes: auth::HashPool::default(),
            setup_done,
            updates: update_upload::Updates::new(update_key, update_installer),
        }))
    }

    /// Set the admin password from a file (first line) when none is set yet (the vApp
    /// property path). Returns whether it was set. A password the policy refuses is not set
    /// (the error is logged and the one-time setup code is printed instead), so the appliance
    /// stays reachable.
    pub fn preset_password(&self, file: &Path) -> Result<bool, ServiceError> {
        if self.store.settings()?.admin_password_hash.is_some() {
            return Ok(false);
        }
        let text = std::fs::read_to_string(file).map_err(io_step(format!(
            "reading the admin password file {}",
            file.display()
        )))?;
        let pw = text.lines().next().unwrap_or("").to_string();
        let pw = match AdminPassword::try_from(pw) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "the admin password in {} is not accepted ({e}); set one with the setup code instead",
                    file.display()
                );
                return Ok(false);
            }
        };
        let h = auth::hash(pw.expose()).map_err(failed)?;
        self.store
            .update_settings(|s| {
                s.admin_password_hash = Some(h);
                s.setup_code_hash = None;
                Ok(())
            })
            .map_err(failed)?;
        tracing::info!("admin password preset from {}", file.display());
        Ok(true)
    }

    /// When no admin password is set: a fresh one-time setup code (stored hashed, replacing any
    /// earlier one) to print on the console.
    pub fn new_setup_code_if_needed(&self) -> Result<Option<String>, ServiceError> {
        if self.store.settings()?.admin_password_hash.is_some() {
            return Ok(None);
        }
        let code = auth::new_setup_code();
        let h = auth::hash(&code).map_err(failed)?;
        self.store
            .update_settings(|s| {
                s.setup_code_hash = Some(h);
                Ok(())
            })
            .map_err(failed)?;
        Ok(Some(code))
    }

    /// Follows whether the setup wizard is finished (`godwit serve` tells the console).
    pub fn setup_done(&self) -> tokio::sync::watch::Receiver<bool> {
        self.setup_done.subscribe()
    }

    /// Where the web layer keeps logged-in sessions across restarts (hashed ids, expiry).
    pub fn session_vault(&self) -> Result<Arc<dyn godwit_webui::SessionVault>, ServiceError> {
        let t = sessions::SessionTable::open(self.store.clone()).map_err(failed)?;
        Ok(t)
    }

    /// Give the service the HTTPS listener's identity, so the settings can show and replace it.
    pub fn attach_https(&self, https: https_identity::HttpsIdentity) {
        if let Some(i) = self.ingest.get() {
            i.set_pin(https.leaf_der());
        }
        *lock(&self.https) = Some(https);
    }

    /// Give the service the host-push ingest mounted on its listener (before
    /// [`Appliance::attach_https`]): Hyper-V jobs push through it, and it pins the listener's
    /// certificate, also after an upload replaced it.
    pub fn attach_ingest(&self, ingest: Arc<ingest::ServiceIngest>) {
        if let Some(h) = lock(&self.https).as_ref() {
            ingest.set_pin(h.leaf_der());
        }
        let s = self.store.settings().ok();
        ingest.set_configured_url(s.as_ref().and_then(|s| s.ingest_url.clone()));
        ingest.set_spool_limit(s.and_then(|s| s.ingest_spool_limit_mib).map(|m| m << 20));
        let _ = self.ingest.set(ingest.clone());
        self.engine.set_ingest(ingest);
    }

    /// Renew the generated HTTPS certificate when it is due (the Hyper-V uploader's pin follows).
    pub fn renew_https_if_due(&self) {
        let mut g = lock(&self.https);
        let Some(h) = g.as_mut() else { return };
        match h.renew_if_due() {
            Ok(Some(_)) => {
                if let Some(i) = self.ingest.get() {
                    i.set_pin(h.leaf_der());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!("renewing the HTTPS certificate: {e:#}"),
        }
    }

    /// Recover runs cut short by a stop, sweep leftover snapshots, then let the job engine
    /// start due jobs.
    pub async fn start(self: Arc<Self>) {
        self.adopt_system_network();
        self.engine.spawn_owner();
        match self.engine.recover().await {
            0 => {}
            n => tracing::info!("{n} job run(s) interrupted by a stop will start again"),
        }
        let swept = self.engine.sweep_ledgers().await;
        if !swept.is_empty() {
            tracing::info!(snapshots = ?swept, "removed leftover snapshots");
        }
        self.engine.begin();
        match self.resume_exports() {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} export(s) interrupted by a stop resumed"),
            Err(e) => tracing::error!(error = %e, "resuming exports"),
        }
    }

    /// Count one HTTP request (for the metrics).
    pub fn count_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn settings_now(&self) -> CommandResult<Settings> {
        Ok(self.store.settings()?)
    }

    fn job_view(&self, j: &store::JobRecord) -> JobView {
        JobView {
            id: j.id.clone(),
            source_id: j.source_id.clone(),
            vm: j.vm.clone(),
            schedule: j.schedule.clone(),
            state: j.state,
            progress: self.engine.progress(&j.id),
            runs_completed: j.runs_completed,
            last_error: j.last_error.clone(),
            next_run: j.next_run.map(time::rfc3339),
            last_sync: j.last_sync.map(time::rfc3339),
            source_name: self
                .store
                .settings()
                .ok()
                .and_then(|s| {
                    s.source(&j.source_id)
                        .map(|x| godwit_webui::backend::source_name(&x.address))
                })
                .unwrap_or_default(),
            replication: job::view::view(
                j,
                self.engine.live(&j.id).as_ref(),
                time::now(),
                time::rfc3339,
            ),
            // Issue 21: the staging server of the current or last run.
            staging_target: self
                .engine
                .fleet()
                .server_of(&staging_target::User::Job(j.id.clone())),
        }
    }

    fn settings_view(s: &Settings) -> SettingsView {
        SettingsView {
            network: s.network.clone(),
            network_status: s.network_status.clone(),
            staging: match &s.staging {
                None => StagingView::None,
                // Several servers (issue 21): the first here; all of them with their state in
                // `GET /api/v1/settings/staging/servers`.
                Some(StagingRecord::Server { servers, .. }) => {
                    servers
                        .first()
                        .map_or(StagingView::None, |s| StagingView::Server {
                            address: s.address.clone(),
                            fingerprint: godwit_webui::validate::Fingerprint::display(
                                &s.fingerprint,
                            ),
                        })
                }
                Some(StagingRecord::S3 {
                    endpoint,
                    region,
                    bucket,
                    prefix,
                    access_key_id,
                    ..
                }) => StagingView::S3 {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    access_key_id: access_key_id.clone(),
                },
            },
            sources: s.sources.iter().map(store::SourceRecord::view).collect(),
            max_concurrent_jobs: s.max_concurrent(),
            ingest: godwit_webui::backend::IngestSettings {
                url: s.ingest_url.clone(),
                spool_limit_mib: s.ingest_spool_limit_mib,
            },
            data_space: None,
        }
    }

    fn next_step(s: &Settings) -> WizardStep {
        if s.admin_password_hash.is_none() {
            WizardStep::Password
        } else if s.wizard_done {
            WizardStep::Done
        } else if s.network.is_none() {
            WizardStep::Network
        } else if s.staging.is_none() {
            WizardStep::Staging
        } else if s.sources.is_empty() {
            WizardStep::Sources
        } else {
            WizardStep::Checks
        }
    }
}

impl Backend for Appliance {
    async fn setup_status(&self) -> SetupStatus {
        let s = self.store.settings().unwrap_or_default();
        SetupStatus {
            password_set: s.admin_password_hash.is_some(),
            next_step: Self::next_step(&s),
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: s
                .network
                .as_ref()
                .map_or_else(|| self.cfg.hostname.clone(), |n| n.hostname.clone()),
            addresses: self.cfg.addresses.clone(),
        }
    }

    async fn set_admin_password(&self, cmd: SetAdminPassword) -> CommandResult<()> {
        self.set_password(cmd).await
    }

    async fn verify_admin_password(&self, password: &Secret) -> PasswordCheck {
        let Ok(s) = self.store.settings() else {
            return PasswordCheck::Wrong;
        };
        let Some(h) = s.admin_password_hash else {
            return PasswordCheck::Wrong;
        };
        let pw = password.expose().to_string();
        match self
            .hashes
            .run(auth::LOGIN_WAIT, move || auth::verify(&pw, &h))
            .await
        {
            Some(true) => PasswordCheck::Correct,
            Some(false) => PasswordCheck::Wrong,
            None => PasswordCheck::Busy,
        }
    }

    async fn settings(&self) -> SettingsView {
        let mut v = Self::settings_view(&self.store.settings().unwrap_or_default());
        v.data_space = self.data_space();
        v
    }

    async fn set_network(&self, cmd: NetworkSettings) -> CommandResult<()> {
        self.network(cmd).await
    }

    async fn https_certificate(&self) -> CommandResult<HttpsCertificateView> {
        let g = lock(&self.https);
        g.as_ref()
            .map(https_identity::HttpsIdentity::view)
            .ok_or_else(|| CommandError::Internal {
                message: "the HTTPS listener is not running".into(),
            })
    }

    async fn install_certificate(
        &self,
        cmd: InstallCertificate,
    ) -> CommandResult<HttpsCertificateView> {
        let upload = tls_upload::check(
            &cmd.certificate_pem,
            cmd.private_key_pem.expose(),
            std::time::SystemTime::now(),
        )
        .inspect_err(|e| tracing::warn!("an uploaded HTTPS certificate was refused: {e}"))?;
        let mut g = lock(&self.https);
        let h = g.as_mut().ok_or_else(|| CommandError::Internal {
            message: "the HTTPS listener is not running".into(),
        })?;
        let view = h.install(upload).map_err(|e| CommandError::Internal {
            message: format!("installing the certificate: {e:#}"),
        })?;
        if let Some(i) = self.ingest.get() {
            i.set_pin(h.leaf_der());
        }
        tracing::info!(
            fingerprint = %view.fingerprint,
            subject = %view.subject,
            "HTTPS certificate replaced by upload"
        );
        Ok(view)
    }

    async fn set_staging(&self, cmd: SetStagingTarget) -> CommandResult<()> {
        let address = match &cmd {
            SetStagingTarget::Server { address, .. } => address.clone(),
            SetStagingTarget::S3 { bucket, .. } => format!("s3://{bucket}"),
        };
        let r = self.staging(cmd).await;
        if let Err(e) = &r {
            errors::log_refusal("staging target", &address, e);
        }
        r
    }

    async fn set_ingest(
        &self,
        cmd: godwit_webui::backend::IngestSettings,
    ) -> CommandResult<godwit_webui::backend::IngestSettings> {
        let url = match cmd.url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(
                godwit_hyperv::ingest::check_ingest_url(u, "the push URL")
                    .map_err(|e| CommandError::field("url", e.to_string()))?,
            ),
        };
        let limit = cmd.spool_limit_bytes()?;
        let mib = cmd.spool_limit_mib;
        let stored = url.clone();
        self.store.update_settings(move |s| {
            s.ingest_url = stored;
            s.ingest_spool_limit_mib = mib;
            Ok(())
        })?;
        if let Some(i) = self.ingest.get() {
            i.set_configured_url(url.clone());
            i.set_spool_limit(limit);
        }
        tracing::info!(url = ?url, spool_limit_mib = ?mib, "Hyper-V push settings set");
        Ok(godwit_webui::backend::IngestSettings {
            url,
            spool_limit_mib: mib,
        })
    }

    async fn probe_source(&self, cmd: ProbeSource) -> CommandResult<CertificateView> {
        sources::probe(cmd.kind, &cmd.address).await
    }

    async fn add_source(&self, cmd: AddSource) -> CommandResult<SourceView> {
        let address = cmd.address.clone();
        let r = self.add(cmd).await;
        if let Err(e) = &r {
            errors::log_refusal("source", &address, e);
        }
        r
    }

    async fn approve_source_host(&self, id: String, cmd: ApproveHost) -> CommandResult<SourceView> {
        self.approve_host(id, cmd).await
    }

    async fn remove_source(&self, id: String) -> CommandResult<()> {
        let jobs = self.store.jobs()?;
        self.store.update_settings(|s| {
            if s.source(&id).is_none() {
                return Err(CommandError::NotFound {
                    message: format!("source {id}"),
                });
            }
            if let Some(j) = jobs.iter().find(|j| {
                j.source_id == id
                    && !matches!(
                        j.state,
                        JobState::Completed | JobState::Cancelled | JobState::Failed
                    )
            }) {
                return Err(CommandError::Conflict {
                    message: format!(
                        "job {} ({}) uses this source; cancel or delete it first",
                        j.id, j.vm
                    ),
                });
            }
            s.sources.retain(|x| x.id != id);
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %id, "source removed");
        Ok(())
    }

    async fn run_checks(&self) -> CommandResult<Vec<CheckView>> {
        self.checks().await
    }

    async fn finish_wizard(&self) -> CommandResult<()> {
        self.store.update_settings(|s| {
            let missing = match Self::next_step(s) {
                WizardStep::Done => None,
                WizardStep::Checks if s.checks_run => None,
                WizardStep::Checks => Some("run the checks"),
                WizardStep::Password => Some("set the admin password"),
                WizardStep::Network => Some("save the network settings"),
                WizardStep::Staging => Some("configure the staging target"),
                WizardStep::Sources => Some("add at least one source"),
            };
            if let Some(m) = missing {
                return Err(CommandError::Conflict {
                    message: format!("the wizard is not finished: {m} first"),
                });
            }
            s.wizard_done = true;
            Ok(())
        })?;
        tracing::info!("setup wizard finished");
        self.setup_done.send_replace(true);
        Ok(())
    }

    async fn inventory(&self, refresh: bool) -> CommandResult<Vec<VmView>> {
        let mut cache = self.inventory.lock().await;
        if !refresh && let Some(v) = &*cache {
            return Ok(v.clone());
        }
        let s = self.settings_now()?;
        let mut all = Vec::new();
        for src in s.sources {
            let vms = joined(tokio::task::spawn_blocking(move || sources::inventory(&src)).await)??;
            all.extend(vms);
        }
        *cache = Some(all.clone());
        Ok(all)
    }

    async fn create_job(&self, cmd: CreateJob) -> CommandResult<JobView> {
        let j = self.new_job(cmd).await?;
        Ok(self.job_view(&j))
    }

    async fn jobs(&self) -> Vec<JobView> {
        self.store
            .jobs()
            .unwrap_or_default()
            .iter()
            .map(|j| self.job_view(j))
            .collect()
    }

    async fn job(&self, id: String) -> CommandResult<JobView> {
        match self.store.job(&id)? {
            Some(j) => Ok(self.job_view(&j)),
            None => Err(CommandError::NotFound {
                message: format!("job {id}"),
            }),
        }
    }

    async fn job_events(&self, id: String) -> CommandResult<Vec<JobEvent>> {
        if self.store.job(&id)?.is_none() {
            return Err(CommandError::NotFound {
                message: format!("job {id}"),
            });
        }
        Ok(self.store.events(&id)?)
    }

    async fn run_job_now(&self, id: String) -> CommandResult<()> {
        self.engine.run_now(&id).await
    }

    /// An idle job loses a checkpoint kept for its retry as well (the engine clears its
    /// ledger before answering).
    async fn cancel_job(&self, id: String) -> CommandResult<()> {
        self.engine.cancel(&id).await
    }

    async fn delete_job(&self, id: String) -> CommandResult<()> {
        self.remove_job(id).await
    }

    async fn throughput(&self) -> Vec<ThroughputSample> {
        self.engine.throughput()
    }

    async fn ledger(&self) -> Vec<LedgerEntryView> {
        self.engine.ledger_entries()
    }

    async fn create_export(&self, cmd: CreateExport) -> CommandResult<ExportView> {
        self.export(cmd).await
    }

    async fn exports(&self) -> Vec<ExportView> {
        let mut all = self.store.exports().unwrap_or_default();
        // issue 18 (wt-errors): records from before typed export errors are typed on the way out.
        for e in all.iter_mut() {
            e.error = e.error.take().map(crate::errors::typed_export);
        }
        // Running ones: their progress now (issue 18).
        let meters = lock(&self.export_meters);
        for e in all.iter_mut().filter(|e| e.state == "running") {
            if let Some(p) = meters.get(&e.id).map(|m| m.snapshot()) {
                e.bytes_done = p.bytes_done;
                e.bytes_total = p.bytes_total;
                e.throughput_bps = p.rate_bytes_per_sec;
                e.eta_seconds = p.eta_secs;
            }
        }
        // Issue 21: the staging server each export reads through (or read through last).
        let fleet = self.engine.fleet();
        for e in all.iter_mut().filter(|e| e.staging_target.is_none()) {
            e.staging_target = fleet.server_of(&staging_target::User::Export(e.id.clone()));
        }
        all
    }

    async fn cancel_export(&self, id: String) -> CommandResult<()> {
        self.stop_export(id).await
    }

    async fn export_file(&self, id: String) -> CommandResult<ExportFile> {
        self.open_export(&id)
    }

    async fn delete_export(&self, id: String) -> CommandResult<()> {
        self.remove_export(&id)
    }

    async fn logs(&self, lines: usize) -> Vec<String> {
        self.logs.last(lines)
    }

    async fn support_bundle(&self) -> CommandResult<Vec<u8>> {
        self.bundle().await
    }

    async fn metrics(&self) -> String {
        self.metrics_text()
    }

    // Operator pages (issue 18).
    async fn last_checks(&self) -> Option<ChecksReport> {
        self.store.settings().ok().and_then(|s| s.last_checks)
    }

    async fn transfer_settings(&self) -> TransferSettings {
        self.transfer_view().unwrap_or_default()
    }

    async fn set_transfer_settings(
        &self,
        cmd: TransferSettings,
    ) -> CommandResult<TransferSettings> {
        self.put_transfer(cmd)
    }

    async fn set_source_credentials(
        &self,
        id: String,
        cmd: SetSourceCredentials,
    ) -> CommandResult<SourceView> {
        self.put_credentials(id, cmd).await
    }
    // CBT per source (issue 18, settings)
    async fn set_source_cbt(&self, id: String, cmd: SetSourceCbt) -> CommandResult<SourceView> {
        self.put_source_cbt(&id, cmd)
    }
    // Update bundle upload (issue 18, settings)
    async fn upload_update(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
    ) -> CommandResult<UpdateView> {
        self.receive_update(body, declared).await
    }
    // replication view (issue #18)
    async fn job_throughput(&self, id: String) -> CommandResult<Vec<ThroughputSample>> {
        if self.store.job(&id)?.is_none() {
            return Err(CommandError::NotFound {
                message: format!("job {id}"),
            });
        }
        Ok(self.engine.job_throughput(&id))
    }
    // staging servers (issue 21)
    async fn staging_servers(&self) -> Vec<StagingServerView> {
        self.list_staging_servers().await
    }
    async fn probe_staging_server(
        &self,
        cmd: ProbeStagingServer,
    ) -> CommandResult<CertificateView> {
        self.probe_staging(cmd).await
    }
    async fn add_staging_server(&self, cmd: AddStagingServer) -> CommandResult<StagingServerView> {
        self.add_staging(cmd).await
    }
    async fn remove_staging_server(&self, address: String) -> CommandResult<()> {
        self.remove_staging(address).await
    }
}
