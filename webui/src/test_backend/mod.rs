//! **The web layer's test double** of [`Backend`]: an in-memory backend with just enough rules to
//! exercise every page, form error and API status code. It is used by the router tests and by
//! `examples/dev.rs`; the real backend is `godwit serve` in `appliance/`. Behind the
//! `test-backend` feature, so it is not in the shipped binary.
//!
//! Jobs "transfer" on a timer: a job reaches 100 % `job_seconds` after it starts. Every secret it
//! is given is remembered ([`TestBackend::secrets_seen`]) so tests can check no page shows one.

mod exports;
mod oppages;
mod staging;
mod views;

pub use exports::{EXPORT_FILE_BYTES, EXPORTS_DIR, export_bytes};
pub use oppages::{EXPORT_CONTENT_BYTES, FULL_STAGING_PREFIX, WRONG_PASSWORD};

use crate::backend::*;
use std::{
    sync::Mutex,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use views::now_rfc3339;

/// Size of every simulated VM disk.
const DISK_BYTES: u64 = 4 * 1024 * 1024 * 1024;

pub struct TestBackend {
    setup_code: String,
    job_duration: Duration,
    /// How long a password check takes (0: at once).
    verify_delay: Duration,
    /// Password checks made so far.
    verifications: AtomicUsize,
    state: Mutex<State>,
    /// How long an export takes (issue 18; 0: done at once).
    export_duration: Duration,
}

#[derive(Default)]
struct State {
    password: Option<String>,
    network: Option<NetworkSettings>,
    staging: Option<StagingView>,
    /// Staging servers added after the first (issue 21): address, fingerprint.
    staging_servers: Vec<(String, String)>,
    sources: Vec<SourceView>,
    wizard_done: bool,
    /// The uploaded certificate's PEM, once one was installed.
    certificate: Option<String>,
    /// The Hyper-V push URL setting.
    ingest_url: Option<String>,
    spool_limit_mib: Option<u64>,
    next_id: u32,
    jobs: Vec<TestJob>,
    exports: Vec<ExportView>,
    secrets: Vec<String>,
    logs: Vec<String>,
    // Operator pages (issue 18).
    running_exports: Vec<oppages::RunningExport>,
    last_checks: Option<ChecksReport>,
    transfer: Option<TransferSettings>,
    /// (source id, password) of credentials changed after the source was added.
    source_passwords: Vec<(String, String)>,
}

struct TestJob {
    id: String,
    source_id: String,
    vm: String,
    schedule: Schedule,
    started: Option<Instant>,
    cancelled: bool,
    events: Vec<JobEvent>,
    source_name: String,
}

/// The fingerprint every probed test server shows.
pub const TEST_FINGERPRINT: &str = "SHA256:3F:A1:09:5C:7E:22:B4:D0:11:8A:6B:C3:2E:F0:94:57:A8:1D:63:CE:05:B9:72:4F:E6:30:8D:1B:C4:59:AE:02";

impl TestBackend {
    /// A fresh appliance: no password, wizard at the first step.
    pub fn new(setup_code: &str) -> Self {
        TestBackend {
            setup_code: setup_code.to_owned(),
            job_duration: Duration::from_secs(6),
            verify_delay: Duration::ZERO,
            verifications: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            export_duration: Duration::ZERO,
        }
    }

    /// Every password check takes `d` (as a real hash does), so concurrent logins overlap.
    pub fn with_verify_delay(mut self, d: Duration) -> Self {
        self.verify_delay = d;
        self
    }

    /// How many times a password was checked against the admin password.
    pub fn verifications(&self) -> usize {
        self.verifications.load(Ordering::SeqCst)
    }

    /// How long a simulated transfer takes.
    pub fn with_job_duration(mut self, d: Duration) -> Self {
        self.job_duration = d;
        self
    }

    /// An appliance that finished its wizard: password set, one vSphere source, a staging server.
    pub fn configured(password: &str) -> Self {
        let b = TestBackend::new("unused-setup-code");
        {
            let mut s = b.lock();
            s.password = Some(password.to_owned());
            s.network = Some(NetworkSettings {
                hostname: "godwit-test".into(),
                address: AddressMode::Dhcp,
                dns_servers: vec!["192.0.2.53".into()],
                ntp_servers: vec!["192.0.2.123".into()],
                proxy: None,
            });
            s.staging = Some(StagingView::Server {
                address: "192.0.2.20:1500".into(),
                fingerprint: TEST_FINGERPRINT.into(),
            });
            s.sources.push(SourceView {
                id: "src-1".into(),
                kind: SourceKind::Vsphere,
                address: "vcenter.example".into(),
                username: "administrator@vsphere.local".into(),
                fingerprint: TEST_FINGERPRINT.into(),
                host_port: None,
                host_pins: Vec::new(),
                name: "vcenter.example".into(),
                cbt: true,
            });
            s.wizard_done = true;
            s.next_id = 2;
        }
        b
    }

    /// A password already set (as by a vApp property), wizard at the network step.
    pub fn with_password(password: &str, setup_code: &str) -> Self {
        let b = TestBackend::new(setup_code);
        b.lock().password = Some(password.to_owned());
        b
    }

    /// Every secret value this backend was given (passwords, tokens, keys).
    pub fn secrets_seen(&self) -> Vec<String> {
        self.lock().secrets.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(s: &mut State, secret: &Secret) {
        if !secret.is_empty() {
            s.secrets.push(secret.expose().to_owned());
        }
    }

    fn next_step(s: &State) -> WizardStep {
        if s.password.is_none() {
            WizardStep::Password
        } else if s.network.is_none() {
            WizardStep::Network
        } else if s.staging.is_none() {
            WizardStep::Staging
        } else if s.sources.is_empty() {
            WizardStep::Sources
        } else if !s.wizard_done {
            WizardStep::Checks
        } else {
            WizardStep::Done
        }
    }
}

fn invalid(fields: Vec<FieldError>) -> CommandResult<()> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Invalid { fields })
    }
}

