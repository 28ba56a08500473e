//! Faults during replication: the staging server and the client killed with SIGKILL at random
//! moments during a 1 GiB replication, a link that stalls and one that drops, and an
//! interrupted incremental. The final sync must be complete and correct, little may be sent
//! twice, and a failed sync must leave the previous one intact.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::staging::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP proxy on loopback that counts client→server bytes and can stall or cut connections.
struct Proxy {
    addr: String,
    up: Arc<AtomicU64>,
    stall: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<(u64, TcpStream)>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicU64::new(0));
        let stall = Arc::new(AtomicU64::new(u64::MAX));
        let conns: Arc<Mutex<Vec<(u64, TcpStream)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, stall2, conns2, stop2) = (up.clone(), stall.clone(), conns.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut id = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let Ok(s) = TcpStream::connect(&target) else {
                    continue;
                };
                id += 1;
                conns2.lock().unwrap().push((id, c.try_clone().unwrap()));
                conns2.lock().unwrap().push((id, s.try_clone().unwrap()));
                for (mut from, mut to, count) in [
                    (c.try_clone().unwrap(), s.try_clone().unwrap(), true),
                    (s, c, false),
                ] {
                    let (up, stall, stop) = (up2.clone(), stall2.clone(), stop2.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            if stall.load(Ordering::SeqCst) == id || stop.load(Ordering::SeqCst) {
                                // Stalled: hold the connection open, forward nothing.
                                if stop.load(Ordering::SeqCst) {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if count {
                                up.fetch_add(n as u64, Ordering::SeqCst);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            up,
            stall,
            conns,
            stop,
        }
    }

    fn newest(&self) -> u64 {
        self.conns.lock().unwrap().last().map_or(0, |c| c.0)
    }

    fn cut_all(&self) {
        for (_, c) in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut_all();
    }
}

/// Pseudo-random numbers without a crate: seeded from the clock, printed for reproduction.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let seed = u64::from(nanos) | 1;
        eprintln!("fault schedule seed {seed}");
        Rng(seed)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

fn replicate_cmd(
    srv: &Server,
    via: &str,
    src: &std::path::Path,
    vm: &str,
    tf: &std::path::Path,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(godwit_bin());
    c.args([
        "replicate",
        "--json",
        "--raw-sha256",
        "--vm",
        vm,
        "--chunk-size",
        "1M",
        "--target",
        &format!("staging://{via}"),
        "--target-fingerprint",
        &srv.fingerprint,
        "--token-file",
    ])
    .arg(tf)
    .arg("--source")
    .arg(format!("file://{}", src.display()))
    .args(extra)
    .env("GODWIT_REPLY_TIMEOUT_SECS", "3")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

const MIB: u64 = 1 << 20;
/// One window: 8 chunks of 1 MiB (incompressible) plus frame and TLS overhead.
const WINDOW_BYTES: u64 = 8 * (MIB + 4096);

fn one_gib_source(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let src = dir.join(name);
    make_raw(&src, "1G");
    for (at, n) in [(0, 48), (300, 48), (600, 48), (1000, 24)] {
        write_random(&src, at, n);
    }
    src
}

#[test]
fn kill9_server_and_client_at_random_moments_then_complete() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = one_gib_source(tmp.path(), "a.raw");
    let src_b = one_gib_source(tmp.path(), "b.raw");
    let data = tmp.path().join("staging");
    let mut srv = Server::start(&data, "127.0.0.1:0", &[]);
    let server_addr = srv.addr.clone();
    let proxy = Proxy::start(server_addr.clone());
    let tf = token_file(tmp.path(), &srv.token);
    let mut rng = Rng::new();
    let mut interruptions = 0u64;
    // What went through the link and what the store holds, sampled at each interruption: the
    // bytes sent in a stretch that did not end up as stored chunks were in flight when it was
    // cut, and must fit in one pipeline window (plus TLS and frame overhead).
    let sample = |proxy: &Proxy| (proxy.up.load(Ordering::SeqCst), chunk_files(&data).1);
    let mut last = sample(&proxy);
    let mut lost_per_cut = Vec::new();
    let mut cut = |now: (u64, u64), last: &mut (u64, u64)| {
        let sent = now.0 - last.0;
        let stored = now.1.saturating_sub(last.1);
        lost_per_cut.push((sent, sent.saturating_sub(stored)));
        *last = now;
    };
    // Server killed three times during one client run; the client retries and resumes.
    let mut client = Guard(
        replicate_cmd(
            &srv,
            &proxy.addr,
            &src,
            "k",
            &tf,
            &["--bwlimit", "48M", "--retries", "30"],
        )
        .spawn()
        .unwrap(),
    );
    for _ in 0..3 {
        std::thread::sleep(rng.ms(400, 1500));
        srv.kill9();
        interruptions += 1;
        cut(sample(&proxy), &mut last);
        std::thread::sleep(Duration::from_millis(300));
        srv = Server::start(&data, &server_addr, &[]);
    }
    let out = client.0.wait_with_output_ref();
    assert!(
        out.0.success(),
        "client failed after server kills: {}",
        out.2
    );
    // Client killed at random moments during runs of another disk.
    for _ in 0..3 {
        let mut c = Guard(
            replicate_cmd(&srv, &proxy.addr, &src_b, "c", &tf, &["--bwlimit", "48M"])
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(rng.ms(300, 2000));
        let _ = c.0.kill();
        let _ = c.0.wait();
        interruptions += 1;
        // Let the server store what fully arrived before the client died.
        std::thread::sleep(Duration::from_millis(500));
        cut(sample(&proxy), &mut last);
    }
    let before = proxy.up.load(Ordering::SeqCst);
    let fin = run_ok(&mut replicate_cmd(&srv, &proxy.addr, &src_b, "c", &tf, &[]));
    let fin = last_json(&fin);
    let last_run = proxy.up.load(Ordering::SeqCst) - before;
    let (chunks, stored) = chunk_files(&data);
    assert_eq!(chunks, 336, "distinct data chunks stored");
    let total = proxy.up.load(Ordering::SeqCst);
    // Everything sent minus what is stored: what was sent twice (plus protocol overhead).
    let resent = total.saturating_sub(stored);
    eprintln!(
        "sent {total} bytes through the proxy for {stored} bytes of chunks; {interruptions} interruptions; re-sent {resent}; last run {last_run}"
    );
    assert!(
        resent <= interruptions * WINDOW_BYTES + 4 * MIB,
        "re-sent {resent} bytes over {interruptions} interruptions"
    );
    eprintln!("per interruption (sent, not stored): {lost_per_cut:?}");
    assert_eq!(lost_per_cut.len(), 6);
    for (i, (sent, lost)) in lost_per_cut.iter().enumerate() {
        assert!(
            *lost <= WINDOW_BYTES + MIB,
            "interruption {i}: {lost} of {sent} bytes sent were lost, more than one window ({WINDOW_BYTES})"
        );
    }
    assert!(fin["chunks_new"].as_u64().unwrap() <= 168);
    for (vm, want) in [("k", &src), ("c", &src_b)] {
        let out = tmp.path().join(format!("{vm}.raw"));
        let e = export_staging(&srv, vm, "raw", &out, &[]);
        assert!(
            files_equal(&out, want),
            "{vm}: export differs from the source"
        );
        assert_eq!(e["verified"], true);
    }
    let v = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "verify", "--data"])
            .arg(&data),
    );
    assert!(v.contains("336 chunks ok, 0 bad; 2 syncs ok, 0 bad"), "{v}");
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String, String);
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String, String) {
        let mut o = String::new();
        let mut e = String::new();
        if let Some(mut s) = self.stdout.take() {
            let _ = s.read_to_string(&mut o);
        }
        if let Some(mut s) = self.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        (self.wait().unwrap(), o, e)
    }
}

