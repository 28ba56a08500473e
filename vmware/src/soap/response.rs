//! Reply parsers: pure functions from the reply's bytes to typed values. They never panic;
//! every failure says which element is missing or wrong.

use super::xml::{self, Element};
use crate::moref::MoRef;

/// Largest reply body accepted (a 100-VM inventory page is a few MiB).
pub const MAX_REPLY_BYTES: u64 = 64 * 1024 * 1024;

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A SOAP fault: the vim fault type from `detail` (or the faultcode) and the faultstring.
    Fault { fault: String, message: String },
    /// The bytes are not the reply we expected.
    Malformed(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Fault { fault, message } => write!(f, "SOAP fault {fault}: {message}"),
            ReplyError::Malformed(m) => f.write_str(m),
        }
    }
}

fn malformed(s: impl Into<String>) -> ReplyError {
    ReplyError::Malformed(s.into())
}

/// Parse a SOAP envelope and return `<{method}Response>`, or the fault it carries.
pub fn parse_reply(bytes: &[u8], method: &str) -> Result<Element, ReplyError> {
    if bytes.len() as u64 > MAX_REPLY_BYTES {
        return Err(malformed(format!(
            "reply of {} bytes exceeds the {MAX_REPLY_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let root = xml::parse(bytes).map_err(|e| malformed(e.to_string()))?;
    if root.name != "Envelope" {
        return Err(malformed(format!(
            "root element is <{}>, not <Envelope>",
            root.name
        )));
    }
    let body = root
        .child("Body")
        .ok_or_else(|| malformed("no <Body> in the envelope"))?;
    if let Some(fault) = body.child("Fault") {
        return Err(parse_fault(fault));
    }
    let want = format!("{method}Response");
    let mut body = body.clone();
    match body.children.iter().position(|c| c.name == want) {
        Some(i) => Ok(body.children.swap_remove(i)),
        None => Err(malformed(format!("no <{want}> in the body"))),
    }
}

fn parse_fault(fault: &Element) -> ReplyError {
    let message = fault.child_text("faultstring").unwrap_or("").to_string();
    let detail_type = fault.child("detail").and_then(|d| {
        d.children.first().map(|c| {
            c.xsi_type
                .clone()
                .unwrap_or_else(|| c.name.trim_end_matches("Fault").to_string())
        })
    });
    let fault = detail_type
        .or_else(|| fault.child_text("faultcode").map(str::to_string))
        .unwrap_or_else(|| "UnknownFault".into());
    ReplyError::Fault { fault, message }
}

/// Encode a fault the way vSphere does (HTTP 500 body). Used by tests and the simulators.
pub fn encode_fault(fault: &str, message: &str) -> String {
    use super::envelope::escape;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{}</faultstring><detail><{f}Fault xmlns="urn:vim25" xsi:type="{f}"></{f}Fault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
        escape(message),
        f = escape(fault)
    )
}

/// A MoRef element: `type` attribute plus text.
pub fn moref(el: &Element) -> Result<MoRef, ReplyError> {
    let kind = el
        .type_attr
        .as_deref()
        .ok_or_else(|| malformed(format!("<{}> is not a managed object reference", el.name)))?;
    let value = el.text.trim();
    if value.is_empty() {
        return Err(malformed(format!("<{}> has an empty reference", el.name)));
    }
    Ok(MoRef::new(kind, value))
}

fn child_moref(el: &Element, name: &str) -> Result<MoRef, ReplyError> {
    moref(
        el.child(name)
            .ok_or_else(|| malformed(format!("<{}> has no <{name}>", el.name)))?,
    )
}

/// The `returnval` of a response element.
pub fn returnval(resp: &Element) -> Result<&Element, ReplyError> {
    resp.child("returnval")
        .ok_or_else(|| malformed(format!("<{}> has no <returnval>", resp.name)))
}

/// What `RetrieveServiceContent` tells us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    /// Absent on some ESXi builds; privileges cannot be checked without it.
    pub authorization_manager: Option<MoRef>,
    /// `VirtualCenter` or `HostAgent`.
    pub api_type: String,
    pub api_version: String,
    pub instance_uuid: Option<String>,
}

pub fn parse_service_content(bytes: &[u8]) -> Result<ServiceContent, ReplyError> {
    let resp = parse_reply(bytes, "RetrieveServiceContent")?;
    let rv = returnval(&resp)?;
    let about = rv
        .child("about")
        .ok_or_else(|| malformed("service content has no <about>"))?;
    Ok(ServiceContent {
        root_folder: child_moref(rv, "rootFolder")?,
        property_collector: child_moref(rv, "propertyCollector")?,
        view_manager: child_moref(rv, "viewManager")?,
        session_manager: child_moref(rv, "sessionManager")?,
        authorization_manager: rv.child("authorizationManager").map(moref).transpose()?,
        api_type: about.child_text("apiType").unwrap_or("").to_string(),
        api_version: about
            .child_text("apiVersion")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| malformed("service content <about> has no <apiVersion>"))?
            .to_string(),
        instance_uuid: about.child_text("instanceUuid").map(str::to_string),
    })
}

/// A reply whose `returnval` is a MoRef (CreateContainerView, *_Task).
pub fn parse_moref_reply(bytes: &[u8], method: &str) -> Result<MoRef, ReplyError> {
    let resp = parse_reply(bytes, method)?;
    moref(returnval(&resp)?)
}

/// `Login`: the `UserSession.key` of the new session (what HasPrivilegeOnEntity and
/// TerminateSession name a session by).
pub fn parse_login(bytes: &[u8]) -> Result<String, ReplyError> {
    let resp = parse_reply(bytes, "Login")?;
    returnval(&resp)?
        .child_text("key")
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .ok_or_else(|| malformed("the Login reply has no UserSession <key>"))
}

/// A reply whose `returnval`s are booleans (HasPrivilegeOnEntity), exactly `expected` of them.
pub fn parse_bool_list(
    bytes: &[u8],
    method: &str,
    expected: usize,
) -> Result<Vec<bool>, ReplyError> {
    let resp = parse_reply(bytes, method)?;
    let out = resp
        .children_named("returnval")
        .map(|v| match v.text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            t => Err(malformed(format!(
                "{method}: returnval {t:?} is not a boolean"
            ))),
        })
        .collect::<Result<Vec<bool>, _>>()?;
    if out.len() != expected {
        return Err(malformed(format!(
            "{method}: {} answers for {expected} questions",
            out.len()
        )));
    }
    Ok(out)
}

