//! The appliance's vApp properties: their definitions (written into the OVF ProductSection)
//! and the typed, validated settings read back from an OVF environment at first boot.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub const HOSTNAME: &str = "godwit.hostname";
pub const IP_MODE: &str = "godwit.ip.mode";
pub const IP_ADDRESS: &str = "godwit.ip.address";
pub const IP_PREFIX: &str = "godwit.ip.prefix";
pub const IP_GATEWAY: &str = "godwit.ip.gateway";
pub const DNS: &str = "godwit.dns";
pub const NTP: &str = "godwit.ntp";
pub const ADMIN_PASSWORD: &str = "godwit.admin.password";

/// One vApp property as the descriptor declares it.
#[derive(Clone, Debug)]
pub struct PropertyDef {
    pub key: &'static str,
    /// OVF type: `string`, `uint8`.
    pub ovf_type: &'static str,
    pub default: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    pub password: bool,
    /// OVF qualifiers, e.g. `ValueMap{"dhcp","static"}`.
    pub qualifiers: &'static str,
}

/// The properties the deploy wizard shows, in order.
pub const PROPERTIES: &[PropertyDef] = &[
    PropertyDef {
        key: HOSTNAME,
        ovf_type: "string",
        default: "godwit",
        label: "Host name",
        description: "Host name of the appliance (letters, digits, hyphens).",
        password: false,
        qualifiers: "MaxLen(63)",
    },
    PropertyDef {
        key: IP_MODE,
        ovf_type: "string",
        default: "dhcp",
        label: "Address mode",
        description: "dhcp, or static to use the address, prefix and gateway below.",
        password: false,
        qualifiers: "ValueMap{\"dhcp\",\"static\"}",
    },
    PropertyDef {
        key: IP_ADDRESS,
        ovf_type: "string",
        default: "",
        label: "IPv4 address",
        description: "Static IPv4 address (address mode static).",
        password: false,
        qualifiers: "",
    },
    PropertyDef {
        key: IP_PREFIX,
        ovf_type: "uint8",
        default: "24",
        label: "Prefix length",
        description: "Network prefix length, e.g. 24 for 255.255.255.0 (address mode static).",
        password: false,
        qualifiers: "MinValue(1) MaxValue(32)",
    },
    PropertyDef {
        key: IP_GATEWAY,
        ovf_type: "string",
        default: "",
        label: "Default gateway",
        description: "IPv4 default gateway (address mode static; empty for none).",
        password: false,
        qualifiers: "",
    },
    PropertyDef {
        key: DNS,
        ovf_type: "string",
        default: "",
        label: "DNS servers",
        description: "Comma-separated DNS server addresses (empty: from DHCP).",
        password: false,
        qualifiers: "",
    },
    PropertyDef {
        key: NTP,
        ovf_type: "string",
        default: "",
        label: "NTP servers",
        description: "Comma-separated NTP servers, each a name or address with an optional :port (empty: from DHCP, else pool.ntp.org).",
        password: false,
        qualifiers: "",
    },
    PropertyDef {
        key: ADMIN_PASSWORD,
        ovf_type: "string",
        default: "",
        label: "Administrator password",
        description: "Preset the web administrator's password (at least 8 characters). Empty: the console shows a one-time setup code instead.",
        password: true,
        qualifiers: "",
    },
];

/// How the appliance's network interface is addressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Addressing {
    Dhcp,
    Static {
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    },
}

/// Network and identity settings (persisted on the data partition; never the password).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSettings {
    pub hostname: String,
    pub addressing: Addressing,
    pub dns: Vec<IpAddr>,
    pub ntp: Vec<String>,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            hostname: "godwit".into(),
            addressing: Addressing::Dhcp,
            dns: Vec::new(),
            ntp: Vec::new(),
        }
    }
}

