//! `godwit staging`: the staging (replication) server on TCP 1500, its connector tokens, and
//! store maintenance. `serve` prints `fingerprint: SHA256:AB:CD:…`, `token: <token>` (the token
//! in `DATA/token`, if any), `store: URL` and `listening: ADDR` on stdout when it starts, then
//! serves until killed. Any number of servers may serve one store (`--store s3://…`).

use anyhow::Context;
use godwit_transfer::index::utc_stamp;
use godwit_transfer::store::access::LEGACY_CONNECTOR;
use godwit_transfer::store::local::LocalDir;
use godwit_transfer::store::{ChunkStore, Store};
use godwit_transfer::wire::server::{ServerOptions, serve};
use godwit_transfer::wire::tls::{ServerIdentity, read_token_file, write_token_file};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum StagingCommand {
    /// Serve a store on TCP 1500 (several servers may serve one store).
    Serve(ServeArgs),
    /// Collect chunks no sync references (safe while syncs are in progress on any server).
    Gc(DataArgs),
    /// Re-hash every chunk and check every sync's index; exit 1 if anything is bad.
    Verify(DataArgs),
    /// List the syncs kept, and logical against stored bytes per VM and for the store.
    List(DataArgs),
    /// Connector tokens: issue, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// Issue a token for one connector (printed once; the store keeps only its SHA-256).
    Issue {
        #[command(flatten)]
        at: DataArgs,
        /// The connector's name: its VMs are readable and writable with this token only.
        #[arg(long)]
        connector: String,
        /// Also write the token to this new file (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List tokens: id, connector, issued, revoked.
    List(DataArgs),
    /// Revoke a token by id: every staging server of the store refuses it from its next request.
    Revoke {
        #[command(flatten)]
        at: DataArgs,
        /// The token's id (`godwit staging tokens list`).
        id: String,
    },
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:1500")]
    listen: String,
    /// Data directory: certificate and key (and the chunk store, unless --store).
    #[arg(long)]
    data: PathBuf,
    /// The store to serve: `file:///DIR` or `s3://BUCKET/PREFIX` (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint AWS_ENDPOINT_URL). Default DATA/store.
    #[arg(long)]
    store: Option<String>,
    /// Seconds a connection may stay silent between frames.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Seconds from connect to a finished TLS handshake and an accepted Hello (pre-auth).
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds to receive a frame once it has started.
    #[arg(long, default_value_t = 60)]
    frame_timeout: u64,
    /// Most paired (authenticated) connections at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Most connections still in TLS/Hello at once (counted apart, so they cannot crowd out
    /// paired connectors).
    #[arg(long, default_value_t = 64)]
    max_preauth: usize,
}

#[derive(clap::Args)]
pub struct DataArgs {
    /// The staging server's data directory (its store is DATA/store).
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    data: Option<PathBuf>,
    /// A store by URL instead: `file:///DIR` or `s3://BUCKET/PREFIX` (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint AWS_ENDPOINT_URL).
    #[arg(long)]
    store: Option<String>,
    #[arg(long)]
    json: bool,
}

impl StagingCommand {
    /// `staging verify`: whether `--json` was given (its failures are told with a remedy).
    pub fn verify_json(&self) -> Option<bool> {
        match self {
            StagingCommand::Verify(a) => Some(a.json),
            _ => None,
        }
    }
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
        StagingCommand::Gc(a) => runtime()?.block_on(gc(&a)),
        StagingCommand::Verify(a) => runtime()?.block_on(verify(&a)),
        StagingCommand::List(a) => runtime()?.block_on(async {
            let store = open(&a).await?;
            super::staging_list::list(&store, a.json).await
        }),
        StagingCommand::Tokens(t) => runtime()?.block_on(tokens(t)),
    }
}