fn fe(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

impl Backend for TestBackend {
    async fn setup_status(&self) -> SetupStatus {
        let s = self.lock();
        SetupStatus {
            password_set: s.password.is_some(),
            next_step: Self::next_step(&s),
            version: "0.1.0-test".into(),
            hostname: s
                .network
                .as_ref()
                .map_or_else(|| "godwit".into(), |n| n.hostname.clone()),
            addresses: vec!["127.0.0.1".into()],
        }
    }

    async fn set_admin_password(&self, cmd: SetAdminPassword) -> CommandResult<()> {
        let mut s = self.lock();
        Self::remember(&mut s, &cmd.new_password);
        // The shared policy first: a refused new password is refused before any code or
        // current password is checked (like the service, which then hashes nothing).
        let new = cmd
            .checked_new_password()
            .map_err(|fields| CommandError::Invalid { fields })?;
        let mut errs = Vec::new();
        match &s.password {
            None => {
                if cmd.setup_code.as_ref().map(Secret::expose) != Some(self.setup_code.as_str()) {
                    errs.push(fe("setup_code", "wrong setup code (see the console)"));
                }
            }
            Some(current) => {
                if cmd.current_password.as_ref().map(Secret::expose) != Some(current.as_str()) {
                    errs.push(fe("current_password", "this is not the current password"));
                }
            }
        }
        invalid(errs)?;
        s.password = Some(new.expose().to_owned());
        s.logs.push(format!("{} admin password set", now_rfc3339()));
        Ok(())
    }

    async fn verify_admin_password(&self, password: &Secret) -> PasswordCheck {
        self.verifications.fetch_add(1, Ordering::SeqCst);
        if !self.verify_delay.is_zero() {
            // A real check hashes for tens of milliseconds: concurrent logins overlap.
            tokio::time::sleep(self.verify_delay).await;
        }
        let s = self.lock();
        if s.password
            .as_deref()
            .is_some_and(|p| p == password.expose())
        {
            PasswordCheck::Correct
        } else {
            PasswordCheck::Wrong
        }
    }

    async fn settings(&self) -> SettingsView {
        let s = self.lock();
        SettingsView {
            network: s.network.clone(),
            // The test backend is never the appliance.
            network_status: s.network.as_ref().map(|_| NetworkStatus {
                state: "stored".into(),
                message: "Stored only (test backend).".into(),
                at: now_rfc3339(),
            }),
            staging: s.staging.clone().unwrap_or(StagingView::None),
            sources: s.sources.clone(),
            max_concurrent_jobs: s.transfer.as_ref().map_or(2, |t| t.max_concurrent_jobs),
            ingest: IngestSettings {
                url: s.ingest_url.clone(),
                spool_limit_mib: s.spool_limit_mib,
            },
            data_space: Some(DataSpaceView {
                exports_dir: EXPORTS_DIR.into(),
                total_bytes: 16 << 30,
                free_bytes: 12 << 30,
            }),
        }
    }

    async fn set_ingest(&self, cmd: IngestSettings) -> CommandResult<IngestSettings> {
        cmd.spool_limit_bytes()?;
        // The appliance's rule (godwit_hyperv::ingest::check_ingest_url): https://HOST[:PORT],
        // no user, path, query or fragment; an empty string clears it.
        let url = match cmd.url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => {
                let rest = u
                    .trim_end_matches('/')
                    .strip_prefix("https://")
                    .unwrap_or("");
                let (host, port) = match rest.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
                    _ => (rest, None),
                };
                let bad_host = host.is_empty()
                    || host
                        .bytes()
                        .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b <= b' ');
                let bad_port = port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0));
                if bad_host || bad_port {
                    return Err(CommandError::Invalid {
                        fields: vec![fe(
                            "url",
                            &format!(
                                "{u:?} is not https://HOST[:PORT] (the host pushes over HTTPS only)"
                            ),
                        )],
                    });
                }
                Some(u.trim_end_matches('/').to_string())
            }
        };
        let mut st = self.lock();
        st.ingest_url = url.clone();
        st.spool_limit_mib = cmd.spool_limit_mib;
        Ok(IngestSettings {
            url,
            spool_limit_mib: cmd.spool_limit_mib,
        })
    }

    async fn set_network(&self, cmd: NetworkSettings) -> CommandResult<()> {
        // The service's own rules (crate::validate), not a copy.
        let cmd = crate::validate::network(cmd)?;
        self.lock().network = Some(cmd);
        Ok(())
    }

    async fn set_staging(&self, cmd: SetStagingTarget) -> CommandResult<()> {
        let mut s = self.lock();
        let mut errs = Vec::new();
        let view = match cmd {
            SetStagingTarget::Server {
                address,
                fingerprint,
                token,
            } => {
                Self::remember(&mut s, &token);
                if address.is_empty() {
                    errs.push(fe("address", "the staging server's host or host:port"));
                }
                let fingerprint = match crate::validate::Fingerprint::try_from(fingerprint.as_str())
                {
                    Ok(f) => f.into_string(),
                    Err(e) => {
                        errs.push(fe("fingerprint", &e));
                        fingerprint
                    }
                };
                if token.is_empty() {
                    errs.push(fe("token", "the pairing token the staging server printed"));
                }
                StagingView::Server {
                    address,
                    fingerprint,
                }
            }
            SetStagingTarget::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            } => {
                Self::remember(&mut s, &secret_access_key);
                if bucket.is_empty() {
                    errs.push(fe("bucket", "the bucket name"));
                }
                if region.is_empty() {
                    errs.push(fe("region", "e.g. us-east-1"));
                }
                if secret_access_key.is_empty() {
                    errs.push(fe("secret_access_key", "required"));
                }
                StagingView::S3 {
                    endpoint,
                    region,
                    bucket,
                    prefix,
                    access_key_id,
                }
            }
        };
        invalid(errs)?;
        s.staging = Some(view);
        Ok(())
    }

    async fn probe_source(&self, cmd: ProbeSource) -> CommandResult<CertificateView> {
        if cmd.address.is_empty() {
            return Err(CommandError::field(
                "address",
                "the server's host or host:port",
            ));
        }
        if cmd.address.starts_with("unreachable") {
            return Err(CommandError::Remote {
                message: format!("{}: connection refused", cmd.address),
            });
        }
        Ok(CertificateView {
            address: cmd.address.clone(),
            fingerprint: TEST_FINGERPRINT.into(),
            subject: format!("CN={}", cmd.address),
            issuer: "CN=CA, O=VMware Test".into(),
            not_before: "2026-01-01T00:00:00Z".into(),
            not_after: "2028-01-01T00:00:00Z".into(),
            subject_alt_names: vec![cmd.address],
        })
    }

    async fn add_source(&self, cmd: AddSource) -> CommandResult<SourceView> {
        let mut s = self.lock();
        Self::remember(&mut s, &cmd.password);
        let mut errs = Vec::new();
        let approved = crate::validate::Fingerprint::display(&cmd.approved_fingerprint);
        if approved != TEST_FINGERPRINT {
            errs.push(fe(
                "approved_fingerprint",
                "the server now shows a different certificate: probe it again",
            ));
        }
        if cmd.username.is_empty() {
            errs.push(fe("username", "the account to log in with"));
        }
        if cmd.password.is_empty() {
            errs.push(fe("password", "the account's password"));
        }
        invalid(errs)?;
        if cmd.password.expose() == "wrong-password" {
            return Err(CommandError::Remote {
                message: format!(
                    "{}: login refused (incorrect user name or password)",
                    cmd.address
                ),
            });
        }
        s.next_id += 1;
        let view = SourceView {
            id: format!("src-{}", s.next_id),
            kind: cmd.kind,
            name: source_name(&cmd.address),
            address: cmd.address,
            username: cmd.username,
            fingerprint: approved,
            host_port: cmd.host_port,
            host_pins: Vec::new(),
            cbt: true,
        };
        s.sources.push(view.clone());
        Ok(view)
    }

    async fn remove_source(&self, id: String) -> CommandResult<()> {
        let mut s = self.lock();
        let before = s.sources.len();
        s.sources.retain(|x| x.id != id);
        if s.sources.len() == before {
            return Err(CommandError::NotFound {
                message: format!("no source {id}"),
            });
        }
        Ok(())
    }

    async fn approve_source_host(&self, id: String, cmd: ApproveHost) -> CommandResult<SourceView> {
        views::approve_host(&mut self.lock().sources, &id, cmd)
    }

    async fn run_checks(&self) -> CommandResult<Vec<CheckView>> {
        let s = self.lock();
        let mut out = vec![
            CheckView {
                check: "dns".into(),
                target: "vcenter.example".into(),
                status: "pass".into(),
                value: "192.0.2.30".into(),
                remediation: String::new(),
            },
            CheckView {
                check: "ntp".into(),
                target: "192.0.2.123".into(),
                status: "warn".into(),
                value: "offset 2.4 s".into(),
                remediation: "Clock offset over 1 s: check the NTP server; snapshots carry times."
                    .into(),
            },
        ];
        for src in &s.sources {
            out.push(CheckView {
                check: "tcp".into(),
                target: src.address.clone(),
                status: "pass".into(),
                value: "connected in 1 ms".into(),
                remediation: String::new(),
            });
        }
        out.extend(Self::staging_space_check(&s));
        drop(s);
        oppages::keep_report(&mut self.lock(), &out);
        Ok(out)
    }

    async fn finish_wizard(&self) -> CommandResult<()> {
        let mut s = self.lock();
        if Self::next_step(&s) < WizardStep::Checks {
            return Err(CommandError::Conflict {
                message: "earlier setup steps are not complete".into(),
            });
        }
        s.wizard_done = true;
        Ok(())
    }

    async fn https_certificate(&self) -> CommandResult<HttpsCertificateView> {
        Ok(Self::certificate_view(self.lock().certificate.as_deref()))
    }

    /// A stand-in for the real checks: PEM markers, `EXPIRED` in the chain is an expired
    /// certificate, `MISMATCH` in the key a key of another certificate.
    async fn install_certificate(
        &self,
        cmd: InstallCertificate,
    ) -> CommandResult<HttpsCertificateView> {
        let mut s = self.lock();
        s.secrets.push(cmd.private_key_pem.expose().to_owned());
        let cert = cmd.certificate_pem.trim();
        if !cert.starts_with("-----BEGIN CERTIFICATE-----") {
            return Err(CommandError::field(
                "certificate_pem",
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            ));
        }
        if cert.contains("EXPIRED") {
            return Err(CommandError::field(
                "certificate_pem",
                "the certificate expired on 2020-01-01 00:00:00 UTC",
            ));
        }
        let key = cmd.private_key_pem.expose();
        if !key.contains("PRIVATE KEY-----") {
            return Err(CommandError::field(
                "private_key_pem",
                "no PEM private key found",
            ));
        }
        if key.contains("MISMATCH") {
            return Err(CommandError::field(
                "private_key_pem",
                "this key does not belong to the certificate",
            ));
        }
        s.certificate = Some(cert.to_owned());
        Ok(Self::certificate_view(Some(cert)))
    }

    async fn inventory(&self, _refresh: bool) -> CommandResult<Vec<VmView>> {
        let s = self.lock();
        Ok(s.sources.iter().flat_map(Self::inventory_of).collect())
    }

    async fn create_job(&self, cmd: CreateJob) -> CommandResult<JobView> {
        let mut s = self.lock();
        let Some(src) = s.sources.iter().find(|x| x.id == cmd.source_id) else {
            return Err(CommandError::NotFound {
                message: format!("no source {}", cmd.source_id),
            });
        };
        let Some(vm) = Self::inventory_of(src)
            .into_iter()
            .find(|v| v.name == cmd.vm)
        else {
            return Err(CommandError::NotFound {
                message: format!("no VM {} at {}", cmd.vm, cmd.source_id),
            });
        };
        if !vm.eligible {
            return Err(CommandError::Conflict {
                message: format!("{} is not eligible: {}", vm.name, vm.reasons.join("; ")),
            });
        }
        if let Schedule::EveryHours { hours } = cmd.schedule
            && !(1..=168).contains(&hours)
        {
            return Err(CommandError::field("hours", "between 1 and 168 hours"));
        }
        if s.jobs
            .iter()
            .any(|j| j.vm == cmd.vm && j.source_id == cmd.source_id)
        {
            return Err(CommandError::Conflict {
                message: format!("{} has a job already", cmd.vm),
            });
        }
        let source_name = src.name.clone();
        s.next_id += 1;
        let job = TestJob {
            source_name,
            id: format!("job-{}", s.next_id),
            source_id: cmd.source_id,
            vm: cmd.vm,
            schedule: cmd.schedule,
            started: Some(Instant::now()),
            cancelled: false,
            events: vec![
                JobEvent {
                    at: now_rfc3339(),
                    message: "job created".into(),
                },
                JobEvent {
                    at: now_rfc3339(),
                    message: "run 1 started: taking snapshot godwit-1".into(),
                },
            ],
        };
        let view = self.job_view(&job);
        s.jobs.push(job);
        Ok(view)
    }

    async fn jobs(&self) -> Vec<JobView> {
        let s = self.lock();
        s.jobs.iter().map(|j| self.job_view(j)).collect()
    }

    async fn job(&self, id: String) -> CommandResult<JobView> {
        let s = self.lock();
        s.jobs
            .iter()
            .find(|j| j.id == id)
            .map(|j| self.job_view(j))
            .ok_or(CommandError::NotFound {
                message: format!("no job {id}"),
            })
    }

    async fn job_events(&self, id: String) -> CommandResult<Vec<JobEvent>> {
        let s = self.lock();
        let j = s
            .jobs
            .iter()
            .find(|j| j.id == id)
            .ok_or(CommandError::NotFound {
                message: format!("no job {id}"),
            })?;
        let mut events = j.events.clone();
        if self.job_view(j).runs_completed > 0 {
            events.push(JobEvent {
                at: now_rfc3339(),
                message: "run 1 finished: 4.0 GiB copied, snapshot removed".into(),
            });
        }
        Ok(events)
    }

    async fn run_job_now(&self, id: String) -> CommandResult<()> {
        let mut s = self.lock();
        let j = s
            .jobs
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or(CommandError::NotFound {
                message: format!("no job {id}"),
            })?;
        j.started = Some(Instant::now());
        j.cancelled = false;
        Ok(())
    }

    async fn cancel_job(&self, id: String) -> CommandResult<()> {
        let mut s = self.lock();
        let j = s
            .jobs
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or(CommandError::NotFound {
                message: format!("no job {id}"),
            })?;
        j.cancelled = true;
        Ok(())
    }

    async fn delete_job(&self, id: String) -> CommandResult<()> {
        let mut s = self.lock();
        let before = s.jobs.len();
        s.jobs.retain(|j| j.id != id);
        if s.jobs.len() == before {
            return Err(CommandError::NotFound {
                message: format!("no job {id}"),
            });
        }
        Ok(())
    }

    async fn throughput(&self) -> Vec<ThroughputSample> {
        let s = self.lock();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let snapshot = Duration::from_millis(300);
        let bps = DISK_BYTES / self.job_duration.as_secs().max(1);
        // The last 60 seconds: each job adds its rate while it was transferring.
        (0..60u64)
            .map(|i| {
                let ago = Duration::from_secs(59 - i);
                let active = s
                    .jobs
                    .iter()
                    .filter(|j| !j.cancelled)
                    .filter_map(|j| j.started.map(|t| t.elapsed()))
                    .filter(|e| {
                        e.checked_sub(ago).is_some_and(|then| {
                            then >= snapshot && then < snapshot + self.job_duration
                        })
                    })
                    .count();
                ThroughputSample {
                    at: now.saturating_sub(59 - i),
                    bytes_per_second: bps * u64::try_from(active).unwrap_or(0),
                }
            })
            .collect()
    }

    async fn ledger(&self) -> Vec<LedgerEntryView> {
        let s = self.lock();
        s.jobs
            .iter()
            .map(|j| {
                let v = self.job_view(j);
                LedgerEntryView {
                    source_id: j.source_id.clone(),
                    vm: j.vm.clone(),
                    snapshot_name: format!("godwit-{}-1", j.id),
                    state: if v.runs_completed > 0 {
                        "removed"
                    } else {
                        "created"
                    }
                    .into(),
                    recorded_at: now_rfc3339(),
                    detail: None,
                }
            })
            .collect()
    }

    async fn create_export(&self, cmd: CreateExport) -> CommandResult<ExportView> {
        let mut s = self.lock();
        let j = s
            .jobs
            .iter()
            .find(|j| j.id == cmd.job_id)
            .ok_or_else(|| CommandError::field("job_id", format!("no job {}", cmd.job_id)))?;
        if self.job_view(j).runs_completed == 0 {
            return Err(CommandError::Conflict {
                message: "this job has no finished replica yet".into(),
            });
        }
        Self::check_export_disk(&s, &cmd.job_id, cmd.disk)?;
        let dest = exports::check_destination(&cmd.destination)?;
        s.next_id += 1;
        let id = format!("exp-{}", s.next_id);
        if self.export_duration.is_zero() {
            let vm = s
                .jobs
                .iter()
                .find(|j| j.id == cmd.job_id)
                .map(|j| j.vm.clone())
                .unwrap_or_default();
            let mut v = exports::finished(&mut s, id, cmd, dest)?;
            v.vm = vm;
            v.bytes_done = EXPORT_CONTENT_BYTES;
            v.bytes_total = EXPORT_CONTENT_BYTES;
            v.started_at = Some(now_rfc3339());
            v.finished_at = v.started_at.clone();
            if let Some(e) = s.exports.iter_mut().find(|e| e.id == v.id) {
                *e = v.clone();
            }
            Ok(v)
        } else {
            self.start_export(&mut s, id, cmd, dest)
        }
    }

    async fn exports(&self) -> Vec<ExportView> {
        let mut s = self.lock();
        self.advance_exports(&mut s);
        s.exports.clone()
    }

    async fn cancel_export(&self, id: String) -> CommandResult<()> {
        let mut s = self.lock();
        self.advance_exports(&mut s);
        Self::cancel_running_export(&mut s, &id)
    }

    async fn export_file(&self, id: String) -> CommandResult<ExportFile> {
        self.open_export_file(&id)
    }

    async fn delete_export(&self, id: String) -> CommandResult<()> {
        self.remove_export(&id)
    }

    async fn logs(&self, lines: usize) -> Vec<String> {
        let s = self.lock();
        let mut out = vec![format!(
            "{} INFO godwit test backend started",
            now_rfc3339()
        )];
        out.extend(s.logs.iter().cloned());
        let skip = out.len().saturating_sub(lines);
        out.into_iter().skip(skip).collect()
    }

    async fn support_bundle(&self) -> CommandResult<Vec<u8>> {
        Ok(b"test support bundle (the real one is a .tar.gz)\n".to_vec())
    }

    async fn metrics(&self) -> String {
        let s = self.lock();
        format!(
            "# TYPE godwit_jobs gauge\ngodwit_jobs {}\n# EOF\n",
            s.jobs.len()
        )
    }

    // Operator pages (issue 18).
    async fn last_checks(&self) -> Option<ChecksReport> {
        self.lock().last_checks.clone()
    }

    async fn transfer_settings(&self) -> TransferSettings {
        self.lock().transfer.clone().unwrap_or(TransferSettings {
            max_concurrent_jobs: 2,
            business_hours_start: 8,
            business_hours_end: 18,
            ..TransferSettings::default()
        })
    }

    async fn set_transfer_settings(
        &self,
        cmd: TransferSettings,
    ) -> CommandResult<TransferSettings> {
        Self::put_transfer_settings(&mut self.lock(), cmd)
    }

    async fn set_source_credentials(
        &self,
        id: String,
        cmd: SetSourceCredentials,
    ) -> CommandResult<SourceView> {
        Self::put_source_credentials(&mut self.lock(), &id, cmd)
    }
    // Update bundle upload (issue 18, settings): the test double counts the bytes and refuses
    // anything that does not start like a bundle; it verifies no signature.
    async fn upload_update(
        &self,
        body: axum::body::Body,
        _declared: Option<u64>,
    ) -> CommandResult<UpdateView> {
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|e| CommandError::field("bundle", e.to_string()))?;
        if !bytes.starts_with(b"GODWITUB") {
            return Err(CommandError::field(
                "bundle",
                "refused: not a Godwit update bundle (bad magic)",
            ));
        }
        Ok(UpdateView {
            version: "test".into(),
            bytes: bytes.len() as u64,
            files: vec!["vmlinuz".into(), "initrd.img".into()],
            installed: false,
            message: "verified (test backend)".into(),
        })
    }
    // CBT per source (issue 18, settings)
    async fn set_source_cbt(&self, id: String, cmd: SetSourceCbt) -> CommandResult<SourceView> {
        let mut s = self.lock();
        let Some(src) = s.sources.iter_mut().find(|x| x.id == id) else {
            return Err(CommandError::NotFound {
                message: format!("no source {id}"),
            });
        };
        src.cbt = cmd.enabled;
        Ok(src.clone())
    }
    // replication view (issue #18)
    async fn job_throughput(&self, id: String) -> CommandResult<Vec<ThroughputSample>> {
        if !self.lock().jobs.iter().any(|j| j.id == id) {
            return Err(CommandError::NotFound {
                message: format!("no job {id}"),
            });
        }
        Ok(self.throughput().await)
    }
    // staging servers (issue 21)
    async fn staging_servers(&self) -> Vec<StagingServerView> {
        Self::staging_server_views(&self.lock())
    }
    async fn probe_staging_server(
        &self,
        cmd: ProbeStagingServer,
    ) -> CommandResult<CertificateView> {
        Self::probe_staging(&cmd)
    }
    async fn add_staging_server(&self, cmd: AddStagingServer) -> CommandResult<StagingServerView> {
        Self::put_staging_server(&mut self.lock(), cmd)
    }
    async fn remove_staging_server(&self, address: String) -> CommandResult<()> {
        Self::drop_staging_server(&mut self.lock(), &address)
    }
}