/// A secret that never shows in Debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Everything the vApp properties set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub net: NetSettings,
    pub admin_password: Option<Secret>,
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn valid_ntp(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ' ', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl Settings {
    /// Typed settings from OVF environment properties. Unknown keys are ignored (vSphere adds
    /// its own); empty values mean "default"; bad values are errors naming the property.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Settings> {
        let get = |k: &str| props.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let bad =
            |k: &str, why: &str| Error::invalid(format!("vApp property {k}"), why.to_string());
        let mut net = NetSettings::default();
        if let Some(h) = get(HOSTNAME) {
            if !valid_hostname(h) {
                return Err(bad(
                    HOSTNAME,
                    &format!("{h:?} is not a host name (1-63 letters, digits, hyphens)"),
                ));
            }
            net.hostname = h.to_string();
        }
        match get(IP_MODE).unwrap_or("dhcp") {
            "dhcp" => {}
            "static" => {
                let a = get(IP_ADDRESS).ok_or_else(|| {
                    bad(IP_ADDRESS, "is required when the address mode is static")
                })?;
                let address: Ipv4Addr = a
                    .parse()
                    .map_err(|_| bad(IP_ADDRESS, &format!("{a:?} is not an IPv4 address")))?;
                let p = get(IP_PREFIX).unwrap_or("24");
                let prefix: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| (1..=32).contains(p))
                    .ok_or_else(|| bad(IP_PREFIX, &format!("{p:?} is not 1-32")))?;
                let gateway =
                    match get(IP_GATEWAY) {
                        None => None,
                        Some(g) => Some(g.parse().map_err(|_| {
                            bad(IP_GATEWAY, &format!("{g:?} is not an IPv4 address"))
                        })?),
                    };
                net.addressing = Addressing::Static {
                    address,
                    prefix,
                    gateway,
                };
            }
            m => return Err(bad(IP_MODE, &format!("{m:?} is not dhcp or static"))),
        }
        if let Some(d) = get(DNS) {
            for s in list(d) {
                net.dns.push(
                    s.parse()
                        .map_err(|_| bad(DNS, &format!("{s:?} is not an IP address")))?,
                );
            }
        }
        if let Some(n) = get(NTP) {
            for s in list(n) {
                if !valid_ntp(s) {
                    return Err(bad(NTP, &format!("{s:?} is not a host name or address")));
                }
                net.ntp.push(s.to_string());
            }
        }
        let admin_password = match props.get(ADMIN_PASSWORD).map(String::as_str) {
            None | Some("") => None,
            Some(p) if p.chars().count() < 8 => {
                return Err(bad(ADMIN_PASSWORD, "is shorter than 8 characters"));
            }
            Some(p) => Some(Secret(p.to_string())),
        };
        Ok(Settings {
            net,
            admin_password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_dhcp() {
        let s = Settings::from_properties(&BTreeMap::new()).unwrap();
        assert_eq!(s.net, NetSettings::default());
        assert!(s.admin_password.is_none());
    }

    #[test]
    fn static_settings() {
        let s = Settings::from_properties(&props(&[
            (HOSTNAME, "mig-01"),
            (IP_MODE, "static"),
            (IP_ADDRESS, "10.0.2.50"),
            (IP_PREFIX, "24"),
            (IP_GATEWAY, "10.0.2.2"),
            (DNS, "10.0.2.3, 1.1.1.1"),
            (NTP, "ntp.example.com"),
            (ADMIN_PASSWORD, "correct horse"),
            ("vmware.other", "x"),
        ]))
        .unwrap();
        assert_eq!(s.net.hostname, "mig-01");
        assert_eq!(
            s.net.addressing,
            Addressing::Static {
                address: "10.0.2.50".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.2.2".parse().unwrap())
            }
        );
        assert_eq!(s.net.dns.len(), 2);
        assert_eq!(s.admin_password, Some(Secret("correct horse".into())));
        assert!(
            !format!("{s:?}").contains("horse"),
            "the password must not show in Debug"
        );
    }

    #[test]
    fn bad_values_name_the_property() {
        for (kv, key) in [
            (vec![(HOSTNAME, "bad_name")], HOSTNAME),
            (vec![(IP_MODE, "static")], IP_ADDRESS),
            (
                vec![(IP_MODE, "static"), (IP_ADDRESS, "10.0.0.300")],
                IP_ADDRESS,
            ),
            (
                vec![
                    (IP_MODE, "static"),
                    (IP_ADDRESS, "10.0.0.3"),
                    (IP_PREFIX, "33"),
                ],
                IP_PREFIX,
            ),
            (vec![(IP_MODE, "bootp")], IP_MODE),
            (vec![(DNS, "resolver")], DNS),
            (vec![(NTP, "a b$c")], NTP),
            (vec![(ADMIN_PASSWORD, "short")], ADMIN_PASSWORD),
        ] {
            let err = Settings::from_properties(&props(&kv))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{kv:?}: {err}");
        }
    }
}
