//! A store in an S3-compatible bucket through `object_store`. Endpoint and credentials come from
//! the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`); a plain-http endpoint (a local test server) is allowed when the URL says
//! so. Single-object PUTs are atomic in S3, which is all the store format needs.

use super::{Backend, BoxFut};
use crate::error::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

pub struct S3Backend {
    pub(crate) store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

/// An `object_store` S3 client for `bucket` from the environment.
pub fn s3_from_env(bucket: &str, sha256_checksums: bool) -> Result<AmazonS3> {
    // reqwest is built without a crypto provider: use ring, the one provider in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false);
    if sha256_checksums {
        b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
        if ep.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(ep);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    b.build().map_err(|e| Error::S3 {
        what: format!("s3://{bucket}"),
        source: e,
    })
}

impl S3Backend {
    /// `rest` is `BUCKET/PREFIX` (the prefix may be empty).
    pub fn from_env(rest: &str) -> Result<S3Backend> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("s3://{rest}: no bucket name")));
        }
        let prefix = prefix.trim_matches('/').to_string();
        Ok(S3Backend {
            store: Arc::new(s3_from_env(bucket, false)?),
            bucket: bucket.to_string(),
            prefix,
        })
    }

    fn full(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> Error {
        Error::S3 {
            what: format!("s3://{}/{}", self.bucket, self.full(key)),
            source: e,
        }
    }
}

impl Backend for S3Backend {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.store
                .put(&self.full(key), PutPayload::from_bytes(data))
                .await
                .map_err(|e| self.err(key, e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Bytes>> {
        Box::pin(async move {
            match self.store.get(&self.full(key)).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(key, e))?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(key, e)),
            }
        })
    }

    fn exists_many(&self, keys: Vec<String>) -> BoxFut<'_, Vec<bool>> {
        Box::pin(super::exists_concurrently(keys, move |k| async move {
            match self.store.head(&self.full(&k)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.err(&k, e)),
            }
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Vec<(String, u64)>> {
        Box::pin(async move {
            // object_store lists whole path segments: list the directory part, filter the rest.
            let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let base = if self.prefix.is_empty() {
                dir.to_string()
            } else if dir.is_empty() {
                self.prefix.clone()
            } else {
                format!("{}/{dir}", self.prefix)
            };
            let base_path = if base.is_empty() {
                None
            } else {
                Some(ObjPath::from(base))
            };
            let metas: Vec<_> = self
                .store
                .list(base_path.as_ref())
                .try_collect()
                .await
                .map_err(|e| self.err(prefix, e))?;
            let strip = if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            };
            Ok(metas
                .into_iter()
                .filter_map(|m| {
                    let full = m.location.to_string();
                    let rel = full.strip_prefix(&strip)?.to_string();
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
                Err(e) => Err(self.err(key, e)),
            }
        })
    }
}
