//! The network part of the connector's settings file (TOML), as documented in `docs/checks.md`.
//! The service reuses this schema; unknown keys are rejected so typos are caught.
//!
//! ```toml
//! [network]
//! ntp_servers = ["ntp1.corp", "10.0.0.1:123"]
//! dns_servers = ["10.0.0.53"]
//! proxy = "http://proxy.corp:3128/"
//!
//! [[vcenter]]
//! host = "vc1.corp"                 # HOST[:PORT], port 443 by default
//! fingerprint = "SHA256:AB:CD:..."  # optional pinned certificate
//! esxi_hosts = ["esx1.corp"]        # optional; the ESXi hosts behind it
//!
//! [[hyperv]]
//! host = "hv1.corp"                 # port 5986 by default
//!
//! [staging]
//! host = "staging.corp"             # port 1500 by default
//! fingerprint = "SHA256:..."
//! # Several staging servers of one store: [[staging]] tables instead, one per server.
//!
//! [s3]
//! endpoint = "https://s3.corp:9000" # port 443 by default
//! ```

use crate::plan::{Endpoint, Fingerprint, Plan, ProxyUrl, Role, Target, TargetError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a settings file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {element}: {source}")]
    Value {
        path: PathBuf,
        element: String,
        source: TargetError,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    #[serde(default)]
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VCenterSettings {
    pub host: String,
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub esxi_hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    pub host: String,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: String,
}

/// The settings file, as far as the checks are concerned. Other sections belong to other
/// parts of the service and are ignored here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub vcenter: Vec<VCenterSettings>,
    #[serde(default)]
    pub hyperv: Vec<HostSettings>,
    /// The staging servers: one `[staging]` table, or `[[staging]]` tables for several servers
    /// of one store (each checked).
    #[serde(default, deserialize_with = "one_or_many")]
    pub staging: Vec<HostSettings>,
    #[serde(default)]
    pub s3: Option<S3Settings>,
}

/// `[staging]` (one table) or `[[staging]]` (several) read as a list; the tables' own errors
/// (an unknown key, a wrong type) are kept as they are.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<HostSettings>, D::Error> {
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<HostSettings>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [staging] table or [[staging]] tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            HostSettings::deserialize(MapAccessDeserializer::new(map)).map(|h| vec![h])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(OneOrMany)
}

impl Settings {
    /// Read and parse a settings file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse settings text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Add every check these settings imply to `plan` (design.md §3: ports per peer).
    pub fn extend_plan(&self, plan: &mut Plan, path: &Path) -> Result<(), SettingsError> {
        let value_err = |element: String| {
            let path = path.to_path_buf();
            move |source| SettingsError::Value {
                path,
                element,
                source,
            }
        };
        for (i, s) in self.network.ntp_servers.iter().enumerate() {
            let e = Endpoint::parse(s, Some(123))
                .map_err(value_err(format!("network.ntp_servers[{i}]")))?;
            plan.ntp.push(e);
        }
        for (i, s) in self.network.dns_servers.iter().enumerate() {
            let e = Endpoint::parse(s, Some(53))
                .map_err(value_err(format!("network.dns_servers[{i}]")))?;
            plan.dns_servers.push(e);
        }
        if let Some(p) = &self.network.proxy {
            plan.proxies
                .push(ProxyUrl::parse(p).map_err(value_err("network.proxy".into()))?);
        }
        let fp =
            |s: &Option<String>, element: String| -> Result<Option<Fingerprint>, SettingsError> {
                s.as_deref()
                    .map(Fingerprint::parse)
                    .transpose()
                    .map_err(value_err(element))
            };
        for (i, vc) in self.vcenter.iter().enumerate() {
            let el = format!("vcenter[{i}]");
            let e =
                Endpoint::parse(&vc.host, Some(443)).map_err(value_err(format!("{el}.host")))?;
            let pin = fp(&vc.fingerprint, format!("{el}.fingerprint"))?;
            add_peer(plan, e, Role::VCenter, pin, true);
            for (j, h) in vc.esxi_hosts.iter().enumerate() {
                add_esxi_host(plan, h, None).map_err(value_err(format!("{el}.esxi_hosts[{j}]")))?;
            }
        }
        for (i, hv) in self.hyperv.iter().enumerate() {
            let el = format!("hyperv[{i}]");
            let e =
                Endpoint::parse(&hv.host, Some(5986)).map_err(value_err(format!("{el}.host")))?;
            let pin = fp(&hv.fingerprint, format!("{el}.fingerprint"))?;
            add_peer(plan, e, Role::HyperVHost, pin, true);
        }
        for (i, st) in self.staging.iter().enumerate() {
            let el = if self.staging.len() == 1 {
                "staging".to_string()
            } else {
                format!("staging[{i}]")
            };
            let e =
                Endpoint::parse(&st.host, Some(1500)).map_err(value_err(format!("{el}.host")))?;
            let pin = fp(&st.fingerprint, format!("{el}.fingerprint"))?;
            add_peer(plan, e, Role::StagingServer, pin, true);
        }
        if let Some(s3) = &self.s3 {
            let authority = s3
                .endpoint
                .strip_prefix("https://")
                .unwrap_or(&s3.endpoint)
                .split('/')
                .next()
                .unwrap_or_default();
            let e =
                Endpoint::parse(authority, Some(443)).map_err(value_err("s3.endpoint".into()))?;
            // Object stores are often on the internet behind a proxy; ICMP is not expected.
            add_peer(plan, e, Role::S3Endpoint, None, false);
        }
        Ok(())
    }
}

