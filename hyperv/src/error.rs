//! Errors of the Hyper-V source. Each names the host (and the element or script) involved.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{host}: the server's certificate is not trusted yet; its fingerprint is {fingerprint}. \
         If that is the certificate you expect, run again with --source-fingerprint {fingerprint}"
    )]
    Unpinned { host: String, fingerprint: String },
    #[error(
        "{host}: the server's certificate {got} does not match the pinned fingerprint {expected}; \
         refusing to connect"
    )]
    PinMismatch {
        host: String,
        expected: String,
        got: String,
    },
    #[error(
        "VM {vm:?} runs on Hyper-V host {host} ({authority}), whose certificate is not pinned; \
         its fingerprint is {fingerprint}. If that is the host's certificate, add the line \
         `{authority} {fingerprint}` to the --trust-file"
    )]
    HostUnpinned {
        vm: String,
        host: String,
        authority: String,
        fingerprint: String,
    },
    #[error(
        "VM {vm:?} runs on Hyper-V host {host} ({authority}), which cannot be reached over WinRM \
         HTTPS: {detail}"
    )]
    HostUnreachable {
        vm: String,
        host: String,
        authority: String,
        detail: String,
    },
    #[error(
        "{host}: WinRM refused the credentials of user {user:?} (HTTP 401): wrong user or password, or Basic authentication is disabled on the host"
    )]
    AuthFailed { host: String, user: String },
    #[error("{host}: {what}: {source}")]
    Transport {
        host: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{host}: {what}: HTTP {status}: {detail}")]
    Http {
        host: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{host}: WinRM refused {what} for user {user:?}: access is denied (WSManFault 5). The \
         account must be a member of the host's local Administrators group; a local account \
         other than the built-in Administrator also needs the registry value \
         HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System\\LocalAccountTokenFilterPolicy = 1 \
         (UAC remote restrictions filter its token otherwise)"
    )]
    AccessDenied {
        host: String,
        what: String,
        user: String,
    },
    #[error("{host}: {what}: WinRM fault {code}{wsman}: {reason}")]
    Fault {
        host: String,
        what: String,
        code: String,
        wsman: String,
        reason: String,
    },
    #[error("{host}: {what}: {source}")]
    Envelope {
        host: String,
        what: String,
        #[source]
        source: crate::wsman::EnvelopeError,
    },
    #[error("{host}: script {script} failed with exit code {exit_code}: {message}")]
    Script {
        host: String,
        script: String,
        exit_code: i64,
        message: String,
    },
    #[error("{host}: script {script} printed output that is not the expected JSON: {detail}")]
    BadOutput {
        host: String,
        script: String,
        detail: String,
    },
    #[error("{host}: {what}: {detail}")]
    Protocol {
        host: String,
        what: String,
        detail: String,
    },
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
    #[error("{path}: cannot {op}: {source}")]
    File {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: {what} not found")]
    NotFound { host: String, what: String },
    #[error("disk {disk} ({file}): {source}")]
    Sink {
        disk: usize,
        file: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the Hyper-V host {host} cannot reach the connector's ingest URL {url}: {detail}. \
         Let the host connect to the connector on TCP port {port} (firewall, proxy, NAT), or set \
         the ingest URL (--ingest-url, or the ingest URL setting of the service) to an address \
         and port that host can reach"
    )]
    IngestUnreachable {
        host: String,
        url: String,
        port: u16,
        detail: String,
    },
    #[error(transparent)]
    NoSpace(#[from] crate::ingest::budget::NoSpace),
    #[error(transparent)]
    Disk(#[from] godwit_disk::Error),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn file(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        Error::File {
            path: path.display().to_string(),
            op,
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether trying again later can succeed without the operator changing anything (a
    /// network or host hiccup, a transfer that failed): a failed cycle keeps its checkpoint for
    /// such a retry. Refusals that need the operator (certificates, credentials, rights, an
    /// unreachable push URL, no space, a missing VM, bad input) are not.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Error::Unpinned { .. }
                | Error::PinMismatch { .. }
                | Error::HostUnpinned { .. }
                | Error::AuthFailed { .. }
                | Error::AccessDenied { .. }
                | Error::NotFound { .. }
                | Error::IngestUnreachable { .. }
                | Error::NoSpace(_)
                | Error::Usage(_)
                | Error::BadFile { .. }
        )
    }
}
