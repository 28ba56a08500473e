//! Sources (vCenter/ESXi, Hyper-V, SCVMM in `super::scvmm`): probing a certificate without trusting it, logging in with
//! the approved fingerprint pinned, and listing VMs with their eligibility.

use super::store::SourceRecord;
use godwit_netcheck::CheckKind;
use godwit_netcheck::plan::{Endpoint, Target};
use godwit_netcheck::tls::{TlsContext, handshake, judge};
use godwit_vmware::ErrorKind;
use godwit_vmware::session::{ConnectOptions, Secret, Session, SourceUrl};
use godwit_vmware::trust::{Fingerprint, TrustStore};
use godwit_webui::backend::{CertificateView, CommandError, DiskView, SourceKind, VmView};
use godwit_webui::validate::{authority, host_port};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn default_port(kind: SourceKind) -> u16 {
    match kind {
        SourceKind::Vsphere => 443,
        SourceKind::Hyperv | SourceKind::Scvmm => 5986,
    }
}

/// Connect over TLS trusting nothing and describe the certificate the server presents.
pub async fn probe(kind: SourceKind, address: &str) -> Result<CertificateView, CommandError> {
    let (host, port) =
        host_port(address, default_port(kind)).map_err(|e| CommandError::field("address", e))?;
    let addr = authority(&host, port);
    let remote = |m: String| CommandError::Remote { message: m };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| remote(format!("{addr}: no answer within 10 s")))?
        .map_err(|e| remote(format!("{addr}: cannot connect: {e}")))?;
    let ctx = TlsContext::load(None, None).map_err(|e| CommandError::Internal { message: e })?;
    let h = tokio::time::timeout(CONNECT_TIMEOUT, handshake(&ctx, &host, stream))
        .await
        .map_err(|_| remote(format!("{addr}: TLS handshake timed out")))?
        .map_err(|e| remote(format!("{addr}: TLS handshake failed: {e}")))?;
    let endpoint = Endpoint::parse(&addr, Some(port)).map_err(|e| CommandError::Internal {
        message: e.to_string(),
    })?;
    let r = judge(&Target::adhoc(endpoint), CheckKind::Tls, addr.clone(), &h);
    let d = r
        .tls
        .ok_or_else(|| remote(format!("{addr}: {}", r.value)))?;
    let mut sans = d.dns_names.clone();
    sans.extend(d.ip_addresses.iter().cloned());
    Ok(CertificateView {
        address: addr,
        fingerprint: godwit_webui::validate::fingerprint(&d.fingerprint).unwrap_or(d.fingerprint),
        subject: d.subject,
        issuer: d.issuer,
        not_before: d.not_before,
        not_after: d.not_after,
        subject_alt_names: sans,
    })
}

fn split_authority(src: &SourceRecord) -> (String, u16) {
    host_port(&src.address, default_port(src.kind))
        .unwrap_or_else(|_| (src.address.clone(), default_port(src.kind)))
}

/// The trust a vSphere source's session uses: the approved vCenter fingerprint, and the ESXi
/// host certificates the operator approved (`POST /api/v1/sources/{id}/hosts`; NFC device URLs
/// on those hosts are trusted by them, besides the thumbprint vCenter reports).
pub fn vsphere_trust(src: &SourceRecord) -> godwit_vmware::Result<TrustStore> {
    let (host, port) = split_authority(src);
    let mut trust = TrustStore::new();
    let fp = Fingerprint::parse(&src.fingerprint)
        .map_err(|e| godwit_vmware::Error::Usage(e.to_string()))?;
    trust.add(&godwit_vmware::transport::authority(&host, port), fp);
    for p in &src.host_pins {
        if let Ok(fp) = Fingerprint::parse(&p.fingerprint) {
            trust.add(&p.host, fp);
        }
    }
    Ok(trust)
}

