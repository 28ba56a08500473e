//! The longer commands of [`Appliance`]: password, staging target, sources, checks, jobs,
//! exports and the support bundle.

use super::store::{HostPin, JobRecord, SourceRecord, StagingRecord};
use super::validate::{Problems, authority, fingerprint, host_port};
use super::{Appliance, auth, bundle, joined, random_id, sources, time};
use godwit_transfer::replicate::Connect;
use godwit_transfer::target::Target;
use godwit_webui::backend::*;
use std::path::Path;
use std::time::Duration;

/// Longest a staging server may take to accept the pairing during `set_staging`.
const STAGING_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest schedule interval accepted (one year).
const MAX_INTERVAL_HOURS: u32 = 24 * 365;

pub(super) fn export_format_name(f: ExportFormat) -> &'static str {
    match f {
        ExportFormat::Vmdk => "vmdk",
        ExportFormat::Vhdx => "vhdx",
        ExportFormat::Vhd => "vhd",
        ExportFormat::Raw => "raw",
    }
}

impl Appliance {
    pub(super) async fn set_password(&self, cmd: SetAdminPassword) -> CommandResult<()> {
        let s = self.settings_now()?;
        // The shared policy first: a refused new password hashes nothing.
        let new = cmd
            .checked_new_password()
            .map_err(|fields| CommandError::Invalid { fields })?;
        let mut p = Problems::default();
        let (given, hash, field, wrong) = match &s.admin_password_hash {
            Some(h) => (
                cmd.current_password
                    .as_ref()
                    .map(|x| x.expose().to_string()),
                Some(h.clone()),
                "current_password",
                "wrong password",
            ),
            None => (
                cmd.setup_code
                    .as_ref()
                    .map(|c| auth::normalise_code(c.expose())),
                s.setup_code_hash.clone(),
                "setup_code",
                "wrong or already used setup code (it is printed on the console at start)",
            ),
        };
        let busy = || CommandError::Internal {
            message: "too many password checks at once; try again in a moment".into(),
        };
        let ok = match (given, hash.clone()) {
            (Some(g), Some(h)) if !g.is_empty() => self
                .hashes
                .run(auth::CHANGE_WAIT, move || auth::verify(&g, &h))
                .await
                .ok_or_else(busy)?,
            _ => false,
        };
        if !ok {
            p.add(field, wrong);
        }
        p.finish()?;
        let new = new.expose().to_string();
        let new_hash = self
            .hashes
            .run(auth::CHANGE_WAIT, move || auth::hash(&new))
            .await
            .ok_or_else(busy)?
            .map_err(|m| CommandError::Internal { message: m })?;
        self.store.update_settings(|st| {
            // The same code or password must still be in force (no concurrent change).
            let current = if st.admin_password_hash.is_some() {
                &st.admin_password_hash
            } else {
                &st.setup_code_hash
            };
            if *current != hash {
                return Err(CommandError::Conflict {
                    message: "the password was changed meanwhile; reload and try again".into(),
                });
            }
            st.admin_password_hash = Some(new_hash);
            st.setup_code_hash = None;
            Ok(())
        })?;
        tracing::info!("admin password set; every session logged in before was ended");
        Ok(())
    }

