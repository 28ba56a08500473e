//! A Hyper-V host as WinRM clients see it, for tests: HTTPS `POST /wsman` with a self-signed
//! certificate, Basic and NTLM (Negotiate) authentication, the WinRS shell protocol (Create, Command, Receive with
//! optional OperationTimeout faults, Signal, Delete), and the PowerShell Godwit sends,
//! recognised by its exact text, answered from an in-memory model ([`model`]); push-ranges.ps1
//! is run in Rust (`push.rs`: the host's HTTPS pushes to the connector's ingest endpoint).
//! Limits are listed in `docs/hyperv.md`. Not part of the appliance (`publish = false`): only
//! the tests and the `godwit-hypervsim` binary use it.

pub mod cmdlets;
#[rustfmt::skip]
pub mod cmdlet_sets;
pub mod binding;
pub mod disks;
pub mod model;
pub mod ntlm_server;
pub mod ntlm_verify;
mod push;
pub mod pwsh;
mod scripts;
pub mod scvmm;
mod wmi;

pub use scripts::SimCheckpoint;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use godwit_hyperv::trust::Fingerprint;
use godwit_hyperv::wsman::{
    self, Body, CommandId, Fault, MessageId, Reply, ReplyBody, ShellId, StreamChunk, StreamName,
};
use model::SimModel;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Largest request body accepted (Windows' MaxEnvelopeSizekb default is 500).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub user: String,
    pub password: String,
    pub model: SimModel,
    /// The data directory the model's disk paths are relative to.
    pub data_dir: PathBuf,
}

/// The outcome of a command still running (push-ranges.ps1), filled in when it ends.
type Pending = Arc<Mutex<Option<scripts::Outcome>>>;

struct Command {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: i64,
    timeouts_left: u32,
    pending: Option<Pending>,
    /// The script's output is ready only then (its WMI jobs and merges take that long).
    ready_at: Option<std::time::Instant>,
}

#[derive(Default)]
struct Shells {
    shells: HashMap<String, HashMap<String, Command>>,
    /// When each shell last had a request (its IdleTimeout runs from there).
    last_used: HashMap<String, std::time::Instant>,
    /// Shells the host deleted after their IdleTimeout.
    idle_deleted: usize,
    /// Commands refused for MaxConcurrentOperationsPerUser.
    quota_refusals: usize,
    /// Shell Creates refused for MaxShellsPerUser.
    shell_quota_refusals: usize,
    /// The next this many Commands are answered with this WSManFault code (a host hiccup a
    /// test injects while a cycle runs).
    fail_next: Option<(usize, u32)>,
    /// When each open shell was created, shells created in all, and the longest a deleted
    /// shell lived.
    created_at: HashMap<String, std::time::Instant>,
    shells_created: usize,
    longest_shell: std::time::Duration,
    host: scripts::HostState,
    /// NTLM handshakes waiting for their AUTHENTICATE, per connection.
    ntlm_pending: HashMap<SocketAddr, crate::ntlm_server::NtlmServer>,
    /// Connections that passed NTLM.
    ntlm_authenticated: std::collections::HashSet<SocketAddr>,
}

struct Sim {
    config: SimConfig,
    state: Mutex<Shells>,
}

/// A running simulator; stops when dropped.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    /// The self-signed certificate, PEM (for clients that take a CA file, like pywinrm).
    pub cert_pem: String,
    handle: axum_server::Handle<SocketAddr>,
    thread: Option<std::thread::JoinHandle<()>>,
    sim: Arc<Sim>,
}

impl RunningSim {
    /// The checkpoints the simulated host holds now.
    pub fn checkpoints(&self) -> Vec<SimCheckpoint> {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.host.checkpoints.clone()
    }

    /// The guest writes `data` at `offset` of drive `idx` (index in the VM's `disks`): into
    /// the differencing child when a checkpoint exists, else into the drive's VHDX; recorded
    /// for Resilient Change Tracking.
    pub fn guest_write(
        &self,
        vm_id: &str,
        idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let mut st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        let (dir, root) = (
            &self.sim.config.data_dir,
            &self.sim.config.model.windows_root,
        );
        let drive = st
            .host
            .drives
            .drive(&self.sim.config.model, vm_id, idx)
            .ok_or_else(|| format!("VM {vm_id} has no drive {idx} with a file"))?;
        disks::guest_write(drive, dir, root, offset, data)
    }

