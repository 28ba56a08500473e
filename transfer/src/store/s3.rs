//! A store in an S3-compatible bucket through `object_store`.
//!
//! Credentials come only from what the user configured ([`S3Config`]): the service's settings,
//! or for the command line exactly `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`), with `AWS_REGION` / `AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL`. Never
//! the instance metadata service, a container or web-identity credential endpoint, or a profile
//! file: an appliance that runs in a cloud must not borrow the machine's role (security issue,
//! finding 7). A plain-http endpoint (a local test server) is allowed when the URL says so.
//!
//! Single-object PUTs are atomic in S3; `put_new` is a conditional PUT (`If-None-Match: *`,
//! AWS since 2024, SeaweedFS, MinIO), so two writers never overwrite each other's object.

use super::{Backend, BoxFut, ObjectMeta};
use crate::error::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential, Checksum};
use object_store::path::Path as ObjPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, StaticCredentialProvider,
};
use std::sync::Arc;

/// How to reach an S3-compatible endpoint: everything explicit.
#[derive(Clone)]
pub struct S3Config {
    /// `https://…` (or `http://` for a local test server); AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl S3Config {
    /// The credentials the user set for this process, and nothing else (see the module doc).
    pub fn from_env() -> Result<S3Config> {
        let (Some(access_key_id), Some(secret_access_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::Usage(
                "S3: no credentials configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (Godwit never asks the instance metadata service or reads profile files)"
                    .into(),
            ));
        };
        Ok(S3Config {
            endpoint: var("AWS_ENDPOINT_URL"),
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }

    /// An `object_store` client for `bucket` with these static credentials. The builder starts
    /// empty (`AmazonS3Builder::new`, not `from_env`) and is given a static credential
    /// provider, so no other credential source is ever consulted.
    pub fn client(&self, bucket: &str, sha256_checksums: bool) -> Result<AmazonS3> {
        // reqwest is built without a crypto provider: use ring, the one provider in the tree.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cred = AwsCredential {
            key_id: self.access_key_id.clone(),
            secret_key: self.secret_access_key.clone(),
            token: self.session_token.clone(),
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_credentials(Arc::new(StaticCredentialProvider::new(cred)))
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
        b.build().map_err(|e| Error::S3 {
            what: format!("s3://{bucket}"),
            source: e,
        })
    }
}

/// An `object_store` S3 client for `bucket` with the credentials of [`S3Config::from_env`].
pub fn s3_from_env(bucket: &str, sha256_checksums: bool) -> Result<AmazonS3> {
    S3Config::from_env()?.client(bucket, sha256_checksums)
}

pub struct S3Backend {
    pub(crate) store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

impl S3Backend {
    /// `rest` is `BUCKET/PREFIX` (the prefix may be empty).
    pub fn new(config: &S3Config, rest: &str) -> Result<S3Backend> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("s3://{rest}: no bucket name")));
        }
        Ok(S3Backend {
            store: Arc::new(config.client(bucket, false)?),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// [`S3Backend::new`] with the credentials of [`S3Config::from_env`].
    pub fn from_env(rest: &str) -> Result<S3Backend> {
        S3Backend::new(&S3Config::from_env()?, rest)
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

    fn put_new<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let opts = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(&self.full(key), PutPayload::from_bytes(data.clone()), opts)
                .await
            {
                Ok(_) => Ok(true),
                // Someone's object is there. If it holds exactly our bytes, it is ours: a PUT
                // that succeeded, then was retried after its answer was lost.
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    Ok(self.get(key).await?.is_some_and(|have| have == data))
                }
                Err(e @ object_store::Error::NotImplemented { .. }) => Err(Error::Usage(format!(
                    "{}: this S3 endpoint does not support conditional writes (If-None-Match), which the store needs: {e}",
                    self.describe()
                ))),
                Err(e) => Err(self.err(key, e)),
            }
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

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Vec<ObjectMeta>> {
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
                .map_err(|e| self.err(prefix, e))?;
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
                    rel.starts_with(prefix).then_some(ObjectMeta {
                        key: rel,
                        modified_ms: ms,
                        size: m.size,
                    })
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

    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            // S3 has no rename: copy, then delete. A crash in between leaves both, which the
            // store's readers and GC tolerate (docs/store-format.md).
            match self.store.copy(&self.full(from), &self.full(to)).await {
                Ok(()) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::NotFound {
                        what: format!("{}/{from}", self.describe()),
                    });
                }
                Err(e) => return Err(self.err(from, e)),
            }
            self.delete(from).await
        })
    }
}
