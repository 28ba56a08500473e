//! The connector's failover (#21): an export through a staging server that is killed mid-way
//! goes on through another server of the same store, byte-equal; and a staging target name
//! resolving to several addresses (an /etc/hosts of its own, in a private mount namespace)
//! whose first address is down — refusing, or silently dropping connections — is reached on
//! the next address.

use godwit_tests::peers::{godwit_bin, need, run, run_ok};
use godwit_tests::staging;
use staging::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn replicate(servers: &[&Server], token: &Path, src: &Path, vm: &str) -> serde_json::Value {
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let fps: Vec<String> = servers.iter().map(|s| s.fingerprint.clone()).collect();
    last_json(&run_ok(
        Command::new(godwit_bin())
            .args(["replicate", "--json", "--raw-sha256", "--vm", vm])
            .args(["--target", &urls.join(","), "--target-fingerprint"])
            .arg(fps.join(","))
            .arg("--token-file")
            .arg(token)
            .arg("--source")
            .arg(format!("file://{}", src.display())),
    ))
}

#[test]
fn an_export_goes_on_through_another_server_when_its_server_dies() {
    need(&["qemu-img", "mkfifo", "cmp"]);
    let work = tempfile::tempdir().unwrap();
    let store = format!("file://{}", work.path().join("store").display());
    let a_dir = work.path().join("a");
    let b_dir = work.path().join("b");
    let mut a = Server::start(&a_dir, "127.0.0.1:0", &["--store", &store]);
    let b = Server::start(&b_dir, "127.0.0.1:0", &["--store", &store]);
    // The token the first server issued is in the store: every server of the store takes it.
    let token = token_file(work.path(), &a.token);
    let src = work.path().join("src.raw");
    make_raw(&src, "64M");
    write_random(&src, 0, 64);
    let rep = replicate(&[&a], &token, &src, "vm1");
    assert_eq!(rep["chunks_new"], 16, "{rep}");

    // The export streams a VMDK into a pipe the test reads: it is blocked mid-way, on the
    // pipe, until the test has killed the server it reads from.
    let fifo = work.path().join("out.vmdk");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut export = Guard(
        Command::new(godwit_bin())
            .args(["export", "--json", "--vm", "vm1", "--format", "vmdk"])
            .args(["--target", &a.url(), "--target", &b.url()])
            .arg("--target-fingerprint")
            .arg(format!("{},{}", a.fingerprint, b.fingerprint))
            .arg("--token-file")
            .arg(&token)
            .arg("--out")
            .arg(&fifo)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut pipe = std::fs::File::open(&fifo).unwrap();
    let mut got = vec![0u8; usize::try_from(12 * MIB).unwrap()];
    pipe.read_exact(&mut got).unwrap();
    a.kill9();
    pipe.read_to_end(&mut got).unwrap();
    let out = export.0.wait_with_output_ref();
    let stderr = String::from_utf8_lossy(&out.1);
    assert!(out.0.success(), "export failed: {stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(
        stderr.contains(&format!("using staging server {}", b.addr)),
        "{stderr}"
    );
    let done = last_json(&String::from_utf8_lossy(&out.2));
    assert_eq!(done["verified"], true, "{done}");
    // What came out of the pipe is the source, byte for byte (qemu-img reads the VMDK).
    let vmdk = work.path().join("got.vmdk");
    std::fs::write(&vmdk, &got).unwrap();
    let raw = work.path().join("got.raw");
    reference_raw(&vmdk, "vmdk", &raw);
    assert!(files_equal(&raw, &src), "exported content differs");
}

/// Wait for the child and collect its status, stderr and stdout (the Guard keeps ownership).
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>);
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>) {
        let mut err = Vec::new();
        let mut out = Vec::new();
        let mut e = self.stderr.take().unwrap();
        let mut o = self.stdout.take().unwrap();
        let t = std::thread::spawn(move || {
            let _ = e.read_to_end(&mut err);
            err
        });
        let _ = o.read_to_end(&mut out);
        let err = t.join().unwrap();
        (self.wait().unwrap(), err, out)
    }
}

/// `godwit replicate` to `staging://NAME:PORT`, with NAME in an /etc/hosts that only this
/// process sees (`unshare -m`, bind mount).
fn replicate_by_name(
    hosts: &Path,
    url: &str,
    srv: &Server,
    token: &Path,
    src: &Path,
    vm: &str,
) -> std::process::Output {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts)
        .arg(godwit_bin())
        .args(["replicate", "--json", "--vm", vm, "--target", url])
        .args(["--target-fingerprint", &srv.fingerprint, "--token-file"])
        .arg(token)
        .arg("--source")
        .arg(format!("file://{}", src.display()))
        .env("GODWIT_CONNECT_ADDRESS_TIMEOUT_SECS", "2");
    run(&mut c)
}

#[test]
fn a_staging_name_with_several_addresses_is_reached_on_the_next_when_the_first_is_down() {
    need(&["qemu-img", "unshare", "mount"]);
    let work = tempfile::tempdir().unwrap();
    let srv = Server::start(&work.path().join("s"), "127.0.0.2:0", &[]);
    let port: u16 = srv.addr.rsplit(':').next().unwrap().parse().unwrap();
    let token = token_file(work.path(), &srv.token);
    let src = work.path().join("src.raw");
    make_raw(&src, "8M");
    write_random(&src, 0, 8);
    let hosts = work.path().join("hosts");
    // Two addresses that getaddrinfo keeps in file order (127.0.0.1 would be sorted first, as
    // the longest prefix match with the source address, RFC 6724 rule 9).
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.3 staging.godwit.test\n127.0.0.2 staging.godwit.test\n",
    )
    .unwrap();
    let url = format!("staging://staging.godwit.test:{port}");

    // 1. Nothing listens on the first address: refused at once, the next one is used.
    let o = replicate_by_name(&hosts, &url, &srv, &token, &src, "by-name");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "connected to 127.0.0.2:{port} (tried first: 127.0.0.3:{port}: Connection refused"
        )),
        "the first address was not tried first: {err}"
    );
    let rep = last_json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(rep["chunks_new"], 2, "{rep}");

    // 2. The first address drops connections silently (a listener whose accept queue is full:
    // the kernel ignores further SYNs, as a host that is down or a dropping firewall would).
    let first: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&first.into()).unwrap();
    sock.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&first, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    let t0 = Instant::now();
    assert!(
        TcpStream::connect_timeout(&first, Duration::from_secs(1)).is_err(),
        "the first address still answers"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "not a silent drop"
    );
    write_random(&src, 0, 1);
    let o = replicate_by_name(&hosts, &url, &srv, &token, &src, "by-name");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "connected to 127.0.0.2:{port} (tried first: 127.0.0.3:{port}: timed out after 2 s)"
        )),
        "{err}"
    );
    let rep = last_json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        rep["chunks_new"], 1,
        "only the changed chunk is sent: {rep}"
    );
    drop(fillers);
}
