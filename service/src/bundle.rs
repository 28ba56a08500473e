//! Diagnostics: the Prometheus metrics text and the support bundle (a `.tar.gz` of logs,
//! redacted settings, jobs with their timelines, exports, the ledger and the metrics).
//! Views never carry secrets; as a last line the bundle replaces every secret the store holds
//! with `<redacted>` before anything is written.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io::Write;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Figures the metrics page reports.
pub struct MetricsInput {
    /// (state name, number of jobs)
    pub jobs_by_state: Vec<(String, u64)>,
    pub bytes_transferred: u64,
    pub throughput_bps: u64,
    pub transfers_running: u64,
    pub http_requests: u64,
    /// The Hyper-V host-push ingest's counters (when it is mounted).
    pub ingest: Option<godwit_hyperv::ingest::IngestStats>,
    /// Bytes Hyper-V runs read from hosts over WinRM.
    pub winrm_read_bytes: u64,
    /// The host-push spools: (bytes held now, peak, limit setting), when the ingest is mounted.
    pub spool: Option<(u64, u64, u64)>,
    /// This process's and the system's memory.
    pub memory: crate::memory::Memory,
    /// The data partition: (available, total) bytes.
    pub data_space: Option<(u64, u64)>,
}

pub fn metrics_text(m: &MetricsInput) -> String {
    let mut reg = Registry::with_prefix("godwit");
    let jobs = Family::<StateLabel, Gauge>::default();
    for (state, n) in &m.jobs_by_state {
        jobs.get_or_create(&StateLabel {
            state: state.clone(),
        })
        .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    reg.register("jobs", "Replication jobs by state", jobs);
    let bytes = Counter::<u64>::default();
    bytes.inc_by(m.bytes_transferred);
    reg.register(
        "transferred_bytes",
        "Bytes sent to the staging target since the service started",
        bytes,
    );
    let thr = Gauge::<i64>::default();
    thr.set(i64::try_from(m.throughput_bps).unwrap_or(i64::MAX));
    reg.register(
        "throughput_bytes_per_second",
        "Current replication throughput, all transfers",
        thr,
    );
    let running = Gauge::<i64>::default();
    running.set(i64::try_from(m.transfers_running).unwrap_or(i64::MAX));
    reg.register("transfers_running", "Transfers running now", running);
    let http = Counter::<u64>::default();
    http.inc_by(m.http_requests);
    reg.register(
        "http_requests",
        "HTTPS requests served since the service started",
        http,
    );
    if let Some(i) = &m.ingest {
        let pushed = Counter::<u64>::default();
        pushed.inc_by(i.accepted_bytes);
        reg.register(
            "ingest_pushed_bytes",
            "Disk bytes Hyper-V hosts pushed to the ingest and the connector stored",
            pushed,
        );
        let pushes = Counter::<u64>::default();
        pushes.inc_by(i.accepted);
        reg.register("ingest_pushes", "Pushes stored", pushes);
        let refused = Counter::<u64>::default();
        refused.inc_by(i.refused());
        reg.register(
            "ingest_refused",
            "Pushes refused (bad request or token, range not asked for, checksum, truncated)",
            refused,
        );
    }
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    if let Some((held, peak, limit)) = m.spool {
        reg.register(
            "ingest_spool_bytes",
            "Pushed bytes the Hyper-V jobs' spools hold now (not yet stored)",
            gauge(held),
        );
        reg.register(
            "ingest_spool_peak_bytes",
            "The most the spools held at once since the service started",
            gauge(peak),
        );
        reg.register(
            "ingest_spool_limit_bytes",
            "The spool limit setting (each run lowers it to the data partition's free space)",
            gauge(limit),
        );
    }
    reg.register(
        "process_resident_memory_bytes",
        "Resident memory of the service now (VmRSS)",
        gauge(m.memory.rss),
    );
    reg.register(
        "process_resident_memory_peak_bytes",
        "Peak resident memory of the service since it started (VmHWM)",
        gauge(m.memory.peak_rss),
    );
    reg.register(
        "system_memory_available_bytes",
        "Memory available for starting new work without swapping (MemAvailable)",
        gauge(m.memory.available),
    );
    reg.register(
        "system_memory_total_bytes",
        "Usable RAM (MemTotal)",
        gauge(m.memory.total),
    );
    if let Some((free, total)) = m.data_space {
        reg.register(
            "data_free_bytes",
            "Free space on the data partition (job state, logs, spools, local exports)",
            gauge(free),
        );
        reg.register(
            "data_size_bytes",
            "Size of the data partition",
            gauge(total),
        );
    }
    let winrm = Counter::<u64>::default();
    winrm.inc_by(m.winrm_read_bytes);
    reg.register(
        "hyperv_winrm_read_bytes",
        "Bytes Hyper-V runs read from hosts over WinRM (metadata, and data not pushed)",
        winrm,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// Replace every occurrence of each secret in `text`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), "<redacted>");
        }
    }
    t
}

