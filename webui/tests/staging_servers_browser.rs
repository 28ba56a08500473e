//! The staging servers page of issue 21 in a real browser: tests/browser/staging_servers.mjs
//! (playwright-core driving Debian's chromium) against this crate's router on loopback over
//! the test double, configured with the wizard's server and a second one that is down.
//! Screenshots of every step go to `<target>/tmp/staging-servers-screenshots/`. Fails (not
//! skips) without node, chromium or playwright-core (`make deps`).

mod common;

use common::browser;

use godwit_webui::{
    backend::{AddStagingServer, Backend},
    test_backend::{TEST_FINGERPRINT, TestBackend},
};
use std::sync::Arc;

const PASSWORD: &str = "browser-staging-servers-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_servers_page_in_chromium() {
    let browser_dir = browser::browser_dir();
    let backend = Arc::new(TestBackend::configured(PASSWORD));
    backend
        .add_staging_server(AddStagingServer {
            address: "down.example:1500".into(),
            approved_fingerprint: TEST_FINGERPRINT.into(),
        })
        .await
        .unwrap();
    let (addr, server) = browser::serve(backend.clone()).await;
    let shots = browser::screenshots("staging-servers-screenshots");
    let out = tokio::process::Command::new("node")
        .arg("staging_servers.mjs")
        .current_dir(&browser_dir)
        .env("GODWIT_URL", format!("http://{addr}"))
        .env("GODWIT_ADMIN_PASSWORD", PASSWORD)
        .env("GODWIT_FINGERPRINT", TEST_FINGERPRINT)
        .env("GODWIT_SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node is missing: run `make deps`");
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "staging_servers.mjs failed; screenshots in {}\nstdout:\n{stdout}\nstderr:\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RESULT {"), "{stdout}");
    // What the page did is what the backend holds.
    let held: Vec<String> = backend
        .staging_servers()
        .await
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(held, ["192.0.2.20:1500", "stage3.example:1500"]);
    for step in [
        "staging-servers-list",
        "staging-servers-probe-refused",
        "staging-servers-approve",
        "staging-servers-added",
        "staging-servers-removed",
    ] {
        assert!(
            std::fs::read_dir(&shots).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(step)),
            "no screenshot of {step}"
        );
    }
}
