//! Refusals and hostile input against the staging server: wrong fingerprint, wrong token,
//! plaintext, TLS 1.1-only clients (Python's ssl module, i.e. OpenSSL, as an independent
//! client), lying frame lengths, wrong digests, garbage, slow-loris. The server must stay up,
//! bounded in memory, and store nothing bad.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::staging::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// A raw client in Python: TLS (optionally capped at a version), Hello with a token, then the
/// given frames; prints the frames it got back and whether the server closed.
const PY_CLIENT: &str = r#"
import json, socket, ssl, struct, sys, time
cfg = json.loads(sys.stdin.read())
host, port = cfg["addr"].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=cfg.get("timeout", 10))
out = {"handshake": "ok", "frames": [], "closed": False}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cfg.get("tls_max") == "1.1":
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    s = ctx.wrap_socket(s)
except Exception as e:
    out["handshake"] = repr(e)
    print(json.dumps(out)); sys.exit(0)
def frame(t, body): return struct.pack(">I", len(body) + 1) + bytes([t]) + body
if cfg.get("token") is not None:
    tok = cfg["token"].encode()
    s.sendall(frame(1, b"GODWIT1\n" + struct.pack(">HHH", 2, 2, len(tok)) + tok))
for h in cfg.get("sends", []):
    s.sendall(bytes.fromhex(h))
    time.sleep(cfg.get("pause", 0))
t0 = time.time()
buf = b""
try:
    while time.time() - t0 < cfg.get("timeout", 10):
        d = s.recv(1 << 20)
        if not d:
            out["closed"] = True
            break
        buf += d
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            n = struct.unpack(">I", buf[:4])[0]
            out["frames"].append([buf[4], buf[5:4 + n].hex()])
            buf = buf[4 + n:]
        if len(out["frames"]) >= cfg.get("want", 1 << 30):
            break
except Exception as e:
    out["closed"] = True
    out["error"] = repr(e)
out["elapsed"] = time.time() - t0
print(json.dumps(out))
"#;

fn py(cfg: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PY_CLIENT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let input = cfg.to_string();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(o.status.success(), "python client failed");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn frame(ty: u8, body: &[u8]) -> String {
    let mut v = u32::try_from(body.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    v.push(ty);
    v.extend_from_slice(body);
    hex::encode(v)
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// A chunk file (store-format.md) holding `data` uncompressed, named `name`.
fn chunk_file(data: &[u8], name: [u8; 32], claimed_len: u32) -> Vec<u8> {
    let mut h = b"GWCK".to_vec();
    h.extend_from_slice(&[1, 0, 0, 0]);
    h.extend_from_slice(&claimed_len.to_be_bytes());
    h.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&name);
    h.extend_from_slice(data);
    h
}

fn put_chunk(id: u32, digest: [u8; 32], file: &[u8]) -> String {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&digest);
    b.extend_from_slice(&u32::try_from(file.len()).unwrap().to_be_bytes());
    b.extend_from_slice(file);
    frame(12, &b)
}

fn small_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("small.raw");
    make_raw(&src, "4M");
    write_random(&src, 1, 1);
    src
}

