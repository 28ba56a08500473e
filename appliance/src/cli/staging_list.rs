//! `godwit staging list`: the syncs kept, then per VM and for the whole store the logical bytes
//! (what copies would hold) against the bytes stored (chunks, compressed, each stored once
//! however many VMs and syncs name it), and the syncs in progress.

use godwit_transfer::index::{SyncIndex, now_ms, utc_stamp};
use godwit_transfer::store::Store;
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
    for r in &rows {
        println!(
            "{}\t{}\t{}\t{}",
            r["vm"].as_str().unwrap_or(""),
            r["disk"],
            r["sync"].as_str().unwrap_or(""),
            r["disk_size"]
        );
    }
    println!();
    println!("VM\tDISKS\tSYNCS\tLOGICAL\tREFERENCED\tUNIQUE");
    for v in &usage.vms {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            v.vm,
            v.disks,
            v.syncs,
            mib(v.logical_bytes),
            mib(v.referenced_bytes),
            mib(v.unique_bytes)
        );
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