#[test]
fn stalled_and_cut_links_resume_and_complete() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "256M");
    write_random(&src, 0, 64);
    write_random(&src, 200, 32);
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    let proxy = Proxy::start(srv.addr.clone());
    let tf = token_file(tmp.path(), &srv.token);
    let mut c = Guard(
        replicate_cmd(
            &srv,
            &proxy.addr,
            &src,
            "s",
            &tf,
            &["--bwlimit", "32M", "--retries", "20"],
        )
        .spawn()
        .unwrap(),
    );
    let wait_bytes = |n: u64| {
        let t0 = Instant::now();
        while proxy.up.load(Ordering::SeqCst) < n {
            assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_bytes(20 * MIB);
    proxy.stall.store(proxy.newest(), Ordering::SeqCst); // stall: the client must time out
    wait_bytes(40 * MIB); // ... and continue on a new connection
    proxy.cut_all(); // drop: reset mid-transfer
    wait_bytes(70 * MIB);
    proxy.cut_all();
    let (status, out, err) = c.0.wait_with_output_ref();
    assert!(status.success(), "{err}");
    assert!(err.contains("retrying"), "no retry happened: {err}");
    let rep = last_json(&out);
    assert!(rep["attempts"].as_u64().unwrap() >= 3, "{rep}");
    let o = tmp.path().join("o.raw");
    export_staging(&srv, "s", "raw", &o, &[]);
    assert!(files_equal(&o, &src));
}

#[test]
fn failed_incremental_leaves_previous_sync_intact() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "128M");
    write_random(&src, 0, 16);
    let v1 = tmp.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let data = tmp.path().join("staging");
    let mut srv = Server::start(&data, "127.0.0.1:0", &[]);
    let tf = token_file(tmp.path(), &srv.token);
    let first = replicate_staging(&srv, &src, "f", &["--chunk-size", "1M"]);
    write_random(&src, 0, 64);
    let mut c = Guard(
        replicate_cmd(
            &srv,
            &srv.addr.clone(),
            &src,
            "f",
            &tf,
            &["--bwlimit", "16M", "--retries", "1"],
        )
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let addr = srv.addr.clone();
    srv.kill9();
    let (status, _, err) = c.0.wait_with_output_ref();
    assert!(!status.success(), "the incremental should have failed");
    assert!(err.contains("godwit: error"), "{err}");
    srv = Server::start(&data, &addr, &[]);
    let syncs = std::fs::read_dir(data.join("store/syncs/f/0"))
        .unwrap()
        .count();
    assert_eq!(syncs, 1, "a partial sync became visible");
    let o = tmp.path().join("o.raw");
    let e = export_staging(&srv, "f", "raw", &o, &[]);
    assert_eq!(e["sync_id"], first["sync_id"]);
    assert!(files_equal(&o, &v1));
    let v = run(Command::new(godwit_bin())
        .args(["staging", "verify", "--data"])
        .arg(&data));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
