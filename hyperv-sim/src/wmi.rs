//! The Hyper-V WMI methods the scripts call (root\virtualization\v2), as Windows documents them:
//! recovery checkpoints through `Msvm_VirtualSystemSnapshotService.CreateSnapshot`
//! (SnapshotType 32768), reference points through `ConvertToReferencePoint` (only recovery
//! snapshots convert; the snapshot is deleted) and `Msvm_VirtualSystemReferencePointService.
//! DestroyReferencePoint`. Each answers 4096 ("Method Parameters Checked - Job Started") with an
//! `Msvm_ConcreteJob` that runs `faults.wmi_job_ms` and ends in JobState 7 (Completed) or, for
//! `faults.wmi_job_fail`, 10 (Exception) with its ErrorCode/ErrorDescription:
//! - https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/createsnapshot-msvm-virtualsystemsnapshotservice
//! - https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-virtualsystemsnapshotservice-converttoreferencepoint
//!   ("Only recovery snapshots can be converted to reference points.")
//! - https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-imagemanagementservice-getvirtualdiskchanges
//! - https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-concretejob (JobState: 2 New,
//!   3 Starting, 4 Running, 5 Suspended, 6 Shutting Down, 7 Completed, 8 Terminated, 9 Killed,
//!   10 Exception)
//! - Microsoft's sample (MicrosoftDocs/Virtualization-Documentation,
//!   hyperv-samples/taylorb-wmi/xhypervbackup/xHyper-VBackup.cmdlets.psm1): the snapshot and the
//!   reference point are the job's associated instances.
//!
//! The simulator does not run PowerShell: it answers each pinned script as its text says it
//! behaves. So it also checks the text does what a host needs: every `Invoke-CimMethod` result
//! goes through the script's `Wait-GodwitJob`, which waits while JobState < 7 and fails unless
//! it is 7 ([`waits_for_jobs`]); a script that does not is refused (on a real host it would read
//! the job's results before they exist).

use super::Sim;
use super::disks;
use super::model;
use super::scripts::{HostState, SimCheckpoint};

/// A job's end: `Ok` (JobState 7) or the error text the scripts' `Wait-GodwitJob` throws for
/// JobState 10.
fn run_job(sim: &Sim, host: &mut HostState, method: &str, what: &str) -> Result<(), String> {
    let f = &sim.config.model.faults;
    host.delay_ms += f.wmi_job_ms;
    match &f.wmi_job_fail {
        Some(fail) if fail.method == method => Err(format!(
            "{what} failed (job state 10, error {}): {}",
            fail.error_code, fail.description
        )),
        _ => Ok(()),
    }
}

/// Whether `script` waits for the job of every WMI method it calls (see the module doc).
pub fn waits_for_jobs(script: &str) -> Result<(), String> {
    if !script.contains("Invoke-CimMethod") {
        return Ok(());
    }
    let helper = script
        .find("function Wait-GodwitJob(")
        .map(|i| &script[i..])
        .and_then(|rest| rest.find("\n  }\n").map(|e| &rest[..e]))
        .ok_or("no Wait-GodwitJob function")?;
    for needed in [
        "$result.ReturnValue -eq 0",
        "$result.ReturnValue -ne 4096",
        "Get-CimInstance -InputObject $result.Job",
        "while ($job.JobState -lt 7)",
        "$job = Get-CimInstance -InputObject $job",
        "if ($job.JobState -ne 7)",
    ] {
        if !helper.contains(needed) {
            return Err(format!("Wait-GodwitJob lacks `{needed}`"));
        }
    }
    let lines: Vec<&str> = script.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("= Invoke-CimMethod") else {
            continue;
        };
        let var = line[..at].trim();
        if !var.starts_with('$') {
            return Err(format!(
                "line {}: Invoke-CimMethod's result is not kept",
                i + 1
            ));
        }
        let waited = lines[i + 1..]
            .iter()
            .take(12)
            .any(|l| l.contains(&format!("Wait-GodwitJob {var} ")));
        if !waited {
            return Err(format!(
                "line {}: the job of {var} is not waited for (Wait-GodwitJob {var})",
                i + 1
            ));
        }
    }
    Ok(())
}

fn arg_str<'a>(args: &'a serde_json::Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("Cannot bind argument to parameter '{name}' because it is null."))
}