#[test]
fn wrong_fingerprint_token_plaintext_and_old_tls_are_refused() {
    need(&["python3", "qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    let src = small_disk(tmp.path());
    let tf = token_file(tmp.path(), &srv.token);
    let attempt = |fp: &str, token_path: &std::path::Path| {
        run(Command::new(godwit_bin())
            .args([
                "replicate",
                "--retries",
                "1",
                "--vm",
                "x",
                "--target",
                &srv.url(),
                "--target-fingerprint",
                fp,
                "--token-file",
            ])
            .arg(token_path)
            .arg("--source")
            .arg(format!("file://{}", src.display())))
    };
    // Wrong fingerprint: refused by the client before anything is sent.
    let other = format!("SHA256:{}", "ab".repeat(32));
    let o = attempt(&other, &tf);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("does not match the pinned") && err.contains(&srv.fingerprint),
        "{err}"
    );
    // The same fingerprint written with colons in lower case is accepted.
    let hexfp = srv
        .fingerprint
        .trim_start_matches("SHA256:")
        .replace(':', "")
        .to_lowercase();
    let colons: Vec<&str> = (0..32).map(|i| &hexfp[i * 2..i * 2 + 2]).collect();
    let ok = attempt(&colons.join(":"), &tf);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Wrong token.
    let bad = tmp.path().join("bad-token");
    std::fs::write(&bad, "not-the-token-at-all").unwrap();
    let o = attempt(&srv.fingerprint, &bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("refused the pairing token"), "{err}");
    // Plaintext: the server answers with one line and closes.
    let mut t = std::net::TcpStream::connect(&srv.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(&hex::decode(frame(1, b"GODWIT1\n")).unwrap())
        .unwrap();
    let mut reply = String::new();
    t.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("TLS 1.2 or newer only"), "{reply}");
    // A client that offers only TLS 1.1.
    let r = py(serde_json::json!({"addr": srv.addr, "tls_max": "1.1"}));
    let hs = r["handshake"].as_str().unwrap();
    assert_ne!(hs, "ok", "a TLS 1.1 client completed a handshake");
    assert!(
        hs.to_lowercase().contains("version") || hs.contains("ALERT") || hs.contains("alert"),
        "{hs}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = srv.log_text();
    assert!(log.contains("rejected this server's certificate"), "{log}");
    assert!(log.contains("pairing token not accepted"), "{log}");
    assert!(log.contains("plaintext connection"), "{log}");
    assert!(log.contains("TLS 1.2 or newer is required"), "{log}");
}

#[test]
fn hostile_frames_leave_the_server_up_bounded_and_clean() {
    need(&["python3", "qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = Server::start(
        &tmp.path().join("staging"),
        "127.0.0.1:0",
        &[
            "--handshake-timeout",
            "2",
            "--frame-timeout",
            "2",
            "--idle-timeout",
            "3",
        ],
    );
    let addr = srv.addr.clone();
    let tok = srv.token.clone();
    // Lying length: 4 GiB announced. Refused without allocating, connection closed.
    let r = py(serde_json::json!({"addr": addr, "token": tok, "sends": ["fffffff0"]}));
    assert_eq!(r["frames"][0][0], 2, "Welcome first: {r}");
    assert_eq!(r["frames"][1][0], 3, "then Refused: {r}");
    assert_eq!(r["closed"], true);
    // Wrong digest: the content hashes to something else. Failed (code 4), nothing stored.
    let data = vec![7u8; 4096];
    let liar = sha(b"something else");
    let r = py(
        serde_json::json!({"addr": addr, "token": tok, "want": 2, "sends": [put_chunk(1, liar, &chunk_file(&data, liar, 4096))]}),
    );
    assert_eq!(r["frames"][1][0], 26, "Failed: {r}");
    assert!(
        r["frames"][1][1]
            .as_str()
            .unwrap()
            .starts_with("000000010004"),
        "code 4: {r}"
    );
    // Header naming the right digest but lying about the length.
    let good = sha(&data);
    let r = py(
        serde_json::json!({"addr": addr, "token": tok, "want": 2, "sends": [put_chunk(2, good, &chunk_file(&data, good, 100))]}),
    );
    assert_eq!(r["frames"][1][0], 26, "{r}");
    // A count larger than the frame; an unknown frame type; garbage before Hello.
    let mut have = 9u32.to_be_bytes().to_vec();
    have.extend_from_slice(&4096u32.to_be_bytes());
    have.extend_from_slice(&[0; 32]);
    for bad in [frame(10, &have), frame(99, b"x")] {
        let r = py(serde_json::json!({"addr": addr, "token": tok, "sends": [bad]}));
        assert_eq!(r["frames"][1][0], 3, "{r}");
        assert_eq!(r["closed"], true);
    }
    let r = py(serde_json::json!({"addr": addr, "sends": ["00000005ff00112233"]}));
    assert_eq!(r["frames"][0][0], 3, "{r}");
    // Many maximum-size frames of garbage at once: memory stays bounded.
    let big = vec![0xA5u8; 8 << 20];
    let junk = put_chunk(3, sha(&big), &chunk_file(&big, sha(b"no"), 8 << 20));
    let sends: Vec<String> = (0..12).map(|_| junk.clone()).collect();
    let r = py(
        serde_json::json!({"addr": addr, "token": tok, "want": 13, "timeout": 60, "sends": sends}),
    );
    let failed = r["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f[0] == 26)
        .count();
    assert_eq!(failed, 12, "{r}");
    let rss = srv.rss_kib();
    assert!(rss > 0 && rss < 128 * 1024, "server RSS {rss} KiB");
    // Slow loris: silent after TCP connect; a frame that trickles. Both dropped by the timeouts.
    let t0 = Instant::now();
    let mut t = std::net::TcpStream::connect(&addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 16];
    let n = t.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "silent client held {:?}",
        t0.elapsed()
    );
    let r = py(
        serde_json::json!({"addr": addr, "token": tok, "sends": ["000003e80c000000"], "timeout": 20}),
    );
    assert_eq!(r["closed"], true, "{r}");
    assert!(r["elapsed"].as_f64().unwrap() < 10.0, "{r}");
    // Still up, nothing stored, and a real client works.
    assert!(srv.alive());
    assert_eq!(chunk_files(&srv.data).0, 0, "a bad chunk was stored");
    let src = small_disk(tmp.path());
    let rep = replicate_staging(&srv, &src, "after", &[]);
    assert_eq!(rep["chunks_new"], 1);
    let v = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "verify", "--data"])
            .arg(&srv.data),
    );
    assert!(v.contains("1 chunks ok, 0 bad"), "{v}");
    let log = srv.log_text();
    assert!(
        log.contains("rejected") && log.contains("slow client dropped"),
        "{log}"
    );
}

