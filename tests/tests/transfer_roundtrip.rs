//! Replication round trips against the real `godwit` binary over TLS on loopback: every source
//! format the disk engine reads, compared with `qemu-img convert -O raw`; incremental runs that
//! send only changed chunks; change-tracked (CBT-style) runs; a direct `file://` store.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::staging::*;
use std::process::Command;

#[test]
fn every_readable_format_round_trips_through_staging() {
    need(&["qemu-img", "qemu-io"]);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.raw");
    make_raw(&base, "40M");
    write_random(&base, 1, 3);
    qemu_write(&base, "raw", 0x5a, 10 << 20, 1 << 20);
    qemu_write(&base, "raw", 0x33, (20 << 20) + 4096, 8192);
    write_random(&base, 39, 1);
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    let formats: &[(&str, &[&str], &str)] = &[
        ("raw", &[], "raw"),
        ("vmdk", &["-o", "subformat=monolithicSparse"], "vmdk"),
        ("vmdk", &["-o", "subformat=streamOptimized"], "stream.vmdk"),
        ("vpc", &["-o", "subformat=dynamic"], "vhd"),
        (
            "vpc",
            &["-o", "subformat=fixed", "-o", "force_size=on"],
            "fixed.vhd",
        ),
        ("vhdx", &[], "vhdx"),
    ];
    let mut tested = Vec::new();
    for (fmt, opts, ext) in formats {
        let src = tmp.path().join(format!("src.{ext}"));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", fmt])
                .args(*opts)
                .arg(&base)
                .arg(&src),
        );
        let info = run(Command::new(godwit_bin()).args(["disk", "info"]).arg(&src));
        assert!(
            info.status.success(),
            "godwit disk info {ext}: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        );
        let reference = tmp.path().join(format!("ref-{ext}.raw"));
        reference_raw(&src, fmt, &reference);
        let vm = format!("vm-{}", ext.replace('.', "-"));
        let r = replicate_staging(&srv, &src, &vm, &["--chunk-size", "1M", "--raw-sha256"]);
        let size = std::fs::metadata(&reference).unwrap().len();
        assert_eq!(r["disk_size"], size, "{r}");
        let out = tmp.path().join(format!("out-{ext}.raw"));
        let e = export_staging(&srv, &vm, "raw", &out, &[]);
        assert!(
            files_equal(&out, &reference),
            "{ext}: export differs from qemu-img convert -O raw"
        );
        let want = sha_of(&reference);
        assert_eq!(
            r["raw_sha256"],
            want.as_str(),
            "{ext}: replicate's raw sha256"
        );
        assert_eq!(e["raw_sha256"], want.as_str(), "{ext}: export's raw sha256");
        assert_eq!(e["verified"], true);
        tested.push(*ext);
    }
    assert!(tested.contains(&"raw"), "raw must always be tested");
    eprintln!("round-tripped: {tested:?}");
    // Identical content in every format: the chunks were stored once.
    let (n, _) = chunk_files(&tmp.path().join("staging"));
    assert!(
        n <= 6,
        "{n} chunks stored for one 40 MiB disk with 6 distinct data chunks"
    );
    let v = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "verify", "--data"])
            .arg(tmp.path().join("staging")),
    );
    assert!(v.contains("0 bad; "), "{v}");
}

#[test]
fn export_formats_read_back_by_qemu() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.raw");
    make_raw(&src, "24M");
    write_random(&src, 2, 2);
    write_random(&src, 17, 1);
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    replicate_staging(&srv, &src, "fmt", &["--chunk-size", "1M"]);
    for (format, qfmt) in [("vhd", "vpc"), ("vhdx", "vhdx"), ("vmdk", "vmdk")] {
        let out = tmp.path().join(format!("out.{format}"));
        let tf = token_file(tmp.path(), &srv.token);
        let o = run(Command::new(godwit_bin())
            .args([
                "export",
                "--json",
                "--vm",
                "fmt",
                "--format",
                format,
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
                "--token-file",
            ])
            .arg(&tf)
            .arg("--out")
            .arg(&out));
        assert!(
            o.status.success(),
            "export to {format}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        let back = tmp.path().join(format!("back-{format}.raw"));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", qfmt, "-O", "raw"])
                .arg(&out)
                .arg(&back),
        );
        assert!(
            files_equal(&back, &src),
            "{format} export read back by qemu-img differs"
        );
        let e = last_json(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(e["raw_sha256"], sha_of(&src).as_str());
    }
}

