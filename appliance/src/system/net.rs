//! The appliance's network settings (`image::vapp::NetSettings`): saved on the data partition
//! (`/data/system/network.json`) and applied to the host — host name, static address and
//! gateway or DHCP, DNS, and the clock set once by SNTP. `godwit system run` applies them at
//! boot; `godwit serve --system-network FILE` saves and applies what the wizard sets.

use super::host;
use godwit_image::vapp::{Addressing, NetSettings};
use std::time::Duration;

/// Where the settings live on the appliance.
pub const NET_FILE: &str = "/data/system/network.json";
const DHCP_PID: &str = "/run/udhcpc.pid";

pub use godwit_service::host_network::{Applied, load, save};

/// What `godwit serve --system-network` hands the service to apply settings with.
#[derive(Debug)]
pub struct SystemNet;

impl godwit_service::host_network::ApplyNetwork for SystemNet {
    fn apply(&self, net: &NetSettings, replace: bool, notes: &mut Vec<String>) -> Applied {
        apply(net, replace, notes)
    }
    fn set_clock(&self, servers: Vec<String>) {
        set_clock(servers);
    }
}

/// Configure host name, address, DNS and NTP. With `replace`, whatever the interface has now
/// (a DHCP client, addresses, routes) is dropped first and the clock is set again — the
/// addressing changed while running; without it an interface that already has an address is
/// left alone (a respawn after `godwit serve` exited, or only the host name or DNS changed).
/// Problems go to `notes`.
pub fn apply(net: &NetSettings, replace: bool, notes: &mut Vec<String>) -> Applied {
    if !host::sh("hostname", &[&net.hostname]) {
        notes.push(format!("cannot set the host name {}", net.hostname));
    }
    let _ = std::fs::write("/etc/hostname", format!("{}\n", net.hostname));
    host::sh("ip", &["link", "set", "lo", "up"]);
    let Some(nic) = host::first_nic(Duration::from_secs(10)) else {
        notes.push("no network interface found (vmxnet3, virtio-net or Hyper-V netvsc)".into());
        return Applied {
            interface: "none".into(),
            mode: "none".into(),
            addresses: Vec::new(),
        };
    };
    let addrs = || host::ipv4_addrs(&host::out("ip", &["-4", "-o", "addr", "show", "dev", &nic]));
    let mut configured = !addrs().is_empty();
    if replace {
        stop_dhcp();
        host::sh("ip", &["addr", "flush", "dev", &nic]);
        configured = false;
    }
    let _ = std::fs::remove_file("/run/godwit-static-dns");
    if !net.dns.is_empty() {
        let text: String = net
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        let _ = std::fs::write("/etc/resolv.conf", text);
        let _ = std::fs::write("/run/godwit-static-dns", b"1");
    }
    let mode = match &net.addressing {
        Addressing::Dhcp => {
            if !configured {
                host::sh("ip", &["link", "set", &nic, "up"]);
                // Through the shell: spawned directly, busybox udhcpc did not run its hook.
                let started = host::sh(
                    "/bin/sh",
                    &[
                        "-c",
                        &format!(
                            "udhcpc -i {nic} -b -t 5 -T 2 -p {DHCP_PID} -s /usr/share/udhcpc/default.script"
                        ),
                    ],
                );
                if !started {
                    notes.push(format!("cannot start the DHCP client on {nic}"));
                }
            }
            "dhcp".to_string()
        }
        Addressing::Static {
            address,
            prefix,
            gateway,
        } => {
            if !configured {
                host::sh("ip", &["link", "set", &nic, "up"]);
                if !host::sh(
                    "ip",
                    &["addr", "add", &format!("{address}/{prefix}"), "dev", &nic],
                ) {
                    notes.push(format!("cannot add {address}/{prefix} to {nic}"));
                }
                if let Some(g) = gateway
                    && !host::sh(
                        "ip",
                        &[
                            "route",
                            "replace",
                            "default",
                            "via",
                            &g.to_string(),
                            "dev",
                            &nic,
                        ],
                    )
                {
                    notes.push(format!("cannot set the default gateway {g}"));
                }
            }
            "static".to_string()
        }
    };
    if !configured {
        set_clock(net.ntp.clone());
    }
    Applied {
        addresses: addrs(),
        interface: nic,
        mode,
    }
}

/// Stop the DHCP client started at boot, if it runs.
fn stop_dhcp() {
    if let Ok(pid) = std::fs::read_to_string(DHCP_PID)
        && let Ok(pid) = pid.trim().parse::<u32>()
    {
        host::sh("/bin/sh", &["-c", &format!("kill {pid}")]);
        let _ = std::fs::remove_file(DHCP_PID);
    }
}

/// Set the clock once by SNTP, in the background (busybox-static has no ntpd): the given
/// servers, else those DHCP offered, else pool.ntp.org.
pub fn set_clock(mut servers: Vec<String>) {
    if servers.is_empty() {
        servers = std::fs::read_to_string("/run/ntp.dhcp")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
    }
    if servers.is_empty() {
        servers.push("pool.ntp.org".into());
    }
    std::thread::spawn(move || {
        for server in servers {
            match host::sntp_set_clock(&server) {
                Ok(offset) => {
                    println!("godwit: clock set from {server} (offset {offset:+.3} s)");
                    return;
                }
                Err(e) => eprintln!("godwit: NTP {server}: {e}"),
            }
        }
    });
}
