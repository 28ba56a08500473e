//! The command lines and PowerShell the simulator understands, recognised by exact text.
//! Anything else fails the way cmd.exe or PowerShell would (unknown command, CLIXML error).

use super::Sim;
use super::disks::{self, Drives};
use super::model;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use godwit_hyperv::checkpoint::{CREATE_SCRIPT, REMOVE_SCRIPT};
use godwit_hyperv::clixml::encode_error_stream;
use godwit_hyperv::hostfile::{FILE_INFO_SCRIPT, READ_RANGE_SCRIPT, encode_range_output};
use godwit_hyperv::ingest::push::PUSH_SCRIPT;
use godwit_hyperv::inventory::INVENTORY_SCRIPT;
use godwit_hyperv::powershell;
use godwit_hyperv::rct::{CHANGES_SCRIPT, REFERENCE_SCRIPT};
use godwit_hyperv::scvmm::SCVMM_INVENTORY_SCRIPT;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// (stdout, stderr, exit code)
pub type Outcome = (Vec<u8>, Vec<u8>, i64);

/// The SHA-256 of each script text the simulator was written (and reviewed) against. The
/// simulator recognises a script by its exact text, so an edited script would otherwise be
/// answered by a simulator that follows the old one: it refuses to run a script whose hash is
/// not pinned here, and `scripts_are_the_ones_the_simulator_was_reviewed_against` fails. After
/// changing a script, review what the simulator does for it, then update its pin.
pub const SCRIPT_PINS: &[(&str, &str, &str)] = &[
    (
        "checkpoint-create.ps1",
        CREATE_SCRIPT,
        "5f2157f8474bef82fdcd884d9b5c12eb9a8ef1080c23c84dcb477f972805b4c2",
    ),
    (
        "checkpoint-remove.ps1",
        REMOVE_SCRIPT,
        "06d2520a21175e5ec6b184899bb79db2233132609368cf441a3643f896106f08",
    ),
    (
        "file-info.ps1",
        FILE_INFO_SCRIPT,
        "970717e3a2265a881ed1c1915e23ba6957d22bd4ecf14b231c32d7a6c89a8111",
    ),
    (
        "inventory.ps1",
        INVENTORY_SCRIPT,
        "6858db4d51c499336d586df64395788971cd1db114137333201da8ce67f05d40",
    ),
    (
        "push-ranges.ps1",
        PUSH_SCRIPT,
        "aaedca904fd41de0f6160fa3743124826801fd5c678512dc4767a07b7c9fe149",
    ),
    (
        "rct-changes.ps1",
        CHANGES_SCRIPT,
        "9b55239289b965204166c1b02fc4487b2a80dc4e3bc657737e3eb5ea10d9a4f1",
    ),
    (
        "rct-reference.ps1",
        REFERENCE_SCRIPT,
        "1fcdedc500d2f4fd727465759cb826ca10fc7cf0eb89d8157a06fbd60eb6b311",
    ),
    (
        "read-range.ps1",
        READ_RANGE_SCRIPT,
        "1a162379144384c452a9c5cb48180b2e21ef15c249544a1d92cb0107d5513846",
    ),
    (
        "scvmm-inventory.ps1",
        SCVMM_INVENTORY_SCRIPT,
        "0f9fa7f227a31f3471a8d96d905cb0b4cede63760403a72186b3b7e97dda6027",
    ),
];

/// The pinned script `text` is, if its hash matches its pin: `Err` names a script that
/// changed since the simulator was reviewed.
fn pinned(text: &str) -> Option<Result<&'static str, String>> {
    use sha2::Digest;
    let (name, _, pin) = SCRIPT_PINS.iter().find(|(_, t, _)| *t == text)?;
    let got = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Some(if got == *pin {
        Ok(name)
    } else {
        Err(format!(
            "simulator: {name} changed (SHA-256 {got}, reviewed {pin}); review what the simulator does for it, then update its pin in hyperv-sim/src/scripts.rs"
        ))
    })
}