fn find_vm<'a>(sim: &'a Sim, id: &str) -> Result<&'a model::SimVm, String> {
    sim.config
        .model
        .vms
        .iter()
        .find(|v| v.id.eq_ignore_ascii_case(id))
        .ok_or_else(|| {
            format!("Get-VM : Hyper-V was unable to find a virtual machine with ID \"{id}\".")
        })
}

fn checkpoint_json(cp: &SimCheckpoint, checkpoint_type: &str, resumed: bool) -> String {
    let out = serde_json::json!({
        "Id": cp.id,
        "Name": cp.name,
        "CheckpointType": checkpoint_type,
        "SnapshotType": cp.snapshot_type,
        "Consistency": if resumed { "" } else { cp.consistency.as_str() },
        "Resumed": resumed,
        "Disks": cp.disks.iter().map(|(t, n, l, p)| serde_json::json!({
            "ControllerType": t, "ControllerNumber": n, "ControllerLocation": l, "Path": p
        })).collect::<Vec<_>>(),
    });
    format!("{out}\r\n")
}

/// checkpoint-create.ps1: the kept checkpoint of an earlier attempt (`Resume`), or a new
/// recovery checkpoint, application consistent where the guest can (VSS), else crash
/// consistent unless the VM's CheckpointType is ProductionOnly; renamed to `Name`.
pub fn create_checkpoint(
    sim: &Sim,
    host: &mut HostState,
    args: &serde_json::Value,
) -> Result<String, String> {
    let vm = find_vm(sim, arg_str(args, "VmId")?)?;
    let name = arg_str(args, "Name")?;
    let kind = vm.checkpoint_type.as_str();
    let resume = args.get("Resume").and_then(serde_json::Value::as_str);
    if let Some(id) = resume.filter(|r| !r.is_empty())
        && let Some(cp) = host.checkpoints.iter().find(|c| {
            c.vm_id.eq_ignore_ascii_case(&vm.id) && c.name == name && c.id.eq_ignore_ascii_case(id)
        })
    {
        return Ok(checkpoint_json(cp, kind, true));
    }
    if kind == "Disabled" {
        return Err(format!(
            "checkpoints are disabled on VM '{}' (CheckpointType Disabled); enable Production checkpoints",
            vm.name
        ));
    }
    let levels: &[u8] = match kind {
        "ProductionOnly" => &[1],
        "Standard" => &[2],
        _ => &[1, 2],
    };
    let merging = host
        .merging
        .get(&vm.id.to_ascii_lowercase())
        .is_some_and(|until| *until > std::time::Instant::now());
    let mut why = Vec::new();
    let mut made = None;
    for level in levels {
        // The job runs (and takes its time) whether it ends well or not.
        let job = run_job(sim, host, "CreateSnapshot", "CreateSnapshot");
        let refused = if merging {
            // Simulator wording: Hyper-V refuses a new checkpoint while a merge runs.
            Some(format!(
                "CreateSnapshot failed (job state 10, error 32775): '{}' could not create a checkpoint: the virtual machine's disks are being merged.",
                vm.name
            ))
        } else if *level == 1 && !vm.guest_vss {
            // Simulator wording for an application-consistent checkpoint the guest cannot take.
            Some(format!(
                "CreateSnapshot failed (job state 10, error 32768): '{}' could not create an application-consistent checkpoint: the guest's backup (VSS) integration service did not respond.",
                vm.name
            ))
        } else {
            job.err()
        };
        match refused {
            Some(e) => why.push(e),
            None => {
                made = Some(*level);
                break;
            }
        }
    }
    let Some(level) = made else {
        return Err(format!(
            "Checkpoint-VM : could not create a recovery checkpoint of '{}': {}",
            vm.name,
            why.join("; ")
        ));
    };
    let cp_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let (dir, root) = (&sim.config.data_dir, &sim.config.model.windows_root);
    let mut cp_disks = Vec::new();
    let mut rct_positions = Vec::new();
    for (idx, d) in vm.disks.iter().enumerate() {
        let Some(drive) = host.drives.drive(&sim.config.model, &vm.id, idx) else {
            continue;
        };
        let position = drive.changes.len();
        let frozen = disks::freeze(drive, dir, root, &cp_id)?;
        cp_disks.push((
            d.controller_type.clone(),
            d.controller_number,
            d.controller_location,
            model::windows_path(root, &frozen),
        ));
        rct_positions.push((idx, position));
    }
    let cp = SimCheckpoint {
        vm_id: vm.id.clone(),
        vm_name: vm.name.clone(),
        id: cp_id,
        name: name.to_string(),
        disks: cp_disks,
        rct_positions,
        snapshot_type: "Recovery".into(),
        consistency: if level == 1 {
            "ApplicationConsistent".into()
        } else {
            "CrashConsistent".into()
        },
    };
    let out = checkpoint_json(&cp, kind, false);
    host.checkpoints.push(cp);
    Ok(out)
}

