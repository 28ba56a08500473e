//! The inventory (issue 18): every VM of every source under its source's name, a search box and a
//! folder/host tree that filter the table (plain GET links and a GET form: no script needed),
//! per-VM disks with sizes and eligibility reasons inline, one job per row, and a bulk form that
//! creates jobs for every ticked VM with one schedule and reports each VM's outcome.

use super::{
    Layout,
    dashboard::after_setup,
    forms::{self, BulkJobForm, JobForm},
    human_bytes, render, see_other,
};
use crate::{
    AppState,
    backend::{Backend, BulkJobResult, VmView},
    error::FormErrors,
    routes::Routes,
};
use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use tower_sessions::Session;

type St<B> = State<AppState<B>>;

pub(super) fn routes<B: Backend>() -> Routes<AppState<B>> {
    Routes::new()
        .get("/inventory", inventory_page::<B>)
        .post("/jobs", create_job::<B>)
        .post("/jobs/bulk", create_jobs::<B>)
}

pub(crate) struct VmRow {
    pub vm: VmView,
    /// `Hard disk 1 (40.0 GiB)` per disk.
    pub disks: Vec<String>,
    /// A job exists for this VM already.
    pub job_id: Option<String>,
    /// The value of its bulk checkbox: `source_id/vm`.
    pub key: String,
}

/// One entry of the tree: a folder or a host of a source, with its VM count and its filter link.
pub(crate) struct TreeNode {
    pub label: String,
    pub count: usize,
    pub href: String,
    pub current: bool,
}

/// A source in the tree: its name and kind, and its folders and hosts.
pub(crate) struct TreeSource {
    pub name: String,
    pub href: String,
    pub count: usize,
    pub current: bool,
    pub folders: Vec<TreeNode>,
    pub hosts: Vec<TreeNode>,
}

/// What the table is filtered by (`?q=`, `?source=`, `?folder=`, `?host=`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct InventoryQuery {
    pub refresh: Option<String>,
    pub q: String,
    pub source: String,
    pub folder: String,
    pub host: String,
}

impl InventoryQuery {
    fn matches(&self, vm: &VmView) -> bool {
        let q = self.q.trim().to_lowercase();
        let hit = |s: &str| s.to_lowercase().contains(&q);
        (self.source.is_empty() || vm.source_id == self.source)
            && (self.folder.is_empty() || vm.folder.as_deref() == Some(self.folder.as_str()))
            && (self.host.is_empty() || vm.host.as_deref() == Some(self.host.as_str()))
            && (q.is_empty()
                || hit(&vm.name)
                || hit(&vm.guest_os)
                || hit(&vm.source_name)
                || vm.folder.as_deref().is_some_and(hit)
                || vm.host.as_deref().is_some_and(hit))
    }

    fn filtered(&self) -> bool {
        !(self.q.trim().is_empty()
            && self.source.is_empty()
            && self.folder.is_empty()
            && self.host.is_empty())
    }
}