    /// The file (data-dir relative) drive `idx` of the VM runs on now.
    pub fn active_file(&self, vm_id: &str, idx: usize) -> Option<String> {
        let mut st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.host
            .drives
            .drive(&self.sim.config.model, vm_id, idx)
            .map(|d| d.active().to_string())
    }

    /// Shells the simulated host deleted because they were idle longer than the IdleTimeout.
    pub fn idle_deleted_shells(&self) -> usize {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.idle_deleted
    }

    /// Answer the next `n` Commands with WSManFault `code` (a transient host failure in the
    /// middle of a cycle; the shells stay).
    pub fn fail_next_commands(&self, n: usize, code: u32) {
        let mut st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.fail_next = (n > 0).then_some((n, code));
    }

    /// Shells created so far, and the longest any deleted shell lived.
    pub fn shell_lives(&self) -> (usize, std::time::Duration) {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.shells_created, st.longest_shell)
    }

    /// Shell Creates the host refused for MaxShellsPerUser.
    pub fn shell_quota_refusals(&self) -> usize {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.shell_quota_refusals
    }

    /// Commands the host refused for MaxConcurrentOperationsPerUser.
    pub fn operation_quota_refusals(&self) -> usize {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.quota_refusals
    }

    /// The RCT reference points the host holds for a VM (InstanceIDs).
    pub fn reference_points(&self, vm_id: &str) -> Vec<String> {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.host
            .reference_points
            .iter()
            .filter(|(v, _)| v.eq_ignore_ascii_case(vm_id))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// WinRS shells open now (every client should have deleted its shells).
    pub fn open_shells(&self) -> usize {
        let st = self.sim.state.lock().unwrap_or_else(|e| e.into_inner());
        st.shells.len()
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the simulator on `listen` (port 0 picks one) in a background thread.
pub fn start(config: SimConfig, listen: SocketAddr) -> Result<RunningSim, String> {
    let cert = rcgen::generate_simple_self_signed(vec![
        listen.ip().to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ])
    .map_err(|e| format!("certificate: {e}"))?;
    let cert_der = cert.cert.der().to_vec();
    let fingerprint = Fingerprint::of_der(&cert_der);
    let cert_pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(vec![cert_der.into()], key)
    .map_err(|e| format!("TLS: {e}"))?;
    let listener =
        std::net::TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener: {e}"))?;
    let sim = Arc::new(Sim {
        config,
        state: Mutex::new(Shells::default()),
    });
    let app = axum::Router::new()
        .route("/wsman", axum::routing::post(wsman_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(sim.clone());
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let thread = std::thread::Builder::new()
        .name("hypervsim".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "simulator runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match axum_server::from_tcp_rustls(listener, rustls_config) {
                    Ok(server) => {
                        if let Err(e) = server
                            .handle(h2)
                            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                            .await
                        {
                            tracing::error!(error = %e, "simulator server");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "simulator listener"),
                }
            });
        })
        .map_err(|e| format!("thread: {e}"))?;
    Ok(RunningSim {
        addr,
        fingerprint,
        cert_pem,
        handle,
        thread: Some(thread),
        sim,
    })
}

fn soap(status: StatusCode, reply: &Reply) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/soap+xml;charset=UTF-8")],
        reply.encode(),
    )
        .into_response()
}

fn fault_reply(relates_to: Option<MessageId>, code: &str, wsman_code: u32, msg: &str) -> Response {
    let r = Reply {
        message_id: MessageId::random(),
        relates_to,
        body: ReplyBody::Fault(Fault {
            code: "s:Sender".into(),
            subcode: code.into(),
            reason: msg.into(),
            wsman_code: Some(wsman_code),
            message: msg.into(),
        }),
    };
    soap(StatusCode::INTERNAL_SERVER_ERROR, &r)
}