async fn gc(a: &DataArgs) -> anyhow::Result<ExitCode> {
    let store = open(a).await?;
    let r = store.gc().await?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "gc: {} indexes, {} chunks kept; {} set aside, {} brought back, {} deleted ({} bytes); {} waiting for syncs in progress",
            r.indexes,
            r.chunks_kept,
            r.chunks_fossilized,
            r.chunks_restored,
            r.chunks_deleted,
            r.bytes_deleted,
            r.fossils_waiting
        );
        if !r.leases.is_empty() {
            println!("syncs in progress: {}", r.leases.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(a: &DataArgs) -> anyhow::Result<ExitCode> {
    use super::progress::{Figures, INTERVAL, Mode, Reporter};
    use godwit_disk::progress::{Meter, ProgressFn, Snapshot, watch};
    let store = open(a).await?;
    let reporter = Reporter::new("verify", a.json);
    let meter = Arc::new(Meter::pending());
    let w = (reporter.mode() != Mode::Quiet).then(|| {
        let (r, label) = (reporter.clone(), format!("verify {}", store.describe()));
        let f: ProgressFn =
            Arc::new(move |s: &Snapshot| r.update(&label, &Figures::from(s), false));
        watch(meter.clone(), INTERVAL, f)
    });
    let result = store.verify_with(Some(&meter)).await;
    drop(w);
    let last = reporter.finish();
    let r = result?;
    if a.json {
        println!(
            "{}",
            reporter.done_json(serde_json::to_value(&r)?, last.as_ref())
        );
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
        if r.fossils > 0 {
            println!(
                "  {} chunk(s) set aside by gc, awaiting deletion",
                r.fossils
            );
        }
    }
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn tokens(cmd: TokensCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokensCommand::Issue { at, connector, out } => {
            let store = open(&at).await?;
            let t = store.issue_token(&connector).await?;
            if let Some(p) = &out {
                write_new_private(p, &t.token)?;
            }
            if at.json {
                let mut v = serde_json::to_value(&t.record)?;
                v["token"] = t.token.clone().into();
                println!("{v}");
            } else {
                println!("token: {}", t.token);
                println!("id: {}", t.record.id);
                println!("connector: {}", t.record.connector);
            }
        }
        TokensCommand::List(at) => {
            let store = open(&at).await?;
            let list = store.tokens().await?;
            if at.json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!("ID\tCONNECTOR\tISSUED\tSTATE");
                for t in list {
                    let state = t.revoked_ms.map_or("active".to_string(), |r| {
                        format!("revoked {}", utc_stamp(r))
                    });
                    println!(
                        "{}\t{}\t{}\t{state}",
                        t.id,
                        t.connector,
                        utc_stamp(t.created_ms)
                    );
                }
            }
        }
        TokensCommand::Revoke { at, id } => {
            let store = open(&at).await?;
            let t = store.revoke_token(id.trim()).await?;
            if at.json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                println!("revoked token {} of connector {}", t.id, t.connector);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new file (never an existing one, no symlink followed), mode 0600.
fn write_new_private(p: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("creating {} (it must not exist yet)", p.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", p.display()))
}

async fn open_store(data: &Path, url: Option<&str>) -> anyhow::Result<Store> {
    match url {
        Some(u) => Ok(godwit_transfer::store::open_url(u).await?),
        None => Ok(Store::open(Arc::new(LocalDir::create(&store_dir(data))?)).await?),
    }
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
    open_store(data, None).await
}

/// The token to print at start: `DATA/token` (registered in the store for connector
/// `default` if the store does not know it: a server from before tokens were kept in the
/// store), or on the very first start of an empty store, a new one for `default`.
async fn startup_token(store: &Store, data: &Path) -> anyhow::Result<Option<String>> {
    if let Some(t) = read_token_file(data)? {
        let rec = store
            .import_token(&t, LEGACY_CONNECTOR)
            .await
            .with_context(|| format!("{}/token", data.display()))?;
        if rec.revoked_ms.is_some() {
            eprintln!(
                "godwit: the token in {}/token (id {}) is revoked; issue one with `godwit staging tokens issue`",
                data.display(),
                rec.id
            );
            return Ok(None);
        }
        return Ok(Some(t));
    }
    if store.tokens().await?.is_empty() {
        let t = store.issue_token(LEGACY_CONNECTOR).await?;
        write_token_file(data, &t.token)?;
        return Ok(Some(t.token));
    }
    Ok(None)
}

fn serve_cmd(a: ServeArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    let identity = ServerIdentity::load_or_create(&a.data)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let store = Arc::new(open_store(&a.data, a.store.as_deref()).await?);
        let token = startup_token(&store, &a.data).await?;
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let local = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "fingerprint: {}", identity.fingerprint())?;
            match &token {
                Some(t) => writeln!(out, "token: {t}")?,
                None => writeln!(
                    out,
                    "token: none here (issue one: godwit staging tokens issue --connector NAME)"
                )?,
            }
            writeln!(out, "store: {}", store.describe())?;
            writeln!(out, "listening: {local}")?;
            out.flush()?;
        }
        let opts = ServerOptions {
            handshake_timeout: Duration::from_secs(a.handshake_timeout.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout),
            frame_timeout: Duration::from_secs(a.frame_timeout),
            max_connections: a.max_connections,
            max_preauth: a.max_preauth,
            ..ServerOptions::default()
        };
        serve(listener, store, &identity, opts).await?;
        Ok(ExitCode::SUCCESS)
    })
}
