//! The test backend's staging servers (issue 21): the wizard's server first, then the ones
//! added; a server whose address starts with `down` is shown unreachable, one starting with
//! `unreachable` cannot be probed.

use super::{State, TEST_FINGERPRINT, TestBackend, fe, invalid, views::now_rfc3339};
use crate::backend::*;

impl TestBackend {
    pub(super) fn staging_server_views(s: &State) -> Vec<StagingServerView> {
        let Some(StagingView::Server {
            address,
            fingerprint,
        }) = &s.staging
        else {
            return Vec::new();
        };
        std::iter::once((address.clone(), fingerprint.clone()))
            .chain(s.staging_servers.iter().cloned())
            .map(|(address, fingerprint)| {
                let down = address.starts_with("down");
                StagingServerView {
                    last_error: down.then(|| format!("{address}: connection refused")),
                    reachable: Some(!down),
                    last_used: (!down).then(now_rfc3339),
                    last_checked: Some(now_rfc3339()),
                    in_use: 0,
                    address,
                    fingerprint,
                }
            })
            .collect()
    }

    pub(super) fn probe_staging(cmd: &ProbeStagingServer) -> CommandResult<CertificateView> {
        let a = cmd.address.trim();
        if a.is_empty() {
            return Err(CommandError::field(
                "address",
                "the staging server's host or host:port",
            ));
        }
        if a.starts_with("unreachable") {
            return Err(CommandError::Remote {
                message: format!("{a}: connection refused"),
            });
        }
        let address = if a.contains(':') {
            a.to_string()
        } else {
            format!("{a}:1500")
        };
        Ok(CertificateView {
            fingerprint: TEST_FINGERPRINT.into(),
            subject: "CN=godwit-staging".into(),
            issuer: "CN=godwit-staging".into(),
            not_before: "2026-01-01T00:00:00Z".into(),
            not_after: "2028-01-01T00:00:00Z".into(),
            subject_alt_names: vec!["godwit-staging".into()],
            address,
        })
    }

    pub(super) fn put_staging_server(
        s: &mut State,
        cmd: AddStagingServer,
    ) -> CommandResult<StagingServerView> {
        let cert = Self::probe_staging(&ProbeStagingServer {
            address: cmd.address.clone(),
        })?;
        if crate::validate::Fingerprint::display(&cmd.approved_fingerprint) != TEST_FINGERPRINT {
            invalid(vec![fe(
                "approved_fingerprint",
                "the server shows a different certificate: probe it again",
            )])?;
        }
        if !matches!(s.staging, Some(StagingView::Server { .. })) {
            return Err(CommandError::Conflict {
                message: "the staging target is not a staging server".into(),
            });
        }
        if Self::staging_server_views(s)
            .iter()
            .any(|v| v.address == cert.address)
        {
            return Err(CommandError::Conflict {
                message: format!("{} is listed already", cert.address),
            });
        }
        s.staging_servers
            .push((cert.address.clone(), cert.fingerprint.clone()));
        Self::staging_server_views(s)
            .into_iter()
            .find(|v| v.address == cert.address)
            .ok_or_else(|| CommandError::Internal {
                message: "added server not listed".into(),
            })
    }

    pub(super) fn drop_staging_server(s: &mut State, address: &str) -> CommandResult<()> {
        let views = Self::staging_server_views(s);
        if !views.iter().any(|v| v.address == address) {
            return Err(CommandError::NotFound {
                message: format!("no staging server {address}"),
            });
        }
        if views.len() == 1 {
            return Err(CommandError::Conflict {
                message:
                    "the last staging server cannot be removed; change the staging target instead"
                        .into(),
            });
        }
        if let Some(StagingView::Server {
            address: first,
            fingerprint,
        }) = &mut s.staging
            && first.as_str() == address
        {
            let (a, f) = s.staging_servers.remove(0);
            *first = a;
            *fingerprint = f;
        } else {
            s.staging_servers.retain(|(a, _)| a != address);
        }
        Ok(())
    }
}
