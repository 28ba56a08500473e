//! The staging peer: `godwit staging serve` as a child process killed on drop, image makers
//! using qemu-img/qemu-io, and `godwit replicate` / `godwit export` runners against it.

use crate::peers::{godwit_bin, run_ok, sha256_file};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub fingerprint: String,
    pub token: String,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Start `godwit staging serve` on `listen` (use port 0 for any) with `extra` options.
    pub fn start(data: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_with(data, listen, extra, &[])
    }

    /// [`Server::start`] with environment variables (S3 credentials for `--store s3://…`).
    pub fn start_with(data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = data.with_extension(format!("log{}", std::process::id()));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let mut child = Command::new(godwit_bin())
            .args(["staging", "serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf))
            .spawn()
            .expect("start staging server");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let (mut fp, mut tok, mut addr) = (String::new(), String::new(), String::new());
        let t0 = Instant::now();
        while addr.is_empty() {
            let Some(Ok(l)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "staging server exited early; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(v) = l.strip_prefix("fingerprint: ") {
                fp = v.to_string();
            } else if let Some(v) = l.strip_prefix("token: ") {
                tok = v.to_string();
            } else if let Some(v) = l.strip_prefix("listening: ") {
                addr = v.to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server start timed out"
            );
        }
        assert!(
            // `SHA256:AB:CD:…` (issue 18: one format everywhere)
            fp.starts_with("SHA256:")
                && fp.len() == 7 + 32 * 3 - 1
                && fp.matches(':').count() == 32,
            "fingerprint line {fp:?}"
        );
        assert!(tok.len() >= 16, "token line {tok:?}");
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            fingerprint: fp,
            token: tok,
            addr,
            data: data.to_path_buf(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("staging://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the server process, KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sparse raw image of `size` bytes.
pub fn make_raw(path: &Path, size: &str) {
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg(size),
    );
}

/// Write `count` MiB of random bytes at `offset_mib` MiB.
pub fn write_random(path: &Path, offset_mib: u64, count_mib: u64) {
    run_ok(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", path.display()))
            .args([
                "bs=1M".to_string(),
                format!("seek={offset_mib}"),
                format!("count={count_mib}"),
                "conv=notrunc".into(),
                "status=none".into(),
            ]),
    );
}

/// `qemu-io -c "write -P pattern offset len"` on an image of any format.
pub fn qemu_write(path: &Path, fmt: &str, pattern: u8, offset: u64, len: u64) {
    run_ok(
        Command::new("qemu-io")
            .args(["-f", fmt, "-c"])
            .arg(format!("write -P {pattern} {offset} {len}"))
            .arg(path),
    );
}

/// `qemu-img convert -O raw` of any image: the reference content.
pub fn reference_raw(src: &Path, fmt: &str, out: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(src)
            .arg(out),
    );
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join("token.txt");
    std::fs::write(&p, token).expect("token file");
    p
}

/// `godwit replicate ... --json` to a staging server; returns the final JSON summary.
pub fn replicate_staging(
    srv: &Server,
    source: &Path,
    vm: &str,
    extra: &[&str],
) -> serde_json::Value {
    let tf = token_file(srv.data.parent().expect("parent"), &srv.token);
    let out = run_ok(
        Command::new(godwit_bin())
            .args([
                "replicate",
                "--json",
                "--vm",
                vm,
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
                "--token-file",
            ])
            .arg(&tf)
            .arg("--source")
            .arg(format!("file://{}", source.display()))
            .args(extra),
    );
    last_json(&out)
}

pub fn last_json(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// `godwit export` from a staging server; returns the JSON report.
pub fn export_staging(
    srv: &Server,
    vm: &str,
    format: &str,
    out: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let tf = token_file(srv.data.parent().expect("parent"), &srv.token);
    let o = run_ok(
        Command::new(godwit_bin())
            .args([
                "export",
                "--json",
                "--vm",
                vm,
                "--disk",
                "0",
                "--format",
                format,
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
                "--token-file",
            ])
            .arg(&tf)
            .arg("--out")
            .arg(out)
            .args(extra),
    );
    last_json(&o)
}

/// Chunk files in a staging data directory: (count, total bytes).
pub fn chunk_files(data: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let root = data.join("store/chunks");
    for d in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            n += 1;
            bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, bytes)
}

pub fn sha_of(p: &Path) -> String {
    sha256_file(p)
}