fn accepts(sim: &Sim, scheme: &str) -> bool {
    sim.config.model.auth.iter().any(|a| a == scheme)
}

/// What the authentication headers of a request amount to.
enum Auth {
    Ok,
    /// An NTLM CHALLENGE to send back in a 401 (`scheme`, token).
    Challenge(String, Vec<u8>),
    Refused,
}

/// Basic: the user and password, and only for a local account. Windows accepts Basic for local
/// accounts only; a domain account (`DOMAIN\user`, `user@domain`) must use Negotiate
/// (https://learn.microsoft.com/en-us/windows/win32/winrm/authentication-for-remote-connections).
fn basic_ok(sim: &Sim, b64: &str) -> bool {
    if sim.config.user.contains(['\\', '@']) {
        return false;
    }
    let Ok(raw) = B64.decode(b64.trim()) else {
        return false;
    };
    let want = format!("{}:{}", sim.config.user, sim.config.password);
    raw == want.as_bytes()
}

/// Basic per request; NTLM per connection (the peer address): NEGOTIATE gets a CHALLENGE,
/// a good AUTHENTICATE makes the connection authenticated for the requests that follow.
fn authenticate(sim: &Sim, peer: SocketAddr, headers: &HeaderMap) -> Auth {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(v) = value else {
        return if st.ntlm_authenticated.contains(&peer) {
            Auth::Ok
        } else {
            Auth::Refused
        };
    };
    let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("Basic") {
        return if accepts(sim, "basic") && basic_ok(sim, rest) {
            Auth::Ok
        } else {
            Auth::Refused
        };
    }
    let ntlm_scheme =
        scheme.eq_ignore_ascii_case("Negotiate") || scheme.eq_ignore_ascii_case("NTLM");
    if !ntlm_scheme || !accepts(sim, "ntlm") {
        return Auth::Refused;
    }
    let Ok(token) = B64.decode(rest.trim()) else {
        return Auth::Refused;
    };
    st.ntlm_authenticated.remove(&peer);
    match godwit_hyperv::ntlm::message_type(&token) {
        Some(1) => {
            let server =
                crate::ntlm_server::NtlmServer::new(&sim.config.user, &sim.config.password);
            let Ok(mut server) = server else {
                return Auth::Refused;
            };
            match server.step(&token) {
                Ok(crate::ntlm_server::ServerStep::Challenge(ch)) => {
                    st.ntlm_pending.insert(peer, server);
                    Auth::Challenge(scheme.to_string(), ch)
                }
                _ => Auth::Refused,
            }
        }
        Some(3) => match st.ntlm_pending.remove(&peer).map(|mut s| s.step(&token)) {
            Some(Ok(crate::ntlm_server::ServerStep::Authenticated)) => {
                st.ntlm_authenticated.insert(peer);
                Auth::Ok
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, %peer, "NTLM authentication failed");
                Auth::Refused
            }
            _ => Auth::Refused,
        },
        _ => Auth::Refused,
    }
}

/// The WS-Management OperationTimeout fault a Receive gets while the command has no output
/// yet (clients retry the Receive).
fn operation_timeout(relates_to: Option<MessageId>) -> Response {
    let mut f = Fault::operation_timeout();
    f.code = "s:Receiver".into();
    let r = Reply {
        message_id: MessageId::random(),
        relates_to,
        body: ReplyBody::Fault(f),
    };
    soap(StatusCode::INTERNAL_SERVER_ERROR, &r)
}

fn unauthorized(sim: &Sim, challenge: Option<(String, Vec<u8>)>) -> Response {
    let mut h = HeaderMap::new();
    match challenge {
        Some((scheme, token)) => {
            if let Ok(v) = format!("{scheme} {}", B64.encode(token)).parse() {
                h.append(header::WWW_AUTHENTICATE, v);
            }
        }
        None => {
            if accepts(sim, "ntlm") {
                h.append(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Negotiate"),
                );
            }
            if accepts(sim, "basic") {
                h.append(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"WSMAN\""),
                );
            }
        }
    }
    (StatusCode::UNAUTHORIZED, h, "").into_response()
}

