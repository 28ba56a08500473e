//! Login limits, the password policy, sessions, logging and the generated certificate of the
//! real `godwit serve`, from outside:
//! - 100 simultaneous wrong logins (HTTP Basic and JSON) from one address check at most 5
//!   passwords (the rest 429 before any hash), the same from 100 addresses at most 5 more, and
//!   the service's peak memory stays under 256 MiB (each argon2 check takes 19 MiB);
//! - a weak password is refused saying why; changing the password logs other sessions out;
//! - 2,000 refused logins from one address leave a handful of log lines, which sum them up;
//! - the generated HTTPS certificate is valid for two years (not 1975–4096), and one near its
//!   end is renewed at start, saying so on the console.
//!
//! Client addresses other than 127.0.0.1 are loopback addresses the client binds.

use godwit_tests::service;
use serde_json::{Value, json};
use service::{ADMIN_PASSWORD, ADMIN_USER, Service};
use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A client pinned to the service's certificate, sending from `from`.
fn client_from(fp: &str, from: IpAddr) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pin = godwit_vmware::trust::Fingerprint::parse(fp).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(godwit_vmware::trust::PinnedVerifier::new(vec![pin], seen));
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .local_address(from)
        .cookie_store(true)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Peak resident memory of a process, KiB.
fn peak_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `n` simultaneous wrong logins from `from(i)`, half HTTP Basic, half JSON logins with a
/// session and its CSRF token (fetched before the start); returns the statuses (0: the
/// connection was refused, e.g. over the per-client connection cap: nothing was checked).
fn burst(svc: &Service, n: usize, from: impl Fn(usize) -> IpAddr) -> Vec<u16> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let c = client_from(&svc.fingerprint, from(i));
            let url = svc.url.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    start.wait();
                    return c
                        .get(format!("{url}/api/v1/jobs"))
                        .basic_auth(ADMIN_USER, Some("wrong-password-guess"))
                        .send()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                }
                let token = c
                    .get(format!("{url}/api/v1/session"))
                    .send()
                    .and_then(|r| r.bytes())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v["csrf_token"].as_str().map(str::to_string));
                start.wait();
                let Some(token) = token else { return 0 };
                c.post(format!("{url}/api/v1/login"))
                    .header("x-csrf-token", token)
                    .header("content-type", "application/json")
                    .body(json!({"password": "another-wrong-guess"}).to_string())
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_burst_from_one_address_checks_at_most_five_passwords_in_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let pid = svc.child.id();
    let before = peak_kib(pid);
    let one = burst(&svc, 100, |_| IpAddr::from([127, 0, 0, 1]));
    let checked = one.iter().filter(|s| **s == 401).count();
    let limited = one.iter().filter(|s| **s == 429).count();
    let capped = one.iter().filter(|s| **s == 0).count();
    let peak = peak_kib(pid);
    println!(
        "service login burst: one address: {checked} checked, {limited} refused (429), {capped} connections over the per-client cap; peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(checked <= 5, "{checked} passwords checked: {one:?}");
    assert_eq!(checked + limited + capped, 100, "{one:?}");
    assert!(
        limited >= 20,
        "the burst reached the login limiter: {one:?}"
    );
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn a_burst_from_100_addresses_checks_at_most_five_and_the_admin_still_gets_in() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let pid = svc.child.id();
    // The account's back-off holds however many addresses guess at once.
    let many = burst(&svc, 100, |i| {
        IpAddr::from([127, 0, 1, u8::try_from(i + 1).unwrap()])
    });
    let checked_many = many.iter().filter(|s| **s == 401).count();
    let peak = peak_kib(pid);
    println!("service login burst: 100 addresses: {checked_many} checked; peak RSS {peak} KiB");
    assert!(checked_many <= 5, "{checked_many} checked: {many:?}");
    assert!(many.iter().all(|s| *s == 401 || *s == 429), "{many:?}");
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    // The admin, from an address of its own, gets in within the account's back-off.
    let admin = client_from(&svc.fingerprint, IpAddr::from([127, 0, 2, 1]));
    let t0 = Instant::now();
    loop {
        let r = admin
            .get(format!("{}/api/v1/jobs", svc.url))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .send()
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait <= 60, "told to wait {wait} s");
        assert!(t0.elapsed() < Duration::from_secs(130), "locked out");
        std::thread::sleep(Duration::from_secs(wait));
    }
    println!(
        "service login burst: the admin got in after {:?}",
        t0.elapsed()
    );
}

