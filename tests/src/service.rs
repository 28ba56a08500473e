//! The service peer: `godwit serve` as a child process on a
//! loopback port (killed on drop, or with SIGKILL on demand), a blocking HTTPS client pinned
//! to the fingerprint the service printed, speaking its REST API (`/api/v1`) with HTTP Basic
//! authentication as the admin (or as a browser session with its CSRF token), and
//! [`random_disk`] to give a vcsim VM a disk of random data.

use crate::peers::{godwit_bin, run_ok};
use crate::vcsim::{PASSWORD, USER, Vcsim, qemu_img, set_vm_disks};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "correct-horse-battery";

pub struct Service {
    pub child: Child,
    pub url: String,
    pub fingerprint: String,
    pub setup_code: Option<String>,
    pub data: PathBuf,
    pub stderr_log: PathBuf,
    /// The flags it was started with (for [`Service::restart`]).
    args: Vec<String>,
    client: reqwest::blocking::Client,
    /// Cookie-keeping client for the anonymous (session + CSRF token) calls.
    browser: reqwest::blocking::Client,
}

impl Service {
    /// Start `godwit serve --data DATA --listen 127.0.0.1:0 EXTRA...` and wait for its
    /// `url:` and `fingerprint:` lines (and `setup code:` when `expect_code`).
    pub fn start(data: &Path, extra: &[&str], expect_code: bool) -> Service {
        std::fs::create_dir_all(data).expect("data dir");
        let stderr_log = data.with_extension(format!("stderr{}", std::process::id()));
        let errf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .expect("stderr log");
        let mut child = Command::new(godwit_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("GODWIT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(errf))
            .spawn()
            .expect("start godwit serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    // Keep draining so the service never blocks on stdout.
                    continue;
                }
            }
        });
        let (mut url, mut fp, mut code) = (String::new(), String::new(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while url.is_empty() || fp.is_empty() || (expect_code && code.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "godwit serve did not print its url/fingerprint{}; stderr:\n{}",
                    if expect_code { "/setup code" } else { "" },
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            };
            if let Some(v) = l.strip_prefix("url: ") {
                url = v.trim_end_matches('/').to_string();
            } else if let Some(v) = l.strip_prefix("fingerprint: ") {
                fp = v.to_string();
            } else if let Some(v) = l.strip_prefix("setup code: ") {
                code = Some(v.to_string());
            }
        }
        assert!(
            // `SHA256:AB:CD:…` (issue 18: one format everywhere)
            fp.starts_with("SHA256:")
                && fp.len() == 7 + 32 * 3 - 1
                && fp.matches(':').count() == 32,
            "fingerprint line {fp:?}"
        );
        assert!(url.starts_with("https://127.0.0.1:"), "url line {url:?}");
        let client = pinned_client(&fp, false);
        let browser = pinned_client(&fp, true);
        Service {
            child,
            url,
            fingerprint: fp,
            setup_code: code,
            data: data.to_path_buf(),
            stderr_log,
            args: extra.iter().map(ToString::to_string).collect(),
            client,
            browser,
        }
    }