async fn wsman_handler(
    State(sim): State<Arc<Sim>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    match authenticate(&sim, peer, &headers) {
        Auth::Ok => {}
        Auth::Challenge(scheme, token) => return unauthorized(&sim, Some((scheme, token))),
        Auth::Refused => return unauthorized(&sim, None),
    }
    let req = match wsman::parse_request(&body) {
        Ok(r) => r,
        // 0x80338000-range "invalid message" fault, as Windows answers malformed envelopes.
        Err(e) => return fault_reply(None, "w:InvalidMessage", 2_150_858_752, &e.to_string()),
    };
    let relates = Some(req.message_id.clone());
    let reply = |body: ReplyBody| {
        soap(
            StatusCode::OK,
            &Reply {
                message_id: MessageId::random(),
                relates_to: relates.clone(),
                body,
            },
        )
    };
    let shell_key = req
        .shell_id
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    let not_found = || {
        fault_reply(
            relates.clone(),
            "w:InvalidSelectors",
            wsman::CODE_SHELL_NOT_FOUND,
            &format!(
                "The request for the Windows Remote Shell with ShellId {shell_key} failed because the shell was not found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. Provide the correct ShellId or create a new shell and retry the operation."
            ),
        )
    };
    // The host's IdleTimeout: a shell without a request for that long is gone.
    if !shell_key.is_empty() {
        let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let idle = sim.config.model.faults.shell_idle_timeout_ms;
        let expired = match (idle, st.last_used.get(&shell_key)) {
            (Some(ms), Some(t)) => now.duration_since(*t) > std::time::Duration::from_millis(ms),
            _ => false,
        };
        if expired && st.shells.remove(&shell_key).is_some() {
            st.last_used.remove(&shell_key);
            st.idle_deleted += 1;
            tracing::info!(shell = %shell_key, "simulator: shell deleted after its IdleTimeout");
            return not_found();
        }
        if st.shells.contains_key(&shell_key) {
            st.last_used.insert(shell_key.clone(), now);
        }
    }
    match req.body {
        Body::CreateShell { .. } => {
            if !sim.config.model.account_is_admin {
                return fault_reply(
                    relates.clone(),
                    "w:AccessDenied",
                    wsman::CODE_ACCESS_DENIED,
                    "Access is denied.",
                );
            }
            let id = uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase();
            let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
            let max = sim
                .config
                .model
                .faults
                .max_shells_per_user
                .unwrap_or(model::DEFAULT_MAX_SHELLS_PER_USER);
            if st.shells.len() >= max {
                st.shell_quota_refusals += 1;
                return fault_reply(
                    relates.clone(),
                    "w:QuotaLimit",
                    wsman::CODE_QUOTA_MAX_SHELLS,
                    "The Windows Remote Shell cannot process the request. The server is already executing the maximum number of concurrent shells a user can remotely open on the same system. Retry later.",
                );
            }
            st.shells.insert(id.clone(), HashMap::new());
            st.last_used.insert(id.clone(), std::time::Instant::now());
            st.created_at.insert(id.clone(), std::time::Instant::now());
            st.shells_created += 1;
            reply(ReplyBody::ShellCreated {
                shell_id: ShellId(id),
            })
        }
        Body::Command { command, arguments } => {
            let injected = {
                let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
                match st.fail_next {
                    Some((n, code)) => {
                        st.fail_next = (n > 1).then_some((n - 1, code));
                        Some(code)
                    }
                    None => None,
                }
            };
            if let Some(code) = injected.or(sim.config.model.faults.command_fault) {
                return fault_reply(
                    relates.clone(),
                    "w:InternalError",
                    code,
                    "The WS-Management service cannot process the request (injected fault).",
                );
            }
            let delay = sim.config.model.faults.command_delay_ms;
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            let line = if arguments.is_empty() {
                command
            } else {
                format!("{command} {}", arguments.join(" "))
            };
            let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.shells.contains_key(&shell_key) {
                return not_found();
            }
            // MaxConcurrentOperationsPerUser: every command not yet ended and signalled is an
            // operation of the (only) user (MS-WSMV 2.2.4.42 WinrsType; the fault is
            // wsman:QuotaLimit, 3.1.4.5.2.1).
            let max_ops = sim
                .config
                .model
                .faults
                .max_concurrent_operations_per_user
                .unwrap_or(model::DEFAULT_MAX_CONCURRENT_OPERATIONS_PER_USER);
            let running: usize = st.shells.values().map(HashMap::len).sum();
            if running >= max_ops {
                st.quota_refusals += 1;
                return fault_reply(
                    relates.clone(),
                    "w:QuotaLimit",
                    wsman::CODE_QUOTA_MAX_OPERATIONS,
                    "The WS-Management service cannot process the request. This user is allowed a maximum number of concurrent operations, which has been exceeded. Close existing operations for this user, or raise the quota for this user.",
                );
            }
            st.host.delay_ms = 0;
            let (stdout, stderr, exit_code) = scripts::run_command_line(&sim, &mut st.host, &line);
            let delay = std::mem::take(&mut st.host.delay_ms);
            let ready_at = (delay > 0)
                .then(|| std::time::Instant::now() + std::time::Duration::from_millis(delay));
            let pending = st.host.pending_push.take().map(|job| {
                let cell: Pending = Arc::new(Mutex::new(None));
                let c2 = cell.clone();
                tokio::spawn(async move {
                    let out = push::run(job).await;
                    *c2.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                });
                cell
            });
            let id = uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase();
            let cmd = Command {
                stdout,
                stderr,
                exit_code,
                timeouts_left: sim.config.model.faults.receive_timeouts,
                pending,
                ready_at,
            };
            if let Some(shell) = st.shells.get_mut(&shell_key) {
                shell.insert(id.clone(), cmd);
            }
            reply(ReplyBody::CommandStarted {
                command_id: CommandId(id),
            })
        }
        Body::Receive { command_id } => {
            let pending = {
                let st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
                st.shells
                    .get(&shell_key)
                    .and_then(|s| s.get(&command_id.0))
                    .and_then(|c| c.pending.clone())
            };
            if let Some(cell) = pending {
                // A running command: wait up to the OperationTimeout for it to end.
                let wait =
                    std::time::Duration::from_secs(u64::from(req.operation_timeout.0).clamp(1, 60));
                let t0 = std::time::Instant::now();
                let done = loop {
                    if let Some(o) = cell.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        break Some(o);
                    }
                    if t0.elapsed() >= wait {
                        break None;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                };
                let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
                // A Receive that waited is a request in progress, not idleness.
                if st.shells.contains_key(&shell_key) {
                    st.last_used
                        .insert(shell_key.clone(), std::time::Instant::now());
                }
                let Some(cmd) = st
                    .shells
                    .get_mut(&shell_key)
                    .and_then(|s| s.get_mut(&command_id.0))
                else {
                    return not_found();
                };
                match done {
                    Some((stdout, stderr, code)) => {
                        cmd.pending = None;
                        cmd.stdout = stdout;
                        cmd.stderr = stderr;
                        cmd.exit_code = code;
                    }
                    None => {
                        return operation_timeout(relates.clone());
                    }
                }
            }
            // A script whose WMI jobs (or a merge it waits for) still run: wait up to the
            // OperationTimeout for them.
            let ready_at = {
                let st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
                st.shells
                    .get(&shell_key)
                    .and_then(|s| s.get(&command_id.0))
                    .and_then(|c| c.ready_at)
            };
            if let Some(at) = ready_at {
                let wait =
                    std::time::Duration::from_secs(u64::from(req.operation_timeout.0).clamp(1, 60));
                let now = std::time::Instant::now();
                if at > now + wait {
                    tokio::time::sleep(wait).await;
                    let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
                    if st.shells.contains_key(&shell_key) {
                        st.last_used
                            .insert(shell_key.clone(), std::time::Instant::now());
                    }
                    return operation_timeout(relates.clone());
                }
                tokio::time::sleep(at.saturating_duration_since(now)).await;
            }
            let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
            if ready_at.is_some() && st.shells.contains_key(&shell_key) {
                st.last_used
                    .insert(shell_key.clone(), std::time::Instant::now());
            }
            let Some(cmd) = st
                .shells
                .get_mut(&shell_key)
                .and_then(|s| s.get_mut(&command_id.0))
            else {
                return not_found();
            };
            cmd.ready_at = None;
            if cmd.timeouts_left > 0 {
                cmd.timeouts_left -= 1;
                return operation_timeout(relates.clone());
            }
            // Keep each reply within the client's MaxEnvelopeSize: base64 grows by 4/3.
            let budget = usize::try_from(req.max_envelope_size)
                .unwrap_or(usize::MAX)
                .saturating_sub(4096)
                / 4
                * 3;
            let budget = budget.max(512);
            let mut streams = Vec::new();
            let n = cmd.stdout.len().min(budget);
            let out: Vec<u8> = cmd.stdout.drain(..n).collect();
            let m = cmd.stderr.len().min(budget - n);
            let err: Vec<u8> = cmd.stderr.drain(..m).collect();
            let done = cmd.stdout.is_empty() && cmd.stderr.is_empty();
            if !out.is_empty() {
                streams.push(StreamChunk {
                    name: StreamName::Stdout,
                    data: out,
                    end: false,
                });
            }
            if !err.is_empty() {
                streams.push(StreamChunk {
                    name: StreamName::Stderr,
                    data: err,
                    end: false,
                });
            }
            if done {
                streams.push(StreamChunk {
                    name: StreamName::Stdout,
                    data: vec![],
                    end: true,
                });
                streams.push(StreamChunk {
                    name: StreamName::Stderr,
                    data: vec![],
                    end: true,
                });
            }
            let exit = cmd.exit_code;
            reply(ReplyBody::Output {
                command_id,
                streams,
                done: done.then_some(exit),
            })
        }
        Body::Signal { command_id } => {
            let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(shell) = st.shells.get_mut(&shell_key) else {
                return not_found();
            };
            shell.remove(&command_id.0);
            reply(ReplyBody::Signalled)
        }
        Body::Delete => {
            let mut st = sim.state.lock().unwrap_or_else(|e| e.into_inner());
            st.last_used.remove(&shell_key);
            if let Some(t) = st.created_at.remove(&shell_key) {
                st.longest_shell = st.longest_shell.max(t.elapsed());
            }
            if st.shells.remove(&shell_key).is_none() {
                return not_found();
            }
            reply(ReplyBody::Deleted)
        }
    }
}

