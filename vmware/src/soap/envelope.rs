//! Request envelopes, built to `String` (sans-I/O). Parameters follow WSDL order: `_this`
//! first, then the method's parameters as the vim25 WSDL lists them.

use crate::moref::MoRef;
use std::fmt::Write as _;

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><soapenv:Body>"#;
const TAIL: &str = "</soapenv:Body></soapenv:Envelope>";

/// Escape text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<tag type="T">value</tag>`
pub fn moref_el(tag: &str, m: &MoRef) -> String {
    format!(
        r#"<{tag} type="{}">{}</{tag}>"#,
        escape(&m.kind),
        escape(&m.value)
    )
}

fn text_el(tag: &str, v: &str) -> String {
    format!("<{tag}>{}</{tag}>", escape(v))
}

/// A complete envelope for `method` on `this` with already-encoded parameters.
pub fn envelope(method: &str, this: &MoRef, params: &str) -> String {
    format!(
        r#"{HEAD}<{method} xmlns="urn:vim25">{}{params}</{method}>{TAIL}"#,
        moref_el("_this", this)
    )
}

pub fn retrieve_service_content() -> String {
    envelope(
        "RetrieveServiceContent",
        &MoRef::new("ServiceInstance", "ServiceInstance"),
        "",
    )
}

pub fn login(session_manager: &MoRef, user: &str, password: &str) -> String {
    envelope(
        "Login",
        session_manager,
        &(text_el("userName", user) + &text_el("password", password)),
    )
}

/// `CurrentTime` on the ServiceInstance: the cheapest authenticated call, used as the session
/// keep-alive (govmomi's `session/keepalive` handler sends the same).
pub fn current_time() -> String {
    envelope(
        "CurrentTime",
        &MoRef::new("ServiceInstance", "ServiceInstance"),
        "",
    )
}

/// `TerminateSession` (an administrator ends other sessions; tests use it).
pub fn terminate_session(session_manager: &MoRef, session_ids: &[&str]) -> String {
    let ids: String = session_ids
        .iter()
        .map(|id| text_el("sessionId", id))
        .collect();
    envelope("TerminateSession", session_manager, &ids)
}

/// `HasPrivilegeOnEntity(entity, sessionId, privId[])` on the AuthorizationManager.
pub fn has_privilege_on_entity(
    authorization_manager: &MoRef,
    entity: &MoRef,
    session_id: &str,
    privileges: &[&str],
) -> String {
    let mut params = moref_el("entity", entity) + &text_el("sessionId", session_id);
    for p in privileges {
        params.push_str(&text_el("privId", p));
    }
    envelope("HasPrivilegeOnEntity", authorization_manager, &params)
}

pub fn logout(session_manager: &MoRef) -> String {
    envelope("Logout", session_manager, "")
}

pub fn create_container_view(
    view_manager: &MoRef,
    container: &MoRef,
    kind: &str,
    recursive: bool,
) -> String {
    envelope(
        "CreateContainerView",
        view_manager,
        &format!(
            "{}{}<recursive>{recursive}</recursive>",
            moref_el("container", container),
            text_el("type", kind)
        ),
    )
}

pub fn destroy_view(view: &MoRef) -> String {
    envelope("DestroyView", view, "")
}

fn prop_set(kind: &str, paths: &[&str]) -> String {
    let mut s = format!("<propSet>{}<all>false</all>", text_el("type", kind));
    for p in paths {
        s.push_str(&text_el("pathSet", p));
    }
    s.push_str("</propSet>");
    s
}

/// RetrievePropertiesEx over every object of `kind` in a container view.
pub fn retrieve_view_properties(
    collector: &MoRef,
    view: &MoRef,
    kind: &str,
    paths: &[&str],
    max_objects: u32,
) -> String {
    let spec = format!(
        r#"<specSet>{}<objectSet>{}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>traverseEntities</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options><maxObjects>{max_objects}</maxObjects></options>"#,
        prop_set(kind, paths),
        moref_el("obj", view)
    );
    envelope("RetrievePropertiesEx", collector, &spec)
}

/// RetrievePropertiesEx of one object.
pub fn retrieve_object_properties(collector: &MoRef, obj: &MoRef, paths: &[&str]) -> String {
    let spec = format!(
        "<specSet>{}<objectSet>{}<skip>false</skip></objectSet></specSet><options></options>",
        prop_set(&obj.kind, paths),
        moref_el("obj", obj)
    );
    envelope("RetrievePropertiesEx", collector, &spec)
}

pub fn continue_retrieve_properties(collector: &MoRef, token: &str) -> String {
    envelope(
        "ContinueRetrievePropertiesEx",
        collector,
        &text_el("token", token),
    )
}

pub fn create_snapshot(
    vm: &MoRef,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
) -> String {
    envelope(
        "CreateSnapshot_Task",
        vm,
        &format!(
            "{}{}<memory>{memory}</memory><quiesce>{quiesce}</quiesce>",
            text_el("name", name),
            text_el("description", description)
        ),
    )
}

