//! The host push as real hosts and small appliances need it (issues 15 and 19):
//!
//! - a Generation 2 VM with 240 MiB of data replicates by push with the state directory on a
//!   64 MiB tmpfs (in a private mount namespace, `unshare -m`), listening on a wildcard address
//!   without `--ingest-url`: the export equals `qemu-img convert -O raw`, and the spool's peak
//!   (the cycle's own figure, and the tmpfs's used bytes polled from outside) stays under the
//!   limit — printed;
//! - a host whose VM ids are an absolute path or start with `../` cannot make the connector
//!   touch anything outside its spool directory (a canary directory survives);
//! - a push URL the host cannot reach fails the cycle at once, naming the URL, the host and the
//!   port, and leaves no checkpoint;
//! - the CLI ingest listener closes never-finished TLS handshakes, idle TLS connections and
//!   half-sent heads, and caps connections per client and in total.

use godwit_hyperv::ingest::server::{
    HANDSHAKE_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_CLIENT,
};
use godwit_hyperv::ingest::{IngestIdentity, IngestServer};
use godwit_tests::hyperv::*;
use godwit_tests::peers::sha256_file;
use godwit_tests::staging;
use staging::{Server, token_file};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn staging(srv: &Server) -> Staging {
    Staging {
        url: srv.url(),
        fingerprint: srv.fingerprint.clone(),
        token_file: token_file(srv.data.parent().unwrap(), &srv.token),
    }
}

const BIG_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000b1";

/// A VHDX of 256 MiB virtual size holding 240 MiB of random data, and qemu-img's raw read of it.
fn big_vhdx(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("big")).unwrap();
    let raw = dir.join("big.src.raw");
    let mut data = vec![0u8; 256 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for w in data[..240 << 20].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&raw, &data).unwrap();
    drop(data);
    let vhdx = dir.join("big/big.vhdx");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "subformat=dynamic",
        raw.to_str().unwrap(),
        vhdx.to_str().unwrap(),
    ]);
    std::fs::remove_file(&raw).unwrap();
    let reference = dir.join("big.ref.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "vhdx",
        "-O",
        "raw",
        vhdx.to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    reference
}

fn vm_json(id: &str, name: &str, path: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"{name}","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"{path}"}}]}}"#
    )
}

/// Bytes used on the file system of `path` (statfs through `stat -f`), if it is the 64 MiB
/// tmpfs (not the root file system seen before the mount or after the process ended).
fn used_bytes(path: &Path) -> Option<u64> {
    let o = Command::new("stat")
        .args(["-f", "-c", "%b %f %S"])
        .arg(path)
        .output()
        .ok()?;
    let t = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u64> = t
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (o.status.success() && v.len() == 3 && v[0] * v[2] == 64 << 20).then(|| (v[0] - v[1]) * v[2])
}