/// Largest script the simulator collects from pieces.
const MAX_PIECES_BYTES: usize = powershell::MAX_SCRIPT_BYTES * 2;

fn ps_error(msg: &str) -> Outcome {
    (Vec::new(), encode_error_stream(&[msg]), 1)
}

/// A checkpoint the simulated host holds.
#[derive(Debug, Clone)]
pub struct SimCheckpoint {
    pub vm_id: String,
    pub vm_name: String,
    pub id: String,
    pub name: String,
    /// The disks it froze: (controller type, number, location, Windows path).
    pub disks: Vec<(String, u32, u32, String)>,
    /// Per frozen disk: (drive index in the VM, RCT log position when it was frozen).
    pub rct_positions: Vec<(usize, usize)>,
    /// `Recovery` (CreateSnapshot with SnapshotType 32768, what the scripts make).
    pub snapshot_type: String,
    /// `ApplicationConsistent` or `CrashConsistent`.
    pub consistency: String,
}

/// What the simulated host remembers between commands.
#[derive(Debug, Default)]
pub struct HostState {
    /// Script pieces collected per token.
    pub pieces: HashMap<String, String>,
    pub checkpoints: Vec<SimCheckpoint>,
    /// The VMs' drive files, differencing children and RCT logs.
    pub drives: Drives,
    /// A push-ranges.ps1 run the command handler starts (its output comes when it is done).
    pub pending_push: Option<super::push::PushJob>,
    /// How long the script just run takes on the host (its WMI jobs, a merge it waits for):
    /// the command handler holds its output back that long.
    pub delay_ms: u64,
    /// VMs whose disks are merging (VM id, lower case) and until when.
    pub merging: HashMap<String, std::time::Instant>,
    /// RCT reference points (Msvm_VirtualSystemReferencePoint) the host holds: (VM id, InstanceID).
    pub reference_points: Vec<(String, String)>,
}

pub fn run_command_line(sim: &Sim, host: &mut HostState, line: &str) -> Outcome {
    match powershell::script_of_command_line(line) {
        Some(Ok(script)) => run_script(sim, host, &script, 0),
        Some(Err(e)) => (Vec::new(), format!("{e}\r\n").into_bytes(), 1),
        None => {
            let trimmed = line.trim();
            if let Some(text) = trimmed.strip_prefix("echo ") {
                (format!("{text}\r\n").into_bytes(), Vec::new(), 0)
            } else {
                let word = trimmed.split_whitespace().next().unwrap_or("");
                (
                    Vec::new(),
                    format!("'{word}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n").into_bytes(),
                    1,
                )
            }
        }
    }
}

fn quoted_arg<'a>(script: &'a str, cmdlet: &str) -> Option<&'a str> {
    let rest = script.trim().strip_prefix(cmdlet)?.trim();
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