/// A reply with no useful value (Logout, DestroyView); only faults matter.
pub fn parse_empty_reply(bytes: &[u8], method: &str) -> Result<(), ReplyError> {
    parse_reply(bytes, method).map(|_| ())
}

/// A property the server could not return, with the fault that explains why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingProperty {
    pub path: String,
    pub fault: String,
    pub message: String,
}

/// One object of a RetrievePropertiesEx reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectContent {
    pub obj: MoRef,
    pub props: Vec<(String, Element)>,
    pub missing: Vec<MissingProperty>,
}

impl ObjectContent {
    pub fn prop(&self, name: &str) -> Option<&Element> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// A page of RetrievePropertiesEx / ContinueRetrievePropertiesEx.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetrieveResult {
    pub objects: Vec<ObjectContent>,
    /// More pages follow when present.
    pub token: Option<String>,
}

/// Parse a RetrievePropertiesEx or ContinueRetrievePropertiesEx reply. An empty reply (no
/// `returnval`: nothing matched) is an empty result.
pub fn parse_retrieve_result(bytes: &[u8], method: &str) -> Result<RetrieveResult, ReplyError> {
    let resp = parse_reply(bytes, method)?;
    let Some(rv) = resp.child("returnval") else {
        return Ok(RetrieveResult::default());
    };
    let mut out = RetrieveResult {
        token: rv
            .child_text("token")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        ..RetrieveResult::default()
    };
    for o in rv.children_named("objects") {
        let obj = child_moref(o, "obj")?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = p
                .child_text("name")
                .ok_or_else(|| malformed(format!("propSet of {obj} has no <name>")))?;
            let val = p
                .child("val")
                .ok_or_else(|| malformed(format!("property {name} of {obj} has no <val>")))?;
            props.push((name.to_string(), val.clone()));
        }
        let mut missing = Vec::new();
        for m in o.children_named("missingSet") {
            let path = m.child_text("path").unwrap_or("").to_string();
            let fault_el = m.child("fault");
            let fault = fault_el
                .and_then(|f| f.child("fault"))
                .and_then(|f| f.xsi_type.clone())
                .unwrap_or_else(|| "UnknownFault".into());
            let message = fault_el
                .and_then(|f| f.child_text("localizedMessage"))
                .unwrap_or("")
                .to_string();
            missing.push(MissingProperty {
                path,
                fault,
                message,
            });
        }
        out.objects.push(ObjectContent {
            obj,
            props,
            missing,
        });
    }
    Ok(out)
}

/// `Task.info` as far as polling needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// `queued`, `running`, `success` or `error`.
    pub state: String,
    /// The result when it is a MoRef (CreateSnapshot_Task gives the snapshot).
    pub result: Option<MoRef>,
    pub error_fault: Option<String>,
    pub error_message: Option<String>,
}