pub fn remove_snapshot(snapshot: &MoRef, remove_children: bool, consolidate: bool) -> String {
    envelope(
        "RemoveSnapshot_Task",
        snapshot,
        &format!(
            "<removeChildren>{remove_children}</removeChildren><consolidate>{consolidate}</consolidate>"
        ),
    )
}

/// ReconfigVM_Task that switches changed block tracking on or off.
pub fn reconfig_change_tracking(vm: &MoRef, enabled: bool) -> String {
    envelope(
        "ReconfigVM_Task",
        vm,
        &format!("<spec><changeTrackingEnabled>{enabled}</changeTrackingEnabled></spec>"),
    )
}

/// ReconfigVM_Task that attaches an existing VMDK (no fileOperation: use the file as is).
/// Used to prepare test VMs.
pub fn reconfig_add_existing_disk(
    vm: &MoRef,
    file_name: &str,
    controller_key: i32,
    unit_number: i32,
    capacity_kb: u64,
    thin: bool,
) -> String {
    let mut s = String::from(
        r#"<spec><deviceChange><operation>add</operation><device xsi:type="VirtualDisk"><key>-1</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo">"#,
    );
    let _ = write!(
        s,
        "{}<diskMode>persistent</diskMode><thinProvisioned>{thin}</thinProvisioned></backing><controllerKey>{controller_key}</controllerKey><unitNumber>{unit_number}</unitNumber><capacityInKB>{capacity_kb}</capacityInKB></device></deviceChange></spec>",
        text_el("fileName", file_name)
    );
    envelope("ReconfigVM_Task", vm, &s)
}

/// ReconfigVM_Task that detaches a device by key (the file stays). Used to prepare test VMs.
pub fn reconfig_remove_device(vm: &MoRef, device_key: i32) -> String {
    envelope(
        "ReconfigVM_Task",
        vm,
        &format!(
            r#"<spec><deviceChange><operation>remove</operation><device xsi:type="VirtualDisk"><key>{device_key}</key></device></deviceChange></spec>"#
        ),
    )
}

pub fn query_changed_disk_areas(
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    start_offset: u64,
    change_id: &str,
) -> String {
    envelope(
        "QueryChangedDiskAreas",
        vm,
        &format!(
            "{}<deviceKey>{device_key}</deviceKey><startOffset>{start_offset}</startOffset>{}",
            moref_el("snapshot", snapshot),
            text_el("changeId", change_id)
        ),
    )
}

/// `ExportVm`: an HttpNfcLease for a powered-off VM's disks (not a task).
pub fn export_vm(vm: &MoRef) -> String {
    envelope("ExportVm", vm, "")
}

/// `ExportSnapshot`: an HttpNfcLease for the disks as of a snapshot (works while the VM runs).
pub fn export_snapshot(snapshot: &MoRef) -> String {
    envelope("ExportSnapshot", snapshot, "")
}

/// `HttpNfcLeaseProgress`: the lease keep-alive, with the percentage done.
pub fn http_nfc_lease_progress(lease: &MoRef, percent: u8) -> String {
    envelope(
        "HttpNfcLeaseProgress",
        lease,
        &format!("<percent>{}</percent>", percent.min(100)),
    )
}

pub fn http_nfc_lease_complete(lease: &MoRef) -> String {
    envelope("HttpNfcLeaseComplete", lease, "")
}

/// `HttpNfcLeaseAbort` (the optional fault parameter is left out).
pub fn http_nfc_lease_abort(lease: &MoRef) -> String {
    envelope("HttpNfcLeaseAbort", lease, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::xml;

    #[test]
    fn envelopes_are_well_formed_and_escape_text() {
        let sm = MoRef::new("SessionManager", "SessionManager");
        let body = login(&sm, "a<b", "p&\"q'");
        let root = xml::parse(body.as_bytes()).unwrap();
        let login = root.path("Body/Login").unwrap();
        assert_eq!(login.children[0].name, "_this");
        assert_eq!(login.child_text("userName"), Some("a<b"));
        assert_eq!(login.child_text("password"), Some("p&\"q'"));
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let snap = MoRef::new("VirtualMachineSnapshot", "snapshot-2");
        for b in [
            query_changed_disk_areas(&vm, &snap, 2000, 5, "52 de/14"),
            reconfig_add_existing_disk(&vm, "[ds 1] a/b.vmdk", 202, 1, 4096, true),
            retrieve_view_properties(&vm, &vm, "VirtualMachine", &["name"], 100),
            create_snapshot(&vm, "godwit-x", "d", false, true),
            export_vm(&vm),
            export_snapshot(&snap),
            http_nfc_lease_progress(&MoRef::new("HttpNfcLease", "l-1"), 150),
        ] {
            let root = xml::parse(b.as_bytes()).unwrap();
            assert!(root.child("Body").is_some());
        }
        let p = http_nfc_lease_progress(&MoRef::new("HttpNfcLease", "l-1"), 150);
        let root = xml::parse(p.as_bytes()).unwrap();
        assert_eq!(
            root.path("Body/HttpNfcLeaseProgress")
                .unwrap()
                .child_text("percent"),
            Some("100")
        );
    }
}
