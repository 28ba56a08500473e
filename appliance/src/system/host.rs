//! Small helpers over the appliance's busybox tools and /sys; the parsing parts are pure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const DATA: &str = "/data";
pub const ESP: &str = "/run/esp";

/// Run a busybox tool; returns whether it succeeded (failures are printed, not fatal).
pub fn sh(prog: &str, args: &[&str]) -> bool {
    // busybox init passes a bare environment; tools and their hooks need a PATH.
    match Command::new(prog)
        .args(args)
        .env("PATH", "/bin:/sbin")
        .status()
    {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("godwit: {prog} {}: {s}", args.join(" "));
            false
        }
        Err(e) => {
            eprintln!("godwit: {prog}: {e}");
            false
        }
    }
}

/// Output of a tool, empty on failure.
pub fn out(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `PARTNAME=` from a block device's uevent text.
pub fn partname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|l| l.strip_prefix("PARTNAME="))
}

/// The block device (/dev/NAME) whose GPT partition name is `name`, waiting up to `wait`.
pub fn partition_by_name(name: &str, wait: Duration) -> Option<PathBuf> {
    let start = Instant::now();
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
            let mut found: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("uevent"))
                        .ok()
                        .is_some_and(|u| partname(&u) == Some(name))
                })
                .map(|e| Path::new("/dev").join(e.file_name()))
                .collect();
            found.sort();
            if let Some(p) = found.into_iter().next() {
                return Some(p);
            }
        }
        if start.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// CD-ROM devices (/dev/srN).
pub fn cdroms() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("sr"))
                .map(|e| Path::new("/dev").join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The first network interface other than lo, waiting up to `wait`.
pub fn first_nic(wait: Duration) -> Option<String> {
    let start = Instant::now();
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| n != "lo");
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return Some(n);
        }
        if start.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// IPv4 `address/prefix` entries from `ip -4 -o addr show` output.
pub fn ipv4_addrs(ip_output: &str) -> Vec<String> {
    ip_output
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.by_ref().find(|x| *x == "inet")?;
            w.next().map(str::to_string)
        })
        .collect()
}

/// Whether something is mounted on `dir`.
pub fn mounted(dir: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir))
}

/// Mount `dev` on `dir` (creating it) unless something is mounted there already.
pub fn mount(dev: &Path, dir: &str, fstype: &str, opts: &str) -> bool {
    if mounted(dir) {
        return true;
    }
    let _ = std::fs::create_dir_all(dir);
    let dev = dev.to_string_lossy();
    sh("mount", &["-t", fstype, "-o", opts, &dev, dir])
}

/// Write a file atomically (temp + rename), creating the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Seconds between 1900 (NTP era 0) and 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// An SNTP v4 client request (48 bytes, mode 3).
pub fn sntp_request() -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0x23; // LI 0, version 4, mode 3 (client)
    p
}

/// Server transmit time from an SNTP reply, as seconds since 1970 (fractional); None when the
/// reply is not a usable server answer (wrong mode, stratum 0 "kiss of death", zero time).
pub fn sntp_transmit_time(reply: &[u8]) -> Option<f64> {
    if reply.len() < 48 || reply[0] & 0x07 != 4 || reply[1] == 0 {
        return None;
    }
    let secs = u64::from(u32::from_be_bytes(reply[40..44].try_into().ok()?));
    let frac = f64::from(u32::from_be_bytes(reply[44..48].try_into().ok()?)) / 4_294_967_296.0;
    let unix = secs.checked_sub(NTP_UNIX_OFFSET)?;
    Some(unix as f64 + frac)
}

/// Host and UDP port of an NTP server setting: `host`, `v4addr:port`, `name:port`, `[v6]:port`
/// or a bare IPv6 address (port 123 unless given).
pub fn ntp_endpoint(server: &str) -> (String, u16) {
    if let Ok(sa) = server.parse::<std::net::SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    match server.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !h.is_empty() => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h.to_string(), port),
            _ => (server.to_string(), 123),
        },
        _ => (server.to_string(), 123),
    }
}

/// Ask `server` for the time and step the clock (busybox `date -s`); returns the offset.
pub fn sntp_set_clock(server: &str) -> std::io::Result<f64> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let (host, port) = ntp_endpoint(server);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let sock = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let sent = std::time::SystemTime::now();
    sock.send_to(&sntp_request(), addr)?;
    let mut buf = [0u8; 128];
    let (n, _) = sock.recv_from(&mut buf)?;
    let rtt = sent.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let t = sntp_transmit_time(&buf[..n]).ok_or_else(|| std::io::Error::other("unusable reply"))?
        + rtt / 2.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let target = format!("@{}", t.round());
    if !sh("date", &["-s", &target]) {
        return Err(std::io::Error::other("date -s failed"));
    }
    Ok(t - now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sntp_codec() {
        let req = sntp_request();
        assert_eq!(req[0] & 0x07, 3);
        let mut reply = [0u8; 48];
        reply[0] = 0x24;
        reply[1] = 2;
        let secs = u32::try_from(NTP_UNIX_OFFSET + 1_700_000_000).unwrap();
        reply[40..44].copy_from_slice(&secs.to_be_bytes());
        reply[44..48].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        assert_eq!(sntp_transmit_time(&reply), Some(1_700_000_000.5));
        reply[1] = 0;
        assert_eq!(sntp_transmit_time(&reply), None, "kiss of death");
        assert_eq!(sntp_transmit_time(&reply[..40]), None);
    }

    #[test]
    fn ntp_endpoints() {
        assert_eq!(ntp_endpoint("pool.ntp.org"), ("pool.ntp.org".into(), 123));
        assert_eq!(ntp_endpoint("10.0.2.2:12345"), ("10.0.2.2".into(), 12345));
        assert_eq!(ntp_endpoint("ntp.lan:1123"), ("ntp.lan".into(), 1123));
        assert_eq!(ntp_endpoint("fd00::1"), ("fd00::1".into(), 123));
        assert_eq!(ntp_endpoint("[fd00::1]:999"), ("fd00::1".into(), 999));
        assert_eq!(ntp_endpoint("host:0"), ("host:0".into(), 123));
        assert_eq!(ntp_endpoint("host:x"), ("host:x".into(), 123));
    }

    #[test]
    fn parses_sys_and_ip_output() {
        assert_eq!(
            partname("MAJOR=8\nDEVNAME=sda2\nPARTN=2\nPARTNAME=data\n"),
            Some("data")
        );
        assert_eq!(partname("DEVNAME=sda\n"), None);
        let ip = "2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever\n\
                  2: eth0    inet 192.168.1.4/16 scope global secondary eth0\n";
        assert_eq!(ipv4_addrs(ip), ["10.0.2.15/24", "192.168.1.4/16"]);
        assert!(ipv4_addrs("").is_empty());
    }
}