fn run_script(sim: &Sim, host: &mut HostState, script: &str, depth: u32) -> Outcome {
    // Parameter binding comes before anything runs: a cmdlet called with a parameter it does
    // not have fails as PowerShell words it (crate::cmdlets holds each cmdlet's documented
    // parameters), whether or not the script is one the simulator knows.
    if let Err(e) = crate::pwsh::check_cmdlet_calls(script) {
        return ps_error(&e);
    }
    let body = powershell::split_args(script).map_or(script, |(_, b)| b);
    match pinned(body) {
        Some(Err(e)) => return ps_error(&e),
        Some(Ok(name)) => {
            if let Err(e) = super::wmi::waits_for_jobs(body) {
                return ps_error(&format!("simulator: {name}: {e}"));
            }
        }
        None => {}
    }
    if let Some((args, body)) = powershell::split_args(script) {
        let known = [
            CREATE_SCRIPT,
            REMOVE_SCRIPT,
            FILE_INFO_SCRIPT,
            READ_RANGE_SCRIPT,
            REFERENCE_SCRIPT,
            CHANGES_SCRIPT,
            PUSH_SCRIPT,
        ];
        if known.contains(&body) {
            return match run_with_args(sim, host, &args, body) {
                Ok(out) => (out.into_bytes(), Vec::new(), 0),
                // The scripts' catch blocks write the error as plain text and exit 2.
                Err(e) => (Vec::new(), format!("{e}\r\n").into_bytes(), 2),
            };
        }
    }
    let pieces = &mut host.pieces;
    if script == INVENTORY_SCRIPT {
        let drives = &host.drives;
        let active = |id: &str, idx: usize| drives.active(id, idx);
        return match model::records_with(&sim.config.model, &sim.config.data_dir, &active) {
            Ok(recs) => match serde_json::to_string(&recs) {
                Ok(json) => (format!("{json}\r\n").into_bytes(), Vec::new(), 0),
                Err(e) => ps_error(&format!("ConvertTo-Json : {e}")),
            },
            // The script's catch block writes the error as plain text and exits 2.
            Err(e) => (Vec::new(), format!("{e}\r\n").into_bytes(), 2),
        };
    }
    if script == SCVMM_INVENTORY_SCRIPT {
        // The scripts' catch block writes the error as plain text and exits 2.
        let Some(m) = &sim.config.model.scvmm else {
            return (
                Vec::new(),
                b"Import-Module : The specified module 'virtualmachinemanager' was not loaded because no valid module file was found in any module directory.\r\n".to_vec(),
                2,
            );
        };
        return match super::scvmm::report(m, &sim.config.data_dir) {
            Ok(r) => match serde_json::to_string(&r) {
                Ok(json) => (format!("{json}\r\n").into_bytes(), Vec::new(), 0),
                Err(e) => ps_error(&format!("ConvertTo-Json : {e}")),
            },
            Err(e) => (Vec::new(), format!("{e}\r\n").into_bytes(), 2),
        };
    }
    if let Some((token, chunk)) = powershell::parse_piece_script(script) {
        let buf = pieces.entry(token.as_str().to_string()).or_default();
        if buf.len() + chunk.len() > MAX_PIECES_BYTES {
            return ps_error("Add-Content : There is not enough space on the disk.");
        }
        buf.push_str(&chunk);
        return (Vec::new(), Vec::new(), 0);
    }
    if let Some(token) = powershell::parse_run_pieces_script(script) {
        let Some(b64) = pieces.remove(token.as_str()) else {
            return ps_error(&format!(
                "Exception calling \"ReadAllText\" with \"1\" argument(s): \"Could not find file 'C:\\Windows\\Temp\\godwit-{}.b64'.\"",
                token.as_str()
            ));
        };
        let decoded = B64
            .decode(b64.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return match decoded {
            Some(inner) if depth == 0 => run_script(sim, host, &inner, depth + 1),
            Some(_) => ps_error("nested piece delivery is not supported"),
            None => ps_error(
                "Exception calling \"FromBase64String\" with \"1\" argument(s): \"The input is not a valid Base-64 string.\"",
            ),
        };
    }
    if let Some(text) = quoted_arg(script, "Write-Output") {
        return (format!("{text}\r\n").into_bytes(), Vec::new(), 0);
    }
    if let Some(text) = quoted_arg(script, "Write-Error") {
        return ps_error(&format!(
            "{text}\r\n    + CategoryInfo          : NotSpecified: (:) [Write-Error], WriteErrorException"
        ));
    }
    if let Some(code) = script
        .trim()
        .strip_prefix("exit ")
        .and_then(|c| c.trim().parse::<i64>().ok())
    {
        return (Vec::new(), Vec::new(), code);
    }
    let first = script.split_whitespace().next().unwrap_or("");
    ps_error(&format!(
        "{first} : The term '{first}' is not recognized as the name of a cmdlet, function, script file, or operable program. (simulator: unknown script)"
    ))
}

fn arg_str<'a>(args: &'a serde_json::Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("Cannot bind argument to parameter '{name}' because it is null."))
}

