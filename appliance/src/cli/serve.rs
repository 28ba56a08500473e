//! `godwit serve`: the connector service — the HTTPS web UI and REST API (godwit-webui) over
//! the appliance core (`crate::service`). Prints on stdout when it is listening:
//!
//! ```text
//! url: https://HOST:PORT/
//! fingerprint: SHA256:AB:CD:…        (of its self-signed certificate)
//! certificate expires: YYYY-MM-DD    (a generated one is renewed 30 days before)
//! setup code: XXXX-XXXX-XXXX-XXXX    (only while no admin password is set; one-time)
//! setup: pending                     (or `done`: the setup wizard is finished; printed
//!                                     again as `setup: done` when it gets finished)
//! ```
//!
//! The listener has timeouts and connection caps (`godwit_service::listener`).
//!
//! The same listener takes the Hyper-V hosts' disk pushes (`PUT /ingest/v1/...`, design §3:
//! one inbound HTTPS port), told to the hosts as `--ingest-url` (default: `https://` the
//! listen address, or the host name when that is a wildcard, and the bound port).
//!
//! Stops on SIGINT or SIGTERM; runs interrupted by a stop start again at the next start.

use anyhow::Context;
use godwit_service::engine::EngineOptions;
use godwit_service::tls::Identity;
use godwit_service::{Appliance, ApplianceConfig, listener, logs};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Data directory: the settings and job store, the HTTPS certificate, logs, job state.
    #[arg(long, default_value = "/var/lib/godwit")]
    data: PathBuf,
    /// Address to listen on (HTTPS only).
    #[arg(long, default_value = "0.0.0.0:443")]
    listen: SocketAddr,
    /// Preset the admin password from this file (first line) when none is set yet.
    #[arg(long, env = "GODWIT_ADMIN_PASSWORD_FILE")]
    admin_password_file: Option<PathBuf>,
    /// Transfers run at once (stored as a setting; default 2).
    #[arg(long)]
    max_concurrent_jobs: Option<u32>,
    /// First retry delay in seconds after a failed run (doubles per failure, at most an hour).
    #[arg(long, default_value_t = 60)]
    retry_base_secs: u64,
    /// Limit on bytes sent per second per transfer (e.g. `50M`).
    #[arg(long)]
    bwlimit: Option<String>,
    /// Replication chunk size, a power of two from 4K to 8M.
    #[arg(long, default_value = "4M")]
    chunk_size: String,
    /// Do not use vSphere Changed Block Tracking (every run reads whole disks).
    #[arg(long)]
    no_cbt: bool,
    /// On the appliance only (`godwit system run` passes it): save the wizard's network
    /// settings to this file, read at boot, and apply them to the system at once. Without it
    /// they are only stored.
    #[arg(long, value_name = "FILE")]
    system_network: Option<PathBuf>,
    /// Where Hyper-V hosts push disk data, `https://HOST[:PORT]`: this service's address as
    /// the hosts reach it (through NAT or a DNS name). Default: the listen address, or the
    /// host name when listening on a wildcard address, with the listening port.
    #[arg(long, value_name = "URL")]
    ingest_url: Option<String>,
    /// Where local exports are written; an export's destination is a file name or a path
    /// under it. Default: DATA/exports (`/data/exports` on the appliance).
    #[arg(long, value_name = "DIR")]
    exports_dir: Option<PathBuf>,
    /// The Ed25519 public key (64 hex digits, as /etc/godwit/update.pub) update bundles uploaded to
    /// `POST /api/v1/update` must be signed with. Default on the appliance:
    /// /etc/godwit/update.pub. Without one, uploads are refused. Bundles are installed only
    /// on the appliance (`godwit system run`); elsewhere they are verified and reported.
    #[arg(long, value_name = "FILE")]
    update_key: Option<PathBuf>,
    /// TESTS ONLY: how many seconds an "hour" of a job's schedule lasts (so a periodic job's
    /// next run can be seen in seconds).
    #[arg(long, hide = true, default_value_t = 3600)]
    schedule_hour_secs: u64,
}

/// How often a running service checks whether its generated certificate is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(6 * 3600);

