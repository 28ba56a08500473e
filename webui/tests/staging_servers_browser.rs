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
    browser::run_script(
        "staging_servers.mjs",
        addr,
        &shots,
        &[
            ("GODWIT_ADMIN_PASSWORD", PASSWORD),
            ("GODWIT_FINGERPRINT", TEST_FINGERPRINT),
        ],
    )
    .await;
    server.abort();
    // What the page did is what the backend holds.
    let held: Vec<String> = backend
        .staging_servers()
        .await
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(held, ["192.0.2.20:1500", "stage3.example:1500"]);
    browser::assert_screenshots(
        &shots,
        &[
            "staging-servers-list",
            "staging-servers-probe-refused",
            "staging-servers-approve",
            "staging-servers-added",
            "staging-servers-removed",
        ],
    );
}
