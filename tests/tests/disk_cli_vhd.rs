//! VHD and VHDX through the `godwit disk` command line, with qemu-img / qemu-io as generator
//! and reference and libvhdi (pyvhdi) as a second reader of what we write:
//! - `godwit disk convert -O raw` of every VHD/VHDX subformat qemu-img makes (including a
//!   fixed VHD whose file is sparse) is byte-identical to `qemu-img convert -O raw`;
//! - `godwit disk convert -O vhd|vhdx` of a thick source (every byte allocated, mostly zeros)
//!   leaves the all-zero blocks out, passes `qemu-img check` (VHDX) and `qemu-img compare`, and
//!   libvhdi reads the source's bytes;
//! - `godwit disk compare` agrees with `qemu-img compare` on VHD/VHDX pairs;
//! - an OS error (a missing file) is printed once.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_tests::peers::{godwit_bin, have, run, run_ok, sha256_file};
use std::path::PathBuf;
use std::process::{Command, Output};

const MIB: usize = 1 << 20;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        for tool in ["qemu-img", "qemu-io", "cmp", "/usr/bin/python3"] {
            assert!(
                have(tool),
                "{tool} is missing: run `make deps` (tests/deps/disk.apt)"
            );
        }
        Dir(tempfile::Builder::new()
            .prefix("godwit-vhd-")
            .tempdir()
            .expect("tempdir"))
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new(prog);
        c.args(args).current_dir(self.0.path());
        c
    }
    fn qemu_img(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd("qemu-img", args))
    }
    fn qemu_io(&self, fmt: &str, file: &str, cmds: &[&str]) {
        let mut c = self.cmd("qemu-io", &["-f", fmt]);
        for x in cmds {
            c.args(["-c", x]);
        }
        c.arg(file);
        run_ok(&mut c);
    }
    fn godwit(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(godwit_bin(), args))
    }
    fn godwit_ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd(godwit_bin(), args))
    }
    fn len(&self, name: &str) -> usize {
        std::fs::metadata(self.p(name)).expect("stat").len() as usize
    }
}

/// 64 MiB raw with patterns on block edges (1, 2, 8 and 32 MiB), explicit zeros and noise.
fn pattern_raw(d: &Dir) {
    d.qemu_img(&["create", "-q", "-f", "raw", "base.raw", "64M"]);
    d.qemu_io(
        "raw",
        "base.raw",
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 4M 64k",
            "write -P 0xef 10486272 512",
            "write -P 0x00 20M 1M",
            "write -P 0x5a 33488896 65536",
            "write -P 0x5b 33554432 4096",
            "write -P 0x11 63M 1M",
        ],
    );
}

