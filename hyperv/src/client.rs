//! The WinRS shell lifecycle over a [`Transport`]: Create, Command, Receive (again on
//! OperationTimeout), Signal, Delete. One shell serves many commands.

use crate::clixml;
use crate::error::{Error, Result};
use crate::powershell::{self, PieceToken};
use crate::transport::Transport;
use crate::wsman::{
    Body, CommandId, Reply, ReplyBody, Request, ShellId, StreamName, TimeoutSecs, parse_reply,
};

/// Largest stdout or stderr collected from one command.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;
/// OperationTimeout sent with every request.
pub const OPERATION_TIMEOUT: TimeoutSecs = TimeoutSecs(20);
/// Receives that may time out in a row before the command is abandoned (90 x 20 s = 30 min).
pub const MAX_RECEIVE_TIMEOUTS: u32 = 90;
/// Times a request refused for a quota (MaxShellsPerUser, MaxConcurrentOperationsPerUser) is
/// asked again, waiting [`QUOTA_WAIT`] doubled each time (about 2 minutes in all).
pub const QUOTA_RETRIES: u32 = 7;
pub const QUOTA_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest a shell is used: a command after that goes to a new shell (the old one is
/// deleted), so a cycle of hours never depends on one shell's life (IdleTimeout,
/// MaxShellRunTime, a WinRM service restart). `GODWIT_WINRM_SHELL_MAX_AGE_SECS` overrides it.
pub const SHELL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

fn shell_max_age() -> std::time::Duration {
    std::env::var("GODWIT_WINRM_SHELL_MAX_AGE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(SHELL_MAX_AGE, std::time::Duration::from_secs)
}

/// The fault code [`WinRm::call`] gives a quota fault (waited out, then reported).
const QUOTA_MARK: &str = "w:QuotaLimit";

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i64,
}

/// A WinRM client over one transport.
pub struct WinRm<T: Transport> {
    transport: T,
}

impl<T: Transport> WinRm<T> {
    pub fn new(transport: T) -> Self {
        WinRm { transport }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn host(&self) -> String {
        self.transport.authority()
    }

    /// Send one request; faults become errors (the caller handles OperationTimeout). A quota
    /// fault is waited out and the request sent again (a new MessageID each time).
    fn call(&self, what: &str, req: &Request) -> Result<Reply> {
        let mut wait = QUOTA_WAIT;
        let mut attempt = 0;
        loop {
            match self.call_once(what, req) {
                Err(Error::Fault { ref code, .. })
                    if code == QUOTA_MARK && attempt < QUOTA_RETRIES =>
                {
                    attempt += 1;
                    tracing::warn!(host = %self.host(), what, attempt, "WinRM quota exceeded on the host; waiting {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(30));
                }
                r => return r,
            }
        }
    }

    fn call_once(&self, what: &str, req: &Request) -> Result<Reply> {
        let req = &Request {
            message_id: crate::wsman::MessageId::random(),
            ..req.clone()
        };
        let http = self.transport.post(what, req.encode())?;
        if http.status != 200 && http.status != 500 {
            return Err(Error::Http {
                host: self.host(),
                what: what.to_string(),
                status: http.status,
                detail: http.body.chars().take(300).collect(),
            });
        }
        let reply = parse_reply(&http.body).map_err(|source| Error::Envelope {
            host: self.host(),
            what: what.to_string(),
            source,
        })?;
        if let ReplyBody::Fault(f) = &reply.body {
            if f.is_operation_timeout() {
                return Ok(reply);
            }
            if f.is_access_denied() {
                return Err(Error::AccessDenied {
                    host: self.host(),
                    what: what.to_string(),
                    user: self.transport.user(),
                });
            }
            if f.is_quota() {
                return Err(Error::Fault {
                    host: self.host(),
                    what: what.to_string(),
                    code: QUOTA_MARK.into(),
                    wsman: f
                        .wsman_code
                        .map(|c| format!(" (WSMan {c:#X})"))
                        .unwrap_or_default(),
                    reason: format!(
                        "{} (waited and asked again {QUOTA_RETRIES} times)",
                        if f.message.is_empty() {
                            &f.reason
                        } else {
                            &f.message
                        }
                    ),
                });
            }
            return Err(Error::Fault {
                host: self.host(),
                what: what.to_string(),
                code: if f.subcode.is_empty() {
                    f.code.clone()
                } else {
                    f.subcode.clone()
                },
                wsman: f
                    .wsman_code
                    .map(|c| format!(" (WSMan {c:#X})"))
                    .unwrap_or_default(),
                reason: if f.message.is_empty() {
                    f.reason.clone()
                } else {
                    f.message.clone()
                },
            });
        }
        if http.status != 200 {
            return Err(Error::Http {
                host: self.host(),
                what: what.to_string(),
                status: http.status,
                detail: "HTTP 500 without a SOAP fault".into(),
            });
        }
        if reply
            .relates_to
            .as_ref()
            .is_some_and(|r| *r != req.message_id)
        {
            return Err(Error::Protocol {
                host: self.host(),
                what: what.to_string(),
                detail: format!(
                    "reply relates to {:?}, not to the request {:?}",
                    reply.relates_to, req.message_id
                ),
            });
        }
        Ok(reply)
    }

    fn unexpected(&self, what: &str, body: &ReplyBody) -> Error {
        Error::Protocol {
            host: self.host(),
            what: what.to_string(),
            detail: format!("unexpected reply {body:?}"),
        }
    }

    /// Create a shell (UTF-8 code page).
    pub fn open_shell(&self) -> Result<Shell<'_, T>> {
        let req = Request::new(
            Body::CreateShell { codepage: 65001 },
            None,
            OPERATION_TIMEOUT,
        );
        match self.call("create shell", &req)?.body {
            ReplyBody::ShellCreated { shell_id } if !shell_id.0.is_empty() => Ok(shell_id),
            other => Err(self.unexpected("create shell", &other)),
        }
        .map(|id| Shell {
            client: ClientRef::Borrowed(self),
            id: std::sync::Mutex::new(id),
            opened: std::sync::Mutex::new(std::time::Instant::now()),
            open: true,
        })
    }

    /// Create a shell that owns a reference to the client (for readers kept across calls).
    pub fn open_shared_shell(self: &std::sync::Arc<Self>) -> Result<Shell<'static, T>> {
        let mut borrowed = self.open_shell()?;
        borrowed.open = false;
        Ok(Shell {
            client: ClientRef::Shared(self.clone()),
            id: std::sync::Mutex::new(borrowed.id()),
            opened: std::sync::Mutex::new(std::time::Instant::now()),
            open: true,
        })
    }
}

enum ClientRef<'a, T: Transport> {
    Borrowed(&'a WinRm<T>),
    Shared(std::sync::Arc<WinRm<T>>),
}

impl<T: Transport> std::ops::Deref for ClientRef<'_, T> {
    type Target = WinRm<T>;
    fn deref(&self) -> &WinRm<T> {
        match self {
            ClientRef::Borrowed(c) => c,
            ClientRef::Shared(c) => c,
        }
    }
}

