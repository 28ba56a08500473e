//! The Hyper-V simulator answers WinRM clients nobody on the team wrote, besides pywinrm
//! (tests/tests/hyperv_sim.rs): pypsrp's WinRS client (WSMan + WinRS + Process, with its own
//! shell options, CTRL_C signal and receive loop) and the Go client from Debian
//! (golang-github-masterzen-winrm-dev, built by tests/hyperv/gowinrm/build.sh), each over
//! HTTPS with the simulator's certificate as the only CA, with Basic and with NTLM. Each runs
//! PowerShell (stdout, an error record on stderr as CLIXML, an exit code) and a cmd line, and a
//! wrong password is refused as an authentication failure, not as a crash or a hang.

use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PASSWORD: &str = "S3cret-sim";

/// A simulator with no VMs, offering `auth` (`["basic","ntlm"]` by default).
fn sim(dir: &Path, auth: Option<&str>) -> RunningSim {
    let json = match auth {
        // Basic must be configured: Windows' (and the simulator's) default is Negotiate only.
        None => r#"{"auth":["basic","ntlm"],"vms":[]}"#.to_string(),
        Some(a) => format!(r#"{{"auth":["{a}"],"vms":[]}}"#),
    };
    std::fs::write(dir.join("vms.json"), json).unwrap();
    let sim = start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(dir).unwrap(),
            data_dir: dir.to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("ca.pem"), &sim.cert_pem).unwrap();
    sim
}

fn run_client(mut cmd: Command, what: &str) -> Value {
    let out = cmd
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What every client must see from the same four commands.
fn assert_answers(v: &Value, what: &str) {
    assert_eq!(v["hello"]["stdout"], "hello from sim\r\n", "{what}: {v}");
    assert_eq!(v["hello"]["rc"], 0, "{what}: {v}");
    assert_eq!(v["err"]["rc"], 1, "{what}: {v}");
    // Neither client decodes CLIXML (pywinrm's run_ps does): they get the error stream the way
    // powershell.exe writes it over WinRS, as a `#< CLIXML` document.
    assert!(
        v["err"]["stderr"]
            .as_str()
            .is_some_and(|s| s.starts_with("#< CLIXML\r\n")
                && s.contains(r#"<S S="Error">boom_x000D__x000A_"#)),
        "{what}: {v}"
    );
    assert_eq!(v["exit"]["rc"], 3, "{what}: {v}");
    assert_eq!(v["cmd"]["stdout"], "hi\r\n", "{what}: {v}");
    assert_eq!(v["cmd"]["rc"], 0, "{what}: {v}");
}

fn pypsrp(sim: &RunningSim, dir: &Path, auth: &str) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hyperv/pypsrp_check.py"
    ))
    .arg("127.0.0.1")
    .arg(sim.addr.port().to_string())
    .arg(dir.join("ca.pem"))
    .arg(auth);
    run_client(cmd, &format!("pypsrp ({auth})"))
}

fn gowinrm_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
        PathBuf::from,
    );
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hyperv/gowinrm/build.sh"
        ))
        .arg(target.join("gowinrm"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "building the Go WinRM client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn gowinrm(sim: &RunningSim, dir: &Path, auth: &str) -> Value {
    let mut cmd = Command::new(gowinrm_binary());
    cmd.arg("127.0.0.1")
        .arg(sim.addr.port().to_string())
        .arg(dir.join("ca.pem"))
        .arg(auth);
    run_client(cmd, &format!("Go winrm ({auth})"))
}

#[test]
fn pypsrp_winrs_client_with_basic_and_ntlm() {
    let dir = tempfile::tempdir().unwrap();
    let s = sim(dir.path(), None);
    let v = pypsrp(&s, dir.path(), "basic");
    assert_answers(&v, "pypsrp basic");
    assert_eq!(v["badpw"], "AuthenticationError", "{v}");
    assert_eq!(s.open_shells(), 0, "pypsrp's shells were deleted");
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let s = sim(dir.path(), Some("ntlm"));
    let v = pypsrp(&s, dir.path(), "ntlm");
    assert_answers(&v, "pypsrp ntlm");
    assert_eq!(v["badpw"], "AuthenticationError", "{v}");
    assert_eq!(s.open_shells(), 0);
}

#[test]
fn go_winrm_client_with_basic_and_ntlm() {
    let dir = tempfile::tempdir().unwrap();
    let s = sim(dir.path(), None);
    let v = gowinrm(&s, dir.path(), "basic");
    assert_answers(&v, "Go winrm basic");
    assert!(
        v["badpw"].as_str().is_some_and(|e| e.contains("401")),
        "a wrong password is an HTTP 401 to the Go client: {v}"
    );
    assert_eq!(s.open_shells(), 0, "the Go client's shells were deleted");
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let s = sim(dir.path(), Some("ntlm"));
    let v = gowinrm(&s, dir.path(), "ntlm");
    assert_answers(&v, "Go winrm ntlm");
    assert!(
        v["badpw"].as_str().is_some_and(|e| e.contains("401")),
        "{v}"
    );
    assert_eq!(s.open_shells(), 0);
}
