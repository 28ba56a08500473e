//! HttpNfcLease values (pure): the lease `state`, `info` with its device URLs, and device URL
//! addresses (`https://HOST[:PORT]/nfc/...`, where `*` stands for the host the client
//! connected to). An encoder for `info` exists for round-trip tests and simulators.

use super::envelope::escape;
use super::response::ReplyError;
use super::xml::Element;

/// `HttpNfcLeaseState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Initializing,
    Ready,
    Done,
    Error,
}

impl LeaseState {
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        match s.trim() {
            "initializing" => Ok(LeaseState::Initializing),
            "ready" => Ok(LeaseState::Ready),
            "done" => Ok(LeaseState::Done),
            "error" => Ok(LeaseState::Error),
            other => Err(ReplyError::Malformed(format!(
                "lease state {other:?} is not one of initializing, ready, done, error"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Initializing => "initializing",
            LeaseState::Ready => "ready",
            LeaseState::Done => "done",
            LeaseState::Error => "error",
        }
    }
}

/// One `HttpNfcLeaseDeviceUrl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUrl {
    /// `/vm-id/VirtualDisk:n` style device key.
    pub key: String,
    pub url: String,
    /// SHA-1 of the serving host's certificate as vCenter reports it (may be empty).
    pub ssl_thumbprint: String,
    pub disk: bool,
    pub target_id: String,
    /// Size of the file to download, when the server says.
    pub file_size: Option<u64>,
}

/// `HttpNfcLeaseInfo`, as far as a download needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub device_urls: Vec<DeviceUrl>,
    pub total_disk_capacity_kb: u64,
    /// Seconds without HttpNfcLeaseProgress after which the server drops the lease.
    pub lease_timeout_secs: u32,
}

/// Most device URLs accepted in one lease (a VM has at most 60-odd devices with files).
pub const MAX_DEVICE_URLS: usize = 1024;

fn bad(s: impl Into<String>) -> ReplyError {
    ReplyError::Malformed(s.into())
}

fn num<T: std::str::FromStr>(el: &Element, name: &str) -> Result<Option<T>, ReplyError> {
    match el.child_text(name) {
        None | Some("") => Ok(None),
        Some(t) => t.parse::<T>().map(Some).map_err(|_| {
            bad(format!(
                "lease info: <{name}> = {t:?} is not a valid non-negative number"
            ))
        }),
    }
}

