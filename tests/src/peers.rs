//! Finding and running the tools the tests compare against, and the binaries they test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The `godwit` binary of this workspace, built if it is missing or stale (see [`cargo_bin`]).
/// `GODWIT_BIN` overrides it (a release or static build) and is used as it is.
pub fn godwit_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GODWIT_BIN") {
        return PathBuf::from(p);
    }
    cargo_bin("godwit-appliance", "godwit", &[])
}

/// The cargo target directory the running test executable was built in.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("<target>/<profile>")
        .to_path_buf()
}

/// `<target>/<profile>/`: where cargo put the running test executable's binaries
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(2)
        .expect("the test executable is under <target>/<profile>/deps")
        .to_path_buf()
}

/// Binaries already built by this process (`cargo test` runs each test binary as one
/// process; nextest runs each test as its own process and is covered by the run stamp).
static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Binary `bin` of workspace package `package` (with `features`), next to the test
/// executables. Built by `cargo build` the first time a test of this run asks for it, under a
/// file lock, so `cargo nextest run -p godwit-tests` (which builds only the test targets) never
/// tests a stale binary and parallel test processes do not build it twice. Later asks in the same
/// run (nextest's `NEXTEST_RUN_ID`, or this process) find a stamp and skip cargo entirely.
pub fn cargo_bin(package: &str, bin: &str, features: &[&str]) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(bin);
    let key = format!("{package}-{bin}-{}", features.join(","));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.contains(&key) {
        return path;
    }
    let stamps = profile_dir.join("godwit-tests-builds");
    std::fs::create_dir_all(&stamps).expect("stamp dir");
    let lock = std::fs::File::create(stamps.join(".lock")).expect("lock file");
    lock.lock().expect("lock");
    let stamp = std::env::var("NEXTEST_RUN_ID")
        .ok()
        .map(|run| stamps.join(format!("{key}.{run}")));
    if !stamp.as_ref().is_some_and(|s| s.exists()) {
        build(&profile_dir, package, bin, features);
        if let Some(s) = &stamp {
            // Stamps of earlier runs are of no use any more.
            for e in std::fs::read_dir(&stamps).into_iter().flatten().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{key}."))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            std::fs::write(s, b"").expect("stamp");
        }
    }
    drop(lock);
    assert!(path.exists(), "{} was not built", path.display());
    built.push(key);
    path
}

fn build(profile_dir: &Path, package: &str, bin: &str, features: &[&str]) {
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--profile", profile])
        .args(["-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // Cargo sets these for the test process (they describe godwit-tests). Build scripts that
    // watch one (ring's watches CARGO_MANIFEST_DIR) would see a change and rebuild half the
    // tree here, and the next `cargo build` from a shell would rebuild it all back.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_BIN_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(&*k);
        }
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command, panicking with its stderr when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a program is on PATH (or, given as a path, exists).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Every tool a test needs must be installed (`make deps`): a missing one fails the test rather
/// than letting it pass without checking anything.
pub fn need(tools: &[&str]) {
    for t in tools {
        assert!(
            have(t),
            "`{t}` is not installed: run `make deps` (tests/deps/install.sh installs it)"
        );
    }
}

/// The test needs root (network or mount namespaces, chronyd): CI and `make test` run as root,
/// and a test that cannot run fails rather than passing unchecked.
pub fn need_root(why: &str) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        root,
        "{why} need root (CI and `make test` run them as root)"
    );
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
