//! Certificate pinning: the shared [`godwit_trust`] crate (SHA-256 fingerprints, known-hosts
//! trust files, the pinned rustls verifier), and its errors as this crate's [`Error`].

use crate::error::Error;

pub use godwit_trust::{Fingerprint, PinnedVerifier, TrustStore};

impl From<godwit_trust::Error> for Error {
    fn from(e: godwit_trust::Error) -> Self {
        match e {
            godwit_trust::Error::File { path, source } => Error::File {
                path,
                op: "read",
                source,
            },
            godwit_trust::Error::BadFile { path, detail } => Error::BadFile { path, detail },
            e @ godwit_trust::Error::BadFingerprint { .. } => Error::Usage(e.to_string()),
        }
    }
}
