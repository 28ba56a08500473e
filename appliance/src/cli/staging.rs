//! `godwit staging`: the staging (replication) server on TCP 1500, and store maintenance.
//! `serve` prints `fingerprint: SHA256:<hex>`, `token: <token>` and `listening: ADDR` on
//! stdout when it starts, then serves until killed.

use anyhow::Context;
use godwit_transfer::store::local::LocalDir;
use godwit_transfer::store::{ChunkStore, Store};
use godwit_transfer::wire::server::{ServerOptions, serve};
use godwit_transfer::wire::tls::ServerIdentity;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum StagingCommand {
    /// Serve the staging store on TCP 1500.
    Serve(ServeArgs),
    /// Delete chunks no sync references (does nothing while a sync is in progress).
    Gc(DataArgs),
    /// Re-hash every chunk and check every sync's index; exit 1 if anything is bad.
    Verify(DataArgs),
    /// List the syncs kept in the store.
    List(DataArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:1500")]
    listen: String,
    /// Data directory: certificate, pairing token and the chunk store.
    #[arg(long)]
    data: PathBuf,
    /// Seconds a connection may stay silent between frames.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Seconds for the TLS handshake and the Hello.
    #[arg(long, default_value_t = 15)]
    handshake_timeout: u64,
    /// Seconds to receive a frame once it has started.
    #[arg(long, default_value_t = 60)]
    frame_timeout: u64,
    /// Most connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
}

#[derive(clap::Args)]
pub struct DataArgs {
    /// The staging server's data directory.
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    data: Option<PathBuf>,
    /// A store by URL instead: `file:///DIR` or `s3://BUCKET/PREFIX` (credentials from `AWS_*`).
    #[arg(long)]
    store: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn store_dir(data: &Path) -> PathBuf {
    data.join("store")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(cmd: StagingCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StagingCommand::Serve(a) => serve_cmd(a),
        StagingCommand::Gc(a) => runtime()?.block_on(async {
            let store = open(&a).await?;
            let r = store.gc().await?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if !r.skipped_for_leases.is_empty() {
                println!(
                    "gc skipped: syncs in progress ({})",
                    r.skipped_for_leases.join(", ")
                );
            } else {
                println!(
                    "gc: {} indexes, {} chunks kept, {} deleted ({} bytes)",
                    r.indexes, r.chunks_kept, r.chunks_deleted, r.bytes_deleted
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        StagingCommand::Verify(a) => runtime()?.block_on(async {
            let store = open(&a).await?;
            let r = store.verify().await?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "verify: {} chunks ok, {} bad; {} syncs ok, {} bad",
                    r.chunks_ok,
                    r.chunks_bad.len(),
                    r.indexes_ok,
                    r.indexes_bad.len()
                );
                for b in r.chunks_bad.iter().chain(r.indexes_bad.iter()) {
                    println!("  bad: {b}");
                }
            }
            Ok(if r.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
        StagingCommand::List(a) => runtime()?.block_on(async {
            let store = open(&a).await?;
            let keys = store.all_indexes().await?;
            let mut rows = Vec::new();
            for k in keys {
                let Some(b) = store.backend().get(&k).await? else {
                    continue;
                };
                match godwit_transfer::index::SyncIndex::parse(&b, &k) {
                    Ok(i) => rows.push(serde_json::json!({
                        "vm": i.vm, "disk": i.disk, "sync": i.sync_id.to_string(),
                        "parent": i.parent.map(|p| p.to_string()), "disk_size": i.disk_size,
                        "created_ms": i.created_ms, "raw_sha256": i.raw_sha256.map(hex_of),
                    })),
                    Err(e) => eprintln!("godwit: {e}"),
                }
            }
            if a.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for r in rows {
                    println!(
                        "{}\t{}\t{}\t{}",
                        r["vm"].as_str().unwrap_or(""),
                        r["disk"],
                        r["sync"].as_str().unwrap_or(""),
                        r["disk_size"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn hex_of(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn open(a: &DataArgs) -> anyhow::Result<Store> {
    let data = match (&a.data, &a.store) {
        (_, Some(url)) => return Ok(godwit_transfer::store::open_url(url).await?),
        (Some(d), None) => d,
        (None, None) => anyhow::bail!("give --data DIR or --store URL"),
    };
    let dir = store_dir(data);
    if !dir.exists() {
        anyhow::bail!(
            "{}: no store here (expected {})",
            data.display(),
            dir.display()
        );
    }
    Ok(Store::open(Arc::new(LocalDir::create(&dir)?)).await?)
}

fn serve_cmd(a: ServeArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    let identity = ServerIdentity::load_or_create(&a.data)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let store: Arc<dyn ChunkStore> =
            Arc::new(Store::open(Arc::new(LocalDir::create(&store_dir(&a.data))?)).await?);
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let local = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "fingerprint: {}", identity.fingerprint())?;
            writeln!(out, "token: {}", identity.token)?;
            writeln!(out, "listening: {local}")?;
            out.flush()?;
        }
        let opts = ServerOptions {
            handshake_timeout: Duration::from_secs(a.handshake_timeout),
            idle_timeout: Duration::from_secs(a.idle_timeout),
            frame_timeout: Duration::from_secs(a.frame_timeout),
            max_connections: a.max_connections,
            ..ServerOptions::default()
        };
        serve(listener, store, &identity, opts).await?;
        Ok(ExitCode::SUCCESS)
    })
}