/// Security issue, finding 4: unauthenticated sockets are not counted against the cap on
/// paired connections. 25 idle TCP sockets against a server capped at 20 connections: a paired
/// client still replicates (before the fix, the 20 idle sockets took every slot and it was
/// refused at accept). The idle sockets are closed at the pre-auth timeout; sockets beyond the
/// separate pre-auth cap are closed at once, with one aggregated log line, not one each.
#[test]
fn idle_sockets_do_not_lock_out_a_paired_client() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(
        &tmp.path().join("staging"),
        "127.0.0.1:0",
        &["--max-connections", "20", "--handshake-timeout", "4"],
    );
    let t0 = Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..25)
        .map(|_| std::net::TcpStream::connect(&srv.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let src = small_disk(tmp.path());
    let rep = replicate_staging(&srv, &src, "paired", &["--retries", "1"]);
    assert_eq!(rep["chunks_new"], 1, "{rep}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the replication must have run while the idle sockets were open ({:?})",
        t0.elapsed()
    );
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 8];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "an idle socket got data");
    }
    let closed_after = t0.elapsed();
    assert!(
        closed_after >= Duration::from_secs(3) && closed_after < Duration::from_secs(10),
        "idle sockets closed after {closed_after:?} (pre-auth timeout 4 s)"
    );

    // The pre-auth cap: 40 sockets against --max-preauth 8. The 32 over the cap are closed at
    // once; a paired client that comes after the burst is served.
    let srv2 = Server::start(
        &tmp.path().join("staging2"),
        "127.0.0.1:0",
        &["--max-preauth", "8", "--handshake-timeout", "30"],
    );
    let burst: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&srv2.addr).unwrap())
        .collect();
    let t1 = Instant::now();
    let mut closed_at_once = 0;
    for s in &burst {
        s.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut b = [0u8; 8];
        if matches!((&*s).read(&mut b), Ok(0)) {
            closed_at_once += 1;
        }
    }
    assert_eq!(
        closed_at_once, 32,
        "sockets over the pre-auth cap closed at once"
    );
    assert!(t1.elapsed() < Duration::from_secs(20));
    drop(burst);
    std::thread::sleep(Duration::from_millis(300));
    let rep = replicate_staging(&srv2, &src, "after-burst", &["--retries", "1"]);
    assert_eq!(rep["chunks_new"], 1, "{rep}");
    let log = srv2.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("already in the TLS/Hello stage"))
        .count();
    assert!(
        (1..=4).contains(&lines),
        "32 refusals logged in {lines} lines:\n{log}"
    );
}
