//! One error type for the crate. Variants carry what and where: the store key or file, the
//! peer address, the byte offset in a frame or an index.

use std::io;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that do not parse: a chunk file, an index, a frame. `what` names the object.
    #[error("{what}: malformed at byte {offset}: {reason}")]
    Malformed {
        what: String,
        offset: u64,
        reason: String,
    },
    /// A chunk whose content does not hash to its name.
    #[error("{what}: integrity check failed: {reason}")]
    Integrity { what: String, reason: String },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: {op}: {source}")]
    Io {
        what: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("S3 {what}: {source}")]
    S3 {
        what: String,
        #[source]
        source: object_store::Error,
    },
    /// The peer broke the protocol or refused us (auth, version, fingerprint).
    #[error("{peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// The connection failed in a way worth retrying (reset, timeout, server restart).
    #[error("{peer}: connection: {reason}")]
    Network { peer: String, reason: String },
    #[error("disk source: {0}")]
    Disk(#[from] godwit_disk::Error),
    #[error("{0}")]
    Usage(String),
    /// A sync cannot be committed because chunks it names are not (or no longer) stored, e.g.
    /// collected after its writer lost its lease. Retryable: the writer checks again what the
    /// store has and sends what is missing.
    #[error("{what}: {reason}")]
    MissingChunks { what: String, reason: String },
    /// The credential is valid but does not allow this (another connector's VM).
    #[error("{what}: {reason}")]
    Forbidden { what: String, reason: String },
    /// The operation was cancelled at the caller's request (what was left behind is cleaned up).
    #[error("{what}: cancelled")]
    Cancelled { what: String },
}

impl Error {
    pub fn malformed(what: impl Into<String>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            offset,
            reason: reason.into(),
        }
    }
    pub fn io(what: impl Into<String>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            op,
            source,
        }
    }
    pub fn integrity(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Integrity {
            what: what.into(),
            reason: reason.into(),
        }
    }
    pub fn protocol(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Protocol {
            peer: peer.into(),
            reason: reason.into(),
        }
    }
    pub fn network(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Network {
            peer: peer.into(),
            reason: reason.into(),
        }
    }
    /// Whether a replication should reconnect and resume after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Network { .. } | Error::MissingChunks { .. })
    }
}