    pub(super) async fn staging(&self, cmd: SetStagingTarget) -> CommandResult<()> {
        let mut p = Problems::default();
        let record = match cmd {
            SetStagingTarget::Server {
                address,
                fingerprint: fp,
                token,
            } => {
                let addr = host_port(&address, 1500)
                    .map(|(h, port)| authority(&h, port))
                    .map_err(|e| p.add("address", e))
                    .ok();
                let fp = fingerprint(&fp).map_err(|e| p.add("fingerprint", e)).ok();
                if token.expose().trim().is_empty() {
                    p.add("token", "required (printed by `godwit staging serve`)");
                }
                p.finish()?;
                let (Some(addr), Some(fp)) = (addr, fp) else {
                    return Err(CommandError::Internal {
                        message: "validation".into(),
                    });
                };
                let token = token.expose().trim().to_string();
                let target =
                    Target::parse(&format!("staging://{addr}"), Some(&fp), Some(token.clone()))
                        .map_err(|e| CommandError::field("address", e.to_string()))?;
                match tokio::time::timeout(STAGING_CONNECT_TIMEOUT, target.connect()).await {
                    Err(_) => {
                        return Err(CommandError::Remote {
                            message: format!("staging server {addr}: no answer within 15 s"),
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(CommandError::Remote {
                            message: format!("staging server {addr}: {e}"),
                        });
                    }
                    Ok(Ok(_store)) => {}
                }
                StagingRecord::Server {
                    address: addr,
                    fingerprint: fp,
                    token,
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
                let endpoint = endpoint.filter(|e| !e.trim().is_empty()).and_then(|e| {
                    super::validate::s3_endpoint(&e)
                        .map_err(|m| p.add("endpoint", m))
                        .ok()
                });
                if let Err(m) = super::validate::s3_region(&region) {
                    p.add("region", m);
                }
                if let Err(m) = super::validate::printable(&prefix, 512) {
                    p.add("prefix", m);
                }
                if let Err(m) = super::validate::printable(&access_key_id, 128) {
                    p.add("access_key_id", m);
                }
                let b = bucket.trim();
                if b.len() < 3
                    || b.len() > 63
                    || !b.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                    })
                {
                    p.add(
                        "bucket",
                        "3-63 lower-case letters, digits, dots and hyphens",
                    );
                }
                if access_key_id.trim().is_empty() {
                    p.add("access_key_id", "required");
                }
                if secret_access_key.is_empty() {
                    p.add("secret_access_key", "required");
                }
                p.finish()?;
                StagingRecord::S3 {
                    endpoint,
                    region: region.trim().to_string(),
                    bucket: b.to_string(),
                    prefix: prefix.trim().trim_matches('/').to_string(),
                    access_key_id: access_key_id.trim().to_string(),
                    secret_access_key: secret_access_key.expose().to_string(),
                }
            }
        };
        if matches!(record, StagingRecord::S3 { .. }) {
            // A real connection before storing: the bucket must exist and take our objects.
            let what = match &record {
                StagingRecord::S3 { bucket, .. } => format!("S3 bucket {bucket}"),
                StagingRecord::Server { .. } => String::new(),
            };
            match tokio::time::timeout(
                STAGING_CONNECT_TIMEOUT,
                super::staging_target::open_s3_store(&record),
            )
            .await
            {
                Err(_) => {
                    return Err(CommandError::Remote {
                        message: format!("{what}: no answer within 15 s"),
                    });
                }
                Ok(Err(e)) => return Err(CommandError::Remote { message: e }),
                Ok(Ok(_store)) => {}
            }
        }
        self.store.update_settings(|s| {
            s.staging = Some(record);
            Ok(())
        })?;
        tracing::info!("staging target stored");
        Ok(())
    }

    pub(super) async fn add(&self, cmd: AddSource) -> CommandResult<SourceView> {
        let mut p = Problems::default();
        let addr = host_port(&cmd.address, sources::default_port(cmd.kind))
            .map(|(h, port)| authority(&h, port))
            .map_err(|e| p.add("address", e))
            .ok();
        let user = cmd.username.trim().to_string();
        if user.is_empty() {
            p.add("username", "required");
        }
        if cmd.password.is_empty() {
            p.add("password", "required");
        }
        let fp = fingerprint(&cmd.approved_fingerprint)
            .map_err(|e| p.add("approved_fingerprint", e))
            .ok();
        p.finish()?;
        let (Some(address), Some(fp)) = (addr, fp) else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        let s = self.settings_now()?;
        if let Some(x) = s
            .sources
            .iter()
            .find(|x| x.kind == cmd.kind && x.address == address && x.username == user)
        {
            return Err(CommandError::Conflict {
                message: format!("this source is already added as {}", x.id),
            });
        }
        let record = SourceRecord {
            id: random_id("src"),
            kind: cmd.kind,
            address,
            username: user,
            password: cmd.password.expose().to_string(),
            fingerprint: fp,
            host_port: match cmd.kind {
                SourceKind::Scvmm => cmd.host_port,
                _ => None,
            },
            host_pins: Vec::new(),
        };
        let r = record.clone();
        joined(tokio::task::spawn_blocking(move || sources::verify_login(&r)).await)?.inspect_err(
            |e| {
                // Shown on the log page: a refused certificate or login of a source.
                tracing::warn!(address = %record.address, "adding a source was refused: {e}");
            },
        )?;
        let view = record.view();
        self.store.update_settings(|s| {
            s.sources.push(record);
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %view.id, address = %view.address, "source added");
        Ok(view)
    }

    /// Pin one Hyper-V host of an SCVMM source: the operator approved the fingerprint a
    /// refused job named (trust on approval). Replaces an earlier pin of the same host.
    pub(super) async fn approve_host(
        &self,
        id: String,
        cmd: ApproveHost,
    ) -> CommandResult<SourceView> {
        let mut p = Problems::default();
        let host = cmd.host.trim().to_ascii_lowercase();
        if host.is_empty() {
            p.add("host", "required: VMM's name for the host or its address");
        } else if host
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || c == '/')
        {
            p.add("host", "a host name or address (`host` or `host:port`)");
        }
        let fp = fingerprint(&cmd.approved_fingerprint)
            .map_err(|e| p.add("approved_fingerprint", e))
            .ok();
        p.finish()?;
        let Some(fp) = fp else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        let mut view = None;
        self.store.update_settings(|s| {
            let Some(src) = s.sources.iter_mut().find(|x| x.id == id) else {
                return Err(CommandError::NotFound {
                    message: format!("source {id}"),
                });
            };
            if src.kind == SourceKind::Hyperv {
                return Err(CommandError::Conflict {
                    message: format!(
                        "source {id} is a Hyper-V host, not an SCVMM source or a vCenter (whose ESXi hosts' certificates are approved here); its certificate is the one approved when it was added"
                    ),
                });
            }
            src.host_pins.retain(|x| x.host != host);
            src.host_pins.push(HostPin {
                host: host.clone(),
                fingerprint: fp.clone(),
            });
            view = Some(src.view());
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %id, host = %host, fingerprint = %fp, "host certificate approved");
        view.ok_or_else(|| CommandError::Internal {
            message: "source vanished".into(),
        })
    }

    pub(super) async fn checks(&self) -> CommandResult<Vec<CheckView>> {
        use godwit_netcheck::settings as nc;
        let s = self.settings_now()?;
        let mut cs = godwit_netcheck::Settings::default();
        if let Some(n) = &s.network {
            cs.network = nc::NetworkSettings {
                ntp_servers: n.ntp_servers.clone(),
                dns_servers: n.dns_servers.clone(),
                proxy: n.proxy.clone(),
            };
        }
        for src in &s.sources {
            let h = nc::HostSettings {
                host: src.address.clone(),
                fingerprint: Some(src.fingerprint.clone()),
            };
            match src.kind {
                SourceKind::Vsphere => cs.vcenter.push(nc::VCenterSettings {
                    host: h.host,
                    fingerprint: h.fingerprint,
                    esxi_hosts: Vec::new(),
                }),
                SourceKind::Hyperv | SourceKind::Scvmm => cs.hyperv.push(h),
            }
        }
        match &s.staging {
            Some(StagingRecord::Server {
                address,
                fingerprint,
                ..
            }) => {
                cs.staging = Some(nc::HostSettings {
                    host: address.clone(),
                    fingerprint: Some(fingerprint.clone()),
                });
            }
            Some(StagingRecord::S3 {
                endpoint, region, ..
            }) => {
                cs.s3 = Some(nc::S3Settings {
                    endpoint: endpoint
                        .clone()
                        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                });
            }
            None => {}
        }
        let mut plan = godwit_netcheck::Plan::default();
        cs.extend_plan(&mut plan, std::path::Path::new("settings"))
            .map_err(|e| CommandError::Internal {
                message: e.to_string(),
            })?;
        let results = godwit_netcheck::run_checks(&plan).await;
        self.store.update_settings(|st| {
            st.checks_run = true;
            Ok(())
        })?;
        Ok(results
            .into_iter()
            .map(|r| CheckView {
                check: r.check.to_string(),
                target: if r.purpose.is_empty() {
                    r.target
                } else {
                    format!("{} ({})", r.target, r.purpose)
                },
                status: r.status.to_string(),
                value: r.value,
                remediation: r.remediation.unwrap_or_default(),
            })
            .collect())
    }

    pub(super) async fn new_job(&self, cmd: CreateJob) -> CommandResult<JobRecord> {
        let s = self.settings_now()?;
        let mut p = Problems::default();
        let vm = cmd.vm.trim().to_string();
        if vm.is_empty() {
            p.add("vm", "required");
        }
        if let Schedule::EveryHours { hours } = cmd.schedule
            && !(1..=MAX_INTERVAL_HOURS).contains(&hours)
        {
            p.add("schedule", format!("every 1 to {MAX_INTERVAL_HOURS} hours"));
        }
        let src = s.source(&cmd.source_id).cloned();
        if src.is_none() {
            p.add("source_id", format!("no source {:?}", cmd.source_id));
        }
        p.finish()?;
        let Some(src) = src else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        if s.staging.is_none() {
            return Err(CommandError::Conflict {
                message: "configure the staging target first".into(),
            });
        }
        let (s2, vm2) = (src.clone(), vm.clone());
        // vSphere: the VM resolved by name, MoRef or instance UUID; the job keeps its identity.
        let identity = joined(tokio::task::spawn_blocking(move || vm_exists(&s2, &vm2)).await)??;
        let (vm, vm_moref, vm_instance_uuid) = match identity {
            Some((name, moref, uuid)) => (name, Some(moref), uuid),
            None => (vm, None, None),
        };
        let jobs = self.store.jobs()?;
        if let Some(j) = jobs.iter().find(|j| {
            j.source_id == src.id
                && (j.vm == vm || (vm_moref.is_some() && j.vm_moref == vm_moref))
                && !matches!(
                    j.state,
                    JobState::Completed | JobState::Cancelled | JobState::Failed
                )
        }) {
            return Err(CommandError::Conflict {
                message: format!("job {} already replicates this VM", j.id),
            });
        }
        let t = time::now();
        let job = JobRecord {
            id: random_id("job"),
            source_id: src.id.clone(),
            vm,
            vm_moref,
            vm_instance_uuid,
            schedule: cmd.schedule,
            state: JobState::Scheduled,
            runs_completed: 0,
            failures: 0,
            last_error: None,
            next_run: Some(t),
            last_sync: None,
            created: t,
            run_started: None,
            cancel_requested: false,
        };
        self.store.put_job(
            &job,
            Some(&format!(
                "created: replicate {} from {} ({:?})",
                job.vm, src.address, job.schedule
            )),
        )?;
        tracing::info!(job = %job.id, vm = %job.vm, "job created");
        self.engine.wake();
        Ok(job)
    }

    pub(super) async fn remove_job(&self, id: String) -> CommandResult<()> {
        let Some(job) = self.store.job(&id)? else {
            return Err(CommandError::NotFound {
                message: format!("job {id}"),
            });
        };
        if self.engine.is_running(&id) {
            return Err(CommandError::Conflict {
                message: format!("job {id} is running; cancel it first"),
            });
        }
        let src = self.settings_now()?.source(&job.source_id).cloned();
        let engine = self.engine.clone();
        let j = job.clone();
        joined(tokio::task::spawn_blocking(move || engine.clear_ledger(&j, src.as_ref())).await)?
            .map_err(|e| CommandError::Conflict {
            message: format!("job {id} still has a snapshot recorded: {e}"),
        })?;
        let dir = self.engine.job_dir(&id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| CommandError::Internal {
                message: format!("removing {}: {e}", dir.display()),
            })?;
        }
        self.store.delete_job(&id)?;
        tracing::info!(job = %id, "job deleted");
        Ok(())
    }

    pub(super) async fn export(&self, cmd: CreateExport) -> CommandResult<ExportView> {
        let Some(job) = self.store.job(&cmd.job_id)? else {
            return Err(CommandError::field(
                "job_id",
                format!("no job {:?}", cmd.job_id),
            ));
        };
        let exports_dir = self.cfg.exports_dir();
        let dest = super::export_files::parse(&cmd.destination, &exports_dir)?;
        if job.last_sync.is_none() {
            return Err(CommandError::Conflict {
                message: format!("job {} has no replica yet", job.id),
            });
        }
        let Some(staging) = self.settings_now()?.staging else {
            return Err(CommandError::Conflict {
                message: "exports read from the staging target; none is configured".into(),
            });
        };
        // A local file is made now (new, never through a symlink), so a refusal answers this
        // request.
        let (destination, file) = match &dest {
            super::export_files::Destination::S3(url) => (url.clone(), None),
            super::export_files::Destination::Local(parts) => {
                let f = super::export_files::create(&exports_dir, parts)?;
                let p = super::export_files::path_of(&exports_dir, parts);
                (p.display().to_string(), Some(f))
            }
        };
        let view = ExportView {
            id: random_id("exp"),
            job_id: job.id.clone(),
            disk: cmd.disk,
            format: cmd.format,
            destination,
            state: "running".into(),
            sha256: None,
            file_sha256: None,
            error: None,
            size_bytes: None,
            downloadable: false,
        };
        if let Err(e) = self.store.put_export(&view) {
            if file.is_some() {
                let _ = super::export_files::remove(Path::new(&view.destination));
            }
            return Err(e.into());
        }
        self.spawn_export(view.clone(), job.vm, staging, file);
        Ok(view)
    }

    pub(super) fn metrics_text(&self) -> String {
        let jobs = self.store.jobs().unwrap_or_default();
        let states = [
            JobState::Scheduled,
            JobState::Snapshotting,
            JobState::Transferring,
            JobState::RemovingSnapshot,
            JobState::RetryWait,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ];
        let jobs_by_state = states
            .iter()
            .map(|st| {
                let name = serde_json::to_value(st)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let n = jobs.iter().filter(|j| j.state == *st).count();
                (name, u64::try_from(n).unwrap_or(u64::MAX))
            })
            .collect();
        bundle::metrics_text(&bundle::MetricsInput {
            jobs_by_state,
            bytes_transferred: self.engine.bytes_transferred(),
            throughput_bps: self.engine.current_throughput(),
            transfers_running: u64::try_from(self.engine.running_count()).unwrap_or(0),
            http_requests: self
                .http_requests
                .load(std::sync::atomic::Ordering::Relaxed),
            ingest: self.ingest.get().map(|i| i.stats()),
            winrm_read_bytes: self.engine.winrm_read_bytes(),
            spool: self.ingest.get().map(|i| i.spool_figures()),
            memory: crate::system::memory::now(),
            data_space: self.data_space().map(|d| (d.free_bytes, d.total_bytes)),
        })
    }

    pub(super) async fn bundle(&self) -> CommandResult<Vec<u8>> {
        let s = self.settings_now()?;
        let mut files: Vec<(String, String)> = Vec::new();
        files.push((
            "version.txt".into(),
            format!(
                "godwit {}\ncreated {}\n",
                env!("CARGO_PKG_VERSION"),
                time::rfc3339(time::now())
            ),
        ));
        let status = godwit_webui::backend::Backend::setup_status(self).await;
        files.push(("setup-status.json".into(), pretty(&status)));
        files.push(("settings.json".into(), pretty(&Self::settings_view(&s))));
        let jobs = self.store.jobs()?;
        let views: Vec<JobView> = jobs.iter().map(|j| self.job_view(j)).collect();
        files.push(("jobs.json".into(), pretty(&views)));
        for j in &jobs {
            files.push((
                format!("jobs/{}-timeline.json", j.id),
                pretty(&self.store.events(&j.id)?),
            ));
        }
        files.push(("exports.json".into(), pretty(&self.store.exports()?)));
        files.push((
            "snapshot-ledger.json".into(),
            pretty(&self.engine.ledger_entries()),
        ));
        files.push(("metrics.txt".into(), self.metrics_text()));
        let log_path = super::logs::log_file(&self.cfg.data);
        let log = std::fs::read(&log_path).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(8 << 20)..];
        files.push((
            "logs/godwit.log".into(),
            String::from_utf8_lossy(tail).into_owned(),
        ));
        files.push((
            "logs/recent.log".into(),
            self.logs.last(super::logs::RING_LINES).join("\n"),
        ));
        let secrets = s.secrets();
        bundle::tar_gz(&files, &secrets, time::now()).map_err(|e| CommandError::Internal {
            message: format!("building the support bundle: {e}"),
        })
    }
}