/// `godwit-hypervsim --listen ADDR --data DIR`; password from `GODWIT_SIM_PASSWORD`.
/// Prints `fingerprint: SHA256:...` and `listening: ADDR`, writes `DIR/sim-cert.pem`.
pub fn main_cli() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut listen = None;
    let mut data = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = it.next().cloned(),
            "--data" => data = it.next().cloned(),
            other => {
                eprintln!(
                    "godwit-hypervsim: unknown argument {other:?}; usage: --listen ADDR --data DIR"
                );
                return 2;
            }
        }
    }
    let (Some(listen), Some(data)) = (listen, data) else {
        eprintln!(
            "godwit-hypervsim: usage: --listen ADDR --data DIR (password in GODWIT_SIM_PASSWORD)"
        );
        return 2;
    };
    let Ok(password) = std::env::var("GODWIT_SIM_PASSWORD") else {
        eprintln!("godwit-hypervsim: set GODWIT_SIM_PASSWORD");
        return 2;
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("godwit-hypervsim: --listen {listen:?} is not ADDR:PORT");
        return 2;
    };
    let dir = PathBuf::from(data);
    let model = match SimModel::load(&dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("godwit-hypervsim: {e}");
            return 1;
        }
    };
    let config = SimConfig {
        user: "Administrator".into(),
        password,
        model,
        data_dir: dir.clone(),
    };
    let sim = match start(config, listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("godwit-hypervsim: {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::write(dir.join("sim-cert.pem"), &sim.cert_pem) {
        eprintln!("godwit-hypervsim: writing sim-cert.pem: {e}");
        return 1;
    }
    println!("fingerprint: {}", sim.fingerprint);
    println!("listening: {}", sim.addr);
    loop {
        std::thread::park();
    }
}