/// Log in to a vSphere source with its approved fingerprint pinned. Blocking.
pub fn vsphere_session(src: &SourceRecord) -> godwit_vmware::Result<Session> {
    let (host, port) = split_authority(src);
    let trust = vsphere_trust(src)?;
    Session::connect(&ConnectOptions {
        url: SourceUrl {
            user: src.username.clone(),
            host,
            port,
        },
        password: Secret::new(src.password.clone()),
        trust,
        max_parallel: godwit_vmware::transport::DEFAULT_MAX_PARALLEL,
        task_timeout: Duration::from_secs(30 * 60),
    })
}

pub(crate) fn hyperv_source(
    src: &SourceRecord,
) -> (godwit_hyperv::Source, godwit_hyperv::Credentials) {
    let (host, port) = split_authority(src);
    (
        godwit_hyperv::Source {
            kind: godwit_hyperv::inventory::SourceKind::HyperV,
            user: src.username.clone(),
            host,
            port,
        },
        godwit_hyperv::Credentials {
            user: src.username.clone(),
            password: src.password.clone(),
        },
    )
}

pub(crate) fn hyperv_pin(src: &SourceRecord) -> Result<godwit_hyperv::Fingerprint, CommandError> {
    godwit_hyperv::Fingerprint::parse(&src.fingerprint)
        .map_err(|e| CommandError::field("approved_fingerprint", e.to_string()))
}

/// The message for a certificate that no longer matches the approved one.
pub fn certificate_changed(src: &SourceRecord, detail: &str) -> String {
    format!(
        "the certificate of source {} ({}) is not the approved one; if it was replaced on \
         purpose, remove the source and add it again to approve the new certificate ({detail})",
        src.id, src.address
    )
}

/// Log in once with the pinned fingerprint (the last step before a source is stored). Blocking.
pub fn verify_login(src: &SourceRecord) -> Result<(), CommandError> {
    match src.kind {
        SourceKind::Vsphere => {
            let s = vsphere_session(src).map_err(|e| match e.kind() {
                ErrorKind::Auth => CommandError::field(
                    "password",
                    "the server rejected this user name or password",
                ),
                ErrorKind::Trust => CommandError::field(
                    "approved_fingerprint",
                    format!("the server's certificate does not match: {e}"),
                ),
                _ => CommandError::Remote {
                    message: e.to_string(),
                },
            })?;
            if let Err(e) = s.logout() {
                tracing::warn!(error = %e, "logout failed");
            }
            Ok(())
        }
        SourceKind::Hyperv => {
            let (source, creds) = hyperv_source(src);
            godwit_hyperv::inventory(&source, &creds, Some(hyperv_pin(src)?))
                .map(|_| ())
                .map_err(hyperv_error)
        }
        SourceKind::Scvmm => super::scvmm::verify_login(src),
    }
}

pub(crate) fn hyperv_error(e: godwit_hyperv::Error) -> CommandError {
    use godwit_hyperv::Error as E;
    match e {
        E::AuthFailed { .. } => CommandError::field("password", e.to_string()),
        E::PinMismatch { .. } | E::Unpinned { .. } => {
            CommandError::field("approved_fingerprint", e.to_string())
        }
        other => CommandError::Remote {
            message: other.to_string(),
        },
    }
}

/// Every VM of one source, as the dashboard shows it. Blocking.
pub fn inventory(src: &SourceRecord) -> Result<Vec<VmView>, CommandError> {
    let name = godwit_webui::backend::source_name(&src.address);
    inventory_of(src).map(|mut vms| {
        for v in &mut vms {
            v.source_name.clone_from(&name);
        }
        vms
    })
}

fn inventory_of(src: &SourceRecord) -> Result<Vec<VmView>, CommandError> {
    match src.kind {
        SourceKind::Vsphere => {
            let s = vsphere_session(src).map_err(|e| CommandError::Remote {
                message: if e.kind() == ErrorKind::Trust {
                    certificate_changed(src, &e.to_string())
                } else {
                    e.to_string()
                },
            })?;
            let vms = godwit_vmware::vmref::collect(&s, None);
            if let Err(e) = s.logout() {
                tracing::warn!(error = %e, "logout failed");
            }
            let vms = vms.map_err(|e| CommandError::Remote {
                message: format!("{e:#}"),
            })?;
            Ok(vms.iter().map(|vm| vsphere_vm(&src.id, vm)).collect())
        }
        SourceKind::Hyperv => {
            let (source, creds) = hyperv_source(src);
            let inv = godwit_hyperv::inventory(&source, &creds, Some(hyperv_pin(src)?))
                .map_err(hyperv_error)?;
            Ok(inv
                .vms
                .iter()
                .map(|vm| VmView {
                    // The tree's host: the Hyper-V host the inventory came from.
                    host: Some(inv.host.clone()),
                    ..hyperv_vm(&src.id, vm)
                })
                .collect())
        }
        SourceKind::Scvmm => super::scvmm::inventory(src),
    }
}

