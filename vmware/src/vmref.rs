//! Which VM a caller means. A name is not an identity: vCenter keeps names unique per folder
//! only (two `web01` in two folders are normal), a VM can be renamed, and MoRefs (`vm-123`)
//! are what vCenter itself uses. `--vm` (and a job) therefore accepts a name, a MoRef value or
//! an instance UUID (`config.instanceUuid`, unique per vCenter); an ambiguous name is refused
//! with every candidate's MoRef and folder. A job pins the MoRef and the instance UUID it
//! resolved, and follows them (the MoRef, checked against the UUID; the UUID when the MoRef
//! is gone or now names another VM) whatever the VM is called now. Forklift likewise keys its
//! VMs by MoRef (`id`) and shows the path only as a label.

use crate::error::{Error, Result};
use crate::inventory::{VM_PROPERTIES, Vm, vm_from_object};
use crate::paths::InventoryTree;
use crate::session::{Session, map_reply};

/// A VM as a caller names it, and what an earlier resolution pinned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmTarget {
    /// A name, a MoRef value (`vm-123`) or an instance UUID.
    pub query: String,
    /// The MoRef value resolved earlier (a job's).
    pub moref: Option<String>,
    /// The instance UUID resolved earlier.
    pub instance_uuid: Option<String>,
}

impl VmTarget {
    pub fn named(query: &str) -> Self {
        VmTarget {
            query: query.to_string(),
            ..Self::default()
        }
    }

    fn pinned(&self) -> bool {
        self.moref.is_some() || self.instance_uuid.is_some()
    }
}

/// Why [`pick`] found no single VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// Several VMs have the name; their indices in the list.
    Ambiguous(Vec<usize>),
}

fn uuid_eq(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b.trim()))
}

/// Pure: the VM of `vms` that `t` means.
pub fn pick(vms: &[Vm], t: &VmTarget) -> std::result::Result<usize, Miss> {
    if let Some(m) = &t.moref
        && let Some(i) = vms.iter().position(|v| {
            &v.moref.value == m
                && t.instance_uuid.as_deref().is_none_or(|u| {
                    v.instance_uuid.is_none() || uuid_eq(v.instance_uuid.as_deref(), u)
                })
        })
    {
        return Ok(i);
    }
    if let Some(u) = &t.instance_uuid
        && let Some(i) = vms
            .iter()
            .position(|v| uuid_eq(v.instance_uuid.as_deref(), u))
    {
        return Ok(i);
    }
    if t.pinned() {
        return Err(Miss::NotFound);
    }
    let q = t.query.trim();
    if let Some(i) = vms.iter().position(|v| v.moref.value == q) {
        return Ok(i);
    }
    if let Some(i) = vms
        .iter()
        .position(|v| uuid_eq(v.instance_uuid.as_deref(), q))
    {
        return Ok(i);
    }
    let named: Vec<usize> = vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.name == t.query)
        .map(|(i, _)| i)
        .collect();
    match named.as_slice() {
        [one] => Ok(*one),
        [] => Err(Miss::NotFound),
        _ => Err(Miss::Ambiguous(named)),
    }
}

/// Every VM of the session (all of [`VM_PROPERTIES`]).
pub fn all_vms(s: &Session) -> Result<Vec<Vm>> {
    s.all_of_kind("VirtualMachine", VM_PROPERTIES)?
        .iter()
        .map(|o| vm_from_object(o).map_err(|e| map_reply(s.endpoint(), "RetrievePropertiesEx", e)))
        .collect()
}

/// Fill in each VM's folder path.
pub fn fill_folders(tree: &InventoryTree, vms: &mut [Vm]) {
    for vm in vms {
        vm.folder = vm.parent.as_ref().and_then(|p| tree.path(p));
    }
}

