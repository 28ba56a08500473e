//! The VM inventory model, built from RetrievePropertiesEx objects (pure). Eligibility is in
//! [`crate::eligibility`] (re-exported here).

use crate::moref::MoRef;
use crate::soap::response::{MissingProperty, ObjectContent, ReplyError, moref};
use crate::soap::xml::Element;
use serde::Serialize;

pub use crate::eligibility::{
    Eligibility, MAX_BOOT_DISK_BYTES, MAX_DATA_DISK_BYTES, MAX_VOLUMES, SNAPSHOT_PREFIX,
    eligibility,
};

/// Properties read for every VM, in one RetrievePropertiesEx.
pub const VM_PROPERTIES: &[&str] = &[
    "name",
    "parent",
    "config.uuid",
    "config.instanceUuid",
    "config.guestId",
    "config.guestFullName",
    "config.firmware",
    "config.template",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "config.extraConfig",
    "config.keyId",
    "runtime.powerState",
    "runtime.consolidationNeeded",
    "runtime.faultToleranceState",
    "runtime.host",
    "snapshot",
    "guest.toolsRunningStatus",
];

/// How a disk's bytes are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Backing {
    /// `VirtualDiskFlatVer2BackingInfo`: flat, thick or thin.
    Flat,
    /// `VirtualDiskSparseVer2BackingInfo`.
    Sparse,
    /// `VirtualDiskSeSparseBackingInfo`.
    SeSparse,
    /// Raw device mapping; `mode` is `physicalMode` or `virtualMode`.
    Rdm { mode: String },
    /// Anything else (vVol, PMem, first-class disk...), by type name.
    Other { type_name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmDisk {
    /// The device key (CBT's deviceKey); unique within a VM only.
    pub key: i32,
    pub label: String,
    pub controller_key: Option<i32>,
    pub unit_number: Option<i32>,
    pub capacity_bytes: u64,
    /// `[datastore] path/disk.vmdk`: the descriptor.
    pub file_name: String,
    pub backing: Backing,
    pub thin: Option<bool>,
    pub disk_mode: String,
    pub uuid: Option<String>,
    pub change_id: Option<String>,
    /// Parent backing files, nearest first; non-empty when the VM runs on snapshot deltas.
    pub parent_chain: Vec<String>,
    /// The datastore the descriptor lives on (`backing.datastore`): names are unique only
    /// within a datacenter.
    pub datastore: Option<MoRef>,
    /// `backing.keyId.keyId`: the disk is encrypted (VM encryption, vSphere 6.5+).
    pub key_id: Option<String>,
    /// `backing.sharing` (`sharingNone`, `sharingMultiWriter`).
    pub sharing: Option<String>,
    /// The controller the disk hangs on: its vim class and bus number (NFC device keys name
    /// disks by `<class><bus>:<unit>`).
    pub controller: Option<Controller>,
    /// What the descriptor says about encryption (`encryption.keySafe`, the `vmwarevmcrypt`
    /// I/O filter), when it was read (`replicate` reads it; a listing does so only for one VM).
    pub descriptor_encryption: Option<String>,
    /// Whether the descriptor was read for that.
    #[serde(skip)]
    pub descriptor_checked: bool,
}

/// A disk controller: `VirtualLsiLogicController`, `ParaVirtualSCSIController`, ... and its
/// bus number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Controller {
    pub type_name: String,
    pub bus_number: i32,
}