/// An open WinRS shell; deleted on [`Shell::close`] or drop. A shell the host deleted (its
/// IdleTimeout passed: fault 0x8033805B) is opened again when the next command is refused for
/// it, and that command sent once more (it had not started).
pub struct Shell<'a, T: Transport> {
    client: ClientRef<'a, T>,
    id: std::sync::Mutex<ShellId>,
    /// When the shell in use was opened ([`SHELL_MAX_AGE`]).
    opened: std::sync::Mutex<std::time::Instant>,
    open: bool,
}

impl<T: Transport> Shell<'_, T> {
    pub fn id(&self) -> ShellId {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn req(&self, body: Body) -> Request {
        Request::new(body, Some(self.id()), OPERATION_TIMEOUT)
    }

    /// Replace the shell by a new one when it is older than [`SHELL_MAX_AGE`].
    fn renew_if_old(&self) -> Result<()> {
        let c = &*self.client;
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if opened.elapsed() < shell_max_age() {
            return Ok(());
        }
        let mut fresh = c.open_shell()?;
        fresh.open = false;
        let old = std::mem::replace(
            &mut *self.id.lock().unwrap_or_else(|e| e.into_inner()),
            fresh.id(),
        );
        *opened = std::time::Instant::now();
        let req = Request::new(Body::Delete, Some(old.clone()), OPERATION_TIMEOUT);
        if let Err(e) = c.call("delete shell", &req) {
            tracing::info!(host = %c.host(), shell = %old.0, error = %e, "could not delete an old WinRM shell (the host may have already)");
        }
        tracing::debug!(host = %c.host(), old = %old.0, new = %self.id().0, "WinRM shell renewed");
        Ok(())
    }

    /// Run one command line to completion.
    pub fn run(&self, command_line: &str) -> Result<Output> {
        self.renew_if_old()?;
        let c = &*self.client;
        let command = Body::Command {
            command: command_line.to_string(),
            arguments: vec![],
        };
        let started = match c.call("command", &self.req(command.clone())) {
            Err(Error::Fault { wsman, .. })
                if wsman.contains(&format!("{:#X}", crate::wsman::CODE_SHELL_NOT_FOUND)) =>
            {
                // The host deleted the shell (idle too long): a new one, the command again.
                let old = self.id();
                let fresh = c.open_shell()?;
                let mut fresh = fresh;
                fresh.open = false;
                *self.id.lock().unwrap_or_else(|e| e.into_inner()) = fresh.id();
                *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
                tracing::info!(host = %c.host(), old = %old.0, new = %self.id().0, "the host had deleted the WinRM shell (idle timeout); opened another");
                c.call("command", &self.req(command))?
            }
            r => r?,
        };
        let command_id = match started.body {
            ReplyBody::CommandStarted { command_id } if !command_id.0.is_empty() => command_id,
            other => return Err(c.unexpected("command", &other)),
        };
        let result = self.receive_all(&command_id);
        // Always signal terminate, as pywinrm's cleanup_command does.
        let sig = self.req(Body::Signal {
            command_id: command_id.clone(),
        });
        let signalled = c.call("signal", &sig);
        let out = result?;
        signalled?;
        Ok(out)
    }

    fn receive_all(&self, command_id: &CommandId) -> Result<Output> {
        let c = &*self.client;
        let mut out = Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: 0,
        };
        let mut timeouts = 0u32;
        loop {
            let req = self.req(Body::Receive {
                command_id: command_id.clone(),
            });
            match c.call("receive", &req)?.body {
                ReplyBody::Fault(_) => {
                    timeouts += 1;
                    if timeouts > MAX_RECEIVE_TIMEOUTS {
                        return Err(Error::Protocol {
                            host: c.host(),
                            what: "receive".into(),
                            detail: format!(
                                "command still running after {timeouts} operation timeouts"
                            ),
                        });
                    }
                }
                ReplyBody::Output { streams, done, .. } => {
                    timeouts = 0;
                    for s in streams {
                        let buf = match s.name {
                            StreamName::Stdout => &mut out.stdout,
                            StreamName::Stderr => &mut out.stderr,
                        };
                        if buf.len() + s.data.len() > MAX_OUTPUT_BYTES {
                            return Err(Error::Protocol {
                                host: c.host(),
                                what: "receive".into(),
                                detail: format!("command output exceeds {MAX_OUTPUT_BYTES} bytes"),
                            });
                        }
                        buf.extend_from_slice(&s.data);
                    }
                    if let Some(code) = done {
                        out.exit_code = code;
                        return Ok(out);
                    }
                }
                other => return Err(c.unexpected("receive", &other)),
            }
        }
    }

    /// Run a PowerShell script (in pieces when it is too long for one command line).
    pub fn run_ps(&self, script: &str) -> Result<Output> {
        if script.len() > powershell::MAX_SCRIPT_BYTES {
            return Err(Error::Usage(format!(
                "script of {} bytes exceeds {} bytes",
                script.len(),
                powershell::MAX_SCRIPT_BYTES
            )));
        }
        let lines = powershell::delivery(script, &PieceToken::random());
        let (last, pieces) = lines.split_last().unwrap_or_else(|| unreachable!());
        for (i, line) in pieces.iter().enumerate() {
            let o = self.run(line)?;
            if o.exit_code != 0 {
                return Err(Error::Script {
                    host: self.client.host(),
                    script: format!("piece {} of {}", i + 1, lines.len()),
                    exit_code: o.exit_code,
                    message: clixml::decode_stderr(&o.stderr).unwrap_or_else(|e| e.to_string()),
                });
            }
        }
        self.run(last)
    }

    /// Run a script that prints JSON; a non-zero exit becomes an error with readable stderr.
    pub fn run_ps_json(&self, name: &str, script: &str) -> Result<serde_json::Value> {
        let o = self.run_ps(script)?;
        let host = self.client.host();
        if o.exit_code != 0 {
            return Err(Error::Script {
                host,
                script: name.to_string(),
                exit_code: o.exit_code,
                message: clixml::decode_stderr(&o.stderr).unwrap_or_else(|e| e.to_string()),
            });
        }
        let text = String::from_utf8(o.stdout).map_err(|e| Error::BadOutput {
            host: host.clone(),
            script: name.to_string(),
            detail: format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        })?;
        serde_json::from_str(text.trim_start_matches('\u{feff}').trim()).map_err(|e| {
            Error::BadOutput {
                host,
                script: name.to_string(),
                detail: e.to_string(),
            }
        })
    }

    /// Delete the shell.
    pub fn close(mut self) -> Result<()> {
        self.open = false;
        let req = self.req(Body::Delete);
        match self.client.call("delete shell", &req)?.body {
            ReplyBody::Deleted | ReplyBody::Signalled => Ok(()),
            other => Err(self.client.unexpected("delete shell", &other)),
        }
    }
}

impl<T: Transport> Drop for Shell<'_, T> {
    fn drop(&mut self) {
        if self.open {
            let req = self.req(Body::Delete);
            if let Err(e) = self.client.call("delete shell", &req) {
                tracing::warn!(error = %e, "could not delete the WinRM shell");
            }
        }
    }
}
