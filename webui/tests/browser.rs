//! The pages in a real browser: tests/browser/wizard.mjs (playwright-core driving Debian's
//! chromium) walks the wizard, a job to 100 % and an export against this crate's router served
//! on loopback over the web layer's test double backend. The same script runs against the real
//! `godwit serve` with vcsim in tests/tests/webui_wizard.rs. Fails (not skips) without node,
//! chromium or playwright-core (`make deps`).

mod common;

use common::browser;

use godwit_webui::test_backend::TestBackend;
use std::{sync::Arc, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wizard_script_passes_in_chromium_against_the_router() {
    let code = "2468-1357";
    let backend = Arc::new(TestBackend::new(code).with_job_duration(Duration::from_secs(3)));
    let (addr, server) = browser::serve(backend).await;
    let shots = browser::screenshots("webui-browser-screenshots");
    let staging_fingerprint = format!("SHA256:{}", "ab".repeat(32));
    browser::run_script(
        "wizard.mjs",
        addr,
        &shots,
        &[
            ("GODWIT_SETUP_CODE", code),
            ("GODWIT_ADMIN_PASSWORD", "browser-tangerine-orbit"),
            ("GODWIT_STAGING_ADDRESS", "192.0.2.20:1500"),
            ("GODWIT_STAGING_FINGERPRINT", staging_fingerprint.as_str()),
            ("GODWIT_STAGING_TOKEN", "staging-token-secret-1"),
            ("GODWIT_SOURCE_ADDRESS", "vcenter.example"),
            ("GODWIT_SOURCE_USER", "administrator@vsphere.local"),
            ("GODWIT_SOURCE_PASSWORD", "source-password-secret-1"),
            ("GODWIT_VM", "web-01"),
            ("GODWIT_EXPORT_DEST", "/var/lib/godwit/exports/web-01.vmdk"),
            ("GODWIT_JOB_TIMEOUT_S", "60"),
        ],
    )
    .await;
    server.abort();
    browser::assert_screenshots(
        &shots,
        &[
            "password-error",
            "source-certificate",
            "job-progress",
            "job-complete",
            "exports",
        ],
    );
}
