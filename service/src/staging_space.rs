//! "Staging free space" in the service's checks (issue 18): the staging server answers the
//! protocol's `GetSpace` (statvfs of its store directory; docs/wire-protocol.md), an S3 store
//! or an older server answers unknown. [`verdict`] is the pure rule: a warning below 10 GiB or
//! below the capacity of every job's disks added up (a full first sync of each needs at most
//! that much before compression and dedupe), whichever is larger.

use crate::store::StagingRecord;
use godwit_transfer::replicate::Connect;
use godwit_transfer::store::StoreSpace;
use godwit_webui::backend::CheckView;

/// Below this much free room the check warns whatever the jobs need.
pub const MIN_FREE: u64 = 10 << 30;

/// The check's name as the checks page shows it.
pub const CHECK: &str = "staging free space";

/// The check from what the server answered (`Ok(None)`: it cannot tell), and the bytes the
/// jobs' disks add up to.
pub fn verdict(
    target: &str,
    answer: Result<Option<StoreSpace>, String>,
    jobs_bytes: u64,
) -> CheckView {
    let view = |status: &str, value: String, remediation: &str| CheckView {
        check: CHECK.into(),
        target: target.into(),
        status: status.into(),
        value,
        remediation: remediation.into(),
    };
    let human = crate::space::human;
    match answer {
        Err(e) => view(
            "warn",
            format!("not known: {e}"),
            "The staging server did not answer the question; see the staging check above.",
        ),
        Ok(None) => view(
            "pass",
            "unknown (an S3 store, or a staging server too old to tell)".into(),
            "",
        ),
        Ok(Some(s)) => {
            let needed = MIN_FREE.max(jobs_bytes);
            let value = format!(
                "{} free of {}; the jobs' disks add up to {}",
                human(s.free_bytes),
                human(s.total_bytes),
                human(jobs_bytes)
            );
            if s.free_bytes < needed {
                view(
                    "warn",
                    value,
                    "Give the staging server's store more room (a bigger disk, or delete \
                     replicas no longer needed) so that at least the jobs' disks (and 10 GiB) \
                     fit; a full store stops every replication.",
                )
            } else {
                view("pass", value, "")
            }
        }
    }
}

/// Ask the configured staging target how much room it has left, on a connection of its own.
pub async fn ask(staging: &StagingRecord) -> Result<Option<StoreSpace>, String> {
    match staging {
        // Every server of the list fronts the same store: the first that answers speaks for it.
        StagingRecord::Server { servers, token } => {
            let mut last = String::from("no staging server configured");
            for server in servers {
                let answer = async {
                    let t = godwit_transfer::target::Target::parse(
                        &format!("staging://{}", server.address),
                        Some(&server.fingerprint),
                        Some(token.clone()),
                    )
                    .map_err(|e| e.to_string())?;
                    let store = t.connect().await.map_err(|e| e.to_string())?;
                    store.space().await.map_err(|e| e.to_string())
                }
                .await;
                match answer {
                    Ok(space) => return Ok(space),
                    Err(e) => last = format!("{}: {e}", server.address),
                }
            }
            Err(last)
        }
        StagingRecord::S3 { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn space(free: u64) -> Result<Option<StoreSpace>, String> {
        Ok(Some(StoreSpace {
            free_bytes: free,
            total_bytes: 100 * GIB,
        }))
    }

    #[test]
    fn warns_below_ten_gib_or_below_the_jobs_disks() {
        let v = verdict("s:1500", space(9 * GIB), 0);
        assert_eq!(v.status, "warn");
        assert!(v.remediation.contains("more room"), "{v:?}");
        assert_eq!(
            v.value,
            "9.0 GiB free of 100 GiB; the jobs' disks add up to 0 bytes"
        );
        assert_eq!(verdict("s", space(10 * GIB), 0).status, "pass");
        assert_eq!(verdict("s", space(10 * GIB), 0).remediation, "");
        // The jobs need more than 10 GiB: the jobs decide.
        assert_eq!(verdict("s", space(30 * GIB), 31 * GIB).status, "warn");
        assert_eq!(verdict("s", space(31 * GIB), 31 * GIB).status, "pass");
    }

    #[test]
    fn unknown_passes_and_no_answer_warns() {
        let v = verdict("s3://b", Ok(None), 50 * GIB);
        assert_eq!(v.status, "pass");
        assert!(v.value.starts_with("unknown"));
        let v = verdict("s:1500", Err("connection refused".into()), 0);
        assert_eq!(v.status, "warn");
        assert!(v.value.contains("connection refused"));
        assert_eq!(v.check, CHECK);
    }
}
