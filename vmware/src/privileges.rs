//! The vCenter privileges a cycle needs, each with the method that needs it and where that is
//! documented, and the preflight that asks vCenter with `HasPrivilegeOnEntity` before any
//! snapshot is taken ("sessionId: The session ID to check privileges for. A session ID can be
//! obtained from UserSession.key",
//! <https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest/data-structures/HasPrivilegeOnEntityRequestType>).
//! A missing privilege would otherwise surface halfway, after the snapshot exists (or, for
//! the datastore ones, as a 403 on the first `/folder` read). docs/vsphere.md lists the same.

use crate::datastore::DatastoreLocator;
use crate::error::Result;
use crate::inventory::Vm;
use crate::moref::MoRef;
use crate::session::Session;
use serde::Serialize;

/// One privilege: its id, the call that needs it, and the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Privilege {
    pub id: &'static str,
    pub needed_for: &'static str,
    pub source: &'static str,
}

const API: &str = "https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest";
const HTTP_ACCESS: &str = "https://vdc-download.vmware.com/vmwb-repository/dcr-public/5c1c7b8c-0d1b-4037-af84-5f43787eb378/fab98b61-56a7-4608-992f-818d3b40e4ae/GUID-D8AF2F09-09B8-47AD-9F10-BA80F8A2BA6A.html";

pub const CREATE_SNAPSHOT: Privilege = Privilege {
    id: "VirtualMachine.State.CreateSnapshot",
    needed_for: "CreateSnapshot_Task",
    source: API,
};
pub const REMOVE_SNAPSHOT: Privilege = Privilege {
    id: "VirtualMachine.State.RemoveSnapshot",
    needed_for: "RemoveSnapshot_Task",
    source: API,
};
pub const DISK_RANDOM_READ: Privilege = Privilege {
    id: "VirtualMachine.Provisioning.DiskRandomRead",
    needed_for: "QueryChangedDiskAreas (CBT)",
    source: API,
};
pub const CHANGE_TRACKING: Privilege = Privilege {
    id: "VirtualMachine.Config.ChangeTracking",
    needed_for: "ReconfigVM_Task changeTrackingEnabled (switching CBT on)",
    source: API,
};
pub const VAPP_EXPORT: Privilege = Privilege {
    id: "VApp.Export",
    needed_for: "ExportSnapshot / ExportVm (NFC export lease)",
    source: API,
};
pub const DATASTORE_BROWSE: Privilege = Privilege {
    id: "Datastore.Browse",
    needed_for: "HTTP GET /folder (datacenter and datastore)",
    source: HTTP_ACCESS,
};
pub const DATASTORE_FILES: Privilege = Privilege {
    id: "Datastore.FileManagement",
    needed_for: "HTTP GET /folder (datacenter and datastore)",
    source: HTTP_ACCESS,
};

/// Every privilege Godwit may need, for documentation and `godwit check`.
pub const ALL: &[Privilege] = &[
    CREATE_SNAPSHOT,
    REMOVE_SNAPSHOT,
    DISK_RANDOM_READ,
    CHANGE_TRACKING,
    VAPP_EXPORT,
    DATASTORE_BROWSE,
    DATASTORE_FILES,
];

/// Privileges to check on one entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnEntity {
    pub entity: MoRef,
    /// `VM "web" (vm-57)`, `datastore LocalDS_0 in F0/DC1`, ...
    pub what: String,
    pub privileges: Vec<Privilege>,
}

/// What a cycle of `vm` needs: snapshot privileges on the VM (and CBT or NFC ones when used),
/// `/folder` privileges on the datacenter and the datastore of each disk.
pub fn required(vm: &Vm, locator: &DatastoreLocator, cbt: bool, nfc: bool) -> Vec<OnEntity> {
    let mut vm_privs = vec![CREATE_SNAPSHOT, REMOVE_SNAPSHOT];
    if cbt {
        vm_privs.push(DISK_RANDOM_READ);
        if !vm.cbt_enabled {
            vm_privs.push(CHANGE_TRACKING);
        }
    }
    if nfc {
        vm_privs.push(VAPP_EXPORT);
    }
    let mut out = vec![OnEntity {
        entity: vm.moref.clone(),
        what: format!("VM {:?} ({})", vm.name, vm.moref.value),
        privileges: vm_privs,
    }];
    if nfc {
        return out;
    }
    for d in &vm.disks {
        let Some(ds) = d
            .datastore
            .as_ref()
            .and_then(|m| locator.datastores().iter().find(|x| &x.moref == m))
        else {
            continue;
        };
        for (entity, what) in [
            (
                ds.datacenter_moref.clone(),
                format!("datacenter {}", ds.datacenter),
            ),
            (
                Some(ds.moref.clone()),
                format!("datastore {} in {}", ds.name, ds.datacenter),
            ),
        ] {
            if let Some(entity) = entity
                && !out.iter().any(|o| o.entity == entity)
            {
                out.push(OnEntity {
                    entity,
                    what,
                    privileges: vec![DATASTORE_BROWSE, DATASTORE_FILES],
                });
            }
        }
    }
    out
}

/// One answer of the preflight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub what: String,
    pub privilege: &'static str,
    pub needed_for: &'static str,
    pub granted: bool,
}

/// Ask vCenter about every privilege of `needed`.
pub fn check(s: &Session, needed: &[OnEntity]) -> Result<Vec<Answer>> {
    let mut out = Vec::new();
    for n in needed {
        let ids: Vec<&str> = n.privileges.iter().map(|p| p.id).collect();
        let granted = s.has_privileges(&n.entity, &ids)?;
        for (p, g) in n.privileges.iter().zip(granted) {
            out.push(Answer {
                what: n.what.clone(),
                privilege: p.id,
                needed_for: p.needed_for,
                granted: g,
            });
        }
    }
    Ok(out)
}

/// The refusal reasons for what is missing.
pub fn missing(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| !a.granted)
        .map(|a| {
            format!(
                "the account lacks privilege {} on {} (needed for {})",
                a.privilege, a.what, a.needed_for
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_privilege_names_its_source() {
        for p in ALL {
            assert!(p.source.starts_with("https://"), "{p:?}");
            assert!(p.id.contains('.'), "{p:?}");
        }
        let a = [
            Answer {
                what: "VM \"x\" (vm-1)".into(),
                privilege: CREATE_SNAPSHOT.id,
                needed_for: CREATE_SNAPSHOT.needed_for,
                granted: false,
            },
            Answer {
                what: "VM \"x\" (vm-1)".into(),
                privilege: REMOVE_SNAPSHOT.id,
                needed_for: REMOVE_SNAPSHOT.needed_for,
                granted: true,
            },
        ];
        let m = missing(&a);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("VirtualMachine.State.CreateSnapshot") && m[0].contains("vm-1"));
    }
}