#[test]
fn a_vm_larger_than_the_state_filesystem_replicates_through_a_bounded_spool() {
    godwit_tests::peers::need(&["qemu-img", "unshare", "mount", "stat"]);
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("host");
    let reference = big_vhdx(&host);
    let sim = start_sim_json(
        &host,
        &format!(
            r#"{{"vms":[{}]}}"#,
            vm_json(BIG_ID, "big-gen2", "big/big.vhdx")
        ),
    );
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The state directory is a 64 MiB tmpfs that only the connector's mount namespace sees.
    let mut inner = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "big-gen2");
    inner.args(["--json", "--ingest-listen", "0.0.0.0:0"]);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=64m godwit-state "$0" && exec "$@""#,
    ])
    .arg(&state)
    .arg(inner.get_program())
    .args(inner.get_args())
    .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    // Poll the tmpfs from outside through the process's root (its mount namespace).
    let seen = state.strip_prefix("/").unwrap();
    let view = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(seen);
    let mut peak_fs = 0u64;
    let mut samples = 0u32;
    while child.try_wait().unwrap().is_none() {
        if let Some(u) = used_bytes(&view) {
            peak_fs = peak_fs.max(u);
            samples += 1;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "replicate hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let (done, cycle) = json_events(&stdout);
    assert_eq!(done.len(), 1, "{stdout}");
    let push = &cycle["push"];
    let (limit, peak, pushed) = (
        push["spool_limit"].as_u64().unwrap(),
        push["peak_spool_bytes"].as_u64().unwrap(),
        push["pushed_bytes"].as_u64().unwrap(),
    );
    eprintln!(
        "240 MiB VM through a 64 MiB state tmpfs: {pushed} bytes pushed in {} pushes ({} waits for room), \
         spool limit {limit} bytes ({} MiB), measured peak spool {peak} bytes ({:.1} MiB) by the cycle, \
         peak tmpfs use {peak_fs} bytes ({:.1} MiB) over {samples} samples, {:.1} s",
        push["pushes"],
        push["waits"],
        limit >> 20,
        peak as f64 / 1048576.0,
        peak_fs as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    assert!(pushed >= 240 << 20, "{push}");
    assert!(limit <= 64 << 20, "the limit fits the 64 MiB tmpfs: {push}");
    assert!(peak <= limit, "peak {peak} over the limit {limit}");
    assert!(peak_fs <= 64 << 20 && samples > 0, "{peak_fs} {samples}");
    // The URL was the local address of the WinRM connection (no --ingest-url given).
    assert_eq!(push["missing_bytes"], 0, "{push}");
    assert_eq!(
        export_sha(&staging(&srv), "big-gen2", work.path()),
        sha256_file(&reference),
        "exported bytes differ from qemu-img's raw read"
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(sim.open_shells(), 0);
    // Again with --spool-limit 8M (its own state directory, so a full read): the uploader is
    // told 503 + Retry-After whenever the spool is full and waits; the peak stays under 8 MiB.
    let state2 = work.path().join("state2");
    let out = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state2, "big-gen2")
        .args([
            "--json",
            "--ingest-listen",
            "127.0.0.1:0",
            "--spool-limit",
            "8M",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, cycle) = json_events(&stdout);
    let push = &cycle["push"];
    eprintln!(
        "--spool-limit 8M: {} bytes pushed, {} waits for room (503 + Retry-After), peak spool {} bytes, limit {}",
        push["pushed_bytes"], push["waits"], push["peak_spool_bytes"], push["spool_limit"]
    );
    assert_eq!(push["spool_limit"], 8 << 20, "{push}");
    assert!(
        push["peak_spool_bytes"].as_u64().unwrap() <= 8 << 20,
        "{push}"
    );
    assert!(
        push["pushed_bytes"].as_u64().unwrap() >= 240 << 20,
        "{push}"
    );
    assert_eq!(
        export_sha(&staging(&srv), "big-gen2", work.path()),
        sha256_file(&reference)
    );
}

/// A state directory with too little free space for two pushes: the cycle stops before asking
/// the host to push, with an error naming the directory, the bytes needed and the bytes free,
/// and leaves no checkpoint on the host.
#[test]
fn too_little_free_space_for_the_spool_is_a_clear_error_that_leaves_nothing() {
    godwit_tests::peers::need(&["qemu-img", "unshare", "mount", "head"]);
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // A 16 MiB tmpfs with 12 MiB taken: about 4 MiB free, less than two 4 MiB pushes.
    let mut inner = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2");
    inner.args(["--ingest-listen", "127.0.0.1:0"]);
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=16m godwit-state "$0" && head -c 12582912 /dev/zero > "$0/filler" && exec "$@""#,
        ])
        .arg(&state)
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let needle = format!(
        "not enough free space for the host-push spool in {}",
        state.display()
    );
    assert!(
        err.contains(&needle) && err.contains(" MiB) needed, ") && err.contains(" MiB) free;"),
        "{err}"
    );
    eprintln!(
        "{}",
        err.lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default()
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(sim.open_shells(), 0);
}

#[test]
fn hostile_vm_ids_never_reach_outside_the_spool_directory() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let state = work.path().join("state");
    // Two directories a hostile host would like deleted: one by absolute path, one by `../`.
    let canary_abs = work.path().join("canary-abs");
    let canary_rel = state.join("canary-rel");
    for c in [&canary_abs, &canary_rel] {
        std::fs::create_dir_all(c).unwrap();
        std::fs::write(c.join("keep"), b"canary").unwrap();
    }
    std::fs::create_dir_all(f.dir.join("a")).unwrap();
    std::fs::create_dir_all(f.dir.join("b")).unwrap();
    std::fs::copy(f.dir.join("web/web.vhdx"), f.dir.join("a/a.vhdx")).unwrap();
    std::fs::copy(f.dir.join("web/web.vhdx"), f.dir.join("b/b.vhdx")).unwrap();
    let abs_id = canary_abs.display().to_string();
    let sim = start_sim_json(
        &f.dir,
        &format!(
            r#"{{"vms":[{},{}]}}"#,
            vm_json(&abs_id, "abs-id", "a/a.vhdx"),
            vm_json("../canary-rel", "dotdot-id", "b/b.vhdx")
        ),
    );
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    for vm in ["abs-id", "dotdot-id"] {
        let out = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, vm)
            .args(["--json", "--ingest-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{vm}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for c in [&canary_abs, &canary_rel] {
            assert_eq!(
                std::fs::read(c.join("keep")).ok().as_deref(),
                Some(&b"canary"[..]),
                "{vm}: {} was touched",
                c.display()
            );
        }
    }
    assert!(sim.checkpoints().is_empty());
}

#[test]
fn an_unreachable_push_url_fails_at_once_naming_url_host_and_port() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    // Nothing listens on the port the host is told.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let url = format!("https://127.0.0.1:{port}");
    let t0 = Instant::now();
    let out = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .args(["--ingest-listen", "127.0.0.1:0", "--ingest-url", &url])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot reach the connector's ingest URL {url}"))
            && err.contains(&format!("TCP port {port}"))
            && err.contains(&format!("127.0.0.1:{}", sim.addr.port())),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(ledger_entries(&state), 0);
}

