//! Who may use a staging server, and which VMs each connector may read and write. Kept in the
//! store itself, so every staging server over one store accepts the same tokens and sees the
//! same owners.
//!
//! - A token is issued for one connector (`godwit staging tokens issue --connector NAME`). The
//!   store keeps only its SHA-256 (`tokens/<id>.json`, id = the first 16 hex digits of the
//!   SHA-256, so the secret itself is never stored or listed); revoking marks the record.
//! - A VM belongs to the first connector that starts a sync of it (`owners/<vm>.json`, created
//!   with a conditional write, so two connectors racing for one name cannot both win). A VM
//!   with syncs but no owner record (written before owners existed, or directly to the store)
//!   belongs to the connector named [`LEGACY_CONNECTOR`].

use super::{Store, escape_segment};
use crate::digest::secrets_equal;
use crate::error::{Error, Result};
use crate::index::{check_vm_name, now_ms};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The connector that owns VMs written before ownership was recorded, and the one the
/// staging server's first token (and an imported `DATA/token`) is issued for.
pub const LEGACY_CONNECTOR: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub connector: String,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

/// A token just issued: the secret is shown once and never stored.
pub struct IssuedToken {
    pub token: String,
    pub record: TokenRecord,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OwnerRecord {
    connector: String,
    claimed_ms: u64,
}

/// Connector names: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn check_connector_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "connector name {name:?}: 1 to 64 letters, digits, '.', '_' or '-' (not starting with '.')"
        )))
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_key(id: &str) -> String {
    format!("tokens/{id}.json")
}

/// Token ids come from the command line: 16 lower-case hex digits.
fn check_token_id(id: &str) -> Result<()> {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{id:?} is not a token id (16 hex digits, as `godwit staging tokens list` shows)"
        )))
    }
}

fn owner_key(vm: &str) -> String {
    format!("owners/{}.json", escape_segment(vm))
}

impl Store {
    async fn put_token(&self, token: &str, connector: &str) -> Result<(TokenRecord, bool)> {
        check_connector_name(connector)?;
        let sha256 = token_hash(token);
        let rec = TokenRecord {
            id: sha256[..16].to_string(),
            connector: connector.to_string(),
            created_ms: now_ms(),
            revoked_ms: None,
            sha256,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
        let created = self.backend.put_new(&token_key(&rec.id), body).await?;
        Ok((rec, created))
    }

    /// A new random token for `connector`.
    pub async fn issue_token(&self, connector: &str) -> Result<IssuedToken> {
        let secret: [u8; 24] = rand::random();
        let token = format!("gwt-{}", hex::encode(secret));
        let (record, created) = self.put_token(&token, connector).await?;
        if !created {
            return Err(Error::Usage("token id collision; issue again".into()));
        }
        Ok(IssuedToken { token, record })
    }

    /// Register an existing secret (a staging server's `DATA/token` from before tokens were
    /// kept in the store) for `connector`, unless it is known already.
    pub async fn import_token(&self, token: &str, connector: &str) -> Result<TokenRecord> {
        if token.len() < 16 {
            return Err(Error::Usage(
                "a token must be at least 16 characters".into(),
            ));
        }
        let (rec, created) = self.put_token(token, connector).await?;
        if created {
            return Ok(rec);
        }
        self.token(&rec.id).await
    }

    pub async fn token(&self, id: &str) -> Result<TokenRecord> {
        check_token_id(id)?;
        let what = format!("{}/{}", self.backend.describe(), token_key(id));
        let b = self
            .backend
            .get(&token_key(id))
            .await?
            .ok_or_else(|| Error::NotFound { what: what.clone() })?;
        serde_json::from_slice(&b).map_err(|e| Error::malformed(what, 0, e.to_string()))
    }

    /// Every token record, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut v = Vec::new();
        for m in self.backend.list("tokens/").await? {
            if let Some(id) = m
                .key
                .strip_prefix("tokens/")
                .and_then(|k| k.strip_suffix(".json"))
                && check_token_id(id).is_ok()
            {
                v.push(self.token(id).await?);
            }
        }
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    /// Revoke a token: staging servers refuse it from the next request on.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        let mut rec = self.token(id).await?;
        if rec.revoked_ms.is_none() {
            rec.revoked_ms = Some(now_ms());
            let body = Bytes::from(serde_json::to_vec_pretty(&rec).unwrap_or_default());
            self.backend.put(&token_key(id), body).await?;
        }
        Ok(rec)
    }

    /// The record of a valid, unrevoked token; None for anything else.
    pub async fn authenticate(&self, token: &str) -> Result<Option<TokenRecord>> {
        let sha = token_hash(token);
        let Some(b) = self.backend.get(&token_key(&sha[..16])).await? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<TokenRecord>(&b) else {
            return Ok(None);
        };
        let ok = secrets_equal(rec.sha256.as_bytes(), sha.as_bytes()) && rec.revoked_ms.is_none();
        Ok(ok.then_some(rec))
    }

    /// The connector a VM belongs to (None: nobody has written it yet).
    pub async fn owner_of(&self, vm: &str) -> Result<Option<String>> {
        check_vm_name(vm)?;
        if let Some(b) = self.backend.get(&owner_key(vm)).await? {
            let what = format!("{}/{}", self.backend.describe(), owner_key(vm));
            let r: OwnerRecord =
                serde_json::from_slice(&b).map_err(|e| Error::malformed(what, 0, e.to_string()))?;
            return Ok(Some(r.connector));
        }
        let prefix = format!("syncs/{}/", escape_segment(vm));
        let any = !self.backend.list(&prefix).await?.is_empty();
        Ok(any.then(|| LEGACY_CONNECTOR.to_string()))
    }

    /// May `connector` read `vm`? (A VM nobody owns has nothing to read: allowed, it is empty.)
    pub async fn check_read(&self, vm: &str, connector: &str) -> Result<()> {
        match self.owner_of(vm).await? {
            Some(o) if o != connector => Err(forbidden(vm)),
            _ => Ok(()),
        }
    }

    /// May `connector` write `vm`? The first writer of a new VM becomes its owner.
    pub async fn claim_vm(&self, vm: &str, connector: &str) -> Result<()> {
        check_connector_name(connector)?;
        if let Some(o) = self.owner_of(vm).await? {
            return if o == connector {
                Ok(())
            } else {
                Err(forbidden(vm))
            };
        }
        let rec = OwnerRecord {
            connector: connector.to_string(),
            claimed_ms: now_ms(),
        };
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        if self.backend.put_new(&owner_key(vm), body).await? {
            return Ok(());
        }
        match self.owner_of(vm).await? {
            Some(o) if o == connector => Ok(()),
            _ => Err(forbidden(vm)),
        }
    }
}

fn forbidden(vm: &str) -> Error {
    Error::Forbidden {
        what: format!("VM {vm:?}"),
        reason:
            "belongs to another connector (a token reads and writes only its own connector's VMs)"
                .into(),
    }
}