#[test]
fn weak_passwords_are_refused_and_a_change_logs_other_sessions_out() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start(&work.path().join("svc"), &[], true);
    let code = svc.setup_code.clone().unwrap();
    // The first password: the example and a breached favourite are refused, saying why.
    for (weak, why) in [
        ("aaaaaaaaaa", "at least 12"),
        ("aaaaaaaaaaaaaaaa", "too easy to guess"),
        ("Password1234", "common"),
    ] {
        let (s, v) = svc.api_anon(
            "POST",
            "/setup/password",
            Some(json!({"setup_code": code, "new_password": weak, "confirm_password": weak})),
        );
        assert_eq!(s, 422, "{weak}: {v}");
        assert_eq!(v["kind"], "invalid");
        assert_eq!(v["fields"][0]["field"], "new_password", "{v}");
        let m = v["fields"][0]["message"].as_str().unwrap();
        assert!(m.contains(why), "{weak}: {m}");
    }
    let (s, v) = svc.api_anon(
        "POST",
        "/setup/password",
        Some(json!({"setup_code": code, "new_password": ADMIN_PASSWORD,
                    "confirm_password": ADMIN_PASSWORD})),
    );
    assert_eq!(s, 200, "{v}");
    // Two browsers logged in; one changes the password; the other is logged out.
    let a = svc.login_cookie(ADMIN_PASSWORD);
    let b = svc.login_cookie(ADMIN_PASSWORD);
    assert_eq!(svc.status_with_cookie("/api/v1/jobs", &b), 200);
    let (s, v) = svc.api(
        "POST",
        "/setup/password",
        Some(
            json!({"current_password": ADMIN_PASSWORD, "new_password": "tangerine-orbit-cello",
                    "confirm_password": "tangerine-orbit-cello"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(svc.status_with_cookie("/api/v1/jobs", &a), 401);
    assert_eq!(svc.status_with_cookie("/api/v1/jobs", &b), 401);
    // Also after a restart (the stored sessions are gone, not just forgotten in memory).
    let mut svc = svc;
    svc.kill9();
    let again = svc.restart();
    assert_eq!(again.status_with_cookie("/api/v1/jobs", &b), 401);
}

#[test]
fn refused_logins_are_logged_summed_up_not_one_line_each() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let c = client_from(&svc.fingerprint, IpAddr::from([127, 0, 3, 7]));
    let t0 = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..2000 {
        let s = c
            .get(format!("{}/api/v1/jobs", svc.url))
            .basic_auth(ADMIN_USER, Some("not-the-password"))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        *statuses.entry(s).or_insert(0) += 1;
    }
    println!(
        "service login log: 2000 wrong logins in {:?}: {statuses:?}",
        t0.elapsed()
    );
    let lines = |svc: &Service| -> Vec<String> {
        svc.log_text()
            .lines()
            .filter(|l| l.contains("127.0.3.7"))
            .map(str::to_string)
            .collect()
    };
    // The first of each kind is logged at once ...
    let now = lines(&svc);
    assert!(
        now.iter()
            .any(|l| l.contains("failed login from 127.0.3.7")),
        "{now:?}"
    );
    // ... the rest summed up when the minute is over.
    let deadline = Instant::now() + Duration::from_secs(75);
    let summed = loop {
        let l = lines(&svc);
        if l.iter()
            .any(|l| l.contains("refused login attempts") && l.contains("in the last minute"))
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no summary line: {l:?}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(summed.len() <= 4, "{} lines: {summed:#?}", summed.len());
    // Every one of the 2000 is accounted for: a first line counts one, "N more ..." N.
    let counted: u64 = summed
        .iter()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.iter().position(|w| *w == "more") {
                Some(i) if i > 0 => words[i - 1].parse().unwrap_or(0),
                _ => 1,
            }
        })
        .sum();
    assert_eq!(counted, 2000, "{summed:#?}");
    // The dashboard's log page shows them too.
    let (_, v) = svc.api("GET", "/logs?lines=2000", None);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("failed login from 127.0.3.7")),
        "not on the log page"
    );
}

fn days_between(a: &str, b: &str) -> i64 {
    // "YYYY-MM-DD ..." → days since the epoch (civil calendar).
    fn days(s: &str) -> i64 {
        let d: Vec<i64> = s[..10].split('-').map(|x| x.parse().unwrap()).collect();
        let (y, m, d) = (d[0], d[1], d[2]);
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
    days(b) - days(a)
}

#[test]
fn the_generated_certificate_is_valid_two_years_and_renewed_before_it_ends() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let c = svc.ok("GET", "/settings/certificate", None);
    let span = days_between(
        c["not_before"].as_str().unwrap(),
        c["not_after"].as_str().unwrap(),
    );
    assert!((729..=732).contains(&span), "valid for {span} days: {c}");
    let left = c["expires_in_days"].as_i64().unwrap();
    assert!((728..=731).contains(&left), "{c}");
    assert_eq!(c["renewal_due"], false);
    assert!(
        c["renewal"]
            .as_str()
            .unwrap()
            .contains("generated automatically"),
        "{c}"
    );
    drop(svc);

    // A generated certificate 10 days from its end (made here with rcgen, in the service's
    // files): the next start renews it and says so.
    let tls = work.path().join("svc/tls");
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_odt = |secs: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
    p.not_before = to_odt(now - 720 * 86_400);
    p.not_after = to_odt(now + 10 * 86_400);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(tls.join("cert.der"), cert.der()).unwrap();
    std::fs::write(tls.join("key.der"), key.serialize_der()).unwrap();
    let old_fp = {
        use sha2::Digest;
        format!("SHA256:{}", hex::encode(sha2::Sha256::digest(cert.der())))
    };
    let svc = Service::start(
        &work.path().join("svc"),
        &[
            "--admin-password-file",
            work.path().join("admin-password").to_str().unwrap(),
        ],
        false,
    );
    let bare = |f: &str| f.replace(':', "").to_lowercase();
    assert_ne!(
        bare(&svc.fingerprint),
        bare(&old_fp),
        "the old certificate is still served"
    );
    let c = svc.ok("GET", "/settings/certificate", None);
    assert!(c["expires_in_days"].as_i64().unwrap() > 700, "{c}");
    assert!(
        svc.log_text().contains("renewed the HTTPS certificate"),
        "{}",
        svc.log_text()
    );
}
