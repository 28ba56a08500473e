//! Network settings on the appliance. `godwit system run` starts the service with
//! `--system-network /data/system/network.json`; then what the wizard sets is converted to the
//! image's [`NetSettings`], saved there (read again at every boot) and applied at once with the
//! boot's own code (the binary's `system::net`, as a [`crate::host_network::ApplyNetwork`]). Without the flag (a dev machine) the settings are
//! only stored. The settings page shows which of the two happened ([`NetworkStatus`]).

use super::{Appliance, joined, time};
use godwit_image::vapp::{Addressing, NetSettings};
use godwit_webui::backend::{
    AddressMode, CommandError, CommandResult, NetworkSettings, NetworkStatus,
};
use godwit_webui::validate::Problems;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// How long after answering the request the settings are applied: the answer must reach the
/// browser before its address may change.
const APPLY_DELAY: Duration = Duration::from_secs(1);

impl Appliance {
    /// Validate and store network settings; on the appliance also save them for boot and
    /// apply them (in the background, after [`APPLY_DELAY`]).
    pub(super) async fn network(&self, cmd: NetworkSettings) -> CommandResult<()> {
        let n = godwit_webui::validate::network(cmd)?;
        let Some(file) = self.cfg.system_network.clone() else {
            self.store.update_settings(|s| {
                s.network = Some(n);
                s.network_status = Some(stored_only(time::rfc3339(time::now())));
                Ok(())
            })?;
            tracing::info!("network settings stored (not on the appliance: not applied)");
            return Ok(());
        };
        let net = to_net_settings(&n)?;
        let (f2, net2) = (file.clone(), net.clone());
        // What is in force now: applied at boot from this file (DHCP defaults without one), or
        // by the last change.
        let before = joined(
            tokio::task::spawn_blocking(move || {
                let before = crate::host_network::load(&f2).unwrap_or_default();
                crate::host_network::save(&f2, &net2).map(|()| before)
            })
            .await,
        )?
        .map_err(|e| CommandError::Internal {
            message: format!("saving the network settings to {}: {e}", file.display()),
        })?;
        let shown = file.display().to_string();
        self.store.update_settings(|s| {
            s.network = Some(n.clone());
            s.network_status = Some(applying(time::rfc3339(time::now()), &shown));
            Ok(())
        })?;
        tracing::info!(file = %shown, "network settings saved; applying them");
        let (store, lock) = (self.store.clone(), self.net_apply.clone());
        let system = self.cfg.system.clone();
        tokio::spawn(async move {
            let _one_at_a_time = lock.lock().await;
            tokio::time::sleep(APPLY_DELAY).await;
            let net2 = net.clone();
            let r = tokio::task::spawn_blocking(move || {
                let mut notes = Vec::new();
                // The address is redone only when the addressing changed (a new DHCP lease or
                // a flushed interface would cut the browser off for nothing).
                let readdress = before.addressing != net2.addressing;
                let Some(system) = system else {
                    notes.push("no system to apply the settings to".to_string());
                    return (crate::host_network::Applied::default(), notes);
                };
                let applied = system.apply(&net2, readdress, &mut notes);
                if !readdress && before.ntp != net2.ntp {
                    system.set_clock(net2.ntp.clone());
                }
                (applied, notes)
            })
            .await;
            let status = match r {
                Ok((applied, notes)) => outcome(time::rfc3339(time::now()), &net, &applied, &notes),
                Err(e) => NetworkStatus {
                    state: "failed".into(),
                    message: format!("Saved for the next boot, but applying failed: {e}."),
                    at: time::rfc3339(time::now()),
                },
            };
            if status.state == "applied" {
                tracing::info!("{}", status.message);
            } else {
                tracing::warn!("{}", status.message);
            }
            // Recorded only if these are still the settings stored (no newer change).
            let r = store.update_settings(|s| {
                if s.network.as_ref() == Some(&n) {
                    s.network_status = Some(status);
                }
                Ok(())
            });
            if let Err(e) = r {
                tracing::error!(error = %e, "recording the network status");
            }
        });
        Ok(())
    }
}

impl Appliance {
    /// At start on the appliance: the boot applied `network.json`, which the vApp properties
    /// (a new OVF environment) may have changed since the wizard last saved it. The settings
    /// page must show what is in force, so a file that says otherwise replaces the stored
    /// settings (the proxy, a service setting, is kept).
    pub(super) fn adopt_system_network(&self) {
        let Some(file) = self.cfg.system_network.as_deref() else {
            return;
        };
        let Some(net) = crate::host_network::load(file) else {
            return;
        };
        let r = self.store.update_settings(|s| {
            let stored = s.network.as_ref().and_then(|n| to_net_settings(n).ok());
            if stored.as_ref() == Some(&net) {
                return Ok(());
            }
            let proxy = s.network.as_ref().and_then(|n| n.proxy.clone());
            s.network = Some(from_net_settings(&net, proxy));
            s.network_status = Some(NetworkStatus {
                state: "applied".into(),
                message: format!(
                    "Applied at boot from {} (set there by the vApp properties or an earlier change).",
                    file.display()
                ),
                at: time::rfc3339(time::now()),
            });
            tracing::info!(file = %file.display(), "network settings taken from the boot's file");
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "reading the boot's network settings");
        }
    }
}