fn arg_u64(args: &serde_json::Value, name: &str) -> Result<u64, String> {
    args.get(name)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            format!("Cannot convert value of parameter '{name}' to type \"System.Int64\".")
        })
}

fn open_host_file(sim: &Sim, path: &str) -> Result<std::fs::File, String> {
    let m = &sim.config.model;
    let not_found = || {
        format!(
            "Exception calling \"Open\" with \"4\" argument(s): \"Could not find file '{path}'.\""
        )
    };
    let local =
        model::local_path(&m.windows_root, &sim.config.data_dir, path).ok_or_else(not_found)?;
    std::fs::File::open(&local).map_err(|_| not_found())
}

/// The parameterised scripts (exact text after the `$GodwitArgs` line).
fn run_with_args(
    sim: &Sim,
    host: &mut HostState,
    args: &serde_json::Value,
    body: &str,
) -> Result<String, String> {
    if body == CREATE_SCRIPT {
        return super::wmi::create_checkpoint(sim, host, args);
    }
    if body == REMOVE_SCRIPT {
        let id = arg_str(args, "VmId")?;
        let name = arg_str(args, "Name")?;
        if !name.starts_with("godwit-") {
            return Err(format!(
                "refusing to remove checkpoint '{name}': not a Godwit checkpoint"
            ));
        }
        let removed = remove_checkpoints(sim, host, id, name)?;
        if !removed.is_empty() {
            // The merge runs on the host; the script waits while OperationalStatus says
            // MergingDisks, so its output comes when the merge ended.
            let ms = sim.config.model.faults.merge_ms;
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            host.merging.insert(id.to_ascii_lowercase(), until);
            host.delay_ms += ms;
        }
        return Ok(format!("{{\"Removed\":{}}}\r\n", removed.len()));
    }
    if body == REFERENCE_SCRIPT {
        return super::wmi::reference_point(sim, host, args);
    }
    if body == CHANGES_SCRIPT {
        return rct_changes(sim, host, args);
    }
    if body == PUSH_SCRIPT {
        let resolve = |path: &str| {
            let m = &sim.config.model;
            model::local_path(&m.windows_root, &sim.config.data_dir, path).ok_or_else(|| {
                format!(
                    "Exception calling \"Open\" with \"4\" argument(s): \"Could not find file '{path}'.\""
                )
            })
        };
        let job = super::push::job_of_args(args, sim.config.model.faults.push_delay_ms, &resolve)?;
        host.pending_push = Some(job);
        return Ok(String::new());
    }
    if body == FILE_INFO_SCRIPT {
        let f = open_host_file(sim, arg_str(args, "Path")?)?;
        let meta = f.metadata().map_err(|e| e.to_string())?;
        // .NET ticks: 100 ns since 0001-01-01 UTC.
        let ticks = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| {
                u64::try_from(d.as_nanos() / 100).unwrap_or(0) + 621_355_968_000_000_000
            });
        return Ok(format!(
            "{{\"Length\":{},\"LastWriteTicks\":{ticks}}}\r\n",
            meta.len()
        ));
    }
    if body == READ_RANGE_SCRIPT {
        let path = arg_str(args, "Path")?;
        let off = arg_u64(args, "Offset")?;
        let len = arg_u64(args, "Length")?;
        if len > 0x7fff_ffff {
            return Err(format!(
                "Cannot convert value \"{len}\" to type \"System.Int32\"."
            ));
        }
        let f = open_host_file(sim, path)?;
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        if off.checked_add(len).is_none_or(|e| e > size) {
            return Err(format!(
                "range {off}+{len} is past the end of {path} ({size} bytes)"
            ));
        }
        let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| format!("short read at {off} in {path}: {e}"))?;
        return Ok(encode_range_output(&buf));
    }
    Err("unknown script".into())
}