fn assert_raw_like_qemu(d: &Dir, fmt: &str, img: &str) {
    let ours = format!("{img}.ours.raw");
    let theirs = format!("{img}.qemu.raw");
    d.godwit_ok(&["disk", "convert", "-O", "raw", img, &ours]);
    d.qemu_img(&["convert", "-f", fmt, "-O", "raw", img, &theirs]);
    let out = run(&mut d.cmd("cmp", &[&ours, &theirs]));
    assert!(
        out.status.success(),
        "{img}: our raw differs from qemu's: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn convert_to_raw_is_byte_identical_to_qemu() {
    let d = Dir::new();
    pattern_raw(&d);
    for (fmt, name, opts) in [
        ("vpc", "dyn.vhd", "subformat=dynamic"),
        ("vpc", "dyn_fs.vhd", "subformat=dynamic,force_size=on"),
        ("vpc", "fixed.vhd", "subformat=fixed"),
        ("vhdx", "dyn.vhdx", "subformat=dynamic"),
        ("vhdx", "bs1m.vhdx", "block_size=1M"),
        ("vhdx", "fixed.vhdx", "subformat=fixed"),
    ] {
        d.qemu_img(&[
            "convert", "-f", "raw", "-O", fmt, "-o", opts, "base.raw", name,
        ]);
        assert_raw_like_qemu(&d, fmt, name);
    }
    // A fixed VHD is raw data plus a footer; written sparse by qemu, its holes stay holes in
    // our raw output (the copy follows the source's allocation).
    let info: serde_json::Value =
        serde_json::from_str(&d.godwit_ok(&["disk", "info", "--json", "fixed.vhd"])).expect("json");
    assert_eq!(info["subformat"], "fixed", "{info}");
    d.godwit_ok(&["disk", "convert", "-O", "raw", "fixed.vhd", "fixed.raw"]);
    let used = std::fs::metadata(d.p("fixed.raw")).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert!(
        (used.blocks() as usize) * 512 < 32 * MIB,
        "raw from a sparse fixed VHD uses {} bytes",
        used.blocks() * 512
    );
}

/// SHA-256 of what libvhdi reads from `image`.
fn libvhdi_sha(d: &Dir, image: &str) -> String {
    let script = r#"
import sys, hashlib, pyvhdi
f = pyvhdi.file()
f.open(sys.argv[1])
size = f.get_media_size()
h = hashlib.sha256()
off = 0
while off < size:
    n = min(1 << 20, size - off)
    f.seek(off)
    h.update(f.read(n))
    off += n
print(h.hexdigest())
"#;
    run_ok(&mut d.cmd("/usr/bin/python3", &["-c", script, image]))
        .trim()
        .to_string()
}

#[test]
fn thick_source_converts_to_small_dynamic_images() {
    let d = Dir::new();
    // Every byte written: the raw reader maps it all as data.
    let mut bytes = vec![0u8; 64 * MIB];
    bytes[5 * MIB..5 * MIB + 4096].fill(0x42);
    bytes[40 * MIB + 512..40 * MIB + 1024].fill(0x43);
    std::fs::write(d.p("thick.raw"), &bytes).expect("write");
    let want = sha256_file(&d.p("thick.raw"));
    for (out_fmt, qfmt, name, limit) in [
        ("vhd", "vpc", "thin.vhd", 5 * MIB),
        ("vhdx", "vhdx", "thin.vhdx", 8 * MIB),
    ] {
        d.godwit_ok(&["disk", "convert", "-O", out_fmt, "thick.raw", name]);
        let len = d.len(name);
        assert!(len <= limit, "{name} is {len} bytes");
        if qfmt == "vhdx" {
            let out = d.qemu_img(&["check", "-f", "vhdx", name]);
            assert!(out.contains("No errors"), "qemu-img check {name}: {out}");
        }
        d.qemu_img(&["compare", "-f", "raw", "-F", qfmt, "thick.raw", name]);
        assert_eq!(libvhdi_sha(&d, name), want, "libvhdi read of {name}");
        // Converting again over the existing, larger output replaces it.
        d.godwit_ok(&[
            "disk",
            "convert",
            "-O",
            out_fmt,
            "-o",
            "subformat=fixed",
            "thick.raw",
            name,
        ]);
        assert!(d.len(name) > 64 * MIB);
        d.godwit_ok(&["disk", "convert", "-O", out_fmt, "thick.raw", name]);
        assert_eq!(d.len(name), len, "{name} rewritten");
        d.qemu_img(&["compare", "-f", "raw", "-F", qfmt, "thick.raw", name]);
    }
}

#[test]
fn compare_agrees_with_qemu() {
    let d = Dir::new();
    pattern_raw(&d);
    d.qemu_img(&["convert", "-f", "raw", "-O", "vpc", "base.raw", "a.vhd"]);
    d.qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "base.raw", "a.vhdx"]);
    d.qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "base.raw", "b.vhdx"]);
    d.qemu_io("vhdx", "b.vhdx", &["write -P 0x99 33554944 100"]);
    d.qemu_img(&["create", "-q", "-f", "vhdx", "empty.vhdx", "64M"]);
    for (a, b) in [
        ("base.raw", "a.vhdx"),
        ("a.vhdx", "b.vhdx"),
        ("a.vhdx", "empty.vhdx"),
        ("b.vhdx", "a.vhdx"),
    ] {
        let q = run(&mut d.cmd("qemu-img", &["compare", a, b]));
        let g = d.godwit(&["disk", "compare", a, b]);
        assert_eq!(g.status.code(), q.status.code(), "{a} vs {b}");
        assert_eq!(
            String::from_utf8_lossy(&g.stdout),
            String::from_utf8_lossy(&q.stdout),
            "{a} vs {b}: messages differ"
        );
    }
    // qemu's VHD sizes come from CHS geometry; ours agree with it, content equal.
    let q = run(&mut d.cmd("qemu-img", &["compare", "a.vhd", "a.vhdx"]));
    let g = d.godwit(&["disk", "compare", "a.vhd", "a.vhdx"]);
    assert_eq!(g.status.code(), q.status.code());
}

#[test]
fn an_os_error_is_printed_once() {
    let d = Dir::new();
    for cmd in [
        &["disk", "info", "missing.vhdx"][..],
        &["disk", "convert", "-O", "raw", "missing.vhd", "out.raw"],
    ] {
        let out = d.godwit(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("missing.vh"), "{err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{cmd:?}: {err}"
        );
    }
}