/// Read `HttpNfcLeaseInfo` from the `val` of the lease's `info` property.
pub fn parse_lease_info(val: &Element) -> Result<LeaseInfo, ReplyError> {
    let mut device_urls = Vec::new();
    for (i, d) in val.children_named("deviceUrl").enumerate() {
        if i >= MAX_DEVICE_URLS {
            return Err(bad(format!(
                "lease info: more than {MAX_DEVICE_URLS} device URLs"
            )));
        }
        let url = d
            .child_text("url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad(format!("lease info: deviceUrl {i} has no <url>")))?;
        device_urls.push(DeviceUrl {
            key: d.child_text("key").unwrap_or_default().to_string(),
            url: url.to_string(),
            ssl_thumbprint: d
                .child_text("sslThumbprint")
                .unwrap_or_default()
                .to_string(),
            disk: d.child_text("disk") == Some("true"),
            target_id: d.child_text("targetId").unwrap_or_default().to_string(),
            file_size: num(d, "fileSize")?,
        });
    }
    Ok(LeaseInfo {
        device_urls,
        total_disk_capacity_kb: num(val, "totalDiskCapacityInKB")?.unwrap_or(0),
        lease_timeout_secs: num(val, "leaseTimeout")?.unwrap_or(0),
    })
}

/// Encode `info` the way a server puts it in a property value (tests, simulators).
pub fn encode_lease_info(info: &LeaseInfo) -> String {
    let mut out = String::from(
        r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="HttpNfcLeaseInfo">"#,
    );
    for d in &info.device_urls {
        out.push_str(&format!(
            "<deviceUrl><key>{}</key><importKey>{}</importKey><url>{}</url><sslThumbprint>{}</sslThumbprint><disk>{}</disk><targetId>{}</targetId>{}</deviceUrl>",
            escape(&d.key),
            escape(&d.key),
            escape(&d.url),
            escape(&d.ssl_thumbprint),
            d.disk,
            escape(&d.target_id),
            d.file_size
                .map(|s| format!("<fileSize>{s}</fileSize>"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "<totalDiskCapacityInKB>{}</totalDiskCapacityInKB><leaseTimeout>{}</leaseTimeout></val>",
        info.total_disk_capacity_kb, info.lease_timeout_secs
    ));
    out
}

/// The device a disk URL's `key` names: vCenter keys exported disks by their controller and
/// unit, `/vm-70/VirtualLsiLogicController0:0` (controller class, bus number, `:`, unit number;
/// the form pyvmomi exporters parse and Forklift tabulates per bus, e.g.
/// `/vm-5678/VirtualIDEController1:0`). `None` for any other form.
pub fn device_key_slot(key: &str) -> Option<(&str, i32, i32)> {
    let last = key.rsplit('/').next()?;
    let (ctrl, unit) = last.rsplit_once(':')?;
    let digits = ctrl.len() - ctrl.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == ctrl.len() {
        return None;
    }
    let (class, bus) = ctrl.split_at(ctrl.len() - digits);
    Some((class, bus.parse().ok()?, unit.parse().ok()?))
}

/// Where a device URL points: host (without brackets), port and path with query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAddress {
    pub host: String,
    pub port: u16,
    pub path_query: String,
}

/// Parse an `https://HOST[:PORT]/path` device URL. A `*` host (ESXi answering directly) is the
/// host the client connected to, on that port. Only HTTPS is accepted.
pub fn device_address(
    url: &str,
    connected_host: &str,
    connected_port: u16,
) -> Result<DeviceAddress, ReplyError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad(format!("device URL {url:?} is not https://")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return Err(bad(format!("device URL {url:?} has no path"))),
    };
    if authority.contains('@') {
        return Err(bad(format!("device URL {url:?} carries credentials")));
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h
            .split_once(']')
            .ok_or_else(|| bad(format!("device URL {url:?}: unclosed [")))?;
        (h, p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(format!("device URL {url:?} has no host")));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad(format!("device URL {url:?}: bad port {p:?}")))?,
        None if host == "*" => connected_port,
        None => 443,
    };
    let host = if host == "*" { connected_host } else { host };
    Ok(DeviceAddress {
        host: host.to_string(),
        port,
        path_query: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::xml;
    use proptest::prelude::*;

    fn sample() -> LeaseInfo {
        LeaseInfo {
            device_urls: vec![
                DeviceUrl {
                    key: "/vm-57/VirtualDisk:0".into(),
                    url: "https://*/nfc/52a/disk-0.vmdk".into(),
                    ssl_thumbprint: "AB:CD".into(),
                    disk: true,
                    target_id: "disk-0.vmdk".into(),
                    file_size: Some(123),
                },
                DeviceUrl {
                    key: "/vm-57/VirtualCdrom:0".into(),
                    url: "https://esx1.lab:9443/nfc/52a/cd<&>.iso".into(),
                    ssl_thumbprint: String::new(),
                    disk: false,
                    target_id: String::new(),
                    file_size: None,
                },
            ],
            total_disk_capacity_kb: 4096,
            lease_timeout_secs: 300,
        }
    }

    #[test]
    fn lease_info_round_trips() {
        let info = sample();
        let el = xml::parse(encode_lease_info(&info).as_bytes()).unwrap();
        assert_eq!(parse_lease_info(&el).unwrap(), info);
    }

    #[test]
    fn lease_info_errors_name_the_element() {
        let el = xml::parse(b"<val><deviceUrl><key>k</key></deviceUrl></val>").unwrap();
        let e = parse_lease_info(&el).unwrap_err().to_string();
        assert!(e.contains("deviceUrl 0 has no <url>"), "{e}");
        let el = xml::parse(b"<val><leaseTimeout>-5</leaseTimeout></val>").unwrap();
        let e = parse_lease_info(&el).unwrap_err().to_string();
        assert!(e.contains("leaseTimeout"), "{e}");
        assert!(LeaseState::parse("gone").is_err());
        for s in ["initializing", "ready", "done", "error"] {
            assert_eq!(LeaseState::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn device_keys_name_controller_bus_and_unit() {
        assert_eq!(
            device_key_slot("/vm-70/VirtualLsiLogicController0:0"),
            Some(("VirtualLsiLogicController", 0, 0))
        );
        assert_eq!(
            device_key_slot("/vm-5678/VirtualIDEController1:1"),
            Some(("VirtualIDEController", 1, 1))
        );
        assert_eq!(
            device_key_slot("/8/ParaVirtualSCSIController12:15"),
            Some(("ParaVirtualSCSIController", 12, 15))
        );
        for bad in [
            "/vm-1/nvram",
            "/vm-1/Controller:0",
            "/vm-1/7:0",
            "",
            "/vm-1/X0:y",
        ] {
            assert_eq!(device_key_slot(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_addresses() {
        let a = device_address("https://*/nfc/l/disk-0.vmdk", "10.0.0.5", 8443).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path_query.as_str()),
            ("10.0.0.5", 8443, "/nfc/l/disk-0.vmdk")
        );
        let a = device_address("https://esx1.lab/nfc/l/d.vmdk?x=1", "vc", 443).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("esx1.lab", 443));
        let a = device_address("https://[fd00::5]:902/nfc/l/d", "vc", 443).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("fd00::5", 902));
        for bad in [
            "http://esx/nfc/x",
            "https://esx",
            "https:///x",
            "https://u:p@esx/x",
            "https://esx:99999/x",
            "https://[::1/x",
        ] {
            assert!(device_address(bad, "vc", 443).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn device_address_never_panics(s in ".{0,80}") {
            let _ = device_address(&s, "vc", 443);
        }

        #[test]
        fn lease_info_round_trips_any_text(
            key in "[ -~]{0,20}", url in "https://[a-z]{1,8}/[ -~]{0,20}",
            size in proptest::option::of(0u64..u64::MAX), timeout in 0u32..100_000,
        ) {
            let info = LeaseInfo {
                device_urls: vec![DeviceUrl {
                    key: key.trim().to_string(), url: url.trim().to_string(),
                    ssl_thumbprint: String::new(), disk: true,
                    target_id: "t".into(), file_size: size,
                }],
                total_disk_capacity_kb: 1,
                lease_timeout_secs: timeout,
            };
            let el = xml::parse(encode_lease_info(&info).as_bytes()).unwrap();
            prop_assert_eq!(parse_lease_info(&el).unwrap(), info);
        }
    }
}
