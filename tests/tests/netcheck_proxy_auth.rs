//! `godwit check` through a real HTTP proxy that wants Basic authentication on CONNECT —
//! Debian's tinyproxy with `BasicAuth` on loopback, reached over IPv4 and IPv6 — and IPv6
//! targets (`[::1]`): with the right password (from GODWIT_PROXY_PASSWORD or
//! --proxy-password-file) the tunnel and the TLS handshake inside it pass; without credentials
//! or with a wrong password the proxy check fails with a remediation that says what to set;
//! the password never appears in the output.

use godwit_tests::netcheck;
use godwit_tests::peers::need;
use netcheck::{CheckRun, ChildGuard, Pki, assert_result, free_port, spawn, wait_tcp};
use std::path::Path;
use std::process::Command;

const USER: &str = "ops";
const PASSWORD: &str = "Pr0xy-s3cret";

fn start_tinyproxy(dir: &Path) -> (ChildGuard, u16) {
    let port = free_port();
    let conf = dir.join("tinyproxy.conf");
    // No Allow lines: every client may connect (loopback only in practice: tests run on a
    // machine whose port is not exposed); BasicAuth makes CONNECT need credentials.
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nTimeout 20\nMaxClients 20\nBasicAuth {USER} {PASSWORD}\nLogLevel Info\n"
        ),
    )
    .unwrap();
    let g = spawn(
        "tinyproxy",
        Command::new("tinyproxy").arg("-d").arg("-c").arg(&conf),
    );
    wait_tcp(&format!("127.0.0.1:{port}"), "tinyproxy");
    (g, port)
}

fn start_tls_server_v6(port: u16, cert: &netcheck::CertFiles) -> ChildGuard {
    let g = spawn(
        "openssl s_server (IPv6)",
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("[::1]:{port}"))
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key),
    );
    wait_tcp(&format!("[::1]:{port}"), "openssl s_server on ::1");
    g
}

/// `godwit check --json` with GODWIT_PROXY_PASSWORD set (or removed) for that run only.
fn check_with(
    env_password: Option<&str>,
    proxy: &str,
    ca: &Path,
    tls: &[String],
    extra: &[&str],
) -> CheckRun {
    let mut cmd = Command::new(godwit_tests::peers::godwit_bin());
    cmd.args(["check", "--json", "--ca-file"])
        .arg(ca)
        .args(["--proxy", proxy]);
    for t in tls {
        cmd.args(["--tls", t]);
    }
    cmd.args(extra);
    match env_password {
        Some(p) => cmd.env("GODWIT_PROXY_PASSWORD", p),
        None => cmd.env_remove("GODWIT_PROXY_PASSWORD"),
    };
    let start = std::time::Instant::now();
    let out = cmd.output().expect("run godwit check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let results = match serde_json::from_str::<serde_json::Value>(&stdout) {
        Ok(serde_json::Value::Array(a)) => a,
        _ => panic!("godwit check printed no JSON array:\nstdout: {stdout}\nstderr: {stderr}"),
    };
    CheckRun {
        code: out.status.code().unwrap_or(-1),
        results,
        elapsed: start.elapsed(),
        stderr,
    }
}

#[test]
fn basic_auth_proxy_over_ipv4_and_ipv6_and_ipv6_targets() {
    need(&["tinyproxy", "openssl"]);
    let dir = tempfile::tempdir().unwrap();
    let pki4 = Pki::create(dir.path(), "127.0.0.1");
    let dir6 = tempfile::tempdir().unwrap();
    let pki6 = Pki::create(dir6.path(), "::1");
    let (p4, p6) = (free_port(), free_port());
    let _s4 = netcheck::start_tls_server(p4, &pki4.valid);
    let _s6 = start_tls_server_v6(p6, &pki6.valid);
    let (_proxy, pport) = start_tinyproxy(dir.path());
    let t4 = format!("127.0.0.1:{p4}");
    let t6 = format!("[::1]:{p6}");

    // Right credentials, proxy reached over IPv4, tunnelling to an IPv4 target.
    let url4 = format!("http://{USER}@127.0.0.1:{pport}/");
    let run = check_with(
        Some(PASSWORD),
        &url4,
        &pki4.ca,
        std::slice::from_ref(&t4),
        &[],
    );
    let r = run.one("proxy", &format!("→ {t4}"));
    assert_result(r, "pass", &[]);
    assert!(
        r["value"].as_str().unwrap().starts_with("CONNECT 200"),
        "{r:#}"
    );
    assert_eq!(run.code, 0, "{:#?}", run.results);
    assert!(!run.stderr.contains(PASSWORD));
    assert!(
        !serde_json::to_string(&run.results)
            .unwrap()
            .contains(PASSWORD)
    );

    // Proxy reached over IPv6 ([::1]) tunnelling to an IPv6 target; the password from a file.
    let pwfile = dir.path().join("proxy-password");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let url6 = format!("http://{USER}@[::1]:{pport}/");
    let run = check_with(
        None,
        &url6,
        &pki6.ca,
        std::slice::from_ref(&t6),
        &[
            "--proxy-password-file",
            pwfile.to_str().unwrap(),
            "--tcp",
            &t6,
        ],
    );
    let r = run.one("proxy", &format!("→ {t6}"));
    assert_result(r, "pass", &[]);
    assert_eq!(r["target"], format!("http://{USER}@[::1]:{pport}/ → {t6}"));
    // The IPv6 target directly: TCP and TLS (certificate for ::1 from the lab CA).
    assert_result(run.one("tcp", &t6), "pass", &[]);
    let tls = run.one("tls", &t6);
    assert_result(tls, "pass", &[]);

    // No credentials: the proxy answers 407 and the remediation says what to set.
    let bare = format!("http://127.0.0.1:{pport}/");
    let run = check_with(None, &bare, &pki4.ca, std::slice::from_ref(&t4), &[]);
    assert_result(
        run.one("proxy", &format!("→ {t4}")),
        "fail",
        &[
            "requires authentication",
            "GODWIT_PROXY_PASSWORD",
            "http://USER@",
        ],
    );
    assert_eq!(run.code, 1);

    // Wrong password: rejected, named as a credentials problem; never printed.
    let run = check_with(
        Some("not-the-password"),
        &url4,
        &pki4.ca,
        std::slice::from_ref(&t4),
        &[],
    );
    let r = run.one("proxy", &format!("→ {t4}"));
    assert_result(r, "fail", &["rejected the credentials", "\"ops\""]);
    assert!(
        !serde_json::to_string(&run.results)
            .unwrap()
            .contains("not-the-password")
    );
    assert_eq!(run.code, 1);

    // A user in the URL but no password anywhere: a usage error (exit 2), not a silent try.
    let out = Command::new(godwit_tests::peers::godwit_bin())
        .env_remove("GODWIT_PROXY_PASSWORD")
        .args(["check", "--json", "--proxy", &url4, "--tls", &t4])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GODWIT_PROXY_PASSWORD"));
    // A password in the URL is refused, and not echoed.
    let out = Command::new(godwit_tests::peers::godwit_bin())
        .args([
            "check",
            "--proxy",
            &format!("http://{USER}:{PASSWORD}@127.0.0.1:{pport}/"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
}