/// Resolve `t` to one VM, with its folder path.
pub fn resolve(s: &Session, t: &VmTarget) -> Result<Vm> {
    let mut vms = all_vms(s)?;
    match pick(&vms, t) {
        Ok(i) => {
            let mut vm = vms.swap_remove(i);
            if let Ok(tree) = InventoryTree::load(s) {
                fill_folders(&tree, std::slice::from_mut(&mut vm));
            }
            Ok(vm)
        }
        Err(Miss::NotFound) => Err(Error::NotFound {
            host: s.endpoint().authority(),
            what: match (&t.moref, &t.instance_uuid) {
                (None, None) => format!("VM {:?}", t.query),
                (m, u) => format!(
                    "VM {:?} (MoRef {}, instance UUID {})",
                    t.query,
                    m.as_deref().unwrap_or("?"),
                    u.as_deref().unwrap_or("?")
                ),
            },
        }),
        Err(Miss::Ambiguous(idx)) => {
            let tree = InventoryTree::load(s).unwrap_or_default();
            fill_folders(&tree, &mut vms);
            Err(Error::Ambiguous {
                host: s.endpoint().authority(),
                what: format!("VM name {:?} ({} VMs have it)", t.query, idx.len()),
                candidates: idx
                    .iter()
                    .map(|&i| {
                        let v = &vms[i];
                        format!(
                            "{} in folder {}{}",
                            v.moref.value,
                            v.folder.as_deref().unwrap_or("?"),
                            v.instance_uuid
                                .as_deref()
                                .map(|u| format!(" (instance UUID {u})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect(),
            })
        }
    }
}

/// Find a VM by name, MoRef value or instance UUID (see [`resolve`]).
pub fn find_vm(s: &Session, query: &str) -> Result<Vm> {
    resolve(s, &VmTarget::named(query))
}

/// Every VM of the session (or only the one `only` names: name, MoRef or instance UUID),
/// sorted by name, with host names and folder paths filled in: the inventory `godwit
/// inventory` prints and the service's dashboard lists. For one VM the disk descriptors are
/// read as well (their encryption markers are eligibility reasons).
pub fn collect(s: &Session, only: Option<&str>) -> Result<Vec<Vm>> {
    let hosts: std::collections::HashMap<_, _> = s
        .all_of_kind("HostSystem", &["name"])?
        .into_iter()
        .filter_map(|o| {
            o.prop("name")
                .map(|n| (o.obj.clone(), n.text.trim().to_string()))
        })
        .collect();
    let mut vms = match only {
        Some(q) => {
            let mut vm = find_vm(s, q)?;
            let locator = crate::datastore::DatastoreLocator::new(s)?;
            for d in vm.disks.iter_mut().filter(|d| d.key_id.is_none()) {
                let loc = locator.for_datastore(d.datastore.as_ref());
                match crate::preflight::descriptor_encryption(&loc, d) {
                    Ok(found) => d.descriptor_encryption = found,
                    Err(e) => {
                        tracing::warn!(disk = %d.file_name, error = %e, "descriptor not read")
                    }
                }
            }
            vec![vm]
        }
        None => {
            let mut vms = all_vms(s)?;
            fill_folders(&InventoryTree::load(s)?, &mut vms);
            vms
        }
    };
    for vm in &mut vms {
        vm.host_name = vm.host.as_ref().and_then(|h| hosts.get(h).cloned());
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name).then(a.moref.cmp(&b.moref)));
    Ok(vms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moref::MoRef;

    fn vm(moref: &str, name: &str, uuid: &str) -> Vm {
        Vm {
            moref: MoRef::new("VirtualMachine", moref),
            name: name.into(),
            parent: None,
            folder: None,
            uuid: None,
            instance_uuid: Some(uuid.into()),
            guest_id: None,
            guest_full_name: None,
            firmware: None,
            template: false,
            cbt_enabled: false,
            power_state: None,
            host: None,
            host_name: None,
            tools_running: false,
            vcls_agent: false,
            key_id: None,
            consolidation_needed: false,
            ft_state: None,
            snapshots: Vec::new(),
            disks: Vec::new(),
            missing: Vec::new(),
        }
    }

    #[test]
    fn names_morefs_and_uuids() {
        let vms = [
            vm("vm-57", "web", "5000aaaa-0000-0000-0000-000000000001"),
            vm("vm-60", "db", "5000aaaa-0000-0000-0000-000000000002"),
            vm("vm-61", "web", "5000aaaa-0000-0000-0000-000000000003"),
        ];
        let t = VmTarget::named;
        assert_eq!(pick(&vms, &t("db")), Ok(1));
        assert_eq!(pick(&vms, &t("vm-60")), Ok(1));
        assert_eq!(
            pick(&vms, &t("5000AAAA-0000-0000-0000-000000000003")),
            Ok(2)
        );
        assert_eq!(pick(&vms, &t("web")), Err(Miss::Ambiguous(vec![0, 2])));
        assert_eq!(pick(&vms, &t("nope")), Err(Miss::NotFound));
        // Pinned: followed by MoRef whatever the name is now...
        let pinned = VmTarget {
            query: "old-name".into(),
            moref: Some("vm-61".into()),
            instance_uuid: Some("5000aaaa-0000-0000-0000-000000000003".into()),
        };
        assert_eq!(pick(&vms, &pinned), Ok(2));
        // ...by UUID when the MoRef now names another VM or is gone...
        let moved = VmTarget {
            moref: Some("vm-57".into()),
            ..pinned.clone()
        };
        assert_eq!(pick(&vms, &moved), Ok(2));
        // ...and never by the name once pinned.
        let gone = VmTarget {
            query: "web".into(),
            moref: Some("vm-99".into()),
            instance_uuid: Some("5000aaaa-0000-0000-0000-0000000000ff".into()),
        };
        assert_eq!(pick(&vms, &gone), Err(Miss::NotFound));
    }
}
