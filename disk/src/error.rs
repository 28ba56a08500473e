//! One error type for the crate. Every variant that comes from bad bytes names the file and the
//! byte offset where the problem is, so an operator can act on it.

use crate::units::ByteOffset;
use std::io;

pub type Result<T> = std::result::Result<T, Error>;

/// What kind of failure: callers branch on this, not on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The bytes are not a valid image of the format (bad magic, checksum, pointer out of range).
    Corrupt,
    /// A valid image using a feature Godwit does not read (named in the message).
    Unsupported,
    /// A chain problem: missing parent, CID / GUID mismatch, loop.
    Chain,
    /// Operating-system I/O error.
    Io,
    /// A caller asked for something impossible (read past the end, bad option).
    Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: corrupt {format} at byte {offset}: {reason}")]
    Corrupt {
        file: String,
        format: &'static str,
        offset: ByteOffset,
        reason: String,
    },
    #[error("{file}: unsupported {format}: {reason}")]
    Unsupported {
        file: String,
        format: &'static str,
        reason: String,
    },
    #[error("{file}: disk chain: {reason}")]
    Chain { file: String, reason: String },
    /// The message carries the OS error, so it is not also reported as the error's `source()`:
    /// printed with its chain (`{:#}` in anyhow, or wrapped `transparent`ly by another crate's
    /// error) it appears once.
    #[error("{file}: {op}: {os}")]
    Io {
        file: String,
        op: &'static str,
        os: io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Chain { .. } => ErrorKind::Chain,
            Error::Io { .. } => ErrorKind::Io,
            Error::Usage(_) => ErrorKind::Usage,
        }
    }

    pub fn corrupt(
        file: impl Into<String>,
        format: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            file: file.into(),
            format,
            offset: ByteOffset(offset),
            reason: reason.into(),
        }
    }

    pub fn unsupported(
        file: impl Into<String>,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            file: file.into(),
            format,
            reason: reason.into(),
        }
    }

    pub fn chain(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Chain {
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub fn io(file: impl Into<String>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            file: file.into(),
            op,
            os: source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `{:#}` in anyhow prints: the message, then each source's.
    fn with_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn io_error_prints_the_os_error_once() {
        let os = io::Error::from_raw_os_error(2);
        let text = os.to_string();
        let e = Error::io("/x/disk.vmdk", "open", os);
        let shown = with_chain(&e);
        assert_eq!(shown.matches(&text).count(), 1, "{shown}");
        assert!(shown.starts_with("/x/disk.vmdk: open: "), "{shown}");
        assert_eq!(e.kind(), ErrorKind::Io);
    }
}
