//! Staging servers (issue 21): the servers of the one store the staging target lists, with
//! their state; adding one after its certificate was shown and approved (and it took the
//! stored token), removing one.

use crate::staging_target::Fleet;
use crate::store::{StagingRecord, StagingServer};
use crate::{Appliance, time};
use godwit_transfer::digest::Fingerprint;
use godwit_transfer::wire::client::StagingClient;
use godwit_webui::backend::*;
use godwit_webui::validate::{authority, fingerprint, host_port};
use std::time::Duration;

/// Longest one server is given to answer when the list is shown or a server is added.
const CHECK_WAIT: Duration = Duration::from_secs(5);

fn not_servers() -> CommandError {
    CommandError::Conflict {
        message: "the staging target is not a staging server (set one first: PUT /api/v1/settings/staging)".into(),
    }
}

/// `host:port` (1500 by default) of what the operator typed.
fn address_of(typed: &str) -> CommandResult<String> {
    host_port(typed.trim(), 1500)
        .map(|(h, p)| authority(&h, p))
        .map_err(|e| CommandError::field("address", e))
}

/// What the API shows of one server.
pub(crate) fn view(s: &StagingServer, fleet: &Fleet) -> StagingServerView {
    let st = fleet.state(&s.address);
    StagingServerView {
        address: s.address.clone(),
        fingerprint: godwit_webui::validate::Fingerprint::display(&s.fingerprint),
        reachable: st.reachable,
        last_error: st.last_error,
        last_used: st.last_used.map(time::rfc3339),
        last_checked: st.last_checked.map(time::rfc3339),
        in_use: st.in_use,
    }
}

impl Appliance {
    pub(crate) async fn list_staging_servers(&self) -> Vec<StagingServerView> {
        let Ok(Some(StagingRecord::Server { servers, token })) =
            self.settings_now().map(|s| s.staging)
        else {
            return Vec::new();
        };
        let fleet = self.engine.fleet();
        fleet.check(&servers, &token, CHECK_WAIT).await;
        servers.iter().map(|s| view(s, fleet)).collect()
    }

    pub(crate) async fn probe_staging(
        &self,
        cmd: ProbeStagingServer,
    ) -> CommandResult<CertificateView> {
        let addr = address_of(&cmd.address)?;
        // The same certificate probe as a source's: trust nothing, describe what is shown.
        crate::sources::probe(SourceKind::Vsphere, &addr).await
    }

    pub(crate) async fn add_staging(
        &self,
        cmd: AddStagingServer,
    ) -> CommandResult<StagingServerView> {
        let addr = address_of(&cmd.address)?;
        let fp = fingerprint(&cmd.approved_fingerprint)
            .map_err(|e| CommandError::field("approved_fingerprint", e))?;
        let Some(StagingRecord::Server { servers, token }) = self.settings_now()?.staging else {
            return Err(not_servers());
        };
        if servers.iter().any(|s| s.address == addr) {
            return Err(CommandError::Conflict {
                message: format!("staging server {addr} is listed already"),
            });
        }
        // It must show the approved certificate and take the store's token: a server of
        // another store (which does not know the token) is refused here.
        let pin = Fingerprint::parse(&fp)
            .map_err(|e| CommandError::field("approved_fingerprint", e.to_string()))?;
        match tokio::time::timeout(
            CHECK_WAIT * 3,
            StagingClient::connect(&addr, &[pin], &token),
        )
        .await
        {
            Err(_) => {
                return Err(CommandError::Remote {
                    message: format!("staging server {addr}: no answer within 15 s"),
                });
            }
            Ok(Err(e)) => {
                return Err(CommandError::Remote {
                    message: format!("staging server {addr}: {e}"),
                });
            }
            Ok(Ok(_client)) => {}
        }
        let server = StagingServer {
            address: addr.clone(),
            fingerprint: fp,
        };
        self.store.update_settings(|s| match &mut s.staging {
            Some(StagingRecord::Server { servers, .. }) => {
                if servers.iter().any(|x| x.address == server.address) {
                    return Err(CommandError::Conflict {
                        message: format!("staging server {} is listed already", server.address),
                    });
                }
                servers.push(server.clone());
                Ok(())
            }
            _ => Err(not_servers()),
        })?;
        let fleet = self.engine.fleet();
        fleet.record(&addr, Ok(()), false);
        tracing::info!(server = %addr, "staging server added");
        Ok(view(&server, fleet))
    }

    pub(crate) async fn remove_staging(&self, address: String) -> CommandResult<()> {
        self.store.update_settings(|s| match &mut s.staging {
            Some(StagingRecord::Server { servers, .. }) => {
                let Some(i) = servers.iter().position(|x| x.address == address) else {
                    return Err(CommandError::NotFound {
                        message: format!("no staging server {address}"),
                    });
                };
                if servers.len() == 1 {
                    return Err(CommandError::Conflict {
                        message: "the last staging server cannot be removed; change the staging target instead".into(),
                    });
                }
                servers.remove(i);
                Ok(())
            }
            _ => Err(CommandError::NotFound {
                message: format!("no staging server {address}"),
            }),
        })?;
        tracing::info!(server = %address, "staging server removed");
        Ok(())
    }
}