impl VmDisk {
    pub fn independent(&self) -> bool {
        self.disk_mode.starts_with("independent")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub moref: MoRef,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vm {
    pub moref: MoRef,
    pub name: String,
    /// The folder (or vApp) holding the VM.
    pub parent: Option<MoRef>,
    /// Its inventory path (`DC0/vm/Finance`), filled in by [`crate::paths`].
    pub folder: Option<String>,
    pub uuid: Option<String>,
    pub instance_uuid: Option<String>,
    pub guest_id: Option<String>,
    pub guest_full_name: Option<String>,
    pub firmware: Option<String>,
    pub template: bool,
    pub cbt_enabled: bool,
    pub power_state: Option<String>,
    pub host: Option<MoRef>,
    pub host_name: Option<String>,
    pub tools_running: bool,
    pub vcls_agent: bool,
    /// `config.keyId.keyId`: the VM is encrypted.
    pub key_id: Option<String>,
    /// `runtime.consolidationNeeded`: deltas left behind by a snapshot removal.
    pub consolidation_needed: bool,
    /// `runtime.faultToleranceState` (`notConfigured`, `disabled`, `enabled`, `needSecondary`,
    /// `starting`, `running`).
    pub ft_state: Option<String>,
    pub snapshots: Vec<Snapshot>,
    pub disks: Vec<VmDisk>,
    #[serde(skip)]
    pub missing: Vec<MissingProperty>,
}

fn bad(s: impl Into<String>) -> ReplyError {
    ReplyError::Malformed(s.into())
}

fn text(el: Option<&Element>) -> Option<String> {
    el.map(|e| e.text.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn int<T: std::str::FromStr>(el: &Element, name: &str, ctx: &str) -> Result<Option<T>, ReplyError> {
    match el.child_text(name) {
        None => Ok(None),
        Some(t) => t
            .parse::<T>()
            .map(Some)
            .map_err(|_| bad(format!("{ctx}: <{name}> = {t:?} is not a valid number"))),
    }
}

/// Build a [`Vm`] from one object of a VirtualMachine RetrievePropertiesEx reply.
pub fn vm_from_object(o: &ObjectContent) -> Result<Vm, ReplyError> {
    let name = text(o.prop("name")).unwrap_or_else(|| o.obj.value.clone());
    let ctx = format!("VM {name} ({})", o.obj);
    let mut disks = Vec::new();
    if let Some(devs) = o.prop("config.hardware.device") {
        let controllers = controllers(devs, &ctx)?;
        for d in devs
            .children
            .iter()
            .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
        {
            let mut disk = disk_from_device(d, &ctx)?;
            disk.controller = disk
                .controller_key
                .and_then(|k| controllers.iter().find(|(ck, _)| *ck == k))
                .map(|(_, c)| c.clone());
            disks.push(disk);
        }
    }
    let extra = o.prop("config.extraConfig");
    let vcls_agent = extra.is_some_and(|x| {
        x.children.iter().any(|ov| {
            ov.child_text("key") == Some("HDCS.agent")
                && ov
                    .child_text("value")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        })
    });
    let mut snapshots = Vec::new();
    if let Some(s) = o.prop("snapshot") {
        for t in s.children_named("rootSnapshotList") {
            collect_snapshots(t, &mut snapshots, 0)?;
        }
    }
    Ok(Vm {
        moref: o.obj.clone(),
        name,
        parent: o.prop("parent").map(moref).transpose()?,
        folder: None,
        uuid: text(o.prop("config.uuid")),
        instance_uuid: text(o.prop("config.instanceUuid")),
        guest_id: text(o.prop("config.guestId")),
        guest_full_name: text(o.prop("config.guestFullName")),
        firmware: text(o.prop("config.firmware")),
        template: text(o.prop("config.template")).as_deref() == Some("true"),
        cbt_enabled: text(o.prop("config.changeTrackingEnabled")).as_deref() == Some("true"),
        power_state: text(o.prop("runtime.powerState")),
        host: o.prop("runtime.host").map(moref).transpose()?,
        host_name: None,
        tools_running: text(o.prop("guest.toolsRunningStatus")).as_deref()
            == Some("guestToolsRunning"),
        vcls_agent,
        key_id: o.prop("config.keyId").and_then(|k| text(k.child("keyId"))),
        consolidation_needed: text(o.prop("runtime.consolidationNeeded")).as_deref()
            == Some("true"),
        ft_state: text(o.prop("runtime.faultToleranceState")),
        snapshots,
        disks,
        missing: o.missing.clone(),
    })
}

/// Every controller of a device list: (key, class and bus number). A device with
/// `busNumber` is a controller (VirtualController); its class is the device's xsi:type.
fn controllers(devs: &Element, ctx: &str) -> Result<Vec<(i32, Controller)>, ReplyError> {
    let mut out = Vec::new();
    for d in &devs.children {
        let (Some(type_name), Some(bus)) = (d.xsi_type.as_ref(), int::<i32>(d, "busNumber", ctx)?)
        else {
            continue;
        };
        if let Some(key) = int::<i32>(d, "key", ctx)? {
            out.push((
                key,
                Controller {
                    type_name: type_name.clone(),
                    bus_number: bus,
                },
            ));
        }
    }
    Ok(out)
}

fn collect_snapshots(t: &Element, out: &mut Vec<Snapshot>, depth: usize) -> Result<(), ReplyError> {
    if depth > 255 {
        return Err(bad("snapshot tree deeper than 255"));
    }
    let snap = t
        .child("snapshot")
        .ok_or_else(|| bad("snapshot tree node has no <snapshot>"))?;
    out.push(Snapshot {
        moref: moref(snap)?,
        name: t.child_text("name").unwrap_or("").to_string(),
    });
    for c in t.children_named("childSnapshotList") {
        collect_snapshots(c, out, depth + 1)?;
    }
    Ok(())
}

fn disk_from_device(d: &Element, ctx: &str) -> Result<VmDisk, ReplyError> {
    let key: i32 =
        int(d, "key", ctx)?.ok_or_else(|| bad(format!("{ctx}: a VirtualDisk has no <key>")))?;
    let ctx = format!("{ctx} disk {key}");
    let cap_bytes: Option<u64> = int(d, "capacityInBytes", &ctx)?;
    let cap_kb: Option<u64> = int(d, "capacityInKB", &ctx)?;
    let capacity_bytes = match (cap_bytes, cap_kb) {
        (Some(b), _) => b,
        (None, Some(kb)) => kb
            .checked_mul(1024)
            .ok_or_else(|| bad(format!("{ctx}: capacityInKB {kb} overflows")))?,
        (None, None) => return Err(bad(format!("{ctx}: no capacityInBytes or capacityInKB"))),
    };
    let b = d
        .child("backing")
        .ok_or_else(|| bad(format!("{ctx}: no <backing>")))?;
    let type_name = b.xsi_type.clone().unwrap_or_default();
    let backing = match type_name.as_str() {
        "VirtualDiskFlatVer2BackingInfo" => Backing::Flat,
        "VirtualDiskSparseVer2BackingInfo" => Backing::Sparse,
        "VirtualDiskSeSparseBackingInfo" => Backing::SeSparse,
        "VirtualDiskRawDiskMappingVer1BackingInfo" => Backing::Rdm {
            mode: b.child_text("compatibilityMode").unwrap_or("").to_string(),
        },
        _ => Backing::Other { type_name },
    };
    let mut parent_chain = Vec::new();
    let mut p = b.child("parent");
    while let Some(pe) = p {
        if parent_chain.len() > 255 {
            return Err(bad(format!("{ctx}: parent chain deeper than 255")));
        }
        parent_chain.push(pe.child_text("fileName").unwrap_or("").to_string());
        p = pe.child("parent");
    }
    Ok(VmDisk {
        key,
        label: d
            .path("deviceInfo/label")
            .map(|l| l.text.trim().to_string())
            .unwrap_or_default(),
        controller_key: int(d, "controllerKey", &ctx)?,
        unit_number: int(d, "unitNumber", &ctx)?,
        capacity_bytes,
        file_name: b
            .child_text("fileName")
            .ok_or_else(|| bad(format!("{ctx}: backing has no <fileName>")))?
            .to_string(),
        backing,
        thin: b.child_text("thinProvisioned").map(|t| t == "true"),
        disk_mode: b.child_text("diskMode").unwrap_or("").to_string(),
        uuid: text(b.child("uuid")),
        change_id: text(b.child("changeId")),
        parent_chain,
        datastore: b.child("datastore").map(moref).transpose()?,
        key_id: b.child("keyId").and_then(|k| text(k.child("keyId"))),
        sharing: text(b.child("sharing")),
        controller: None,
        descriptor_encryption: None,
        descriptor_checked: false,
    })
}
