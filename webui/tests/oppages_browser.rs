//! The operator pages of issue 18 in a real browser: tests/browser/oppages.mjs (playwright-core
//! driving Debian's chromium) against this crate's router on loopback over the test double, set
//! up at the wizard's checks step with a staging target whose free-space check fails. Screenshots
//! of every step go to `<target>/tmp/oppages-browser-screenshots/`. Fails (not skips) without
//! node, chromium or playwright-core (`make deps`).

mod common;

use common::browser;

use godwit_webui::{
    backend::{AddSource, Backend, NetworkSettings, Secret, SetStagingTarget, SourceKind},
    test_backend::{FULL_STAGING_PREFIX, TEST_FINGERPRINT, TestBackend},
};
use std::{sync::Arc, time::Duration};

const PASSWORD: &str = "browser-operator-pages-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pages_in_chromium() {
    let backend = Arc::new(
        TestBackend::with_password(PASSWORD, "1357-2468")
            .with_job_duration(Duration::from_secs(1))
            .with_export_duration(Duration::from_secs(12)),
    );
    backend
        .set_network(NetworkSettings {
            hostname: "godwit".into(),
            address: godwit_webui::backend::AddressMode::Dhcp,
            dns_servers: vec![],
            ntp_servers: vec![],
            proxy: None,
        })
        .await
        .unwrap();
    backend
        .set_staging(SetStagingTarget::Server {
            address: format!("{FULL_STAGING_PREFIX}staging.example:1500"),
            fingerprint: TEST_FINGERPRINT.into(),
            token: Secret::new("staging-token-1"),
        })
        .await
        .unwrap();
    backend
        .add_source(AddSource {
            kind: SourceKind::Vsphere,
            address: "vcenter.example".into(),
            username: "administrator@vsphere.local".into(),
            password: Secret::new("source-password-1"),
            approved_fingerprint: TEST_FINGERPRINT.into(),
            host_port: None,
        })
        .await
        .unwrap();
    let (addr, server) = browser::serve(backend).await;
    let shots = browser::screenshots("oppages-browser-screenshots");
    browser::run_script(
        "oppages.mjs",
        addr,
        &shots,
        &[
            ("GODWIT_ADMIN_PASSWORD", PASSWORD),
            ("GODWIT_GOOD_STAGING", "staging.example:1500"),
            ("GODWIT_FINGERPRINT", TEST_FINGERPRINT),
        ],
    )
    .await;
    server.abort();
    browser::assert_screenshots(
        &shots,
        &[
            "checks-failed",
            "finish-confirm",
            "dashboard-banner",
            "inventory-search",
            "inventory-tree",
            "inventory-bulk-created",
            "export-unknown-disk",
            "export-progress",
            "export-cancelled",
            "export-failed",
            "settings-bandwidth",
            "settings-credentials-saved",
            "settings-cbt-off",
            "settings-update-refused",
            "settings-update-verified",
            "dashboard-no-banner",
        ],
    );
}