/// The wizard's form of the image's settings (the inverse of [`to_net_settings`]).
pub fn from_net_settings(net: &NetSettings, proxy: Option<String>) -> NetworkSettings {
    let address = match &net.addressing {
        Addressing::Dhcp => AddressMode::Dhcp,
        Addressing::Static {
            address,
            prefix,
            gateway,
        } => AddressMode::Static {
            address: format!("{address}/{prefix}"),
            gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
        },
    };
    NetworkSettings {
        hostname: net.hostname.clone(),
        address,
        dns_servers: net.dns.iter().map(ToString::to_string).collect(),
        ntp_servers: net.ntp.clone(),
        proxy,
    }
}

/// The image's settings for validated wizard settings (`validate::network`). The appliance's
/// interface is IPv4: a static IPv6 address, or a gateway outside the address's network, is a
/// field error. The proxy is the service's own setting and has no place here.
pub fn to_net_settings(n: &NetworkSettings) -> Result<NetSettings, CommandError> {
    let mut p = Problems::default();
    let mut addressing = Addressing::Dhcp;
    if let AddressMode::Static { address, gateway } = &n.address {
        let parsed = address
            .split_once('/')
            .and_then(|(a, len)| Some((a.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?)))
            .filter(|(_, len)| (1..=32).contains(len));
        let gw = gateway.parse::<Ipv4Addr>().ok();
        match (parsed, gw) {
            (None, _) => p.add(
                "address",
                "the appliance's interface takes an IPv4 address, e.g. 192.0.2.10/24",
            ),
            (Some(_), None) => p.add("gateway", "an IPv4 address"),
            (Some((a, len)), Some(g)) => {
                let mask = u32::MAX << (32 - u32::from(len));
                if len < 32 && u32::from(a) & mask != u32::from(g) & mask {
                    p.add(
                        "gateway",
                        format!(
                            "{g} is not in the address's network {}/{len}",
                            Ipv4Addr::from(u32::from(a) & mask)
                        ),
                    );
                } else if a == g {
                    p.add("gateway", "the gateway cannot be the address itself");
                }
                addressing = Addressing::Static {
                    address: a,
                    prefix: len,
                    gateway: Some(g),
                };
            }
        }
    }
    let mut dns = Vec::new();
    for d in &n.dns_servers {
        match d.parse::<IpAddr>() {
            Ok(ip) => dns.push(ip),
            Err(_) => p.add("dns_servers", format!("{d:?} is not an IP address")),
        }
    }
    p.finish()?;
    Ok(NetSettings {
        hostname: n.hostname.clone(),
        addressing,
        dns,
        ntp: n.ntp_servers.clone(),
    })
}

/// The status shown when the settings are only stored.
pub fn stored_only(at: String) -> NetworkStatus {
    NetworkStatus {
        state: "stored".into(),
        message: "Stored only: this service does not run on the appliance, so the system's \
                  network was left as it is."
            .into(),
        at,
    }
}

/// The status while the settings are being applied.
pub fn applying(at: String, file: &str) -> NetworkStatus {
    NetworkStatus {
        state: "applying".into(),
        message: format!("Saved to {file}; being applied to the system."),
        at,
    }
}