fn link(q: &str, source: &str, folder: &str, host: &str) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("q", q),
        ("source", source),
        ("folder", folder),
        ("host", host),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}={}", urlencode(v)));
        }
    }
    if parts.is_empty() {
        "/inventory".into()
    } else {
        format!("/inventory?{}", parts.join("&"))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The tree of every VM (not just the filtered ones): sources, then folders and hosts.
fn tree(vms: &[VmView], q: &InventoryQuery) -> Vec<TreeSource> {
    let mut by_source: BTreeMap<(String, String), Vec<&VmView>> = BTreeMap::new();
    for vm in vms {
        by_source
            .entry((vm.source_name.clone(), vm.source_id.clone()))
            .or_default()
            .push(vm);
    }
    by_source
        .into_iter()
        .map(|((name, id), vms)| {
            let mut folders: BTreeMap<&str, usize> = BTreeMap::new();
            let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
            for vm in &vms {
                if let Some(f) = vm.folder.as_deref() {
                    *folders.entry(f).or_default() += 1;
                }
                if let Some(h) = vm.host.as_deref() {
                    *hosts.entry(h).or_default() += 1;
                }
            }
            let here = q.source == id;
            TreeSource {
                href: link(&q.q, &id, "", ""),
                current: here && q.folder.is_empty() && q.host.is_empty(),
                count: vms.len(),
                folders: folders
                    .into_iter()
                    .map(|(f, n)| TreeNode {
                        label: f.to_string(),
                        count: n,
                        href: link(&q.q, &id, f, ""),
                        current: here && q.folder == f,
                    })
                    .collect(),
                hosts: hosts
                    .into_iter()
                    .map(|(h, n)| TreeNode {
                        label: h.to_string(),
                        count: n,
                        href: link(&q.q, &id, "", h),
                        current: here && q.host == h,
                    })
                    .collect(),
                name: if name.is_empty() { id } else { name },
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "inventory.html")]
struct InventoryPage {
    layout: Layout,
    vms: Vec<VmRow>,
    /// VMs in all, and eligible ones (before filtering).
    total: usize,
    eligible: usize,
    tree: Vec<TreeSource>,
    query: InventoryQuery,
    filtered: bool,
    /// The VM whose job form failed, with its values and errors.
    failed: Option<(JobForm, FormErrors)>,
    errors: FormErrors,
    /// The bulk form: its values, and each VM's outcome after it was posted.
    bulk: BulkJobForm,
    results: Vec<BulkJobResult>,
}

impl InventoryPage {
    fn row_errors(&self, vm: &VmView) -> Option<&FormErrors> {
        self.failed
            .as_ref()
            .filter(|(f, _)| f.vm == vm.name && f.source_id == vm.source_id)
            .map(|(_, e)| e)
    }

    fn row_form(&self, vm: &VmView) -> JobForm {
        self.failed
            .as_ref()
            .filter(|(f, _)| f.vm == vm.name && f.source_id == vm.source_id)
            .map_or_else(JobForm::default, |(f, _)| f.clone())
    }

    fn ticked(&self, key: &str) -> bool {
        self.bulk.vms.iter().any(|k| k == key)
    }

    fn created(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == "created")
            .count()
    }
}

/// What a render of the page carries beyond the query.
#[derive(Default)]
struct Outcome {
    failed: Option<(JobForm, FormErrors)>,
    bulk: BulkJobForm,
    results: Vec<BulkJobResult>,
    errors: FormErrors,
}

async fn render_inventory<B: Backend>(
    st: &AppState<B>,
    session: &Session,
    query: InventoryQuery,
    outcome: Outcome,
    code: StatusCode,
) -> Response {
    let layout = Layout::new(st, session, "Inventory", Some("inventory")).await;
    let jobs = st.backend.jobs().await;
    let Outcome {
        failed,
        bulk,
        results,
        errors: mut page_errors,
    } = outcome;
    let (vms, errors) = match st.backend.inventory(query.refresh.is_some()).await {
        Ok(vms) => (vms, FormErrors::none()),
        Err(e) => (Vec::new(), FormErrors::from_error(e, &[])),
    };
    page_errors.general.extend(errors.general);
    // A refused job for a VM not on the page: its errors go to the top, not lost.
    let failed = match failed {
        Some((f, e))
            if !vms
                .iter()
                .any(|v| v.name == f.vm && v.source_id == f.source_id && query.matches(v)) =>
        {
            page_errors.general.extend(e.general.iter().cloned());
            page_errors.general.extend(
                JOB_FIELDS
                    .iter()
                    .filter_map(|name| e.get(name).map(|m| format!("{name}: {m}"))),
            );
            None
        }
        other => other,
    };
    let total = vms.len();
    let eligible = vms.iter().filter(|v| v.eligible).count();
    let tree = tree(&vms, &query);
    let rows = vms
        .into_iter()
        .filter(|v| query.matches(v))
        .map(|vm| VmRow {
            disks: vm
                .disks
                .iter()
                .map(|d| format!("{} ({})", d.label, human_bytes(d.capacity_bytes)))
                .collect(),
            job_id: jobs
                .iter()
                .find(|j| j.vm == vm.name && j.source_id == vm.source_id)
                .map(|j| j.id.clone()),
            key: format!("{}/{}", vm.source_id, vm.name),
            vm,
        })
        .collect();
    render(
        code,
        &InventoryPage {
            layout,
            vms: rows,
            total,
            eligible,
            tree,
            filtered: query.filtered(),
            query,
            failed,
            errors: page_errors,
            bulk,
            results,
        },
    )
}

async fn inventory_page<B: Backend>(
    State(st): St<B>,
    session: Session,
    Query(q): Query<InventoryQuery>,
) -> Response {
    if let Err(r) = after_setup(&st).await {
        return r;
    }
    render_inventory(&st, &session, q, Outcome::default(), StatusCode::OK).await
}

const JOB_FIELDS: &[&str] = &["schedule", "hours"];

async fn create_job<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(form): Form<JobForm>,
) -> Response {
    let result = forms::submit(form.to_command(), JOB_FIELDS, |cmd| {
        st.backend.create_job(cmd)
    })
    .await;
    match result {
        Ok(job) => see_other(&format!("/jobs/{}", job.id)),
        Err((code, errors)) => {
            let outcome = Outcome {
                failed: Some((form, errors)),
                ..Outcome::default()
            };
            render_inventory(&st, &session, InventoryQuery::default(), outcome, code).await
        }
    }
}

/// The bulk form: one typed command for every ticked VM; the page then lists each VM's outcome
/// (created, with its job; refused, with the reason). 200 when any job was created.
async fn create_jobs<B: Backend>(
    State(st): St<B>,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form = BulkJobForm::from_pairs(pairs);
    let result = forms::submit(form.to_command(), &["vms", "schedule", "hours"], |cmd| {
        st.backend.create_jobs(cmd)
    })
    .await;
    let query = InventoryQuery::default();
    match result {
        Ok(results) => {
            let code = if results.iter().any(|r| r.outcome == "created") {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            let outcome = Outcome {
                results,
                bulk: BulkJobForm::default(),
                ..Outcome::default()
            };
            render_inventory(&st, &session, query, outcome, code).await
        }
        Err((code, errors)) => {
            let outcome = Outcome {
                bulk: form,
                errors,
                ..Outcome::default()
            };
            render_inventory(&st, &session, query, outcome, code).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DiskView;

    fn vm(name: &str, folder: &str, host: &str) -> VmView {
        VmView {
            source_id: "src-1".into(),
            name: name.into(),
            power_state: "poweredOn".into(),
            guest_os: "Debian".into(),
            disks: vec![DiskView {
                index: 0,
                label: "Hard disk 1".into(),
                capacity_bytes: 1 << 30,
                backing: "flat".into(),
            }],
            eligible: true,
            reasons: vec![],
            host: Some(host.into()),
            source_name: "vc.example".into(),
            folder: Some(folder.into()),
        }
    }

    #[test]
    fn search_and_tree_filter_by_name_folder_and_host() {
        let vms = [
            vm("web-01", "DC0/vm/Web", "esx-1"),
            vm("web-02", "DC0/vm/Web", "esx-2"),
            vm("db-01", "DC0/vm/DB", "esx-2"),
        ];
        let q = |q: &str, folder: &str, host: &str| InventoryQuery {
            q: q.into(),
            folder: folder.into(),
            host: host.into(),
            ..InventoryQuery::default()
        };
        let names = |f: &InventoryQuery| {
            vms.iter()
                .filter(|v| f.matches(v))
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&q("WEB", "", "")), ["web-01", "web-02"]);
        assert_eq!(names(&q("", "DC0/vm/DB", "")), ["db-01"]);
        assert_eq!(names(&q("", "", "esx-2")), ["web-02", "db-01"]);
        assert_eq!(names(&q("web", "", "esx-2")), ["web-02"]);
        assert_eq!(names(&q("vc.example", "", "")).len(), 3);
        assert!(names(&q("nothing", "", "")).is_empty());
        let t = tree(&vms, &q("", "DC0/vm/Web", ""));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "vc.example");
        assert_eq!(t[0].count, 3);
        let f: Vec<_> = t[0]
            .folders
            .iter()
            .map(|n| (n.label.as_str(), n.count))
            .collect();
        assert_eq!(f, [("DC0/vm/DB", 1), ("DC0/vm/Web", 2)]);
        assert_eq!(t[0].hosts.len(), 2);
        assert_eq!(
            t[0].folders[0].href,
            "/inventory?source=src-1&folder=DC0%2Fvm%2FDB"
        );
    }
}