fn vsphere_vm(source_id: &str, vm: &godwit_vmware::inventory::Vm) -> VmView {
    use godwit_vmware::inventory::Backing;
    let el = godwit_vmware::inventory::eligibility(vm);
    let mut reasons = el.reasons;
    reasons.extend(el.warnings);
    VmView {
        source_id: source_id.to_string(),
        name: vm.name.clone(),
        power_state: vm.power_state.clone().unwrap_or_default(),
        guest_os: vm
            .guest_full_name
            .clone()
            .or_else(|| vm.guest_id.clone())
            .unwrap_or_default(),
        disks: vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskView {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                label: d.label.clone(),
                capacity_bytes: d.capacity_bytes,
                backing: match &d.backing {
                    Backing::Flat => "flat".into(),
                    Backing::Sparse => "sparse".into(),
                    Backing::SeSparse => "sesparse".into(),
                    Backing::Rdm { mode } => format!("rdm ({mode})"),
                    Backing::Other { type_name } => type_name.clone(),
                },
            })
            .collect(),
        eligible: el.eligible,
        reasons,
        host: vm.host_name.clone(),
        source_name: String::new(),
        folder: vm.folder.clone(),
    }
}

pub(crate) fn hyperv_vm(source_id: &str, vm: &godwit_hyperv::inventory::Vm) -> VmView {
    let r = &vm.record;
    let mut reasons = vm.reasons.clone();
    reasons.extend(vm.warnings.iter().cloned());
    VmView {
        source_id: source_id.to_string(),
        name: r.name.clone(),
        power_state: r.state.clone(),
        guest_os: format!("Hyper-V generation {}", r.generation),
        disks: r
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskView {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                label: format!(
                    "{} {}:{}",
                    d.controller_type, d.controller_number, d.controller_location
                ),
                capacity_bytes: d.size.map_or(0, |b| b.0),
                backing: d
                    .vhd_format
                    .clone()
                    .or_else(|| d.disk_number.map(|n| format!("physical disk {n}")))
                    .unwrap_or_default(),
            })
            .collect(),
        eligible: vm.eligible,
        reasons,
        host: None,
        source_name: String::new(),
        folder: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HostPin;

    #[test]
    fn vsphere_trust_holds_the_vcenter_and_the_approved_esxi_hosts() {
        let fp = |b: u8| format!("SHA256:{}", hex::encode([b; 32]));
        let src = SourceRecord {
            id: "src-1".into(),
            kind: SourceKind::Vsphere,
            address: "vc.lab:8443".into(),
            username: "u".into(),
            password: "p".into(),
            fingerprint: fp(1),
            host_port: None,
            cbt: None,
            host_pins: vec![
                HostPin {
                    host: "esx1.lab".into(),
                    fingerprint: fp(2),
                },
                HostPin {
                    host: "esx2.lab:9443".into(),
                    fingerprint: fp(3),
                },
            ],
        };
        let t = vsphere_trust(&src).unwrap();
        let one = |h: &str, p: u16| {
            t.pins_for(h, p)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let shown = |b: u8| Fingerprint::parse(&fp(b)).unwrap().to_string();
        assert_eq!(one("vc.lab", 8443), [shown(1)]);
        assert_eq!(one("esx1.lab", 443), [shown(2)]);
        assert_eq!(one("esx2.lab", 9443), [shown(3)]);
        assert!(one("esx2.lab", 443).is_empty());
        assert!(one("esx3.lab", 443).is_empty());
    }
}
