//! `godwit inventory --source vsphere://USER@HOST[:PORT]|hyperv://USER@HOST[:PORT]|
//! scvmm://USER@HOST[:PORT] [--json] [--vm NAME]`: VMs, disks and eligibility (with the reasons
//! when a VM is not eligible); for SCVMM also the host each VM runs on. vSphere VMs carry
//! their folder path; `--vm` takes a name, a MoRef (`vm-123`) or an instance UUID, refuses an
//! ambiguous name listing each candidate, and reads the VM's disk descriptors too (so an
//! encrypted descriptor shows as a reason).
//!
//! Exit codes: 0 listed; 2 error (also an ambiguous `--vm` name); 3 login rejected; 4
//! certificate not trusted (the message shows the fingerprint to pin); 5 `--vm` names no VM.

use super::replicate_vsphere::{VsphereSourceArgs, connect, report_error};
use godwit_vmware::inventory::eligibility;
use godwit_vmware::vmref;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub source: VsphereSourceArgs,
    /// Print JSON: an array of VMs with `disks` and `eligibility`.
    #[arg(long)]
    pub json: bool,
    /// Only this VM (exit code 5 when there is none).
    #[arg(long)]
    pub vm: Option<String>,
}

pub fn run(args: InventoryArgs) -> anyhow::Result<ExitCode> {
    if args.source.source.starts_with("scvmm://") {
        let source = super::replicate_hyperv::HypervSourceArgs {
            source: &args.source.source,
            source_fingerprint: args.source.source_fingerprint.as_deref(),
            password_file: args.source.password_file.as_ref(),
        };
        return Ok(super::replicate_scvmm::list(
            &source,
            args.source.trust_file.as_ref(),
            args.vm.as_deref(),
            args.json,
        )
        .unwrap_or_else(|e| super::replicate_hyperv::report_error(&e)));
    }
    if args.source.source.starts_with("hyperv://") {
        // Same exit codes as vSphere: 3 login rejected, 4 certificate not trusted.
        return Ok(hyperv_list(&args).unwrap_or_else(|e| super::replicate_hyperv::report_error(&e)));
    }
    match list(&args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(report_error(&e)),
    }
}

fn list(args: &InventoryArgs) -> anyhow::Result<()> {
    let session = connect(&args.source)?;
    let result = vmref::collect(&session, args.vm.as_deref());
    if let Err(e) = session.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    let vms = result?;
    if args.json {
        let out: Vec<serde_json::Value> = vms
            .iter()
            .map(|vm| {
                let mut v = serde_json::to_value(vm).unwrap_or_default();
                v["eligibility"] = serde_json::to_value(eligibility(vm)).unwrap_or_default();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let sc = session.service_content();
    println!(
        "source {} ({} API {})",
        session.endpoint().authority(),
        sc.api_type,
        sc.api_version
    );
    for vm in &vms {
        let el = eligibility(vm);
        println!(
            "{}  {}  folder={} power={} guest={} firmware={} host={} cbt={}  {}",
            vm.name,
            vm.moref.value,
            vm.folder.as_deref().unwrap_or("?"),
            vm.power_state.as_deref().unwrap_or("?"),
            vm.guest_id.as_deref().unwrap_or("?"),
            vm.firmware.as_deref().unwrap_or("?"),
            vm.host_name.as_deref().unwrap_or("?"),
            vm.cbt_enabled,
            if el.eligible {
                "eligible"
            } else {
                "NOT eligible"
            }
        );
        for r in &el.reasons {
            println!("    reason: {r}");
        }
        for w in &el.warnings {
            println!("    warning: {w}");
        }
        for (i, d) in vm.disks.iter().enumerate() {
            println!(
                "    disk {i}: key={} {} bytes {} thin={} mode={} {:?}",
                d.key,
                d.capacity_bytes,
                d.file_name,
                d.thin.map_or("?".to_string(), |t| t.to_string()),
                d.disk_mode,
                d.backing
            );
        }
    }
    Ok(())
}

/// Hyper-V over WinRM HTTPS 5986 (see `godwit_hyperv::inventory`).
fn hyperv_list(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let src = godwit_hyperv::Source::parse(&args.source.source)?;
    let password = super::password::source_password(args.source.password_file.as_deref())?;
    let pin = args
        .source
        .source_fingerprint
        .as_deref()
        .map(godwit_hyperv::Fingerprint::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--source-fingerprint: {e}"))?;
    let creds = godwit_hyperv::Credentials {
        user: src.user.clone(),
        password,
    };
    let mut inv = godwit_hyperv::inventory(&src, &creds, pin)?;
    if let Some(name) = &args.vm {
        inv.vms.retain(|vm| &vm.record.name == name);
        if inv.vms.is_empty() {
            eprintln!("godwit: error: {}: no VM named {name:?}", inv.host);
            return Ok(ExitCode::from(super::replicate_vsphere::EXIT_NOT_FOUND));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inv.vms)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("source {} (Hyper-V over WinRM)", inv.host);
    for vm in &inv.vms {
        let verdict = if vm.eligible {
            "eligible".to_string()
        } else {
            format!("NOT eligible: {}", vm.reasons.join("; "))
        };
        println!("{}  {}", vm.record.name, verdict);
    }
    Ok(ExitCode::SUCCESS)
}
