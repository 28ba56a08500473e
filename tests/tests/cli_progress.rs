//! What an operator and a script see of long commands (#18 "Command line"): `--json` progress
//! events (monotonic, ending at a total that is the allocated bytes, not the virtual size) for
//! `replicate`, `export`, `disk convert` and `staging verify`; a progress line on a terminal and
//! nothing when stderr is piped; `staging list` as a table; `disk convert` refusing a file that
//! is not a disk image. qemu-img is the reference for what is allocated and for the content.

use godwit_tests::cli::{check_progress, progress_events, qemu_allocated, run_on_pty};
use godwit_tests::peers::{godwit_bin, have, run, run_ok};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn need(tools: &[&str]) {
    for t in tools {
        assert!(have(t), "{t} is not installed: run `make deps`");
    }
}

/// A 64 MiB sparse raw image with 12 MiB of random data: 8 MiB at 4 MiB and 4 MiB at 40 MiB
/// (chunk-aligned, so the export reads exactly the same amount).
fn sparse_image(path: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg("64M"),
    );
    for (seek, count) in [(4, 8), (40, 4)] {
        run_ok(Command::new("dd").args([
            "if=/dev/urandom".to_string(),
            format!("of={}", path.display()),
            "bs=1M".into(),
            format!("seek={seek}"),
            format!("count={count}"),
            "conv=notrunc".into(),
            "status=none".into(),
        ]));
    }
}

fn godwit(args: &[&str]) -> Command {
    let mut c = Command::new(godwit_bin());
    c.args(args);
    c
}

fn replicate_cmd(src: &Path, store: &str, vm: &str, extra: &[&str]) -> Command {
    let mut c = godwit(&["replicate", "--vm", vm, "--target", store, "--source"]);
    c.arg(format!("file://{}", src.display())).args(extra);
    c
}

#[test]
fn json_progress_of_replicate_export_convert_and_verify_counts_allocated_bytes() {
    need(&["qemu-img", "dd"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse.raw");
    sparse_image(&src);
    // 12 MiB, and the block qemu-img create allocates at the start of a raw file.
    let allocated = qemu_allocated(&src, "raw");
    assert!(
        (12 * MIB..13 * MIB).contains(&allocated),
        "test image: {allocated}"
    );
    let store = format!("file://{}", tmp.path().join("store").display());

    // replicate: slowed to ~2 s so that events come while it runs.
    let out = run_ok(&mut replicate_cmd(
        &src,
        &store,
        "sparse",
        &["--json", "--bwlimit", "6M"],
    ));
    let (p, done) = progress_events(&out);
    assert!(p.len() >= 2, "expected several progress events: {out}");
    let total = check_progress(&p, "replicate");
    assert_eq!(total, allocated, "total is the allocated bytes, not 64 MiB");
    assert!(p.iter().all(|e| e["vm"] == "sparse" && e["disk"] == 0));
    assert_eq!(done.len(), 1, "{out}");
    assert_eq!(done[0]["bytes_total"].as_u64(), Some(allocated));
    assert_eq!(done[0]["bytes_done"].as_u64(), Some(allocated));
    assert!(done[0]["sync_id"].is_string(), "{}", done[0]);
    // The events are the first lines; the done event is the last line of stdout.
    assert_eq!(
        out.lines().last().map(|l| l.contains("\"done\"")),
        Some(true)
    );

    // export
    let raw = tmp.path().join("out.raw");
    let out = run_ok(
        godwit(&["export", "--json", "--vm", "sparse", "--format", "raw"])
            .args(["--target", &store, "--out"])
            .arg(&raw),
    );
    let (p, done) = progress_events(&out);
    // An export reads the sync's data chunks: the three 4 MiB chunks of random data.
    assert_eq!(check_progress(&p, "export"), 12 * MIB, "{out}");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["format"], "raw", "{out}");
    assert!(files_equal(&src, &raw));

    // disk convert, every output format
    for (fmt, qfmt) in [
        ("vmdk", "vmdk"),
        ("vhdx", "vhdx"),
        ("vhd", "vpc"),
        ("raw", "raw"),
    ] {
        let dst = tmp.path().join(format!("conv.{fmt}"));
        let out = run_ok(
            godwit(&["disk", "convert", "--json", "-O", fmt])
                .arg(&src)
                .arg(&dst),
        );
        let (p, done) = progress_events(&out);
        assert_eq!(check_progress(&p, "convert"), allocated, "{fmt}: {out}");
        assert_eq!(done.len(), 1, "{out}");
        assert_eq!(done[0]["data_bytes"].as_u64(), Some(allocated), "{out}");
        run_ok(
            Command::new("qemu-img")
                .args(["compare", "-q", "-f", "raw", "-F", qfmt])
                .arg(&src)
                .arg(&dst),
        );
    }

    // staging verify: the total is the bytes of the stored chunks it re-reads.
    let out = run_ok(&mut godwit(&[
        "staging", "verify", "--json", "--store", &store,
    ]));
    let (p, done) = progress_events(&out);
    let stored: u64 = walk_files(&tmp.path().join("store/chunks"));
    assert!(stored > 0);
    assert_eq!(check_progress(&p, "verify"), stored, "{out}");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["chunks_ok"].as_u64(), Some(3), "{out}");
}