/// A TCP connection to the listener.
fn tcp(to: SocketAddr) -> TcpStream {
    TcpStream::connect(to).unwrap()
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if t0.elapsed() < within => return Some(t0.elapsed()),
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A TLS client config that takes any certificate: these clients only want the handshake done
/// (the listener under test is the server; its pin is checked elsewhere).
fn any_cert_tls() -> Arc<rustls::ClientConfig> {
    // Any certificate: this client only wants the handshake done (the listener under
    // test is the server; its pin is checked elsewhere).
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth(),
    )
}

#[test]
fn the_cli_ingest_listener_closes_idle_and_half_sent_connections_and_caps_them() {
    let server = IngestServer::start(
        "127.0.0.1:0".parse().unwrap(),
        IngestIdentity::generate(&["127.0.0.1".into()]).unwrap(),
    )
    .unwrap();
    let addr = server.local_addr();
    let tls_config = any_cert_tls();
    let t0 = Instant::now();
    // 1. A client that never finishes the TLS handshake: closed after HANDSHAKE_TIMEOUT.
    let mut silent = tcp(addr);
    // 2. Idle TLS: the handshake done, no request: closed after IDLE_TIMEOUT.
    let mut idle = rustls::StreamOwned::new(
        rustls::ClientConnection::new(tls_config.clone(), "localhost".try_into().unwrap()).unwrap(),
        tcp(addr),
    );
    while idle.conn.is_handshaking() {
        idle.conn.complete_io(&mut idle.sock).unwrap();
    }
    // 3. Half a request head, then nothing: closed after HEAD_TIMEOUT.
    let mut half = rustls::StreamOwned::new(
        rustls::ClientConnection::new(tls_config.clone(), "localhost".try_into().unwrap()).unwrap(),
        tcp(addr),
    );
    half.write_all(b"PUT /ingest/v1/s/0/0 HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    half.flush().unwrap();
    // 4. More than MAX_PER_CLIENT from one address: the extra one is closed at once.
    let hoard: Vec<TcpStream> = (0..MAX_PER_CLIENT - 3).map(|_| tcp(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.open_connections(), MAX_PER_CLIENT);
    let mut extra = tcp(addr);
    let at_once = closed_within(&mut extra, Duration::from_secs(3));
    assert!(
        at_once.is_some(),
        "connection {} from one address kept",
        MAX_PER_CLIENT + 1
    );
    drop(hoard);
    let slack = Duration::from_secs(5);
    let s = closed_within(&mut silent, HANDSHAKE_TIMEOUT + slack);
    let h = closed_within(half.get_mut(), HEAD_TIMEOUT + slack);
    let i = closed_within(idle.get_mut(), IDLE_TIMEOUT + slack);
    eprintln!(
        "closed: the {}th connection of one client at once ({at_once:?}), a silent TLS client at {:?}, \
         a half-sent head at {:?}, an idle TLS connection at {:?} (since the test start: {:?}); cap {MAX_CONNECTIONS} in total",
        MAX_PER_CLIENT + 1,
        s,
        h,
        i,
        t0.elapsed()
    );
    assert!(s.is_some(), "a never-finished TLS handshake stays open");
    assert!(h.is_some(), "a half-sent head stays open");
    assert!(i.is_some(), "an idle TLS connection stays open");
    assert!(t0.elapsed() < Duration::from_secs(60));
    let t1 = Instant::now();
    while server.open_connections() > 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "{} open",
            server.open_connections()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP connection to `to` from the loopback address `from`.
fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect(&to.into())?;
    Ok(sock.into())
}

/// A burst of 50 slow clients (25 that never start TLS, 25 that send half a request head and
/// stall), each from its own loopback address, then 50 normal clients (each from its own
/// address, retrying when turned away, as the uploader does): the listener never holds more
/// than MAX_CONNECTIONS at once (sampled every 5 ms), closes the slow ones by its timeouts, and
/// answers every normal client.
#[test]
fn the_cli_ingest_listener_holds_its_caps_under_a_burst_of_slow_and_normal_clients() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let server = Arc::new(
        IngestServer::start(
            "127.0.0.1:0".parse().unwrap(),
            IngestIdentity::generate(&["127.0.0.1".into()]).unwrap(),
        )
        .unwrap(),
    );
    let addr = server.local_addr();
    let tls = any_cert_tls();
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (server, peak, stop) = (server.clone(), peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(server.open_connections(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let ip = |net: u8, i: usize| IpAddr::from([127, 0, net, u8::try_from(i + 1).unwrap()]);
    let t0 = Instant::now();
    let mut slow = Vec::new();
    for i in 0..50 {
        let Ok(s) = tcp_from(ip(1, i), addr) else {
            continue;
        };
        if i % 2 == 0 {
            slow.push(s); // never starts TLS
            continue;
        }
        let conn =
            rustls::ClientConnection::new(tls.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut t = rustls::StreamOwned::new(conn, s);
        // Turned away at once when the listener is full: nothing to hold then.
        if t.write_all(b"PUT /ingest/v1/s/0/0 HTTP/1.1\r\nHost: x\r\n")
            .is_ok()
            && t.flush().is_ok()
        {
            slow.push(t.sock);
        }
    }
    let normal: Vec<_> = (0..50)
        .map(|i| {
            let tls = tls.clone();
            let from = ip(2, i);
            std::thread::spawn(move || -> Option<(Duration, u32)> {
                let mut tries = 0;
                while t0.elapsed() < Duration::from_secs(60) {
                    tries += 1;
                    let answer = (|| -> Option<String> {
                        let s = tcp_from(from, addr).ok()?;
                        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
                        let conn = rustls::ClientConnection::new(
                            tls.clone(),
                            "localhost".try_into().unwrap(),
                        )
                        .ok()?;
                        let mut t = rustls::StreamOwned::new(conn, s);
                        t.write_all(
                            b"PUT /ingest/v1/nosuchsession/0/0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 0\r\n\r\n",
                        )
                        .ok()?;
                        t.flush().ok()?;
                        let mut buf = [0u8; 64];
                        let n = t.read(&mut buf).ok()?;
                        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
                    })();
                    if let Some(a) = answer.filter(|a| a.starts_with("HTTP/1.1 ")) {
                        assert!(!a.starts_with("HTTP/1.1 2"), "an unknown session got {a}");
                        return Some((t0.elapsed(), tries));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                None
            })
        })
        .collect();
    let answered: Vec<Option<(Duration, u32)>> =
        normal.into_iter().map(|h| h.join().unwrap()).collect();
    let slowest = answered.iter().flatten().map(|a| a.0).max();
    let tries: u32 = answered.iter().flatten().map(|a| a.1).sum();
    // The slow ones are closed by the listener's timeouts.
    let mut still_open = 0;
    for s in &mut slow {
        if closed_within(
            s,
            HANDSHAKE_TIMEOUT.max(HEAD_TIMEOUT) + Duration::from_secs(5),
        )
        .is_none()
        {
            still_open += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "burst: {} slow connections held, {} of 50 normal clients answered (slowest {slowest:?}, {tries} attempts), \
         peak {peak} open (cap {MAX_CONNECTIONS}), {still_open} slow ones left open; {:?} in all",
        slow.len(),
        answered.iter().flatten().count(),
        t0.elapsed()
    );
    assert!(peak <= MAX_CONNECTIONS, "{peak} connections open at once");
    assert!(
        answered.iter().all(Option::is_some),
        "normal clients not answered: {}",
        answered.iter().filter(|a| a.is_none()).count()
    );
    assert_eq!(still_open, 0, "slow connections left open");
    // Every slot came back.
    let t1 = Instant::now();
    while server.open_connections() > 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "{} open",
            server.open_connections()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP relay to `to` that cuts the first connection that has carried more than `cut_after`
/// bytes towards the server (a reset connection in the middle of a PUT). Returns its address
/// and the number of connections it cut.
fn cutting_relay(
    to: SocketAddr,
    cut_after: u64,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let cuts = Arc::new(AtomicU64::new(0));
    let cut_once = Arc::new(AtomicBool::new(false));
    let c2 = cuts.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let (cuts, cut_once) = (c2.clone(), cut_once.clone());
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut sent = 0u64;
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    sent += n as u64;
                    if sent > cut_after && !cut_once.swap(true, Ordering::SeqCst) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        let _ = c_in.shutdown(std::net::Shutdown::Both);
                        let _ = s_out.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, cuts)
}

#[test]
fn a_connection_reset_in_the_middle_of_a_put_is_retried_with_the_data_read_again() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap();
    drop(free);
    // The host reaches the connector through a relay that cuts the first connection after
    // 1 MiB towards the connector: in the middle of the first 4 MiB PUT.
    let (relay, cuts) = cutting_relay(listen, 1 << 20);
    let out = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .args(["--json", "--ingest-listen", &listen.to_string()])
        .args(["--ingest-url", &format!("https://{relay}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no PUT was cut"
    );
    let (_, cycle) = json_events(&stdout);
    eprintln!("after a reset mid-PUT: {}", cycle["push"]);
    assert_eq!(cycle["push"]["missing_bytes"], 0, "{cycle}");
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&f.web_ref)
    );
    assert!(sim.checkpoints().is_empty());
}
