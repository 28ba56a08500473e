//! HTML forms as they arrive (every field a string, absent checkboxes missing) and their
//! conversion into the backend's commands. No business rules here: values are passed on as
//! typed, and the backend says what is wrong with them.

use crate::backend::{
    AddSource, AddressMode, ApproveHost, CreateExport, CreateJob, ExportFormat, InstallCertificate,
    NetworkSettings, ProbeSource, Schedule, Secret, SetAdminPassword, SetStagingTarget, SourceKind,
    StagingView,
};
use crate::backend::{CreateJobs, SetSourceCredentials, TransferSettings, VmRef};
use crate::error::FormErrors;
use serde::Deserialize;

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn secret_or_none(s: Secret) -> Option<Secret> {
    (!s.is_empty()).then_some(s)
}

/// A list typed as one server per line, or separated by commas or spaces.
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PasswordForm {
    pub setup_code: Secret,
    pub current_password: Secret,
    pub new_password: Secret,
    pub confirm_password: Secret,
}

impl PasswordForm {
    pub(crate) fn into_command(self) -> SetAdminPassword {
        SetAdminPassword {
            setup_code: secret_or_none(self.setup_code),
            current_password: secret_or_none(self.current_password),
            new_password: self.new_password,
            confirm_password: self.confirm_password,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LoginForm {
    pub password: Secret,
}

/// The network step; also what the page echoes back after an error (no secrets in it).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct NetworkForm {
    pub hostname: String,
    /// `dhcp` or `static`
    pub mode: String,
    pub address: String,
    pub gateway: String,
    pub dns_servers: String,
    pub ntp_servers: String,
    pub proxy: String,
}

impl Default for NetworkForm {
    fn default() -> Self {
        NetworkForm {
            hostname: String::new(),
            mode: "dhcp".into(),
            address: String::new(),
            gateway: String::new(),
            dns_servers: String::new(),
            ntp_servers: String::new(),
            proxy: String::new(),
        }
    }
}

impl NetworkForm {
    pub(crate) fn from_settings(n: &NetworkSettings) -> Self {
        let (mode, address, gateway) = match &n.address {
            AddressMode::Dhcp => ("dhcp", String::new(), String::new()),
            AddressMode::Static { address, gateway } => {
                ("static", address.clone(), gateway.clone())
            }
        };
        NetworkForm {
            hostname: n.hostname.clone(),
            mode: mode.into(),
            address,
            gateway,
            dns_servers: n.dns_servers.join("\n"),
            ntp_servers: n.ntp_servers.join("\n"),
            proxy: n.proxy.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn to_command(&self) -> Result<NetworkSettings, FormErrors> {
        let address = match self.mode.as_str() {
            "dhcp" => AddressMode::Dhcp,
            "static" => AddressMode::Static {
                address: self.address.trim().to_owned(),
                gateway: self.gateway.trim().to_owned(),
            },
            _ => return Err(FormErrors::field("mode", "choose DHCP or a static address")),
        };
        Ok(NetworkSettings {
            hostname: self.hostname.trim().to_owned(),
            address,
            dns_servers: split_list(&self.dns_servers),
            ntp_servers: split_list(&self.ntp_servers),
            proxy: non_empty(&self.proxy),
        })
    }

    pub(crate) fn is_static(&self) -> bool {
        self.mode == "static"
    }
}

/// The staging step. Secrets are kept as [`Secret`], which has no `Display`: a template cannot
/// render them even by mistake.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct StagingForm {
    /// `server` or `s3`
    pub kind: String,
    pub address: String,
    pub fingerprint: String,
    pub token: Secret,
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

impl Default for StagingForm {
    fn default() -> Self {
        StagingForm {
            kind: "server".into(),
            address: String::new(),
            fingerprint: String::new(),
            token: Secret::default(),
            endpoint: String::new(),
            region: String::new(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
        }
    }
}

impl StagingForm {
    pub(crate) fn from_view(v: &StagingView) -> Self {
        let mut f = StagingForm::default();
        match v {
            StagingView::None => {}
            StagingView::Server {
                address,
                fingerprint,
            } => {
                f.address = address.clone();
                f.fingerprint = fingerprint.clone();
            }
            StagingView::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
            } => {
                f.kind = "s3".into();
                f.endpoint = endpoint.clone().unwrap_or_default();
                f.region = region.clone();
                f.bucket = bucket.clone();
                f.prefix = prefix.clone();
                f.access_key_id = access_key_id.clone();
            }
        }
        f
    }

    pub(crate) fn to_command(&self) -> Result<SetStagingTarget, FormErrors> {
        match self.kind.as_str() {
            "server" => Ok(SetStagingTarget::Server {
                address: self.address.trim().to_owned(),
                fingerprint: self.fingerprint.trim().to_owned(),
                token: self.token.clone(),
            }),
            "s3" => Ok(SetStagingTarget::S3 {
                endpoint: non_empty(&self.endpoint),
                region: self.region.trim().to_owned(),
                bucket: self.bucket.trim().to_owned(),
                prefix: self.prefix.trim().to_owned(),
                access_key_id: self.access_key_id.trim().to_owned(),
                secret_access_key: self.secret_access_key.clone(),
            }),
            _ => Err(FormErrors::field(
                "kind",
                "choose a staging server or an S3 bucket",
            )),
        }
    }

    pub(crate) fn is_s3(&self) -> bool {
        self.kind == "s3"
    }
}

pub(crate) fn parse_kind(s: &str) -> Option<SourceKind> {
    match s {
        "vsphere" => Some(SourceKind::Vsphere),
        "hyperv" => Some(SourceKind::Hyperv),
        "scvmm" => Some(SourceKind::Scvmm),
        _ => None,
    }
}

pub(crate) fn kind_label(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Vsphere => "vCenter / ESXi",
        SourceKind::Hyperv => "Hyper-V host",
        SourceKind::Scvmm => "SCVMM",
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ProbeForm {
    pub kind: String,
    pub address: String,
}

impl ProbeForm {
    pub(crate) fn to_command(&self) -> Result<ProbeSource, FormErrors> {
        let kind = parse_kind(&self.kind)
            .ok_or_else(|| FormErrors::field("kind", "choose the kind of source"))?;
        Ok(ProbeSource {
            kind,
            address: self.address.trim().to_owned(),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct AddSourceForm {
    pub kind: String,
    pub address: String,
    pub approved_fingerprint: String,
    /// Present (any value) when the operator ticked "I trust this certificate".
    pub approve: Option<String>,
    pub username: String,
    pub password: Secret,
}

impl AddSourceForm {
    pub(crate) fn to_command(&self) -> Result<AddSource, FormErrors> {
        let kind = parse_kind(&self.kind)
            .ok_or_else(|| FormErrors::field("kind", "choose the kind of source"))?;
        if self.approve.is_none() {
            return Err(FormErrors::field(
                "approve",
                "compare the fingerprint with the one the server shows, then tick this box",
            ));
        }
        Ok(AddSource {
            kind,
            address: self.address.trim().to_owned(),
            username: self.username.trim().to_owned(),
            password: self.password.clone(),
            approved_fingerprint: self.approved_fingerprint.trim().to_owned(),
            host_port: None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct JobForm {
    pub source_id: String,
    pub vm: String,
    /// `once` or `every`
    pub schedule: String,
    pub hours: String,
}

impl Default for JobForm {
    fn default() -> Self {
        JobForm {
            source_id: String::new(),
            vm: String::new(),
            schedule: "once".into(),
            hours: "24".into(),
        }
    }
}

impl JobForm {
    pub(crate) fn to_command(&self) -> Result<CreateJob, FormErrors> {
        let schedule = match self.schedule.as_str() {
            "once" => Schedule::Once,
            "every" => {
                let hours = self.hours.trim().parse::<u32>().map_err(|_| {
                    FormErrors::field("hours", "enter a whole number of hours, e.g. 24")
                })?;
                Schedule::EveryHours { hours }
            }
            _ => {
                return Err(FormErrors::field(
                    "schedule",
                    "choose once or every N hours",
                ));
            }
        };
        Ok(CreateJob {
            source_id: self.source_id.clone(),
            vm: self.vm.clone(),
            schedule,
        })
    }
}

pub(crate) fn format_value(f: ExportFormat) -> &'static str {
    match f {
        ExportFormat::Vmdk => "vmdk",
        ExportFormat::Vhdx => "vhdx",
        ExportFormat::Vhd => "vhd",
        ExportFormat::Raw => "raw",
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct ExportForm {
    pub job_id: String,
    pub disk: String,
    pub format: String,
    pub destination: String,
    /// The disks the form offers (every job's VM's disks with sizes); empty: a number field.
    #[serde(skip)]
    pub disks: Vec<DiskChoice>,
}

/// One disk offered by the export form.
#[derive(Debug, Clone)]
pub(crate) struct DiskChoice {
    pub job_id: String,
    pub index: u32,
    /// `web-01: Hard disk 1 (40.0 GiB)`
    pub label: String,
}

impl Default for ExportForm {
    fn default() -> Self {
        ExportForm {
            job_id: String::new(),
            disk: "0".into(),
            format: "vmdk".into(),
            destination: String::new(),
            disks: Vec::new(),
        }
    }
}

impl ExportForm {
    pub(crate) fn to_command(&self) -> Result<CreateExport, FormErrors> {
        let disk =
            self.disk.trim().parse::<u32>().map_err(|_| {
                FormErrors::field("disk", "enter the disk number (0 for the first)")
            })?;
        let format = match self.format.as_str() {
            "vmdk" => ExportFormat::Vmdk,
            "vhdx" => ExportFormat::Vhdx,
            "vhd" => ExportFormat::Vhd,
            "raw" => ExportFormat::Raw,
            _ => return Err(FormErrors::field("format", "choose a disk format")),
        };
        Ok(CreateExport {
            job_id: self.job_id.clone(),
            disk,
            format,
            destination: self.destination.trim().to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Operator pages (issue 18): bulk jobs, transfer settings, a source's credentials.
// ---------------------------------------------------------------------------------------------

/// The inventory's bulk form: every ticked VM (`vm=SOURCE_ID/NAME`, repeated) and one schedule.
#[derive(Debug, Clone)]
pub(crate) struct BulkJobForm {
    pub vms: Vec<String>,
    pub schedule: String,
    pub hours: String,
}

impl Default for BulkJobForm {
    fn default() -> Self {
        BulkJobForm {
            vms: Vec::new(),
            schedule: "once".into(),
            hours: "24".into(),
        }
    }
}

impl BulkJobForm {
    /// From the form's pairs (a URL-encoded body may repeat `vm`).
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut f = BulkJobForm::default();
        for (k, v) in pairs {
            match k.as_str() {
                "vm" => f.vms.push(v),
                "schedule" => f.schedule = v,
                "hours" => f.hours = v,
                _ => {}
            }
        }
        f
    }

    pub(crate) fn to_command(&self) -> Result<CreateJobs, FormErrors> {
        let one = JobForm {
            schedule: self.schedule.clone(),
            hours: self.hours.clone(),
            ..JobForm::default()
        };
        let schedule = one.to_command()?.schedule;
        let vms = self
            .vms
            .iter()
            .map(|k| match k.split_once('/') {
                Some((source_id, vm)) if !source_id.is_empty() && !vm.is_empty() => Ok(VmRef {
                    source_id: source_id.to_owned(),
                    vm: vm.to_owned(),
                }),
                _ => Err(FormErrors::field(
                    "vms",
                    format!("{k:?} is not a VM of the inventory"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CreateJobs { vms, schedule })
    }
}

/// Transfer settings as typed: limits in Mbit/s (empty: none), hours, concurrency.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TransferForm {
    pub bandwidth_limit_mbps: String,
    pub business_hours_limit_mbps: String,
    pub business_hours_start: String,
    pub business_hours_end: String,
    pub max_concurrent_jobs: String,
}

impl TransferForm {
    pub(crate) fn from_settings(t: &TransferSettings) -> Self {
        TransferForm {
            bandwidth_limit_mbps: t
                .bandwidth_limit_mbps
                .map(|v| v.to_string())
                .unwrap_or_default(),
            business_hours_limit_mbps: t
                .business_hours_limit_mbps
                .map(|v| v.to_string())
                .unwrap_or_default(),
            business_hours_start: t.business_hours_start.to_string(),
            business_hours_end: t.business_hours_end.to_string(),
            max_concurrent_jobs: t.max_concurrent_jobs.to_string(),
        }
    }

    pub(crate) fn to_command(&self) -> Result<TransferSettings, FormErrors> {
        fn opt(field: &str, s: &str) -> Result<Option<u64>, FormErrors> {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            t.parse::<u64>().map(Some).map_err(|_| {
                FormErrors::field(field, "a whole number of Mbit/s, or empty for no limit")
            })
        }
        fn hour(field: &str, s: &str) -> Result<u8, FormErrors> {
            s.trim()
                .parse::<u8>()
                .map_err(|_| FormErrors::field(field, "an hour, 0 to 24"))
        }
        Ok(TransferSettings {
            bandwidth_limit_mbps: opt("bandwidth_limit_mbps", &self.bandwidth_limit_mbps)?,
            business_hours_limit_mbps: opt(
                "business_hours_limit_mbps",
                &self.business_hours_limit_mbps,
            )?,
            business_hours_start: hour("business_hours_start", &self.business_hours_start)?,
            business_hours_end: hour("business_hours_end", &self.business_hours_end)?,
            max_concurrent_jobs: self
                .max_concurrent_jobs
                .trim()
                .parse::<u32>()
                .map_err(|_| FormErrors::field("max_concurrent_jobs", "a whole number of jobs"))?,
        })
    }
}

/// A source's new user name and password.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CredentialsForm {
    pub username: String,
    pub password: Secret,
}

impl CredentialsForm {
    pub(crate) fn into_command(self) -> SetSourceCredentials {
        SetSourceCredentials {
            username: self.username.trim().to_owned(),
            password: self.password,
        }
    }
}

/// The common path of every form post: the form's own check ([`FormErrors`] → 422), then the
/// backend command, whose refusal is turned into its HTTP status and field errors sorted onto
/// `fields` (the rest go to the banner). The page re-renders the form with the errors next to
/// their fields on `Err`.
pub(crate) async fn submit<C, T, Fut>(
    parsed: Result<C, FormErrors>,
    fields: &[&str],
    command: impl FnOnce(C) -> Fut,
) -> Result<T, (axum::http::StatusCode, FormErrors)>
where
    Fut: std::future::Future<Output = Result<T, crate::backend::CommandError>>,
{
    let cmd = parsed.map_err(|e| (axum::http::StatusCode::UNPROCESSABLE_ENTITY, e))?;
    command(cmd).await.map_err(|e| {
        (
            crate::error::status_of(&e),
            FormErrors::from_error(e, fields),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_spaces_and_lines() {
        assert_eq!(
            split_list("192.0.2.1, 192.0.2.2\n 192.0.2.3"),
            vec!["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        );
        assert!(split_list("  \n ").is_empty());
    }

    #[test]
    fn network_form_round_trip() {
        let f = NetworkForm {
            hostname: " godwit ".into(),
            mode: "static".into(),
            address: "192.0.2.10/24".into(),
            gateway: "192.0.2.1".into(),
            dns_servers: "192.0.2.53".into(),
            ntp_servers: "".into(),
            proxy: " ".into(),
        };
        let cmd = f.to_command().unwrap();
        assert_eq!(cmd.hostname, "godwit");
        assert_eq!(cmd.proxy, None);
        let back = NetworkForm::from_settings(&cmd);
        assert_eq!(back.address, "192.0.2.10/24");
        assert!(back.is_static());
    }

    #[test]
    fn unticked_approval_is_a_field_error() {
        let f = AddSourceForm {
            kind: "vsphere".into(),
            ..Default::default()
        };
        assert!(f.to_command().unwrap_err().get("approve").is_some());
    }

    #[test]
    fn job_hours_must_be_a_number() {
        let f = JobForm {
            schedule: "every".into(),
            hours: "soon".into(),
            ..Default::default()
        };
        assert!(f.to_command().unwrap_err().get("hours").is_some());
    }
}

/// The settings page's certificate upload (pasted PEM text).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CertificateForm {
    pub certificate_pem: String,
    pub private_key_pem: Secret,
}

/// The settings page's Hyper-V push URL (empty: the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct IngestForm {
    pub url: String,
    /// MiB; empty: the default.
    pub spool_limit_mib: String,
}

impl IngestForm {
    pub(crate) fn into_command(
        self,
    ) -> Result<crate::backend::IngestSettings, crate::backend::CommandError> {
        let url = self.url.trim();
        let mib = self.spool_limit_mib.trim();
        let spool_limit_mib = if mib.is_empty() {
            None
        } else {
            Some(mib.parse::<u64>().map_err(|_| {
                crate::backend::CommandError::field(
                    "spool_limit_mib",
                    format!("{mib:?} is not a whole number of MiB"),
                )
            })?)
        };
        Ok(crate::backend::IngestSettings {
            url: (!url.is_empty()).then(|| url.to_string()),
            spool_limit_mib,
        })
    }
}

/// The settings page's approval of one Hyper-V host certificate of an SCVMM source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HostPinForm {
    pub host: String,
    pub approved_fingerprint: String,
}

impl HostPinForm {
    pub(crate) fn into_command(self) -> ApproveHost {
        ApproveHost {
            host: self.host,
            approved_fingerprint: self.approved_fingerprint,
        }
    }
}

impl CertificateForm {
    pub(crate) fn into_command(self) -> InstallCertificate {
        InstallCertificate {
            certificate_pem: self.certificate_pem,
            private_key_pem: self.private_key_pem,
        }
    }
}

// CBT per source (issue 18, settings): the settings page's on/off switch.

#[derive(Debug, Deserialize)]
pub(crate) struct CbtForm {
    #[serde(default)]
    pub enabled: String,
}

impl CbtForm {
    pub(crate) fn into_command(self) -> Result<crate::backend::SetSourceCbt, FormErrors> {
        match self.enabled.as_str() {
            "on" => Ok(crate::backend::SetSourceCbt { enabled: true }),
            "off" => Ok(crate::backend::SetSourceCbt { enabled: false }),
            // Shown above the settings page (it has no `enabled` field to show it next to).
            other => Err(FormErrors::general(format!(
                "changed block tracking must be on or off, not {other:?}"
            ))),
        }
    }
}
