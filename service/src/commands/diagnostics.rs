//! `/metrics` and the support bundle.

use crate::{Appliance, bundle, time};
use godwit_webui::backend::*;

impl Appliance {
    pub(crate) fn metrics_text(&self) -> String {
        let jobs = self.store.jobs().unwrap_or_default();
        let states = [
            JobState::Scheduled,
            JobState::Snapshotting,
            JobState::Transferring,
            JobState::RemovingSnapshot,
            JobState::RetryWait,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ];
        let jobs_by_state = states
            .iter()
            .map(|st| {
                let name = serde_json::to_value(st)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let n = jobs.iter().filter(|j| j.state == *st).count();
                (name, u64::try_from(n).unwrap_or(u64::MAX))
            })
            .collect();
        bundle::metrics_text(&bundle::MetricsInput {
            jobs_by_state,
            bytes_transferred: self.engine.bytes_transferred(),
            throughput_bps: self.engine.current_throughput(),
            transfers_running: u64::try_from(self.engine.running_count()).unwrap_or(0),
            http_requests: self
                .http_requests
                .load(std::sync::atomic::Ordering::Relaxed),
            ingest: self.ingest.get().map(|i| i.stats()),
            winrm_read_bytes: self.engine.winrm_read_bytes(),
            spool: self.ingest.get().map(|i| i.spool_figures()),
            memory: crate::memory::now(),
            data_space: self.data_space().map(|d| (d.free_bytes, d.total_bytes)),
        })
    }

    pub(crate) async fn bundle(&self) -> CommandResult<Vec<u8>> {
        let s = self.settings_now()?;
        let mut files: Vec<(String, String)> = Vec::new();
        files.push((
            "version.txt".into(),
            format!(
                "godwit {}\ncreated {}\n",
                env!("CARGO_PKG_VERSION"),
                time::rfc3339(time::now())
            ),
        ));
        let status = godwit_webui::backend::Backend::setup_status(self).await;
        files.push(("setup-status.json".into(), pretty(&status)));
        files.push(("settings.json".into(), pretty(&Self::settings_view(&s))));
        let jobs = self.store.jobs()?;
        let views: Vec<JobView> = jobs.iter().map(|j| self.job_view(j)).collect();
        files.push(("jobs.json".into(), pretty(&views)));
        for j in &jobs {
            files.push((
                format!("jobs/{}-timeline.json", j.id),
                pretty(&self.store.events(&j.id)?),
            ));
        }
        files.push(("exports.json".into(), pretty(&self.store.exports()?)));
        files.push((
            "snapshot-ledger.json".into(),
            pretty(&self.engine.ledger_entries()),
        ));
        files.push(("metrics.txt".into(), self.metrics_text()));
        let log_path = crate::logs::log_file(&self.cfg.data);
        let log = std::fs::read(&log_path).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(8 << 20)..];
        files.push((
            "logs/godwit.log".into(),
            String::from_utf8_lossy(tail).into_owned(),
        ));
        files.push((
            "logs/recent.log".into(),
            self.logs.last(crate::logs::RING_LINES).join("\n"),
        ));
        let secrets = s.secrets();
        bundle::tar_gz(&files, &secrets, time::now()).map_err(|e| CommandError::Internal {
            message: format!("building the support bundle: {e}"),
        })
    }
}

/// Pretty JSON of a view, for the bundle.
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
