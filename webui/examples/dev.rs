//! A development server for the web layer alone: the pages and API over plain HTTP on loopback,
//! backed by the web layer's in-memory test double (not the real appliance: that is
//! `godwit serve`). For working on templates and for the browser script without the service.
//!
//! `cargo run -p godwit-webui --features test-backend --example dev -- [ADDR] [SETUP_CODE]`
//! (default 127.0.0.1:8480 and setup code 1234-5678). Set `GODWIT_DEV_CONFIGURED=password` to
//! start with the wizard already done.

use godwit_webui::{WebConfig, router, test_backend::TestBackend};
use std::{net::SocketAddr, sync::Arc};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8480".into());
    let code = args.next().unwrap_or_else(|| "1234-5678".into());
    let backend = match std::env::var("GODWIT_DEV_CONFIGURED") {
        Ok(pw) => TestBackend::configured(&pw),
        Err(_) => TestBackend::new(&code),
    };
    let cfg = WebConfig {
        secure_cookies: false,
        ..WebConfig::default()
    };
    let app = router(Arc::new(backend), cfg);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "dev web UI (test backend) on http://{} — setup code {code}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
