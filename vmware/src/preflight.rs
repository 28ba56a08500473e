//! What a cycle checks before it takes a snapshot, so that a refusal leaves nothing behind:
//! eligibility (templates, RDMs, FT, consolidation, multi-writer, deltas, ...), encryption
//! (`config.keyId`, a disk backing's `keyId`, and each descriptor's own markers) and the
//! privileges the cycle will use (`HasPrivilegeOnEntity`). All reasons are reported at once,
//! each naming the disk or entity it concerns.

use crate::datastore::DatastoreLocator;
use crate::eligibility::eligibility;
use crate::error::{Error, ErrorKind, Result};
use crate::inventory::{Backing, Vm, VmDisk};
use crate::privileges;
use crate::session::Session;

/// Most bytes of descriptor text read (a descriptor, even with an encryption key bundle, is a
/// few KiB).
pub const DESCRIPTOR_HEAD: u64 = 64 * 1024;

/// What the descriptor of `d` says about encryption (`None`: nothing; only VMDK-backed disks).
pub fn descriptor_encryption(loc: &DatastoreLocator, d: &VmDisk) -> Result<Option<String>> {
    if !matches!(
        d.backing,
        Backing::Flat | Backing::Sparse | Backing::SeSparse
    ) {
        return Ok(None);
    }
    let head = loc
        .read_descriptor(&d.file_name, DESCRIPTOR_HEAD)
        .map_err(|e| {
            Error::Usage(format!(
                "reading the descriptor {} to check its encryption: {e}",
                d.file_name
            ))
        })?;
    Ok(crate::eligibility::descriptor_encryption(&head))
}

/// Refuse `vm` (an [`Error::Refused`] naming every reason) unless it can be replicated as
/// asked. Reads each disk's descriptor when `/folder` can (a read that fails here, e.g. a file
/// the running VM holds locked, is checked again on the frozen files after the snapshot).
pub fn check(
    s: &Session,
    vm: &mut Vm,
    locator: &DatastoreLocator,
    cbt: bool,
    nfc: bool,
) -> Result<()> {
    if !nfc {
        for d in vm.disks.iter_mut().filter(|d| d.key_id.is_none()) {
            match descriptor_encryption(&locator.for_datastore(d.datastore.as_ref()), d) {
                Ok(found) => {
                    d.descriptor_encryption = found;
                    d.descriptor_checked = true;
                }
                Err(e) => {
                    tracing::warn!(disk = %d.file_name, error = %e, "descriptor not readable before the snapshot; checked after it");
                }
            }
        }
    }
    let mut reasons = eligibility(vm).reasons;
    let needed = privileges::required(vm, locator, cbt, nfc);
    match privileges::check(s, &needed) {
        Ok(answers) => reasons.extend(privileges::missing(&answers)),
        // A server without an AuthorizationManager or HasPrivilegeOnEntity (an old ESXi) is
        // not a reason to refuse; the calls themselves will fail if a privilege is missing.
        Err(e)
            if e.kind() == ErrorKind::Protocol
                || matches!(
                    e.fault_type(),
                    Some("MethodNotFound" | "NotSupported" | "NotImplemented")
                ) =>
        {
            tracing::warn!(error = %e, "privileges could not be checked");
        }
        Err(e) => return Err(e),
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Error::refused(
        &s.endpoint().authority(),
        &format!("{:?} ({})", vm.name, vm.moref.value),
        reasons,
    ))
}