fn files_equal(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .is_ok_and(|s| s.success())
}

fn walk_files(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            walk_files(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn a_progress_line_on_a_terminal_and_nothing_when_piped() {
    need(&["qemu-img", "dd", "python3"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse.raw");
    sparse_image(&src);
    let store = format!("file://{}", tmp.path().join("store").display());

    // On a terminal: the line names the disk and reaches 100 % of the allocated 12 MiB.
    let (o, tty) = run_on_pty(&replicate_cmd(&src, &store, "tty", &["--bwlimit", "8M"]));
    assert!(o.status.success(), "{tty}");
    assert!(tty.contains("tty disk 0"), "{tty:?}");
    assert!(tty.contains("100%"), "{tty:?}");
    assert!(tty.contains("12.00 MiB/12.00 MiB"), "{tty:?}");
    assert!(tty.contains("ETA") || tty.contains("done"), "{tty:?}");

    // Piped: stderr stays empty (the summary goes to stdout).
    let o = run(&mut replicate_cmd(
        &src,
        &store,
        "piped",
        &["--bwlimit", "8M"],
    ));
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "",
        "stderr not a terminal"
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("replicated piped disk 0"));

    // The same for export, convert and verify.
    let raw = tmp.path().join("e.raw");
    let mut export = godwit(&[
        "export", "--vm", "tty", "--format", "raw", "--target", &store,
    ]);
    export.arg("--out").arg(&raw);
    let mut convert = godwit(&["disk", "convert", "-O", "vhdx"]);
    convert.arg(&src).arg(tmp.path().join("c.vhdx"));
    let verify = godwit(&["staging", "verify", "--store", &store]);
    for (name, mut c) in [("export", export), ("convert", convert), ("verify", verify)] {
        let (o, tty) = run_on_pty(&c);
        assert!(o.status.success(), "{name}: {tty}");
        assert!(tty.contains("100%"), "{name}: {tty:?}");
        let o = run(&mut c);
        assert!(o.status.success(), "{name}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "{name}");
    }
}

#[test]
fn staging_list_is_a_table_with_a_header() {
    need(&["qemu-img", "dd"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse.raw");
    sparse_image(&src);
    let store = format!("file://{}", tmp.path().join("store").display());
    for vm in ["web-01", "database-server"] {
        run_ok(&mut replicate_cmd(&src, &store, vm, &[]));
    }
    let out = run_ok(&mut godwit(&["staging", "list", "--store", &store]));
    let lines: Vec<&str> = out.lines().collect();
    let header = lines[0];
    for col in [
        "VM",
        "DISK",
        "SYNC",
        "PARENT",
        "SIZE",
        "CREATED (UTC)",
        "SHA-256",
    ] {
        assert!(header.contains(col), "{out}");
    }
    // Rows are aligned under the header: each column starts where its heading does.
    let disk_col = header.find("DISK").unwrap();
    let size_col = header.find("SIZE").unwrap();
    let rows: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(&r[disk_col..=disk_col], "0", "{out}");
        assert!(r[size_col..].starts_with("64.0 MiB"), "{out}");
    }
    assert!(rows.iter().any(|r| r.starts_with("database-server ")));
    // The usage table has its header too.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("VM") && l.contains("LOGICAL") && l.contains("UNIQUE")),
        "{out}"
    );
    // --json: one object with the syncs.
    let v: Value = serde_json::from_str(
        run_ok(&mut godwit(&[
            "staging", "list", "--json", "--store", &store,
        ]))
        .trim(),
    )
    .unwrap();
    assert_eq!(v["syncs"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn disk_convert_refuses_what_is_not_a_disk_image() {
    need(&["qemu-img"]);
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "These are my notes, not a disk.\nSecond line.\n").unwrap();
    let out = tmp.path().join("out.vmdk");
    let o = run(godwit(&["disk", "convert", "-O", "vmdk"])
        .arg(&text)
        .arg(&out));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&*text.to_string_lossy()),
        "names the file: {err}"
    );
    assert!(err.contains("not a disk image"), "{err}");
    assert!(
        err.contains("text (it begins \"These are my notes"),
        "says what: {err}"
    );
    assert!(err.contains("-f raw"), "says what to do: {err}");
    assert!(!out.exists(), "nothing written");

    // -f raw: converted as asked.
    run_ok(
        godwit(&["disk", "convert", "-f", "raw", "-O", "raw"])
            .arg(&text)
            .arg(tmp.path().join("forced.raw")),
    );
    assert!(files_equal(&text, &tmp.path().join("forced.raw")));

    // A qcow2 image is named as such.
    let q = tmp.path().join("disk.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("16M"),
    );
    let o = run(godwit(&["disk", "convert", "-O", "raw"]).arg(&q).arg(&out));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("qcow2"), "{err}");

    // An empty file too; a real (zero-filled) raw disk is not refused.
    let empty = tmp.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let o = run(godwit(&["disk", "convert", "-O", "raw"])
        .arg(&empty)
        .arg(&out));
    assert!(String::from_utf8_lossy(&o.stderr).contains("an empty file"));
    let blank = tmp.path().join("blank.img");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&blank)
            .arg("4M"),
    );
    run_ok(
        godwit(&["disk", "convert", "-O", "vhdx"])
            .arg(&blank)
            .arg(&out),
    );
}
