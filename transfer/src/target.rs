//! Where a replication goes: `staging://HOST:PORT` (pinned TLS, connector token), `file:///DIR`
//! or `s3://BUCKET/PREFIX` (a store written directly).
//!
//! A staging target may name several servers of one store (`staging://a:1500,b:1500`, or
//! several `--target`s, or a DNS name with several addresses): they are tried in order, the
//! one that answers is kept until it fails, and a replication that loses its server resumes on
//! the next from what the store already has.

use crate::digest::Fingerprint;
use crate::error::{Error, Result};
use crate::replicate::Connect;
use crate::store::{BoxFut, ChunkStore};
use crate::wire::client::StagingClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;

pub enum Target {
    Staging {
        /// `host:port` of each staging server.
        addrs: Vec<String>,
        /// Accepted certificate fingerprints (one per server, or one shared).
        pins: Vec<Fingerprint>,
        token: String,
        /// The server that answered last.
        preferred: AtomicUsize,
    },
    /// A store URL, opened once and shared.
    Store {
        url: String,
        opened: Mutex<Option<Arc<dyn ChunkStore>>>,
    },
}

/// `HOST[:PORT]` with the default port 1500.
fn with_port(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    let has_port = match a.rsplit_once(':') {
        Some((h, p)) => {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        a.to_string()
    } else {
        format!("{a}:1500")
    }
}

impl Target {
    /// Parse a target URL. A staging target needs the fingerprint(s) (comma-separated) and the
    /// token.
    pub fn parse(url: &str, fingerprint: Option<&str>, token: Option<String>) -> Result<Target> {
        Target::parse_many(&[url.to_string()], fingerprint, token)
    }

    /// Several `staging://` URLs (each may list servers separated by commas) are one target:
    /// servers of one store, tried in order. A `file://` or `s3://` target stands alone.
    pub fn parse_many(
        urls: &[String],
        fingerprint: Option<&str>,
        token: Option<String>,
    ) -> Result<Target> {
        let Some(first) = urls.first() else {
            return Err(Error::Usage("no target given".into()));
        };
        if urls.iter().all(|u| u.starts_with("staging://")) {
            let addrs: Vec<String> = urls
                .iter()
                .flat_map(|u| u["staging://".len()..].split(','))
                .filter(|a| !a.trim().is_empty())
                .map(with_port)
                .collect();
            if addrs.is_empty() {
                return Err(Error::Usage(format!("{first}: no staging server address")));
            }
            let fps = fingerprint.ok_or_else(|| {
                Error::Usage(format!("{first}: --target-fingerprint SHA256:... is required (printed by `godwit staging serve`)"))
            })?;
            let pins = fps
                .split(',')
                .filter(|f| !f.trim().is_empty())
                .map(|f| Fingerprint::parse(f.trim()))
                .collect::<Result<Vec<_>>>()?;
            if pins.is_empty() {
                return Err(Error::Usage("--target-fingerprint is empty".into()));
            }
            let token = token.ok_or_else(|| {
                Error::Usage(format!(
                    "{first}: a connector token is required (--token-file FILE or GODWIT_TOKEN; issued by `godwit staging tokens issue`)"
                ))
            })?;
            Ok(Target::Staging {
                addrs,
                pins,
                token,
                preferred: AtomicUsize::new(0),
            })
        } else if urls.len() == 1 && (first.starts_with("file://") || first.starts_with("s3://")) {
            Ok(Target::Store {
                url: first.clone(),
                opened: Mutex::new(None),
            })
        } else if urls.len() > 1 {
            Err(Error::Usage(
                "several targets must all be staging:// servers of one store".into(),
            ))
        } else {
            Err(Error::Usage(format!(
                "target {first:?}: expected staging://HOST:PORT, file:///DIR or s3://BUCKET/PREFIX"
            )))
        }
    }
}

impl Connect for Target {
    fn connect(&self) -> BoxFut<'_, Arc<dyn ChunkStore>> {
        Box::pin(async move {
            match self {
                Target::Staging {
                    addrs,
                    pins,
                    token,
                    preferred,
                } => {
                    let start = preferred.load(Ordering::Relaxed);
                    let mut refused: Option<Error> = None;
                    let mut down: Option<Error> = None;
                    for k in 0..addrs.len() {
                        let i = (start + k) % addrs.len();
                        match StagingClient::connect(&addrs[i], pins, token).await {
                            Ok(c) => {
                                if i != start {
                                    eprintln!("godwit: using staging server {}", addrs[i]);
                                }
                                preferred.store(i, Ordering::Relaxed);
                                return Ok(Arc::new(c) as Arc<dyn ChunkStore>);
                            }
                            Err(e) if e.is_retryable() => {
                                if addrs.len() > 1 {
                                    eprintln!("godwit: staging server {}: {e}", addrs[i]);
                                }
                                down = Some(e);
                            }
                            Err(e) => {
                                if addrs.len() > 1 {
                                    eprintln!("godwit: staging server {}: {e}", addrs[i]);
                                }
                                refused.get_or_insert(e);
                            }
                        }
                    }
                    // A refusal (token, fingerprint) says more than a server being down.
                    Err(refused
                        .or(down)
                        .unwrap_or_else(|| Error::Usage("no staging server".into())))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_targets_list_servers() {
        let fp = format!("SHA256:{}", "AB".repeat(32));
        let t = Target::parse_many(
            &["staging://a:1600,b".into(), "staging://[::1]:1501".into()],
            Some(&format!("{fp},{}", "cd".repeat(32))),
            Some("tok-tok-tok-tok-tok".into()),
        )
        .unwrap();
        let Target::Staging { addrs, pins, .. } = t else {
            panic!("not staging")
        };
        assert_eq!(addrs, vec!["a:1600", "b:1500", "[::1]:1501"]);
        assert_eq!(pins.len(), 2);
        assert!(
            Target::parse_many(&["staging://a".into(), "file:///x".into()], Some(&fp), None)
                .is_err()
        );
        assert!(
            Target::parse("staging://a", Some(&fp), None).is_err(),
            "token required"
        );
        assert_eq!(with_port("[::1]"), "[::1]:1500");
        assert_eq!(with_port("host"), "host:1500");
    }
}
