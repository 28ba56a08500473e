//! Failure cases made in network namespaces the tests create: every packet dropped (the run
//! still ends within its stated bound), a refused port, no route, NXDOMAIN from a DNS server
//! across a veth link, and ICMP as an unprivileged user. Needs root; skips otherwise.

use godwit_tests::netcheck::*;
use godwit_tests::peers::{need, need_root};
use std::process::Command;
use std::time::Duration;

fn need_netns() {
    need_root("the network-namespace tests");
    need(&["ip"]);
}

#[test]
fn all_packets_dropped_times_out_within_the_bound() {
    need_netns();
    need(&["nft"]);
    let ns = Netns::create(1);
    // Drop everything that reaches the namespace (no reject: pure silence).
    ns.exec(&["nft", "add", "table", "inet", "gwdrop"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "gwdrop",
        "in",
        "{ type filter hook input priority 0 ; policy drop ; }",
    ]);
    let peer = ns.ns_ip.clone();
    let timeout_s = 1.0;
    let run = godwit_check(
        &[
            "--timeout",
            "1",
            "--ntp",
            &peer,
            "--dns-server",
            &peer,
            "--resolve",
            "vc1.lab.test",
            "--ping",
            &peer,
            "--tcp",
            &format!("{peer}:443"),
            "--tls",
            &format!("{peer}:1500"),
            "--proxy",
            &format!("http://{peer}:3128/"),
        ],
        None,
    );
    assert_eq!(run.code, 1);
    // Stated bound: TIMEOUT + 1 s for the checks; allow 0.7 s to start and print.
    let bound = Duration::from_secs_f64(timeout_s + 1.0 + 0.7);
    assert!(
        run.elapsed < bound,
        "run took {:?}, bound {bound:?}",
        run.elapsed
    );
    assert!(
        run.results.iter().all(|r| r["status"] == "fail"),
        "every check must fail: {:#?}",
        run.results
    );
    assert_result(
        run.one("ntp", &peer),
        "fail",
        &["UDP port 123", "outbound", "no answer"],
    );
    assert_result(
        run.one("dns-server", &peer),
        "fail",
        &["UDP and TCP port 53", "no answer"],
    );
    assert_result(
        run.one("dns", "vc1.lab.test"),
        "fail",
        &["port 53", "no answer"],
    );
    assert_result(run.one("icmp", &peer), "fail", &["ICMP echo", "no reply"]);
    assert_result(
        run.one("tcp", &format!("{peer}:443")),
        "fail",
        &["TCP connections to port 443", "outbound", "dropping"],
    );
    assert_result(
        run.one("tls", &format!("{peer}:1500")),
        "fail",
        &["port 1500", "dropping"],
    );
    assert_result(
        run.one("proxy", &format!("{peer}:3128")),
        "fail",
        &["port 3128", "proxy"],
    );
}

#[test]
fn refused_port_and_no_route() {
    need_netns();
    let ns = Netns::create(2);
    let peer = ns.ns_ip.clone();
    // Nothing listens on port 9 in the namespace: the kernel answers with a reset.
    let run = godwit_check(&["--tcp", &format!("{peer}:9"), "--ping", &peer], None);
    assert_eq!(run.code, 1);
    let r = run.one("tcp", &format!("{peer}:9"));
    assert_result(
        r,
        "fail",
        &["refused", "nothing listens on port 9", "outbound"],
    );
    assert_result(run.one("icmp", &peer), "pass", &[]);

    // Inside the namespace there is no default route: 192.0.2.1 is unreachable.
    let run = godwit_check(
        &[
            "--timeout",
            "2",
            "--tcp",
            "192.0.2.1:443",
            "--ping",
            "192.0.2.1",
            "--ntp",
            "192.0.2.1",
        ],
        Some(&ns.name),
    );
    assert_eq!(run.code, 1);
    assert_result(
        run.one("tcp", "192.0.2.1:443"),
        "fail",
        &["no route", "gateway"],
    );
    assert_result(run.one("icmp", "192.0.2.1"), "fail", &["no route"]);
    assert_result(
        run.one("ntp", "192.0.2.1"),
        "fail",
        &["no route", "UDP port 123"],
    );
    assert!(
        run.elapsed < Duration::from_secs(2),
        "no-route fails fast: {:?}",
        run.elapsed
    );
}

#[test]
fn nxdomain_from_dnsmasq_across_a_veth() {
    need_netns();
    need(&["dnsmasq"]);
    let ns = Netns::create(3);
    let peer = ns.ns_ip.clone();
    let _dns = start_dnsmasq(&peer, 53, &[("esx1.lab.test", "10.77.3.2")], Some(&ns.name));
    wait_tcp(&format!("{peer}:53"), "dnsmasq in the namespace");
    let run = godwit_check(
        &[
            "--dns-server",
            &peer,
            "--resolve",
            "esx1.lab.test",
            "--resolve",
            "esx9.lab.test",
        ],
        None,
    );
    assert_eq!(run.code, 1);
    assert_result(run.one("dns", "esx1.lab.test"), "pass", &[]);
    assert_result(run.one("reverse-dns", "10.77.3.2"), "pass", &[]);
    let nx = run.one("dns", "esx9.lab.test");
    assert_result(nx, "fail", &["NXDOMAIN", "esx9.lab.test", &peer]);
}

#[test]
fn icmp_as_root_and_as_an_unprivileged_user() {
    need_netns();
    need(&["setpriv"]);
    let run = godwit_check(&["--ping", "127.0.0.1"], None);
    assert_result(run.one("icmp", "127.0.0.1"), "pass", &[]);

    // As nobody, without capabilities: allowed only if ping_group_range covers its group.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let nums: Vec<u64> = range
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let allowed = nums.len() == 2 && nums[0] <= 65534 && 65534 <= nums[1];
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(godwit_tests::peers::godwit_bin())
        .args(["check", "--json", "--ping", "127.0.0.1"])
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let r = &results[0];
    if allowed {
        assert_result(r, "pass", &[]);
    } else {
        assert_result(r, "warn", &["net.ipv4.ping_group_range", "CAP_NET_RAW"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "a warning does not fail the run"
        );
    }
}

#[test]
fn unprivileged_icmp_works_once_ping_group_range_is_set() {
    need_netns();
    need(&["setpriv", "sysctl"]);
    // ping_group_range is per network namespace: widen it in a fresh one only, as the
    // remediation text tells an administrator to do, and ping as nobody without capabilities.
    let ns = Netns::create(4);
    ns.exec(&["sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647"]);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
        ])
        .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(godwit_tests::peers::godwit_bin())
        .args(["check", "--json", "--ping", &ns.ns_ip])
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_result(&results[0], "pass", &[]);
    assert!(
        results[0]["value"]
            .as_str()
            .unwrap()
            .starts_with("echo reply"),
        "{results:#?}"
    );
    assert_eq!(out.status.code(), Some(0));
}
