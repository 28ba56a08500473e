//! The replication view of a job on the pages (issue #18): lifecycle state with its
//! explanation, ETA, lag, phase, per-disk rows, the run's checklist, where the time went, the
//! typed error with what to do, and the throughput chart images. View models carry formatted
//! text only; `static/app.js` refreshes the same fields from `GET /api/v1/jobs/{id}`.

use super::{chart, human_bytes, percent};
use crate::{
    AppState,
    backend::{Backend, JobError, JobView, PhaseView, ThroughputSample},
    routes::Routes,
};
use axum::{
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/charts/throughput.svg", all_chart::<B>)
        .get("/jobs/{id}/throughput.svg", job_chart::<B>)
}

/// `1 h 05 min`, `3 min 20 s`, `45 s`.
pub(crate) fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

pub(crate) struct DiskRow {
    pub index: u32,
    pub label: String,
    pub capacity: String,
    pub done: u64,
    pub total: u64,
    pub progress: String,
    pub state: String,
    pub throughput: String,
    pub last_sync: String,
    pub sha256: String,
}

pub(crate) struct StageRow {
    pub name: &'static str,
    pub time: String,
}

/// The replication part of a job row.
pub(crate) struct ReplRow {
    /// `initial_sync`, ... (the API value, also the CSS class)
    pub state_key: &'static str,
    pub state: &'static str,
    pub explanation: &'static str,
    pub stalled_reason: String,
    pub phase: String,
    pub eta: String,
    pub lag: String,
    pub disks: Vec<DiskRow>,
    pub phases: Vec<PhaseView>,
    pub error: Option<JobError>,
    pub stages: Vec<StageRow>,
    pub running: bool,
}

fn state_key(s: crate::backend::ReplicationState) -> &'static str {
    use crate::backend::ReplicationState as R;
    match s {
        R::InitialSync => "initial_sync",
        R::Backlog => "backlog",
        R::Continuous => "continuous",
        R::Stalled => "stalled",
        R::Paused => "paused",
        R::Cancelled => "cancelled",
    }
}

fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        duration_text(ms / 1000)
    }
}

impl ReplRow {
    pub(crate) fn from_view(j: &JobView) -> Self {
        let r = &j.replication;
        let running = crate::pages::dashboard::in_flight(j.state);
        ReplRow {
            state_key: state_key(r.replication_state),
            state: r.replication_state.label(),
            explanation: r.replication_state.explanation(),
            stalled_reason: r.stalled_reason.clone().unwrap_or_default(),
            phase: r.phase.clone().unwrap_or_default(),
            eta: r.eta_seconds.map_or_else(
                || {
                    if running {
                        "unknown yet".into()
                    } else {
                        "—".into()
                    }
                },
                duration_text,
            ),
            lag: r
                .lag_seconds
                .map_or_else(|| "no replica yet".into(), duration_text),
            disks: r
                .disks
                .iter()
                .map(|d| DiskRow {
                    index: d.index,
                    label: d.label.clone(),
                    capacity: human_bytes(d.capacity_bytes),
                    done: d.bytes_done,
                    total: d.bytes_total.max(1),
                    progress: format!(
                        "{} % ({} of {})",
                        percent(d.bytes_done, d.bytes_total),
                        human_bytes(d.bytes_done),
                        human_bytes(d.bytes_total)
                    ),
                    state: d.state.clone(),
                    throughput: if d.throughput_bps > 0 {
                        format!("{}/s", human_bytes(d.throughput_bps))
                    } else {
                        String::new()
                    },
                    last_sync: d.last_sync.clone().unwrap_or_else(|| "—".into()),
                    sha256: d.sha256.clone().unwrap_or_else(|| "—".into()),
                })
                .collect(),
            phases: r.phases.clone(),
            error: r.error.clone(),
            stages: r.stages.as_ref().map_or_else(Vec::new, |s| {
                vec![
                    StageRow {
                        name: "reading the source",
                        time: ms_text(s.read_ms),
                    },
                    StageRow {
                        name: "hashing",
                        time: ms_text(s.hash_ms),
                    },
                    StageRow {
                        name: "compressing",
                        time: ms_text(s.compress_ms),
                    },
                    StageRow {
                        name: "sending (until acknowledged)",
                        time: ms_text(s.send_ms),
                    },
                    StageRow {
                        name: "waiting for staging",
                        time: ms_text(s.staging_wait_ms),
                    },
                    StageRow {
                        name: "elapsed (all disks)",
                        time: ms_text(s.wall_ms),
                    },
                ]
            }),
            running,
        }
    }
}

fn svg_response(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct ChartQuery {
    #[serde(default)]
    job: Option<String>,
}

/// The chart of all transfers, or of one job with `?job=ID`.
async fn all_chart<B: Backend>(
    State(st): State<AppState<B>>,
    Query(q): Query<ChartQuery>,
) -> Response {
    match q.job.filter(|j| !j.is_empty()) {
        Some(id) => chart_of(&st, id).await,
        None => {
            let samples = st.backend.throughput().await;
            svg_response(chart::svg(&samples, now(), "Throughput of all transfers"))
        }
    }
}

async fn job_chart<B: Backend>(State(st): State<AppState<B>>, Path(id): Path<String>) -> Response {
    chart_of(&st, id).await
}

async fn chart_of<B: Backend>(st: &AppState<B>, id: String) -> Response {
    let title = match st.backend.job(id.clone()).await {
        Ok(j) => format!("Throughput of {}", j.vm),
        Err(e) => return super::error_page(&e),
    };
    let samples: Vec<ThroughputSample> = st.backend.job_throughput(id).await.unwrap_or_default();
    svg_response(chart::svg(&samples, now(), &title))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration_text(0), "0 s");
        assert_eq!(duration_text(75), "1 min 15 s");
        assert_eq!(duration_text(3900), "1 h 05 min");
        assert_eq!(duration_text(2 * 86_400 + 3600), "2 d 1 h");
    }
}