/// The status once applied: `applied`, or `failed` with what went wrong.
pub fn outcome(
    at: String,
    net: &NetSettings,
    applied: &crate::host_network::Applied,
    notes: &[String],
) -> NetworkStatus {
    let addrs = if applied.addresses.is_empty() {
        "no address yet".to_string()
    } else {
        applied.addresses.join(", ")
    };
    let what = format!(
        "host name {}, {} {} ({addrs})",
        net.hostname, applied.interface, applied.mode
    );
    if notes.is_empty() {
        NetworkStatus {
            state: "applied".into(),
            message: format!("Applied to the system: {what}."),
            at,
        }
    } else {
        NetworkStatus {
            state: "failed".into(),
            message: format!(
                "Saved for the next boot, but applying failed: {}; now {what}.",
                notes.join("; ")
            ),
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wizard(address: AddressMode) -> NetworkSettings {
        NetworkSettings {
            hostname: "godwit-01".into(),
            address,
            dns_servers: vec!["192.0.2.53".into(), "2001:db8::53".into()],
            ntp_servers: vec!["ntp.example.com".into(), "10.0.2.2:1123".into()],
            proxy: Some("http://proxy:3128".into()),
        }
    }

    fn fields(e: CommandError) -> Vec<(String, String)> {
        match e {
            CommandError::Invalid { fields } => {
                fields.into_iter().map(|f| (f.field, f.message)).collect()
            }
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_boot_file_that_differs_replaces_the_stored_settings_at_start() {
        use crate::engine::EngineOptions;
        use crate::{ApplianceConfig, logs::LogRing};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("network.json");
        let cfg = ApplianceConfig {
            data: dir.path().join("data"),
            hostname: "godwit".into(),
            addresses: Vec::new(),
            engine: EngineOptions::default(),
            max_concurrent_jobs: None,
            system_network: Some(file.clone()),
            system: None,
            exports_dir: None,
            update_key: None,
            update: None,
        };
        let a =
            Appliance::open(cfg, LogRing::default(), tokio::runtime::Handle::current()).unwrap();
        a.store
            .update_settings(|s| {
                s.network = Some(wizard(AddressMode::Dhcp));
                Ok(())
            })
            .unwrap();
        // The vApp properties changed the boot's file to a static address.
        let net = NetSettings {
            hostname: "vapp-01".into(),
            addressing: Addressing::Static {
                address: Ipv4Addr::new(192, 0, 2, 20),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
            },
            dns: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))],
            ntp: vec!["10.0.2.2".into()],
        };
        crate::host_network::save(&file, &net).unwrap();
        a.adopt_system_network();
        let s = a.store.settings().unwrap();
        let n = s.network.clone().unwrap();
        assert_eq!(to_net_settings(&n).unwrap(), net);
        assert_eq!(n.proxy.as_deref(), Some("http://proxy:3128"), "proxy kept");
        let st = s.network_status.unwrap();
        assert_eq!(st.state, "applied");
        assert!(st.message.contains("network.json"), "{}", st.message);
        // Read again with nothing new: the stored settings and status stay as they are.
        a.adopt_system_network();
        let again = a.store.settings().unwrap();
        assert_eq!(again.network, Some(n));
        assert_eq!(again.network_status.unwrap().at, st.at);
    }

    #[test]
    fn the_boot_file_converts_back_to_the_wizard_form() {
        for n in [
            wizard(AddressMode::Dhcp),
            wizard(AddressMode::Static {
                address: "192.0.2.10/24".into(),
                gateway: "192.0.2.1".into(),
            }),
        ] {
            let net = to_net_settings(&n).unwrap();
            let back = from_net_settings(&net, n.proxy.clone());
            assert_eq!(to_net_settings(&back).unwrap(), net);
            assert_eq!(back.proxy, n.proxy);
            assert_eq!(back.hostname, n.hostname);
        }
    }

    #[test]
    fn static_settings_convert_and_round_trip_through_the_boot_file() {
        let n = wizard(AddressMode::Static {
            address: "192.0.2.10/24".into(),
            gateway: "192.0.2.1".into(),
        });
        let net = to_net_settings(&n).unwrap();
        assert_eq!(
            net,
            NetSettings {
                hostname: "godwit-01".into(),
                addressing: Addressing::Static {
                    address: Ipv4Addr::new(192, 0, 2, 10),
                    prefix: 24,
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                },
                dns: vec![
                    "192.0.2.53".parse().unwrap(),
                    "2001:db8::53".parse().unwrap()
                ],
                ntp: vec!["ntp.example.com".into(), "10.0.2.2:1123".into()],
            }
        );
        // What boot reads back is what was saved.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("system/network.json");
        crate::host_network::save(&f, &net).unwrap();
        assert_eq!(crate::host_network::load(&f), Some(net));
        assert!(!dir.path().join("system/network.tmp").exists());
    }

    #[test]
    fn dhcp_converts_with_dns_and_ntp_kept() {
        let net = to_net_settings(&wizard(AddressMode::Dhcp)).unwrap();
        assert_eq!(net.addressing, Addressing::Dhcp);
        assert_eq!(net.dns.len(), 2);
        assert_eq!(net.ntp, ["ntp.example.com", "10.0.2.2:1123"]);
    }

    #[test]
    fn what_the_appliance_cannot_take_names_its_field() {
        let v6 = wizard(AddressMode::Static {
            address: "2001:db8::10/64".into(),
            gateway: "2001:db8::1".into(),
        });
        let f = fields(to_net_settings(&v6).unwrap_err());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "address");
        assert!(f[0].1.contains("IPv4"), "{f:?}");
        let off_net = wizard(AddressMode::Static {
            address: "192.0.2.10/24".into(),
            gateway: "198.51.100.1".into(),
        });
        let f = fields(to_net_settings(&off_net).unwrap_err());
        assert_eq!(f[0].0, "gateway");
        assert!(f[0].1.contains("192.0.2.0/24"), "{f:?}");
        let same = wizard(AddressMode::Static {
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.15".into(),
        });
        assert_eq!(fields(to_net_settings(&same).unwrap_err())[0].0, "gateway");
        // A /32 has no network to check the gateway against.
        let host_route = wizard(AddressMode::Static {
            address: "10.0.2.15/32".into(),
            gateway: "10.0.2.2".into(),
        });
        assert!(to_net_settings(&host_route).is_ok());
        let mut bad_dns = wizard(AddressMode::Dhcp);
        bad_dns.dns_servers = vec!["dns.example.com".into()];
        assert_eq!(
            fields(to_net_settings(&bad_dns).unwrap_err())[0].0,
            "dns_servers"
        );
    }
}
