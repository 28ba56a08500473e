//! Security issue, finding 7: S3 clients take credentials only from what the user configured.
//! The instance-metadata and container-credential endpoints are pointed (through the variables
//! the AWS SDKs and `object_store` honour) at a local listener that records every connection,
//! and a shared-credentials profile holds working keys: without configured keys every S3 use
//! fails with a clear message and nothing is contacted; with them (SeaweedFS), everything works
//! and the listener still sees nothing.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::s3;
use godwit_tests::staging::*;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A TCP listener on 127.0.0.1 that counts connections (and answers 404 so a client does not
/// hang); stopped on drop.
struct Recorder {
    addr: String,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut b = [0u8; 4096];
                        let _ = c.read(&mut b);
                        let _ = c.write_all(
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Recorder {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every ambient credential source pointed at the recorder, and a profile with working keys.
fn ambient<'a>(c: &'a mut Command, rec: &Recorder, home: &std::path::Path) -> &'a mut Command {
    let url = format!("http://{}", rec.addr);
    let token = home.join("container-token");
    std::fs::write(&token, "container-token").unwrap();
    let creds = home.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3::ACCESS_KEY,
            s3::SECRET_KEY
        ),
    )
    .unwrap();
    c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)
        .env("AWS_METADATA_ENDPOINT", &url)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{url}/creds"))
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token)
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_PROFILE", "default")
        .env("HOME", home)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
}

#[test]
fn s3_uses_only_configured_credentials() {
    need(&["qemu-img", "python3"]);
    let sw = s3::Seaweed::start("creds");
    let rec = Recorder::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "8M");
    write_random(&src, 0, 2);
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let target = "s3://creds/store";
    let replicate = |c: &mut Command| {
        c.args([
            "replicate",
            "--json",
            "--raw-sha256",
            "--vm",
            "v",
            "--target",
            target,
            "--source",
        ])
        .arg(format!("file://{}", src.display()));
    };
    // No keys configured: refused, naming what to set; nothing ambient is asked.
    let mut runs: Vec<Command> = Vec::new();
    let mut c = Command::new(godwit_bin());
    replicate(&mut c);
    runs.push(c);
    let mut c = Command::new(godwit_bin());
    c.args(["staging", "list", "--store", target]);
    runs.push(c);
    // An export from a local store to S3.
    let local = format!("file://{}", tmp.path().join("local").display());
    run_ok(
        Command::new(godwit_bin())
            .args(["replicate", "--vm", "v", "--target", &local, "--source"])
            .arg(format!("file://{}", src.display())),
    );
    let mut c = Command::new(godwit_bin());
    c.args([
        "export",
        "--vm",
        "v",
        "--format",
        "raw",
        "--target",
        &local,
        "--out",
        "s3://creds/exports/x.raw",
    ])
    .env("GODWIT_STATE_DIR", tmp.path().join("state0"));
    runs.push(c);
    for mut c in runs {
        c.env("AWS_ENDPOINT_URL", &sw.endpoint);
        let o = run(ambient(&mut c, &rec, &home));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{c:?} succeeded without configured keys"
        );
        assert!(err.contains("no credentials configured"), "{c:?}: {err}");
    }
    assert_eq!(
        rec.hits.load(Ordering::SeqCst),
        0,
        "a credential endpoint was contacted"
    );
    // With keys configured, the same environment otherwise: works, still nothing ambient.
    let mut c = Command::new(godwit_bin());
    replicate(&mut c);
    ambient(&mut c, &rec, &home);
    sw.env(&mut c);
    let rep = last_json(&run_ok(&mut c));
    assert_eq!(rep["chunks_new"], 1, "{rep}");
    let mut c = Command::new(godwit_bin());
    c.args([
        "export",
        "--json",
        "--vm",
        "v",
        "--format",
        "raw",
        "--target",
        target,
        "--out",
        "s3://creds/exports/v.raw",
    ])
    .env("GODWIT_STATE_DIR", tmp.path().join("state"));
    ambient(&mut c, &rec, &home);
    sw.env(&mut c);
    let e = last_json(&run_ok(&mut c));
    assert_eq!(e["verified"], true, "{e}");
    assert_eq!(
        rec.hits.load(Ordering::SeqCst),
        0,
        "a credential endpoint was contacted"
    );
}