/// Pretty JSON of a view, for the bundle.
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A vSphere VM's (name, MoRef value, instance UUID).
type VmIdentity = (String, String, Option<String>);

/// Does the source have this VM? (Checked before a job is created.) For vSphere the VM may be
/// named by name, MoRef or instance UUID (an ambiguous name is refused on the `vm` field
/// listing the candidates) and its identity is returned. Blocking.
fn vm_exists(src: &SourceRecord, vm: &str) -> CommandResult<Option<VmIdentity>> {
    let not_found = || CommandError::field("vm", format!("no VM named {vm:?} at {}", src.address));
    match src.kind {
        SourceKind::Vsphere => {
            let session = sources::vsphere_session(src).map_err(|e| CommandError::Remote {
                message: if e.kind() == godwit_vmware::ErrorKind::Trust {
                    sources::certificate_changed(src, &e.to_string())
                } else {
                    e.to_string()
                },
            })?;
            let found = godwit_vmware::replicate::find_vm(&session, vm);
            let _ = session.logout();
            match found {
                Ok(v) => Ok(Some((v.name, v.moref.value, v.instance_uuid))),
                Err(e) if e.kind() == godwit_vmware::ErrorKind::NotFound => Err(not_found()),
                Err(e) if e.kind() == godwit_vmware::ErrorKind::Usage => {
                    Err(CommandError::field("vm", e.to_string()))
                }
                Err(e) => Err(CommandError::Remote {
                    message: e.to_string(),
                }),
            }
        }
        SourceKind::Hyperv | SourceKind::Scvmm => {
            if sources::inventory(src)?.iter().any(|v| v.name == vm) {
                Ok(None)
            } else {
                Err(not_found())
            }
        }
    }
}