/// Read a `TaskInfo` from the `val` of the `info` property.
pub fn parse_task_info(val: &Element) -> Result<TaskInfo, ReplyError> {
    let state = val
        .child_text("state")
        .ok_or_else(|| malformed("task info has no <state>"))?
        .to_string();
    if !matches!(state.as_str(), "queued" | "running" | "success" | "error") {
        return Err(malformed(format!(
            "task state {state:?} is not one of queued, running, success, error"
        )));
    }
    let result = match val.child("result") {
        Some(r) if r.type_attr.is_some() => Some(moref(r)?),
        _ => None,
    };
    let err = val.child("error");
    Ok(TaskInfo {
        state,
        result,
        error_fault: err
            .and_then(|e| e.child("fault"))
            .and_then(|f| f.xsi_type.clone()),
        error_message: err
            .and_then(|e| e.child_text("localizedMessage"))
            .map(str::to_string),
    })
}

/// `DiskChangeInfo`: the byte range the answer covers and the changed areas inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChangeInfo {
    pub start_offset: u64,
    pub length: u64,
    /// (start, length) in bytes, sorted, inside `[start_offset, start_offset + length)`.
    pub areas: Vec<(u64, u64)>,
    /// Areas the server reported past the range the answer covers, clamped into it (servers
    /// vary: a changed area is sometimes reported whole in each answer it touches).
    pub clamped: u32,
}

fn u64_child(el: &Element, name: &str) -> Result<u64, ReplyError> {
    let t = el
        .child_text(name)
        .ok_or_else(|| malformed(format!("<{}> has no <{name}>", el.name)))?;
    t.parse::<u64>().map_err(|_| {
        malformed(format!(
            "<{}>/<{name}> = {t:?} is not a non-negative integer",
            el.name
        ))
    })
}

/// Parse a QueryChangedDiskAreas reply. Areas reaching outside the range the answer covers are
/// clamped into it and counted (leniency where vCenter varies; what lies outside is asked for
/// by the next call anyway); areas out of order or overlapping after clamping are refused, as a
/// bad area would make us read or skip the wrong bytes.
pub fn parse_disk_change_info(bytes: &[u8]) -> Result<DiskChangeInfo, ReplyError> {
    let resp = parse_reply(bytes, "QueryChangedDiskAreas")?;
    let rv = returnval(&resp)?;
    let start_offset = u64_child(rv, "startOffset")?;
    let length = u64_child(rv, "length")?;
    let end = start_offset
        .checked_add(length)
        .ok_or_else(|| malformed("startOffset + length overflows"))?;
    let mut areas = Vec::new();
    let mut clamped = 0u32;
    let mut last_end = start_offset;
    for a in rv.children_named("changedArea") {
        let s = u64_child(a, "start")?;
        let l = u64_child(a, "length")?;
        let e = s
            .checked_add(l)
            .ok_or_else(|| malformed(format!("changed area {s}+{l} overflows")))?;
        let (cs, ce) = (s.max(start_offset), e.min(end));
        if (cs, ce) != (s, e) {
            clamped = clamped.saturating_add(1);
        }
        if cs >= ce {
            continue; // wholly outside the answer's range
        }
        if cs < last_end {
            return Err(malformed(format!(
                "changed area {s}+{l} is out of order or overlaps the one before it"
            )));
        }
        last_end = ce;
        areas.push((cs, ce - cs));
    }
    Ok(DiskChangeInfo {
        start_offset,
        length,
        areas,
        clamped,
    })
}

/// Encode a QueryChangedDiskAreas reply (used by tests and simulators).
pub fn encode_disk_change_info(info: &DiskChangeInfo) -> String {
    let mut areas = String::new();
    for (s, l) in &info.areas {
        areas.push_str(&format!(
            "<changedArea><start>{s}</start><length>{l}</length></changedArea>"
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>{}</startOffset><length>{}</length>{areas}</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>"#,
        info.start_offset, info.length
    )
}

/// Fuzzing entry point: run every reply parser over the same bytes. Must never panic.
pub fn fuzz_all_parsers(bytes: &[u8]) {
    let _ = parse_service_content(bytes);
    let _ = parse_moref_reply(bytes, "CreateSnapshot_Task");
    let _ = parse_empty_reply(bytes, "Logout");
    if let Ok(r) = parse_retrieve_result(bytes, "RetrievePropertiesEx") {
        for o in &r.objects {
            let _ = crate::inventory::vm_from_object(o);
            if let Some(v) = o.prop("info") {
                let _ = parse_task_info(v);
                let _ = super::lease::parse_lease_info(v);
            }
            if let Some(v) = o.prop("state") {
                let _ = super::lease::LeaseState::parse(&v.text);
            }
        }
    }
    let _ = parse_disk_change_info(bytes);
    let _ = parse_login(bytes);
    let _ = parse_bool_list(bytes, "HasPrivilegeOnEntity", 3);
    // Other text from the server: descriptors, NFC device keys, changeIds.
    let _ = crate::eligibility::descriptor_encryption(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = super::lease::device_key_slot(&text);
    let _ = crate::cbt::split_change_id(&text);
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
