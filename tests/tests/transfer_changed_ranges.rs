//! Incrementals of a file source, with and without the changed ranges handed in
//! (`godwit replicate --changed-ranges FILE`, what a CBT/RCT-aware source passes): with them
//! only the chunks they touch are read and hashed; without them every allocated byte is read
//! and hashed again and the report says how much of it had not changed. Only allocated data is
//! hashed unless `--raw-sha256` asks for the whole disk. Every sync is exported and compared
//! with `qemu-img convert -O raw` of the source.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::staging::*;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn replicate(src: &Path, url: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let o = run(Command::new(godwit_bin())
        .args([
            "replicate",
            "--json",
            "--vm",
            "cr",
            "--chunk-size",
            "1M",
            "--target",
            url,
            "--source",
        ])
        .arg(format!("file://{}", src.display()))
        .args(extra));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "replicate failed: {stderr}");
    (last_json(&String::from_utf8_lossy(&o.stdout)), stderr)
}

/// Export the newest sync as raw and compare it with qemu-img's raw of the VMDK source.
fn export_equals_qemu(dir: &Path, url: &str, src: &Path, name: &str) {
    let out = dir.join(format!("{name}.raw"));
    run_ok(
        Command::new(godwit_bin())
            .args([
                "export", "--vm", "cr", "--format", "raw", "--target", url, "--out",
            ])
            .arg(&out),
    );
    let reference = dir.join(format!("{name}-qemu.raw"));
    reference_raw(src, "vmdk", &reference);
    assert!(
        files_equal(&out, &reference),
        "{name}: export differs from qemu-img convert -O raw"
    );
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn changed_ranges_read_and_hash_only_the_chunks_they_touch() {
    need(&["qemu-img", "qemu-io"]);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.raw");
    make_raw(&base, "64M");
    write_random(&base, 0, 8);
    write_random(&base, 40, 8);
    let src = tmp.path().join("src.vmdk");
    run_ok(
        Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=monolithicSparse",
            ])
            .arg(&base)
            .arg(&src),
    );
    let url = format!("file://{}", tmp.path().join("store").display());

    // Full: only the 16 MiB of allocated data is read and hashed; no whole-disk hash.
    let (full, _) = replicate(&src, &url, &[]);
    assert_eq!(n(&full, "chunks_new"), 16, "{full}");
    assert_eq!(n(&full, "bytes_read"), 16 * MIB, "{full}");
    assert_eq!(n(&full, "bytes_hashed"), 16 * MIB, "{full}");
    assert_eq!(n(&full, "bytes_unchanged"), 0, "{full}");
    assert!(full["raw_sha256"].is_null(), "{full}");
    export_equals_qemu(tmp.path(), &url, &src, "full");

    // Two changes: inside allocated data (chunk 3) and in a hole (chunk 20, newly allocated).
    qemu_write(&src, "vmdk", 0x61, 3 * MIB + 512, 4096);
    qemu_write(&src, "vmdk", 0x62, 20 * MIB, 8192);
    let ranges = tmp.path().join("ranges.txt");
    std::fs::write(
        &ranges,
        format!(
            "# offset length\n{} 4096\n{} 8192\n",
            3 * MIB + 512,
            20 * MIB
        ),
    )
    .unwrap();
    let (cbt, _) = replicate(&src, &url, &["--changed-ranges", ranges.to_str().unwrap()]);
    assert_eq!(n(&cbt, "chunks_carried"), 62, "{cbt}");
    assert_eq!(n(&cbt, "chunks_new"), 2, "{cbt}");
    // Chunk 3 is all data; chunk 20 holds one 64 KiB grain.
    assert_eq!(n(&cbt, "bytes_read"), MIB + 64 * 1024, "{cbt}");
    assert_eq!(n(&cbt, "bytes_hashed"), 2 * MIB, "{cbt}");
    assert_eq!(n(&cbt, "bytes_unchanged"), 0, "{cbt}");
    assert_eq!(cbt["parent"], full["sync_id"], "{cbt}");
    export_equals_qemu(tmp.path(), &url, &src, "cbt");

    // Without the ranges every allocated byte is read and hashed again, and the report says
    // how much of it had not changed (all but the one changed chunk).
    qemu_write(&src, "vmdk", 0x63, 41 * MIB, 4096);
    let (plain, stderr) = replicate(&src, &url, &[]);
    assert_eq!(n(&plain, "chunks_new"), 1, "{plain}");
    assert_eq!(n(&plain, "bytes_read"), 16 * MIB + 64 * 1024, "{plain}");
    assert_eq!(n(&plain, "bytes_hashed"), 17 * MIB, "{plain}");
    // Unchanged: 15 whole data chunks and chunk 20's one 64 KiB grain, counted as read (the
    // report once counted chunk lengths here: "16 MiB of the 16.1 MiB read had not changed").
    assert_eq!(
        n(&plain, "bytes_unchanged"),
        15 * MIB + 64 * 1024,
        "{plain}"
    );
    assert!(
        n(&plain, "bytes_unchanged") <= n(&plain, "bytes_read"),
        "{plain}"
    );
    assert!(
        plain["seconds_unchanged"].as_f64().unwrap() > 0.0,
        "{plain}"
    );
    assert!(
        stderr.contains("had not changed since sync") && stderr.contains("--changed-ranges"),
        "no re-hash cost reported: {stderr}"
    );
    export_equals_qemu(tmp.path(), &url, &src, "plain");
}

#[test]
fn raw_sha256_only_when_asked_and_checked_by_export() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "8M");
    write_random(&src, 2, 1);
    let url = format!("file://{}", tmp.path().join("store").display());
    let (r, _) = replicate(&src, &url, &["--raw-sha256"]);
    assert_eq!(r["raw_sha256"], sha_of(&src).as_str(), "{r}");
    // The chunk names still cover only the allocated data.
    assert_eq!(n(&r, "bytes_hashed"), MIB, "{r}");
    let out = tmp.path().join("o.raw");
    let e = last_json(&run_ok(
        Command::new(godwit_bin())
            .args([
                "export", "--json", "--vm", "cr", "--format", "raw", "--target", &url, "--out",
            ])
            .arg(&out),
    ));
    assert_eq!(e["verified"], true, "{e}");
    assert!(files_equal(&out, &src));
}