#[test]
fn incremental_sends_only_changed_chunks_and_keeps_old_syncs() {
    need(&["qemu-img", "qemu-io"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("disk.raw");
    make_raw(&src, "256M");
    write_random(&src, 0, 128);
    let v1 = tmp.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    let full = replicate_staging(&srv, &src, "inc", &["--chunk-size", "1M"]);
    assert_eq!(full["chunks_new"], 128, "{full}");
    assert_eq!(full["chunks_zero"], 128, "{full}");
    // A repeat with nothing changed sends nothing.
    let same = replicate_staging(&srv, &src, "inc", &["--chunk-size", "1M"]);
    assert_eq!(same["bytes_sent"], 0, "{same}");
    assert_eq!(same["parent"], full["sync_id"]);
    // Change 1 % of the chunks (3 of 256): two data chunks and one empty one.
    let changes = [(5u64 << 20) + 100, (77 << 20) + 4096, 200 << 20];
    for (k, off) in changes.iter().enumerate() {
        qemu_write(&src, "raw", 0x41 + u8::try_from(k).unwrap(), *off, 4096);
    }
    let inc = replicate_staging(&srv, &src, "inc", &["--chunk-size", "1M"]);
    assert_eq!(inc["chunks_new"], 3, "{inc}");
    let sent = inc["bytes_sent"].as_u64().unwrap();
    assert!(
        sent * 1000 <= 15 * (256 << 20),
        "incremental sent {sent} bytes, more than 1.5 % of the disk"
    );
    // The newest sync is the changed disk, the first one is still the original.
    let out = tmp.path().join("latest.raw");
    export_staging(&srv, "inc", "raw", &out, &[]);
    assert!(files_equal(&out, &src));
    let old = tmp.path().join("old.raw");
    export_staging(
        &srv,
        "inc",
        "raw",
        &old,
        &["--sync", full["sync_id"].as_str().unwrap()],
    );
    assert!(files_equal(&old, &v1));

    // Change tracking: hand in the changed ranges, only those chunks are read.
    qemu_write(&src, "raw", 0x77, (90 << 20) + 512, 1024);
    let ranges = tmp.path().join("ranges.txt");
    std::fs::write(&ranges, format!("{} 1024\n", (90 << 20) + 512)).unwrap();
    let cbt = replicate_staging(
        &srv,
        &src,
        "inc",
        &[
            "--chunk-size",
            "1M",
            "--changed-ranges",
            ranges.to_str().unwrap(),
        ],
    );
    assert_eq!(cbt["chunks_carried"], 255, "{cbt}");
    assert!(cbt["bytes_read"].as_u64().unwrap() <= 1 << 20, "{cbt}");
    assert!(cbt["raw_sha256"].is_null());
    let out2 = tmp.path().join("cbt.raw");
    let e = export_staging(&srv, "inc", "raw", &out2, &[]);
    assert!(
        files_equal(&out2, &src),
        "change-tracked sync differs from the source"
    );
    assert_eq!(e["verified"], false);
    assert_eq!(e["raw_sha256"], sha_of(&src).as_str());
}

#[test]
fn direct_file_store_gc_and_verify() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "16M");
    write_random(&src, 0, 4);
    let store = tmp.path().join("data");
    let url = format!("file://{}", store.join("store").display());
    let rep = |extra: &[&str]| {
        last_json(&run_ok(
            Command::new(godwit_bin())
                .args([
                    "replicate",
                    "--json",
                    "--vm",
                    "direct",
                    "--chunk-size",
                    "1M",
                    "--target",
                    &url,
                    "--source",
                ])
                .arg(format!("file://{}", src.display()))
                .args(extra),
        ))
    };
    let a = rep(&[]);
    assert_eq!(a["chunks_new"], 4);
    write_random(&src, 0, 1);
    let b = rep(&[]);
    assert_eq!(b["chunks_new"], 1);
    let out = tmp.path().join("o.raw");
    run_ok(
        Command::new(godwit_bin())
            .args([
                "export", "--vm", "direct", "--format", "raw", "--target", &url, "--out",
            ])
            .arg(&out),
    );
    assert!(files_equal(&out, &src));
    // Both syncs reference 5 chunks: GC keeps them all. Delete the first index: GC frees one.
    let gc = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "gc", "--json", "--data"])
            .arg(&store),
    );
    let gc: serde_json::Value = serde_json::from_str(gc.trim()).unwrap();
    assert_eq!(gc["chunks_deleted"], 0, "{gc}");
    let first = store
        .join("store/syncs/direct/0")
        .join(format!("{}.idx", a["sync_id"].as_str().unwrap()));
    std::fs::remove_file(&first).unwrap();
    let gc = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "gc", "--json", "--data"])
            .arg(&store),
    );
    let gc: serde_json::Value = serde_json::from_str(gc.trim()).unwrap();
    assert_eq!(gc["chunks_deleted"], 1, "{gc}");
    // A sync in progress (a fresh lease) does not stop GC; the run names it as the lease that
    // what it set aside waits for (docs/store-format.md, "Concurrency").
    std::fs::create_dir_all(store.join("store/leases")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(
        store.join("store/leases/x.json"),
        format!(r#"{{"vm":"v","disk":0,"started_ms":{now},"refreshed_ms":{now}}}"#),
    )
    .unwrap();
    let gc = run_ok(
        Command::new(godwit_bin())
            .args(["staging", "gc", "--json", "--data"])
            .arg(&store),
    );
    assert!(gc.contains("leases/x.json"), "{gc}");
    let gc: serde_json::Value = serde_json::from_str(gc.trim()).unwrap();
    assert_eq!(
        (gc["chunks_kept"].as_u64(), gc["chunks_deleted"].as_u64()),
        (Some(4), Some(0)),
        "{gc}"
    );
    std::fs::remove_file(store.join("store/leases/x.json")).unwrap();
    // Verify finds a corrupted chunk.
    let ok = run(Command::new(godwit_bin())
        .args(["staging", "verify", "--data"])
        .arg(&store));
    assert!(ok.status.success());
    // The first stored chunk (gc may have left an emptied prefix directory behind).
    let f = std::fs::read_dir(store.join("store/chunks"))
        .unwrap()
        .flatten()
        .filter_map(|dir| std::fs::read_dir(dir.path()).ok())
        .flat_map(|files| files.flatten())
        .next()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    let bad = run(Command::new(godwit_bin())
        .args(["staging", "verify", "--data"])
        .arg(&store));
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
}

/// An export to a local dynamic VHD/VHDX leaves the blocks of a stored chunk that hold only
/// zeros unallocated (4 MiB chunks, 2 MiB blocks: a chunk with data in its first MiB only).
#[test]
fn file_exports_leave_zero_blocks_unallocated() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.raw");
    make_raw(&src, "16M");
    write_random(&src, 8, 1);
    let srv = Server::start(&tmp.path().join("staging"), "127.0.0.1:0", &[]);
    replicate_staging(&srv, &src, "holes", &["--chunk-size", "4M"]);
    let tf = token_file(tmp.path(), &srv.token);
    for (format, qfmt) in [("vhd", "vpc"), ("vhdx", "vhdx")] {
        let out = tmp.path().join(format!("holes.{format}"));
        run_ok(
            Command::new(godwit_bin())
                .args(["export", "--json", "--vm", "holes", "--format", format])
                .args(["--target", &srv.url(), "--target-fingerprint"])
                .arg(&srv.fingerprint)
                .arg("--token-file")
                .arg(&tf)
                .arg("--out")
                .arg(&out),
        );
        // qemu reports allocation for VHD (`qemu-img map`), but its VHDX driver has no block
        // status and calls every byte data; there the file's growth over a VHDX of an all-zero
        // disk of the same size (same metadata regions, no block) tells.
        let allocated = if format == "vhdx" {
            let zero_raw = tmp.path().join("zero.raw");
            let zero_vhdx = tmp.path().join("zero.vhdx");
            make_raw(&zero_raw, "16M");
            run_ok(
                Command::new(godwit_bin())
                    .args(["disk", "convert", "-O", "vhdx"])
                    .arg(&zero_raw)
                    .arg(&zero_vhdx),
            );
            let len = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
            len(&out).saturating_sub(len(&zero_vhdx))
        } else {
            let map = run_ok(
                Command::new("qemu-img")
                    .args(["map", "--output=json", "-f", qfmt])
                    .arg(&out),
            );
            let runs: serde_json::Value = serde_json::from_str(&map).unwrap();
            runs.as_array()
                .unwrap()
                .iter()
                .filter(|r| r["data"] == true)
                .map(|r| r["length"].as_u64().unwrap())
                .sum()
        };
        assert!(
            allocated <= 2 << 20,
            "{format}: {allocated} bytes allocated for 1 MiB of data in a 4 MiB chunk"
        );
        let back = tmp.path().join(format!("holes-{format}.raw"));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", qfmt, "-O", "raw"])
                .arg(&out)
                .arg(&back),
        );
        assert!(files_equal(&back, &src), "{format} export differs");
    }
}