    /// `godwit serve --data WORK/svc` with the admin password preset from
    /// `WORK/admin-password` (so no setup code), and `extra` flags.
    pub fn start_as_admin(work: &Path, extra: &[&str]) -> Service {
        let pw = work.join("admin-password");
        std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).expect("admin password file");
        let pw = pw.to_str().expect("UTF-8 path").to_string();
        let mut args = vec!["--admin-password-file", pw.as_str()];
        args.extend_from_slice(extra);
        Service::start(&work.join("svc"), &args, false)
    }

    /// Start again on the same data directory with the same flags (after [`Service::kill9`]).
    pub fn restart(&self) -> Service {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Service::start(&self.data, &args, false)
    }

    /// The wizard's staging step with a `godwit staging serve` as the target.
    pub fn use_staging_server(&self, address: &str, fingerprint: &str, token: &str) {
        self.ok(
            "PUT",
            "/settings/staging",
            Some(serde_json::json!({"kind": "server", "address": address,
                                    "fingerprint": fingerprint, "token": token})),
        );
    }

    /// Trust `fp` from now on (after the service's certificate was replaced by upload).
    pub fn repin(&mut self, fp: &str) {
        self.fingerprint = fp.to_string();
        self.client = pinned_client(fp, false);
        self.browser = pinned_client(fp, true);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.data.join("logs/godwit.log")).unwrap_or_default()
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        auth: Option<(&str, &str)>,
    ) -> (u16, Vec<u8>) {
        let client = if auth.is_some() {
            &self.client
        } else {
            &self.browser
        };
        let mut r = client.request(method.clone(), format!("{}{path}", self.url));
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        } else if method != reqwest::Method::GET {
            // A session call: the session's CSRF token goes in the header.
            let info: Value = self
                .browser
                .get(format!("{}/api/v1/session", self.url))
                .send()
                .and_then(|r| r.bytes())
                .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
                .expect("GET /api/v1/session");
            let token = info["csrf_token"].as_str().unwrap_or_default().to_string();
            r = r.header("x-csrf-token", token);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        (status, bytes)
    }

    /// An API call as the admin; returns the status and the body as JSON (Null when empty or
    /// not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let (s, b) = self.request(
            m,
            &format!("/api/v1{path}"),
            body.as_ref(),
            Some((ADMIN_USER, ADMIN_PASSWORD)),
        );
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// An API call without credentials, as a browser session (cookie and CSRF token).
    pub fn api_anon(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let (s, b) = self.request(m, &format!("/api/v1{path}"), body.as_ref(), None);
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// A call that must succeed (2xx); returns the JSON body.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, path, body);
        assert!(
            (200..300).contains(&s),
            "{method} /api/v1{path}: HTTP {s}: {v}\nservice stderr:\n{}",
            self.stderr_text()
        );
        v
    }

    /// A raw-body POST as the admin (`application/octet-stream`): the status and the JSON
    /// answer.
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.url);
        let resp = self
            .client
            .post(url)
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let b = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// A POST that declares a `Content-Length` of `declared` bytes but sends only the headers
    /// and up to 64 KiB of zeros, over a raw pinned TLS connection (an HTTP client would fail
    /// on the early answer): the status and the JSON answer of a server that refuses it from
    /// its declared length.
    pub fn post_declared(&self, path: &str, declared: u64) -> (u16, Value) {
        use std::io::Write;
        let hostport = self.url.trim_start_matches("https://").to_string();
        let tcp = std::net::TcpStream::connect(&hostport).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let cfg = Arc::new(pinned_tls(&self.fingerprint));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(cfg, name).expect("tls");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let auth = basic_b64(&format!("{ADMIN_USER}:{ADMIN_PASSWORD}"));
        let head = format!(
            "POST /api/v1{path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).expect("send headers");
        let _ = tls.write_all(&vec![0u8; 64 << 10]);
        let _ = tls.flush();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| raw.len() >= i + 4 + n) {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let body = find(&raw, b"\r\n\r\n").map_or(&[][..], |i| &raw[i + 4..]);
        (status, serde_json::from_slice(body).unwrap_or(Value::Null))
    }

    /// Raw bytes of a GET as the admin (bundle download, metrics).
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        self.request(
            reqwest::Method::GET,
            path,
            None,
            Some((ADMIN_USER, ADMIN_PASSWORD)),
        )
    }

    /// Log in as a browser would (session, CSRF token, `POST /api/v1/login`) and return the
    /// logged-in session cookie (`name=value`).
    pub fn login_cookie(&self, password: &str) -> String {
        let cookie_of = |r: &reqwest::blocking::Response| -> Option<String> {
            r.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("godwit_session="))
                .and_then(|v| v.split(';').next())
                .map(str::to_string)
        };
        let r = self
            .client
            .get(format!("{}/api/v1/session", self.url))
            .send()
            .expect("GET /api/v1/session");
        let anon = cookie_of(&r).expect("a session cookie");
        let info: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        let token = info["csrf_token"].as_str().unwrap().to_string();
        let r = self
            .client
            .post(format!("{}/api/v1/login", self.url))
            .header("cookie", &anon)
            .header("x-csrf-token", token)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "password": password }).to_string())
            .send()
            .expect("POST /api/v1/login");
        assert!(r.status().is_success(), "login: HTTP {}", r.status());
        cookie_of(&r).unwrap_or(anon)
    }

    /// Status of a GET made with this cookie only (no Basic credentials).
    pub fn status_with_cookie(&self, path: &str, cookie: &str) -> u16 {
        self.client
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Status and body of a GET made with this cookie only (a page as the browser gets it).
    pub fn page_with_cookie(&self, path: &str, cookie: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .send()
            .expect("GET with a cookie");
        let status = r.status().as_u16();
        (status, r.text().unwrap_or_default())
    }

    /// Poll a job until `done(job)` holds; panics with the job and its timeline on timeout.
    pub fn wait_job(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.ok("GET", &format!("/jobs/{id}"), None);
            if done(&j) {
                return j;
            }
            if Instant::now() > deadline {
                let ev = self.api("GET", &format!("/jobs/{id}/events"), None).1;
                panic!(
                    "job {id} did not reach the expected state in {secs} s: {j}\ntimeline: {ev}\nstderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking client that accepts exactly the certificate with this fingerprint.
/// The rustls client configuration that accepts exactly the certificate with this fingerprint.
pub fn pinned_tls(fp: &str) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pin = godwit_vmware::trust::Fingerprint::parse(fp).expect("fingerprint");
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(godwit_vmware::trust::PinnedVerifier::new(vec![pin], seen));
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

pub fn pinned_client(fp: &str, cookies: bool) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(pinned_tls(fp))
        .cookie_store(cookies)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Base64 (standard alphabet, padded) of an HTTP Basic `user:password`.
fn basic_b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(
                    A[usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0)],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Give vcsim VM `vm` one flat disk of `mib` MiB of random data (nothing is skipped as zero
/// and nothing compresses), through our own ReconfigVM_Task. Returns the descriptor's path.
pub fn random_disk(v: &Vcsim, vm: &str, mib: u64) -> PathBuf {
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(vm);
    std::fs::create_dir_all(&vmdir).unwrap();
    let disk = vmdir.join("data.vmdk");
    let size = mib << 20;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        disk.to_str().unwrap(),
        &size.to_string(),
    ]);
    overwrite_random(&vmdir.join("data-flat.vmdk"), mib);
    let s = v.connect();
    set_vm_disks(&s, vm, &[(&format!("[{ds}] {vm}/data.vmdk"), size)]);
    disk
}

/// Fill the first `mib` MiB of a file with random bytes (in place).
pub fn overwrite_random(path: &Path, mib: u64) {
    run_ok(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", path.display()))
            .args([
                "bs=1M".to_string(),
                format!("count={mib}"),
                "conv=notrunc".into(),
                "status=none".into(),
            ]),
    );
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// The wizard's steps through the API, briefly: network (DHCP), the staging target given
/// (`{"kind": "server", ...}` or `{"kind": "s3", ...}`), vcsim as a source (probed, its
/// certificate approved). Returns the source id.
pub fn setup_vsphere(svc: &Service, v: &Vcsim, staging: Value) -> String {
    svc.ok(
        "PUT",
        "/settings/network",
        Some(
            serde_json::json!({"hostname": "godwit-test", "mode": "dhcp",
                    "dns_servers": [], "ntp_servers": [], "proxy": null}),
        ),
    );
    svc.ok("PUT", "/settings/staging", Some(staging));
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(serde_json::json!({"kind": "vsphere", "address": v.authority()})),
    );
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            serde_json::json!({"kind": "vsphere", "address": v.authority(), "username": USER,
                    "password": PASSWORD, "approved_fingerprint": cert["fingerprint"]}),
        ),
    );
    src["id"].as_str().unwrap().to_string()
}

/// Export disk 0 of `job` and wait until done (returns its view). `dest` is `s3://...`, or a local path of the
/// test's: the service writes only under its export directory (DATA/exports), so the export
/// is made there under `dest`'s file name and then moved to `dest`.
pub fn export_and_wait(svc: &Service, job: &str, format: &str, dest: &str) -> Value {
    let local = (!dest.starts_with("s3://")).then(|| {
        let name = Path::new(dest)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_string();
        (svc.data.join("exports").join(&name), name)
    });
    let destination = local.as_ref().map_or(dest, |(_, n)| n.as_str());
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(serde_json::json!({"job_id": job, "disk": 0, "format": format, "destination": destination})),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = svc.ok("GET", "/exports", None);
        let e = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == ex["id"])
            .cloned()
            .unwrap();
        if e["state"] != "running" {
            assert_eq!(e["state"], "done", "{e}");
            if let Some((written, _)) = &local {
                assert_eq!(e["destination"], written.to_str().unwrap(), "{e}");
                if std::fs::rename(written, dest).is_err() {
                    std::fs::copy(written, dest).expect("copying the export");
                }
            }
            return e;
        }
        assert!(Instant::now() < deadline, "export still running: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
