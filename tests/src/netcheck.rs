//! Shared helpers of the netcheck end-to-end tests: real peers (chronyd, dnsmasq,
//! `openssl s_server`) on loopback, a tiny CONNECT proxy, certificates made with rcgen,
//! network namespaces, and running `godwit check`.

use crate::peers::godwit_bin;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps a child process when dropped (also on test failure).
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The child leads its own process group: wrappers such as `faketime` fork the real
        // server, so kill the whole group, then reap the direct child.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    ChildGuard {
        child,
        name: name.to_string(),
    }
}

/// A currently free TCP+UDP port on 127.0.0.1 (best effort).
pub fn free_port() -> u16 {
    loop {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_tcp(addr: &str, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send an SNTP request until a reply arrives (the server is up).
pub fn wait_ntp(addr: &str) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut req = [0u8; 48];
    req[0] = 0x23;
    let start = Instant::now();
    loop {
        let _ = s.send_to(&req, addr);
        let mut buf = [0u8; 128];
        if s.recv(&mut buf).is_ok() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "chronyd did not answer on {addr}"
        );
    }
}

/// chronyd serving its (possibly faketime-shifted) clock on 127.0.0.1:`port`.
/// `offset` is a libfaketime offset such as `+300s`.
pub fn start_chrony(dir: &Path, port: u16, offset: Option<&str>) -> ChildGuard {
    let conf = dir.join(format!("chrony-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\ncmdport 0\n\
             pidfile {d}/chrony-{port}.pid\ndriftfile {d}/chrony-{port}.drift\n",
            d = dir.display()
        ),
    )
    .expect("write chrony.conf");
    let mut cmd = match offset {
        Some(o) => {
            let mut c = Command::new("faketime");
            c.args(["-f", o, "chronyd"]);
            c
        }
        None => Command::new("chronyd"),
    };
    // -d: foreground; -x: never touch the system clock; -u root: no privilege drop (tempdir).
    cmd.arg("-f").arg(&conf).args(["-d", "-x", "-u", "root"]);
    let g = spawn("chronyd", &mut cmd);
    wait_ntp(&format!("127.0.0.1:{port}"));
    g
}

/// dnsmasq authoritative for `lab.test` on `listen`:`port`, with `records` as
/// `name,address` host records (which also create PTR records).
pub fn start_dnsmasq(
    listen: &str,
    port: u16,
    records: &[(&str, &str)],
    netns: Option<&str>,
) -> ChildGuard {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dnsmasq"]);
            c
        }
        None => Command::new("dnsmasq"),
    };
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--local=/lab.test/",
    ])
    .arg(format!("--listen-address={listen}"))
    .arg(format!("--port={port}"));
    if listen != "127.0.0.1" {
        cmd.arg("--except-interface=lo");
    }
    for (name, addr) in records {
        cmd.arg(format!("--host-record={name},{addr}"));
    }
    let g = spawn("dnsmasq", &mut cmd);
    if netns.is_none() {
        wait_tcp(&format!("{listen}:{port}"), "dnsmasq");
    }
    g
}

/// PEM files of one certificate and its key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The test PKI: a CA and leaves for valid, expired and wrong-name servers, plus a
/// self-signed one.
pub struct Pki {
    pub ca: PathBuf,
    pub valid: CertFiles,
    pub expired: CertFiles,
    pub wrong_name: CertFiles,
    pub self_signed: CertFiles,
    pub interception: CertFiles,
    /// PEM of the interception CA (to show an untrusted, re-signing issuer).
    pub self_signed_der: Vec<u8>,
}

fn leaf_params(sans: &[&str], cn: &str, not_after: (i32, u8, u8)) -> rcgen::CertificateParams {
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(ToString::to_string).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    p
}

fn ca_params(cn: &str, org: &str) -> rcgen::CertificateParams {
    let mut p = leaf_params(&[], cn, (2090, 1, 1));
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p
}

fn write_pair(dir: &Path, name: &str, cert_pem: &str, key: &rcgen::KeyPair) -> CertFiles {
    let cert = dir.join(format!("{name}.crt"));
    let keyf = dir.join(format!("{name}.key"));
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&keyf, key.serialize_pem()).expect("write key");
    CertFiles { cert, key: keyf }
}

