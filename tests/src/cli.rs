//! Driving the `godwit` command line as an operator or a script does: its `--json` event
//! lines, and runs on a pseudo-terminal (what a person at a terminal sees).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Every JSON object line of a command's stdout, in order (other lines skipped).
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `progress` events of one operation and its `done` event(s).
pub fn progress_events(stdout: &str) -> (Vec<Value>, Vec<Value>) {
    let all = json_lines(stdout);
    let p = all
        .iter()
        .filter(|v| v["event"] == "progress")
        .cloned()
        .collect();
    let d = all
        .iter()
        .filter(|v| v["event"] == "done")
        .cloned()
        .collect();
    (p, d)
}

/// Checks the stable schema of progress events: every field present, `bytes_done` never
/// decreasing and never above `bytes_total`, one `bytes_total` throughout, the last event at
/// the total. Returns that total.
pub fn check_progress(events: &[Value], op: &str) -> u64 {
    assert!(!events.is_empty(), "no progress events");
    let total = events[0]["bytes_total"].as_u64().expect("bytes_total");
    let mut prev = 0;
    for e in events {
        assert_eq!(e["op"], op, "{e}");
        for k in ["rate_bytes_per_sec", "elapsed_seconds"] {
            assert!(e[k].is_number(), "{k} missing: {e}");
        }
        assert!(
            e["eta_seconds"].is_null() || e["eta_seconds"].is_u64(),
            "{e}"
        );
        let done = e["bytes_done"].as_u64().expect("bytes_done");
        assert_eq!(e["bytes_total"].as_u64(), Some(total), "{e}");
        assert!(done >= prev, "bytes_done went down: {prev} then {e}");
        assert!(done <= total, "{e}");
        prev = done;
    }
    assert_eq!(
        prev, total,
        "the last event is not at the total: {events:?}"
    );
    total
}

/// Bytes of an image that hold data, by `qemu-img map` (the reference).
pub fn qemu_allocated(path: &Path, fmt: &str) -> u64 {
    let out = crate::peers::run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json", "-f", fmt])
            .arg(path),
    );
    let v: Value = serde_json::from_str(&out).expect("qemu-img map json");
    v.as_array()
        .expect("array")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap_or(0))
        .sum()
}

/// Run `cmd` with its stderr (and stdin) on a pseudo-terminal, stdout discarded (python3's
/// `pty`, a real terminal device as far as the program can tell). Returns the exit status and
/// everything written to the terminal.
pub fn run_on_pty(cmd: &Command) -> (Output, String) {
    const HELPER: &str = r#"
import fcntl, os, pty, struct, subprocess, sys, termios
m, s = pty.openpty()
# A terminal of 40 rows and 120 columns, as a terminal emulator would say.
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
p = subprocess.Popen(sys.argv[1:], stdin=s, stdout=subprocess.DEVNULL, stderr=s)
os.close(s)
buf = b""
while True:
    try:
        d = os.read(m, 65536)
    except OSError:
        break
    if not d:
        break
    buf += d
sys.stdout.buffer.write(buf)
sys.exit(p.wait())
"#;
    let mut py = Command::new("python3");
    py.arg("-c").arg(HELPER).arg(cmd.get_program());
    py.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => py.env(k, v),
            None => py.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        py.current_dir(d);
    }
    let out = crate::peers::run(&mut py);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}
