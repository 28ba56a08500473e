//! Where a replication goes: `staging://HOST:PORT` (pinned TLS, pairing token), `file:///DIR`
//! or `s3://BUCKET/PREFIX` (a store written directly).

use crate::digest::Fingerprint;
use crate::error::{Error, Result};
use crate::replicate::Connect;
use crate::store::{BoxFut, ChunkStore};
use crate::wire::client::StagingClient;
use std::sync::Arc;
use tokio::sync::Mutex;

pub enum Target {
    Staging {
        addr: String,
        pin: Fingerprint,
        token: String,
    },
    /// A store URL, opened once and shared.
    Store {
        url: String,
        opened: Mutex<Option<Arc<dyn ChunkStore>>>,
    },
}

impl Target {
    /// Parse a target URL. A staging target needs the fingerprint and the token.
    pub fn parse(url: &str, fingerprint: Option<&str>, token: Option<String>) -> Result<Target> {
        if let Some(rest) = url.strip_prefix("staging://") {
            let addr = rest.trim_end_matches('/');
            let addr = if addr.contains(':') && !addr.ends_with(']') {
                addr.to_string()
            } else {
                format!("{addr}:1500")
            };
            let pin = Fingerprint::parse(fingerprint.ok_or_else(|| {
                Error::Usage(format!("{url}: --target-fingerprint SHA256:... is required (printed by `godwit staging serve`)"))
            })?)?;
            let token = token.ok_or_else(|| {
                Error::Usage(format!(
                    "{url}: a pairing token is required (--token-file FILE or GODWIT_TOKEN)"
                ))
            })?;
            Ok(Target::Staging { addr, pin, token })
        } else if url.starts_with("file://") || url.starts_with("s3://") {
            Ok(Target::Store {
                url: url.to_string(),
                opened: Mutex::new(None),
            })
        } else {
            Err(Error::Usage(format!(
                "target {url:?}: expected staging://HOST:PORT, file:///DIR or s3://BUCKET/PREFIX"
            )))
        }
    }
}

impl Connect for Target {
    fn connect(&self) -> BoxFut<'_, Arc<dyn ChunkStore>> {
        Box::pin(async move {
            match self {
                Target::Staging { addr, pin, token } => {
                    Ok(Arc::new(StagingClient::connect(addr, *pin, token).await?)
                        as Arc<dyn ChunkStore>)
                }
                Target::Store { url, opened } => {
                    let mut g = opened.lock().await;
                    if let Some(s) = &*g {
                        return Ok(s.clone());
                    }
                    let s: Arc<dyn ChunkStore> = Arc::new(crate::store::open_url(url).await?);
                    *g = Some(s.clone());
                    Ok(s)
                }
            }
        })
    }
}
