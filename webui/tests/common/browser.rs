//! What the Chromium tests share: the tools they need (failing, not skipping, without them), the
//! router served on loopback over plain HTTP, and a fresh screenshot directory.

use godwit_webui::{WebConfig, router, test_backend::TestBackend};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

/// tests/browser, after checking chromium and playwright-core are installed (`make deps`).
pub fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `make deps`"
    );
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in tests/browser: run `make deps`"
    );
    dir
}

/// Serve the router over `backend` on a loopback port, plain HTTP (so no Secure cookies: the
/// browser would not send them back); abort the task when done.
pub async fn serve(backend: Arc<TestBackend>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = router(
        backend,
        WebConfig {
            secure_cookies: false,
            ..WebConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    (addr, server)
}

/// `<target>/tmp/<name>`, emptied.
pub fn screenshots(name: &str) -> PathBuf {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&shots);
    shots
}

/// Run `tests/browser/<script>` against the web UI at `addr` with `env` (plus GODWIT_URL and
/// GODWIT_SCREENSHOTS); asserts it succeeded and printed its `RESULT {…}` line; returns stdout.
pub async fn run_script(
    script: &str,
    addr: SocketAddr,
    shots: &Path,
    env: &[(&str, &str)],
) -> String {
    let out = tokio::process::Command::new("node")
        .arg(script)
        .current_dir(browser_dir())
        .env("GODWIT_URL", format!("http://{addr}"))
        .env("GODWIT_SCREENSHOTS", shots)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node is missing: run `make deps`");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed; screenshots in {}\nstdout:\n{stdout}\nstderr:\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RESULT {"), "{stdout}");
    stdout
}

/// Every step named has its screenshot in `shots`.
pub fn assert_screenshots(shots: &Path, steps: &[&str]) {
    let names: Vec<String> = std::fs::read_dir(shots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for step in steps {
        assert!(
            names.iter().any(|n| n.contains(step)),
            "no screenshot of {step} in {}",
            shots.display()
        );
    }
}