/// DNS, ICMP, TCP and TLS checks for one peer.
/// TCP port of an ESXi host's NFC service (the legacy NFC/authd port next to 443).
pub const ESXI_NFC_PORT: u16 = 902;

/// An ESXi host behind a vCenter (from the settings or from the vCenter's inventory): its name
/// resolved, ping, TCP + TLS on 443 (`host` may name another port) and TCP on 902.
pub fn add_esxi_host(
    plan: &mut Plan,
    host: &str,
    pin: Option<Fingerprint>,
) -> Result<(), TargetError> {
    let e = Endpoint::parse(host, Some(443))?;
    let nfc = Endpoint {
        host: e.host.clone(),
        port: ESXI_NFC_PORT,
    };
    add_peer(plan, e, Role::EsxiHost, pin, true);
    let t = Target {
        purpose: format!("{} {} (NFC)", Role::EsxiHost.peer(), nfc.host),
        endpoint: nfc,
        role: Role::EsxiHost,
        fingerprint: None,
    };
    if !plan.tcp.contains(&t) {
        plan.tcp.push(t);
    }
    Ok(())
}

fn add_peer(plan: &mut Plan, e: Endpoint, role: Role, pin: Option<Fingerprint>, ping: bool) {
    let is_name = e.host.parse::<std::net::IpAddr>().is_err();
    if is_name && !plan.resolve.contains(&e.host) {
        plan.resolve.push(e.host.clone());
    }
    if ping && !plan.ping.contains(&e.host) {
        plan.ping.push(e.host.clone());
    }
    let purpose = format!("{} {}", role.peer(), e.host);
    let target = Target {
        endpoint: e,
        role,
        purpose,
        fingerprint: pin,
    };
    plan.tcp.push(target.clone());
    plan.tls.push(target);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[network]
ntp_servers = ["ntp1.corp", "10.0.0.1:1123"]
dns_servers = ["10.0.0.53"]
proxy = "http://proxy.corp:3128/"

[[vcenter]]
host = "vc1.corp"
esxi_hosts = ["esx1.corp", "10.0.0.21"]

[[hyperv]]
host = "hv1.corp"

[staging]
host = "staging.corp"
fingerprint = "SHA256:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"

[s3]
endpoint = "https://s3.corp:9000/bucket"

[service]
listen = "0.0.0.0:443"
"#;

    #[test]
    fn example_builds_the_design_ports() {
        let p = Path::new("settings.toml");
        let s = Settings::parse(EXAMPLE, p).unwrap();
        let mut plan = Plan::default();
        s.extend_plan(&mut plan, p).unwrap();
        assert_eq!(plan.ntp[1].port, 1123);
        assert_eq!(plan.dns_servers[0].port, 53);
        let ports: Vec<String> = plan.tcp.iter().map(|t| t.endpoint.to_string()).collect();
        assert_eq!(
            ports,
            [
                "vc1.corp:443",
                "esx1.corp:443",
                "esx1.corp:902",
                "10.0.0.21:443",
                "10.0.0.21:902",
                "hv1.corp:5986",
                "staging.corp:1500",
                "s3.corp:9000"
            ]
        );
        assert_eq!(
            plan.resolve,
            [
                "vc1.corp",
                "esx1.corp",
                "hv1.corp",
                "staging.corp",
                "s3.corp"
            ]
        );
        assert!(!plan.ping.contains(&"s3.corp".to_string()));
        assert!(plan.tls[4].fingerprint.is_some());
        // 902 (NFC) is TCP only: no TLS check there.
        assert!(plan.tls.iter().all(|t| t.endpoint.port != 902));
        assert_eq!(plan.tcp[2].purpose, "ESXi host esx1.corp (NFC)");
        assert_eq!(plan.proxies.len(), 1);
    }

    #[test]
    fn several_staging_servers_are_each_checked() {
        let p = Path::new("settings.toml");
        let text = "[[staging]]\nhost = \"st1.corp\"\n[[staging]]\nhost = \"st2.corp:1600\"\n";
        let s = Settings::parse(text, p).unwrap();
        assert_eq!(s.staging.len(), 2);
        let mut plan = Plan::default();
        s.extend_plan(&mut plan, p).unwrap();
        let ports: Vec<String> = plan.tcp.iter().map(|t| t.endpoint.to_string()).collect();
        assert_eq!(ports, ["st1.corp:1500", "st2.corp:1600"]);
        assert_eq!(plan.tls.len(), 2);
        // The second one's error names it.
        let bad = Settings::parse(
            "[[staging]]\nhost = \"a\"\n[[staging]]\nhost = \"b:0\"\n",
            p,
        )
        .unwrap();
        let err = bad
            .extend_plan(&mut Plan::default(), p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("staging[1].host"), "{err}");
        // One [staging] table is still a list of one, and a typo in it is still named.
        assert_eq!(Settings::parse(EXAMPLE, p).unwrap().staging.len(), 1);
        let err = Settings::parse("[staging]\nhots = \"a\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `hots`"), "{err}");
    }

    #[test]
    fn errors_name_file_and_element() {
        let p = Path::new("/etc/godwit/settings.toml");
        let s = Settings::parse("[[hyperv]]\nhost = \"hv1:99999\"\n", p).unwrap();
        let err = s
            .extend_plan(&mut Plan::default(), p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/godwit/settings.toml: hyperv[0].host"),
            "{err}"
        );
        assert!(err.contains("99999"), "{err}");
        let err = Settings::parse("[network]\nntp = []\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `ntp`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }
}