/// Remove (merging each child into its parent) the checkpoints named `name` of VM `vm_id`.
pub(super) fn remove_checkpoints(
    sim: &Sim,
    host: &mut HostState,
    vm_id: &str,
    name: &str,
) -> Result<Vec<SimCheckpoint>, String> {
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut host.checkpoints)
        .into_iter()
        .partition(|c| c.vm_id.eq_ignore_ascii_case(vm_id) && c.name == name);
    host.checkpoints = kept;
    let (dir, root) = (&sim.config.data_dir, &sim.config.model.windows_root);
    for cp in &gone {
        for (idx, _) in &cp.rct_positions {
            if let Some(drive) = host.drives.drive(&sim.config.model, &cp.vm_id, *idx) {
                disks::merge(drive, dir, root, &cp.id)?;
            }
        }
    }
    Ok(gone)
}

/// `GetVirtualDiskChanges(Path, LimitId, ByteOffset, ByteLength)`: the changes of the drive
/// the RCT id belongs to, from that id up to the state `Path` holds (the frozen file of a
/// checkpoint, or the file the VM runs on).
fn rct_changes(
    sim: &Sim,
    host: &mut HostState,
    args: &serde_json::Value,
) -> Result<String, String> {
    let path = arg_str(args, "Path")?;
    let limit = arg_str(args, "LimitId")?;
    let offset = arg_u64(args, "Offset")?;
    let length = arg_u64(args, "Length")?;
    let failed = |code: u32| {
        format!("GetVirtualDiskChanges on '{path}' since '{limit}' failed with return value {code}")
    };
    // rctX:<uuid>:<position>
    let mut parts = limit.splitn(3, ':');
    let (Some("rctX"), Some(uuid), Some(pos)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(failed(32773));
    };
    let from: usize = pos.parse().map_err(|_| failed(32773))?;
    let drive = host.drives.by_rct_uuid(uuid).ok_or_else(|| failed(32773))?;
    // The frozen state `path` holds: a checkpoint's parent, or the file the VM runs on.
    let root = &sim.config.model.windows_root;
    let mut to = None;
    for cp in &host.checkpoints {
        for ((_, _, _, frozen), (_, position)) in cp.disks.iter().zip(&cp.rct_positions) {
            let same_drive = drive.children.iter().any(|c| c.checkpoint_id == cp.id);
            if same_drive && frozen.eq_ignore_ascii_case(path) {
                to = Some(*position);
            }
        }
    }
    if to.is_none() && model::windows_path(root, drive.active()).eq_ignore_ascii_case(path) {
        to = Some(drive.changes.len());
    }
    let to = to.ok_or_else(|| failed(32779))?;
    if from > to {
        return Err(failed(32773));
    }
    let local = disks::local(&sim.config.data_dir, &drive.base);
    let size = godwit_disk::Disk::open(&local.display().to_string())
        .map_err(|e| format!("Get-VHD : {e}"))?
        .top()
        .virtual_size;
    if length >= size {
        return Err(failed(32773));
    }
    let ranges = disks::changed_ranges(&drive.changes, from, to, offset, length, size);
    super::wmi::changes_job(
        sim,
        host,
        &format!("GetVirtualDiskChanges on '{path}' since '{limit}'"),
    )?;
    let out = serde_json::json!({
        "Offsets": ranges.iter().map(|r| r.0).collect::<Vec<_>>(),
        "Lengths": ranges.iter().map(|r| r.1).collect::<Vec<_>>(),
    });
    Ok(format!("{out}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_the_ones_the_simulator_was_reviewed_against() {
        for (name, text, _) in SCRIPT_PINS {
            assert!(
                matches!(pinned(text), Some(Ok(_))),
                "{}",
                pinned(text).unwrap().unwrap_err()
            );
            let _ = name;
        }
        // Every script Godwit sends is pinned.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../hyperv/scripts");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ps1"))
            .collect();
        files.sort();
        let mut pinned_names: Vec<&str> = SCRIPT_PINS.iter().map(|(n, _, _)| *n).collect();
        pinned_names.sort_unstable();
        assert_eq!(files, pinned_names);
        // An edited script is refused, naming it.
        let edited = format!("{PUSH_SCRIPT}\n");
        assert!(pinned(&edited).is_none());
    }
}