/// Present only in the appliance image.
const APPLIANCE_MARK: &str = "/etc/godwit-version";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "godwit".into())
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    // Applying settings flushes the interface and sets the host name: never on a dev machine.
    anyhow::ensure!(
        a.system_network.is_none() || std::path::Path::new(APPLIANCE_MARK).exists(),
        "--system-network is for the appliance only (there is no {APPLIANCE_MARK} here)"
    );
    let ingest_url = a
        .ingest_url
        .as_deref()
        .map(|u| godwit_hyperv::ingest::check_ingest_url(u, "--ingest-url"))
        .transpose()?;
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    let ring = logs::init(&a.data)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(a, ingest_url, ring))?;
    // Blocking runs still in flight are abandoned; they start again at the next start.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    a: ServeArgs,
    ingest_url: Option<String>,
    ring: logs::LogRing,
) -> anyhow::Result<()> {
    let host = hostname();
    let mut names = vec![
        host.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !a.listen.ip().is_unspecified() {
        names.push(a.listen.ip().to_string());
    }
    names.dedup();
    let tls_dir = a.data.join("tls");
    let identity = Identity::load_or_create(&tls_dir, &names)?;
    let fingerprint = identity.fingerprint();
    let expires = identity.expiry_date();
    let engine = EngineOptions {
        retry_base: Duration::from_secs(a.retry_base_secs.max(1)),
        bandwidth_limit: a
            .bwlimit
            .as_deref()
            .map(super::replicate::parse_size)
            .transpose()?,
        chunk_size: u32::try_from(super::replicate::parse_size(&a.chunk_size)?)
            .context("--chunk-size")?,
        cbt: !a.no_cbt,
        schedule_hour_secs: a.schedule_hour_secs.max(1),
    };
    let url_host = if a.listen.ip().is_unspecified() {
        host.clone()
    } else {
        match a.listen.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    };
    let cfg = ApplianceConfig {
        data: a.data.clone(),
        hostname: host,
        addresses: vec![a.listen.to_string()],
        engine,
        max_concurrent_jobs: a.max_concurrent_jobs,
        system_network: a.system_network.clone(),
        system: Some(Arc::new(crate::system::net::SystemNet)),
        exports_dir: a.exports_dir.clone(),
        // Update bundles (issue 18): installed only by the appliance's own service.
        update_key: a.update_key.clone().or_else(|| {
            let k = std::path::Path::new(crate::system::update::PUBLIC_KEY);
            (std::path::Path::new(APPLIANCE_MARK).exists() && k.exists()).then(|| k.to_path_buf())
        }),
        update: a.system_network.as_ref().map(|_| {
            Arc::new(crate::system::update::Installer)
                as Arc<dyn godwit_service::update_upload::InstallUpdate>
        }),
    };
    let appliance = Appliance::open(cfg, ring, tokio::runtime::Handle::current())?;
    if let Some(f) = &a.admin_password_file {
        appliance.preset_password(f)?;
    }
    let code = appliance.new_setup_code_if_needed()?;

    let counter = appliance.clone();
    let web = godwit_webui::WebConfig {
        session_vault: Some(appliance.session_vault()?),
        ..godwit_webui::WebConfig::default()
    };
    // The hosts' pushes: outside the web layer (no session, no CSRF; a one-time bearer token
    // per push session instead), on the same port.
    let ingest = godwit_service::ingest::ServiceIngest::new();
    appliance.attach_ingest(ingest.clone());
    let router = godwit_webui::router(appliance.clone(), web)
        .merge(godwit_service::ingest::router(ingest.clone()))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.count_request();
                next.run(req)
            },
        ));
    let handle = axum_server::Handle::new();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(identity.server_config()?);
    appliance.attach_https(godwit_service::https_identity::HttpsIdentity::new(
        tls_dir,
        names.clone(),
        identity,
        tls.clone(),
    ));
    let limits = listener::Limits::default();
    let events = godwit_webui::audit::EventLog::new(Duration::from_secs(60));
    events.spawn_flusher();
    let mut server = axum_server::bind(a.listen)
        .acceptor(listener::LimitedTls::new(tls, limits.clone(), events))
        .handle(handle.clone());
    listener::configure_http(server.http_builder(), &limits);
    let serving =
        tokio::spawn(server.serve(router.into_make_service_with_connect_info::<SocketAddr>()));
    let Some(bound) = handle.listening().await else {
        let e = serving.await.context("server task")?;
        return Err(anyhow::anyhow!(
            "cannot listen on {}: {:?}",
            a.listen,
            e.err()
        ));
    };
    ingest.set_port(bound.port());
    match &ingest_url {
        Some(u) => {
            tracing::info!(url = %u, "Hyper-V hosts push disk data to {u}/ingest/v1/ (unless the ingest URL setting says otherwise)")
        }
        None => tracing::info!(
            port = bound.port(),
            "Hyper-V hosts push disk data to this port at the address each host's WinRM connection comes from (unless the ingest URL setting says otherwise)"
        ),
    }
    ingest.set_flag_url(ingest_url);
    let mut out = std::io::stdout().lock();
    writeln!(out, "url: https://{url_host}:{}/", bound.port())?;
    writeln!(out, "fingerprint: {fingerprint}")?;
    writeln!(out, "certificate expires: {expires}")?;
    if let Some(c) = &code {
        writeln!(out, "setup code: {c}")?;
    }
    let mut setup = appliance.setup_done();
    let done = *setup.borrow_and_update();
    writeln!(out, "setup: {}", if done { "done" } else { "pending" })?;
    out.flush()?;
    drop(out);
    if !done {
        // The console banner drops the setup code and the fingerprint once setup is done.
        tokio::spawn(async move {
            while setup.changed().await.is_ok() {
                if *setup.borrow_and_update() {
                    println!("setup: done");
                    break;
                }
            }
        });
    }
    tracing::info!(url = %format!("https://{url_host}:{}/", bound.port()), %fingerprint, "listening");
    if code.is_some() {
        // The code itself goes to the console (stdout) only, never to a log.
        tracing::info!("a one-time setup code was printed on the console");
    }
    tokio::spawn(Arc::clone(&appliance).start());
    // A generated certificate near its end is renewed while the service runs, too.
    let renewing = appliance.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEWAL_CHECK).await;
            renewing.renew_https_if_due();
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
        r = serving => {
            r.context("server task")?.context("HTTPS server")?;
        }
    }
    handle.graceful_shutdown(Some(Duration::from_secs(3)));
    Ok(())
}
