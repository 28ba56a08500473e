//! Where the service's jobs write and its exports read: the configured staging server
//! (pinned TLS + pairing token), or an S3 bucket written directly as a Godwit store with the
//! credentials from the settings.
//!
//! The bucket is reached through the transfer crate's S3 backend with the credentials of the
//! settings, and only those ([`S3Config`]: no instance metadata, no profile lookup).

use super::store::StagingRecord;
use godwit_transfer::replicate::{Connect, Direct};
use godwit_transfer::store::s3::{S3Backend, S3Config};
use godwit_transfer::store::{Backend, ChunkStore, Store};
use godwit_transfer::target::Target;
use object_store::aws::AmazonS3;
use std::sync::Arc;

/// How to reach S3 (the staging bucket's settings, or the service's environment).
#[derive(Clone)]
pub struct S3Access {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Access {
    /// The S3 settings of a staging record, if it is a bucket.
    pub fn of(rec: &StagingRecord) -> Option<(S3Access, String, String)> {
        match rec {
            StagingRecord::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            } => Some((
                S3Access {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.clone(),
                },
                bucket.clone(),
                prefix.clone(),
            )),
            StagingRecord::Server { .. } => None,
        }
    }

    fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
        }
    }

    /// An `object_store` client for `bucket`, with these credentials only.
    pub fn client(&self, bucket: &str, sha256_checksums: bool) -> Result<AmazonS3, String> {
        self.config()
            .client(bucket, sha256_checksums)
            .map_err(|e| e.to_string())
    }
}

/// What a run or an export writes to / reads from. Blocking (call off the runtime).
pub fn connector(
    rec: &StagingRecord,
    handle: &tokio::runtime::Handle,
) -> Result<Box<dyn Connect>, String> {
    match rec {
        StagingRecord::Server {
            address,
            fingerprint,
            token,
        } => Target::parse(
            &format!("staging://{address}"),
            Some(fingerprint),
            Some(token.clone()),
        )
        .map(|t| Box::new(t) as Box<dyn Connect>)
        .map_err(|e| e.to_string()),
        StagingRecord::S3 { .. } => {
            let store = handle.block_on(open_s3_store(rec))?;
            Ok(Box::new(Direct(store)))
        }
    }
}

/// Open the bucket of an S3 staging record as a store.
pub async fn open_s3_store(rec: &StagingRecord) -> Result<Arc<dyn ChunkStore>, String> {
    let Some((access, bucket, prefix)) = S3Access::of(rec) else {
        return Err("not an S3 staging target".into());
    };
    let rest = if prefix.is_empty() {
        bucket
    } else {
        format!("{bucket}/{prefix}")
    };
    let backend = S3Backend::new(&access.config(), &rest).map_err(|e| e.to_string())?;
    let desc = backend.describe();
    let store = Store::open(Arc::new(backend))
        .await
        .map_err(|e| format!("{desc}: {e}"))?;
    Ok(Arc::new(store))
}