/// rct-reference.ps1: ConvertToReferencePoint (the recovery checkpoint goes, merged into its
/// parent), each frozen disk's RCT id, then DestroyReferencePoint of `Previous`.
pub fn reference_point(
    sim: &Sim,
    host: &mut HostState,
    args: &serde_json::Value,
) -> Result<String, String> {
    let id = arg_str(args, "VmId")?;
    let name = arg_str(args, "Name")?;
    let previous = args
        .get("Previous")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    let Some(cp) = host
        .checkpoints
        .iter()
        .find(|c| c.vm_id.eq_ignore_ascii_case(id) && c.name == name)
        .cloned()
    else {
        return Err(format!(
            "Get-VMSnapshot : Unable to find a snapshot matching the given criteria. (VM {id}, name '{name}')"
        ));
    };
    run_job(
        sim,
        host,
        "ConvertToReferencePoint",
        "ConvertToReferencePoint",
    )?;
    if cp.snapshot_type != "Recovery" {
        return Err(
            "ConvertToReferencePoint failed (job state 10, error 32773): only recovery snapshots can be converted to reference points".into(),
        );
    }
    let mut out_disks = Vec::new();
    for ((_, _, _, path), (idx, position)) in cp.disks.iter().zip(&cp.rct_positions) {
        let Some(drive) = host.drives.drive(&sim.config.model, &cp.vm_id, *idx) else {
            continue;
        };
        out_disks.push(serde_json::json!({
            "Path": path,
            "RctId": format!("rctX:{}:{position}", drive.rct_uuid),
        }));
    }
    super::scripts::remove_checkpoints(sim, host, id, name)?;
    let rp = format!("Microsoft:{}", uuid::Uuid::new_v4().hyphenated());
    host.reference_points.push((cp.vm_id.clone(), rp.clone()));
    let mut destroyed = false;
    if !previous.is_empty()
        && let Some(pos) = host
            .reference_points
            .iter()
            .position(|(_, r)| r == previous)
    {
        run_job(sim, host, "DestroyReferencePoint", "DestroyReferencePoint")?;
        host.reference_points.remove(pos);
        destroyed = true;
    }
    let out = serde_json::json!({
        "ReferencePoint": rp,
        "Disks": out_disks,
        "DestroyedPrevious": destroyed,
    });
    Ok(format!("{out}\r\n"))
}

/// The GetVirtualDiskChanges job (rct-changes.ps1 calls it once per ProcessedByteLength step;
/// the simulator answers the whole region in one step).
pub fn changes_job(sim: &Sim, host: &mut HostState, what: &str) -> Result<(), String> {
    run_job(sim, host, "GetVirtualDiskChanges", what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_waits_for_its_wmi_jobs_and_the_check_bites() {
        for (name, text, _) in super::super::scripts::SCRIPT_PINS {
            waits_for_jobs(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let create = godwit_hyperv::checkpoint::CREATE_SCRIPT;
        // Not waiting for the CreateSnapshot job is refused...
        let no_wait = create.replace("$job = Wait-GodwitJob $r 'CreateSnapshot'", "$job = $r.Job");
        assert!(waits_for_jobs(&no_wait).unwrap_err().contains("not waited"));
        // ...and so is a wait that stops while the job still runs.
        let early = create.replace("while ($job.JobState -lt 7)", "while ($job.JobState -eq 4)");
        assert!(
            waits_for_jobs(&early)
                .unwrap_err()
                .contains("JobState -lt 7")
        );
    }
}