/// A gzip'd tar of `(path, contents)` files, each scrubbed of `secrets`.
pub fn tar_gz(
    files: &[(String, String)],
    secrets: &[String],
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, contents) in files {
        let body = scrub(contents, secrets);
        let mut h = tar::Header::new_gnu();
        h.set_size(u64::try_from(body.len()).unwrap_or(u64::MAX));
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_cksum();
        tar.append_data(&mut h, format!("godwit-support/{path}"), body.as_bytes())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bundle_round_trips_and_scrubs() {
        let files = vec![
            ("a.txt".to_string(), "token=hunter2-secret ok".to_string()),
            ("logs/b.log".to_string(), "nothing here".to_string()),
        ];
        let gz = tar_gz(&files, &["hunter2-secret".to_string()], 0).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut ar = tar::Archive::new(&raw[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            seen.push((e.path().unwrap().display().to_string(), s));
        }
        assert_eq!(seen[0].0, "godwit-support/a.txt");
        assert_eq!(seen[0].1, "token=<redacted> ok");
        assert_eq!(seen[1].1, "nothing here");
    }

    #[test]
    fn metrics_text_has_every_family() {
        let t = metrics_text(&MetricsInput {
            jobs_by_state: vec![("scheduled".into(), 2)],
            bytes_transferred: 10,
            throughput_bps: 5,
            transfers_running: 1,
            http_requests: 7,
            ingest: Some(godwit_hyperv::ingest::IngestStats {
                accepted: 3,
                accepted_bytes: 300,
                bad_token: 1,
                truncated: 1,
                ..Default::default()
            }),
            winrm_read_bytes: 42,
            spool: Some((1, 2, 3)),
            memory: crate::memory::Memory {
                rss: 11,
                peak_rss: 12,
                available: 13,
                total: 14,
            },
            data_space: Some((15, 16)),
        });
        for want in [
            "godwit_ingest_pushed_bytes_total 300",
            "godwit_ingest_pushes_total 3",
            "godwit_ingest_refused_total 2",
            "godwit_hyperv_winrm_read_bytes_total 42",
            "godwit_ingest_spool_bytes 1",
            "godwit_ingest_spool_peak_bytes 2",
            "godwit_ingest_spool_limit_bytes 3",
            "godwit_jobs{state=\"scheduled\"} 2",
            "godwit_transferred_bytes_total 10",
            "godwit_throughput_bytes_per_second 5",
            "godwit_transfers_running 1",
            "godwit_http_requests_total 7",
            "godwit_process_resident_memory_bytes 11",
            "godwit_process_resident_memory_peak_bytes 12",
            "godwit_system_memory_available_bytes 13",
            "godwit_system_memory_total_bytes 14",
            "godwit_data_free_bytes 15",
            "godwit_data_size_bytes 16",
        ] {
            assert!(t.contains(want), "{want} not in:\n{t}");
        }
    }
}