impl Pki {
    /// Leaves name `host` (and 127.0.0.1) unless they are the wrong-name one.
    pub fn create(dir: &Path, host: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params("Godwit Lab Root CA", "Godwit Lab"),
            ca_key,
        )
        .expect("ca");
        let ca_path = dir.join("lab-ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        let mk = |name: &str, sans: &[&str], not_after| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = leaf_params(sans, sans.first().copied().unwrap_or("x"), not_after)
                .signed_by(&key, &ca)
                .expect("sign");
            write_pair(dir, name, &cert.pem(), &key)
        };
        let valid = mk("valid", &[host, "127.0.0.1"], (2090, 1, 1));
        let expired = mk("expired", &[host, "127.0.0.1"], (2021, 1, 1));
        let wrong_name = mk("wrong-name", &["localhost.localdomain"], (2090, 1, 1));
        let ss_key = rcgen::KeyPair::generate().expect("key");
        let ss = leaf_params(&[host, "127.0.0.1"], host, (2090, 1, 1))
            .self_signed(&ss_key)
            .expect("self-signed");
        let self_signed = write_pair(dir, "self-signed", &ss.pem(), &ss_key);
        let mitm_key = rcgen::KeyPair::generate().expect("key");
        let mitm = rcgen::CertifiedIssuer::self_signed(
            ca_params("Zscaler Intermediate Root CA", "Zscaler Inc."),
            mitm_key,
        )
        .expect("mitm ca");
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = leaf_params(&[host, "127.0.0.1"], host, (2090, 1, 1))
            .signed_by(&leaf_key, &mitm)
            .expect("sign");
        let interception = write_pair(dir, "interception", &leaf.pem(), &leaf_key);
        Self {
            ca: ca_path,
            valid,
            expired,
            wrong_name,
            self_signed,
            interception,
            self_signed_der: ss.der().to_vec(),
        }
    }
}

/// `openssl s_server` presenting `cert` on 127.0.0.1:`port`.
pub fn start_tls_server(port: u16, cert: &CertFiles) -> ChildGuard {
    let g = spawn(
        "openssl s_server",
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key),
    );
    wait_tcp(&format!("127.0.0.1:{port}"), "openssl s_server");
    g
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1 (a thread per connection). CONNECTs to a port in
/// `deny_ports` get 403.
pub fn start_connect_proxy(deny_ports: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let deny = deny_ports.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let dest = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let dport: u16 = dest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                if deny.contains(&dport) {
                    let _ =
                        client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let Ok(upstream) = TcpStream::connect(&dest) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut c2, mut u2) = (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                );
                let (mut c1, mut u1) = (client, upstream);
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut u1, &mut c1);
                let _ = c1.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    port
}

/// Output of one `godwit check --json` run.
pub struct CheckRun {
    pub code: i32,
    pub results: Vec<Value>,
    pub elapsed: Duration,
    pub stderr: String,
}

impl CheckRun {
    /// The single result of `check` for `target` (substring match on the target).
    pub fn one(&self, check: &str, target: &str) -> &Value {
        let found: Vec<&Value> = self
            .results
            .iter()
            .filter(|r| {
                r["check"] == check && r["target"].as_str().is_some_and(|t| t.contains(target))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {check} result for {target}, got {found:#?}\nall: {:#?}",
            self.results
        );
        found[0]
    }
}

/// Run `godwit check --json ARGS` (optionally inside a network namespace).
pub fn godwit_check(args: &[&str], netns: Option<&str>) -> CheckRun {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(godwit_bin());
            c
        }
        None => Command::new(godwit_bin()),
    };
    cmd.arg("check").arg("--json").args(args);
    let start = Instant::now();
    let out = cmd.output().expect("run godwit check");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let results = match serde_json::from_str::<Value>(&stdout) {
        Ok(Value::Array(a)) => a,
        _ => panic!("godwit check printed no JSON array:\nstdout: {stdout}\nstderr: {stderr}"),
    };
    CheckRun {
        code: out.status.code().unwrap_or(-1),
        results,
        elapsed,
        stderr,
    }
}

/// Assert status and that the remediation mentions every word in `words`.
pub fn assert_result(r: &Value, status: &str, words: &[&str]) {
    assert_eq!(r["status"], status, "wrong status: {r:#}");
    for k in ["check", "target", "status", "value", "remediation"] {
        assert!(r.get(k).is_some(), "missing key {k}: {r:#}");
    }
    let rem = r["remediation"].as_str().unwrap_or_default();
    for w in words {
        assert!(rem.contains(w), "remediation lacks {w:?}: {r:#}");
    }
    if status == "pass" {
        assert!(
            r["remediation"].is_null(),
            "a pass has no remediation: {r:#}"
        );
    }
}

/// A network namespace with a veth link to the host: host side `10.77.N.1/30`, namespace
/// side `10.77.N.2/30`. Removed (with its processes killed) on drop.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
    host_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn create(n: u8) -> Self {
        let pid = std::process::id();
        let name = format!("gwnc{n}-{pid}");
        let host_if = format!("gwh{n}-{}", pid % 100_000);
        let ns_if = format!("gwn{n}-{}", pid % 100_000);
        let ns = Self {
            name: name.clone(),
            host_ip: format!("10.77.{n}.1"),
            ns_ip: format!("10.77.{n}.2"),
            host_if: host_if.clone(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; must succeed.
    pub fn exec(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything still running in the namespace, then remove it (the veth goes too).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
