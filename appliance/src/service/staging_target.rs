//! Where the service's jobs write and its exports read: the configured staging server
//! (pinned TLS + pairing token), or an S3 bucket written directly as a Godwit store with the
//! credentials from the settings.
//!
//! `godwit_transfer`'s own S3 backend takes its credentials from the process environment only
//! (`AWS_*`), which a service holding its settings in a store cannot use (setting the
//! environment at run time is `unsafe` and would be shared by every job), so the bucket is
//! reached here through `object_store` with explicit credentials, behind the same
//! [`Backend`] trait the transfer crate's stores use.

use super::store::StagingRecord;
use bytes::Bytes;
use futures::TryStreamExt;
use godwit_transfer::replicate::{Connect, Direct};
use godwit_transfer::store::{Backend, BoxFut, ChunkStore, Store};
use godwit_transfer::target::Target;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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

    /// An `object_store` client for `bucket`.
    pub fn client(&self, bucket: &str, sha256_checksums: bool) -> Result<AmazonS3, String> {
        // reqwest is built without a crypto provider: use ring, the one provider in the tree.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(false);
        if sha256_checksums {
            b = b.with_checksum_algorithm(Checksum::SHA256);
        }
        if let Some(ep) = &self.endpoint {
            if ep.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            b = b.with_endpoint(ep);
        }
        b.build().map_err(|e| format!("s3://{bucket}: {e}"))
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
    let backend = S3Objects {
        store: access.client(&bucket, false)?,
        bucket,
        prefix,
    };
    let desc = backend.describe();
    let store = Store::open(Arc::new(backend))
        .await
        .map_err(|e| format!("{desc}: {e}"))?;
    Ok(Arc::new(store))
}

/// Objects under `prefix` in one bucket.
struct S3Objects {
    store: AmazonS3,
    bucket: String,
    prefix: String,
}

impl S3Objects {
    fn full(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, key: &str, e: &object_store::Error) -> godwit_transfer::Error {
        godwit_transfer::Error::Usage(format!("s3://{}/{}: {e}", self.bucket, self.full(key)))
    }
}

impl Backend for S3Objects {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.store
                .put(&self.full(key), PutPayload::from_bytes(data))
                .await
                .map_err(|e| self.err(key, &e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Bytes>> {
        Box::pin(async move {
            match self.store.get(&self.full(key)).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(key, &e))?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(key, &e)),
            }
        })
    }

    fn exists_many(&self, keys: Vec<String>) -> BoxFut<'_, Vec<bool>> {
        Box::pin(godwit_transfer::store::exists_concurrently(
            keys,
            move |k| async move {
                match self.store.head(&self.full(&k)).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(self.err(&k, &e)),
                }
            },
        ))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Vec<(String, u64)>> {
        Box::pin(async move {
            // object_store lists whole path segments: list the directory part, filter the rest.
            let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let base = match (self.prefix.is_empty(), dir.is_empty()) {
                (true, _) => dir.to_string(),
                (false, true) => self.prefix.clone(),
                (false, false) => format!("{}/{dir}", self.prefix),
            };
            let base_path = (!base.is_empty()).then(|| ObjPath::from(base));
            let metas: Vec<_> = self
                .store
                .list(base_path.as_ref())
                .try_collect()
                .await
                .map_err(|e| self.err(prefix, &e))?;
            let strip = if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            };
            Ok(metas
                .into_iter()
                .filter_map(|m| {
                    let rel = m.location.to_string().strip_prefix(&strip)?.to_string();
                    let ms = u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0);
                    rel.starts_with(prefix).then_some((rel, ms))
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match self.store.delete(&self.full(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(key, &e)),
            }
        })
    }
}
