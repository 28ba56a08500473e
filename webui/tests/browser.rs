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
    let browser_dir = browser::browser_dir();
    let code = "2468-1357";
    let backend = Arc::new(TestBackend::new(code).with_job_duration(Duration::from_secs(3)));
    let (addr, server) = browser::serve(backend).await;
    let shots = browser::screenshots("webui-browser-screenshots");
    let out = tokio::process::Command::new("node")
        .arg("wizard.mjs")
        .current_dir(&browser_dir)
        .env("GODWIT_URL", format!("http://{addr}"))
        .env("GODWIT_SETUP_CODE", code)
        .env("GODWIT_ADMIN_PASSWORD", "browser-tangerine-orbit")
        .env("GODWIT_STAGING_ADDRESS", "192.0.2.20:1500")
        .env(
            "GODWIT_STAGING_FINGERPRINT",
            format!("SHA256:{}", "ab".repeat(32)),
        )
        .env("GODWIT_STAGING_TOKEN", "staging-token-secret-1")
        .env("GODWIT_SOURCE_ADDRESS", "vcenter.example")
        .env("GODWIT_SOURCE_USER", "administrator@vsphere.local")
        .env("GODWIT_SOURCE_PASSWORD", "source-password-secret-1")
        .env("GODWIT_VM", "web-01")
        .env("GODWIT_EXPORT_DEST", "/var/lib/godwit/exports/web-01.vmdk")
        .env("GODWIT_SCREENSHOTS", &shots)
        .env("GODWIT_JOB_TIMEOUT_S", "60")
        .kill_on_drop(true)
        .output()
        .await
        .expect("node is missing: run `make deps`");
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wizard.mjs failed; screenshots in {}\nstdout:\n{stdout}\nstderr:\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RESULT {"), "{stdout}");
    for step in [
        "password-error",
        "source-certificate",
        "job-progress",
        "job-complete",
        "exports",
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
