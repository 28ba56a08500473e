//! One error type for the crate. Every variant names the host (and the SOAP method or element)
//! so an operator can act on it; [`Error::kind`] is what callers branch on.

pub type Result<T> = std::result::Result<T, Error>;

/// What kind of failure, for exit codes and retry decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server rejected the user name or password (`InvalidLogin`).
    Auth,
    /// The server's certificate is not pinned, or does not match the pin.
    Trust,
    /// A named object (VM, snapshot) does not exist.
    NotFound,
    /// The server answered with bytes we cannot accept (malformed XML, missing element, too big).
    Protocol,
    /// A SOAP fault other than the above, or a failed task.
    Fault,
    /// Network, HTTP status or local I/O failure.
    Io,
    /// A caller asked for something impossible (also: an ambiguous VM name).
    Usage,
    /// The VM or one of its disks cannot be replicated as it is (not eligible, encrypted, a
    /// missing privilege, a disk whose size disagrees with vCenter). Retrying will not help.
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{host}: {method}: SOAP fault {fault}: {message}")]
    Fault {
        host: String,
        method: String,
        /// The fault's vim type (`InvalidLogin`, `NotAuthenticated`, `ManagedObjectNotFound`, ...).
        fault: String,
        message: String,
    },
    #[error("{host}: malformed reply to {method}: {detail}")]
    Malformed {
        host: String,
        method: String,
        detail: String,
    },
    #[error(
        "{host}: the server's certificate is not trusted yet; its fingerprint is {fingerprint}. \
         If that is the certificate you expect, run again with --source-fingerprint {fingerprint} \
         (or add `{host} {fingerprint}` to the --trust-file)"
    )]
    Unpinned { host: String, fingerprint: String },
    #[error(
        "{host}: the server's certificate {got} does not match the pinned fingerprint {expected}; \
         refusing to connect (if the certificate was replaced on purpose, pin the new one)"
    )]
    PinMismatch {
        host: String,
        expected: String,
        got: String,
    },
    #[error("{host}: {what}: HTTP {status}: {detail}")]
    Http {
        host: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{host}: {what}: {source}")]
    Transport {
        host: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{host}: {what}: reply larger than the {limit}-byte limit")]
    TooLarge {
        host: String,
        what: String,
        limit: u64,
    },
    #[error("{host}: task {task} ({what}) failed: {fault}: {message}")]
    TaskFailed {
        host: String,
        task: String,
        what: String,
        fault: String,
        message: String,
    },
    #[error("{host}: {what} did not finish within {seconds} s")]
    Timeout {
        host: String,
        what: String,
        seconds: u64,
    },
    #[error("{host}: {what} not found")]
    NotFound { host: String, what: String },
    #[error("{path}: {op}: {source}")]
    File {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
    #[error("disk {disk} ({file}): {source}")]
    Sink {
        disk: usize,
        file: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{host}: VM {vm} refused: {}", reasons.join("; "))]
    Refused {
        host: String,
        /// `"name" (vm-57)`.
        vm: String,
        /// Each names the disk (when one is concerned) and why.
        reasons: Vec<String>,
    },
    #[error("{host}: {what} is ambiguous: {}; name one by its MoRef or instance UUID", candidates.join("; "))]
    Ambiguous {
        host: String,
        what: String,
        /// `vm-57 in folder DC0/vm` each.
        candidates: Vec<String>,
    },
    #[error(
        "{host}: the ESXi host's certificate (SHA-256 {fingerprint}, SHA-1 {sha1}) is not trusted: {why}. \
         If it is the host's certificate, pin it (`{host} {fingerprint}` in the --trust-file, or \
         approve it for the source)"
    )]
    HostUntrusted {
        host: String,
        fingerprint: String,
        sha1: String,
        why: String,
    },
    #[error(transparent)]
    Disk(#[from] godwit_disk::Error),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Fault { fault, .. } => match fault.as_str() {
                "InvalidLogin" => ErrorKind::Auth,
                "ManagedObjectNotFound" => ErrorKind::NotFound,
                _ => ErrorKind::Fault,
            },
            Error::Malformed { .. } | Error::TooLarge { .. } => ErrorKind::Protocol,
            Error::Unpinned { .. } | Error::PinMismatch { .. } | Error::HostUntrusted { .. } => {
                ErrorKind::Trust
            }
            Error::Refused { .. } => ErrorKind::Refused,
            Error::Ambiguous { .. } => ErrorKind::Usage,
            Error::Http { .. } | Error::Transport { .. } | Error::File { .. } => ErrorKind::Io,
            Error::TaskFailed { .. } => ErrorKind::Fault,
            Error::Timeout { .. } => ErrorKind::Io,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::BadFile { .. } => ErrorKind::Usage,
            Error::Disk(_) | Error::Sink { .. } => ErrorKind::Io,
            Error::Usage(_) => ErrorKind::Usage,
        }
    }

    /// The vim fault type when this is a SOAP fault.
    pub fn fault_type(&self) -> Option<&str> {
        match self {
            Error::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }

    pub(crate) fn malformed(host: &str, method: &str, detail: impl Into<String>) -> Self {
        Error::Malformed {
            host: host.to_string(),
            method: method.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn refused(host: &str, vm: &str, reasons: Vec<String>) -> Self {
        Error::Refused {
            host: host.to_string(),
            vm: vm.to_string(),
            reasons,
        }
    }

    pub(crate) fn file(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        Error::File {
            path: path.display().to_string(),
            op,
            source,
        }
    }
}
