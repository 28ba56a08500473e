//! `godwit staging list`: the syncs kept, then per VM and for the whole store the logical bytes
//! (what copies would hold) against the bytes stored (chunks, compressed, each stored once
//! however many VMs and syncs name it), and the syncs in progress.

use godwit_transfer::index::{SyncIndex, now_ms, utc_stamp};
use godwit_transfer::store::{ChunkStore, Store};
use std::process::ExitCode;

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}

pub async fn list(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for k in store.all_indexes().await? {
        let Some(b) = store.backend().get(&k).await? else {
            continue;
        };
        match SyncIndex::parse(&b, &k) {
            Ok(i) => rows.push(serde_json::json!({
                "vm": i.vm, "disk": i.disk, "sync": i.sync_id.to_string(),
                "parent": i.parent.map(|p| p.to_string()), "disk_size": i.disk_size,
                "created_ms": i.created_ms, "raw_sha256": i.raw_sha256.map(hex::encode),
            })),
            Err(e) => eprintln!("godwit: {e}"),
        }
    }
    let usage = store.usage().await?;
    let now = now_ms();
    let leases: Vec<serde_json::Value> = store
        .leases()
        .await?
        .into_iter()
        .map(|(k, r)| {
            serde_json::json!({
                "lease": k,
                "vm": r.as_ref().map(|r| r.vm.clone()),
                "disk": r.as_ref().map(|r| r.disk),
                "started_ms": r.as_ref().map(|r| r.started_ms),
                "refreshed_ms": r.as_ref().map(|r| r.refreshed_ms),
            })
        })
        .collect();
    if json {
        let v = serde_json::json!({ "syncs": rows, "usage": usage, "leases": leases });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut syncs = Table::new(&[
        "VM",
        "DISK",
        "SYNC",
        "PARENT",
        "SIZE",
        "CREATED (UTC)",
        "SHA-256",
    ]);
    for r in &rows {
        syncs.row(vec![
            r["vm"].as_str().unwrap_or("").to_string(),
            r["disk"].to_string(),
            r["sync"].as_str().unwrap_or("").to_string(),
            r["parent"].as_str().unwrap_or("-").to_string(),
            r["disk_size"].as_u64().map_or("?".into(), mib),
            r["created_ms"].as_u64().map_or("?".into(), utc_stamp),
            r["raw_sha256"]
                .as_str()
                .map_or("-".into(), |h| format!("{}…", &h[..h.len().min(16)])),
        ]);
    }
    if rows.is_empty() {
        println!("no syncs kept in {}", store.describe());
    } else {
        syncs.print();
    }
    println!();
    let mut vms = Table::new(&["VM", "DISKS", "SYNCS", "LOGICAL", "REFERENCED", "UNIQUE"]);
    for v in &usage.vms {
        vms.row(vec![
            v.vm.clone(),
            v.disks.to_string(),
            v.syncs.to_string(),
            mib(v.logical_bytes),
            mib(v.referenced_bytes),
            mib(v.unique_bytes),
        ]);
    }
    if !usage.vms.is_empty() {
        vms.print();
    }
    let ratio = if usage.stored_bytes > 0 {
        usage.logical_bytes_all_syncs as f64 / usage.stored_bytes as f64
    } else {
        1.0
    };
    println!(
        "store: {} VMs, {} syncs; logical {} (newest syncs), {} (all syncs); stored {} in {} chunks; {ratio:.2}x",
        usage.vms.len(),
        usage.syncs,
        mib(usage.logical_bytes),
        mib(usage.logical_bytes_all_syncs),
        mib(usage.stored_bytes),
        usage.chunks
    );
    for l in &leases {
        println!(
            "in progress: {} disk {} since {}{}",
            l["vm"].as_str().unwrap_or("?"),
            l["disk"],
            l["started_ms"].as_u64().map_or("?".into(), utc_stamp),
            l["refreshed_ms"]
                .as_u64()
                .filter(|r| now.saturating_sub(*r) > 5 * 60 * 1000)
                .map_or(String::new(), |_| " (stale: its writer is gone)".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A text table: a header, then rows, each column padded to its widest cell (two spaces
/// between columns, the last column not padded).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < r.len() {
                    let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_the_header() {
        let mut t = Table::new(&["VM", "DISK", "SIZE"]);
        t.row(vec!["web-01".into(), "0".into(), "1.0 MiB".into()]);
        t.row(vec!["db".into(), "12".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "VM      DISK  SIZE\nweb-01  0     1.0 MiB\ndb      12    -\n"
        );
    }
}
