//! Helpers for the VHD / VHDX tests: running qemu-img / qemu-io / libvhdi, flattening images with
//! our reader, comparing files. `mod common;` in each `vhd_*` / `vhdx_*` test;
//! each uses a part of it.
#![allow(dead_code)]

use godwit_disk::layer::BlockSource;
use godwit_disk::write::{OutputFormat, write_image};
use godwit_disk::{Disk, Error};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Run a program that must succeed; returns stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (install tests/deps/*.apt): {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code of a program (for `qemu-img compare`).
pub fn run_code(prog: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn qemu_img(args: &[&str]) -> String {
    run_ok("qemu-img", args)
}

/// `qemu-io -f FMT FILE -c CMD...`
pub fn qemu_io(fmt: &str, file: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(file);
    run_ok("qemu-io", &args);
}

/// Virtual size as `qemu-img info` reports it.
pub fn qemu_virtual_size(fmt: &str, file: &str) -> u64 {
    let out = qemu_img(&["info", "-f", fmt, "--output=json", file]);
    // The top-level key (children's file layers are indented deeper).
    let key = "\n    \"virtual-size\":";
    let at = out.find(key).expect("virtual-size in qemu-img info") + key.len();
    out[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .expect("number")
}

/// A 64 MiB raw disk with patterns that exercise block edges: data at 0, a partial sector
/// pattern, explicit zeros, data straddling 32 MiB, the last MiB, and incompressible data.
pub fn pattern_raw(dir: &Path, name: &str, size: u64) -> String {
    let f = p(dir, name);
    qemu_img(&["create", "-q", "-f", "raw", &f, &size.to_string()]);
    let mut cmds = vec![
        "write -P 0xab 0 1M".to_string(),
        "write -P 0xcd 4M 64k".to_string(),
        "write -P 0xef 10486272 512".to_string(),
        "write -P 0x00 20M 1M".to_string(),
        "write -P 0x5a 33488896 65536".to_string(),
        "write -P 0x5b 33554432 4096".to_string(),
    ];
    if size >= 64 << 20 {
        cmds.push(format!("write -P 0x11 {} 1048576", size - (1 << 20)));
    }
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io("raw", &f, &cmds);
    // Deterministic pseudo-random bytes at 30 MiB (2 MiB).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..(2 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.write_all_at(&bytes, 30 << 20).unwrap();
    f
}

/// Flatten `image` with our reader into `out` (a sparse raw file).
pub fn ours_to_raw(image: &str, out: &str) -> Result<u64, Error> {
    let disk = Disk::open(image)?;
    let f = File::create(out).unwrap();
    godwit_disk::write::raw::write_sparse_file(&disk, &f, out)?;
    Ok(disk.virtual_size())
}

/// Flatten with qemu.
pub fn qemu_to_raw(fmt: &str, image: &str, out: &str) {
    qemu_img(&["convert", "-f", fmt, "-O", "raw", image, out]);
}

/// Two raw files must have the same length and bytes. `qemu-img compare` does the byte
/// comparison: it skips holes (reading holes is slow here), and names the first difference.
pub fn assert_same_file(a: &str, b: &str) {
    let la = std::fs::metadata(a).unwrap().len();
    let lb = std::fs::metadata(b).unwrap().len();
    assert_eq!(la, lb, "{a} is {la} bytes, {b} is {lb}");
    let (code, text) = run_code("qemu-img", &["compare", "-f", "raw", "-F", "raw", a, b]);
    assert_eq!(code, 0, "{a} and {b} differ: {text}");
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

/// Our flat read of `image` must equal qemu's, and the sizes must match.
pub fn assert_reads_like_qemu(fmt: &str, image: &str, dir: &Path) {
    let ours = format!("{image}.ours.raw");
    let theirs = format!("{image}.qemu.raw");
    let size = ours_to_raw(image, &ours).unwrap_or_else(|e| panic!("{image}: {e}"));
    qemu_to_raw(fmt, image, &theirs);
    assert_eq!(size, qemu_virtual_size(fmt, image), "{image}: virtual size");
    assert_same_file(&ours, &theirs);
    let _ = dir;
    let _ = std::fs::remove_file(ours);
    let _ = std::fs::remove_file(theirs);
}

/// Write `src` (an image we read) as `format` into `out`.
pub fn ours_convert(src: &str, format: OutputFormat, out: &str) {
    let disk = Disk::open(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let mut w = BufWriter::new(File::create(out).unwrap());
    write_image(&disk, format, &mut w).unwrap_or_else(|e| panic!("{src} -> {out}: {e}"));
}

/// Write `src` as `format` into the local file `out` the way `godwit disk convert` does
/// (positional writes: dynamic VHD/VHDX leave all-zero blocks unallocated).
pub fn ours_convert_file(src: &str, format: OutputFormat, out: &str) {
    let disk = Disk::open(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let f = File::create(out).unwrap();
    godwit_disk::write::write_image_to_file(&disk, format, &Default::default(), &f, out)
        .unwrap_or_else(|e| panic!("{src} -> {out}: {e}"));
}

/// A fully allocated raw file (every byte written, zeros included) of `size` bytes with a
/// little data at `marks` (offset, length, byte): a thick disk whose map is all data.
pub fn thick_raw(path: &str, size: usize, marks: &[(usize, usize, u8)]) {
    let mut bytes = vec![0u8; size];
    for &(at, len, v) in marks {
        bytes[at..at + len].fill(v);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Python with libyal's bindings (Debian's, not pyenv's).
pub const SYS_PYTHON: &str = "/usr/bin/python3";

/// SHA-256 of what libvhdi reads from `image` (with `parents` given top-down after it, which
/// libvhdi needs set explicitly), and its media size.
pub fn libvhdi_read(image: &str, parents: &[&str]) -> (u64, String) {
    let script = r#"
import sys, hashlib, pyvhdi
files = [pyvhdi.file() for _ in sys.argv[1:]]
for f, name in zip(files, sys.argv[1:]):
    f.open(name)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
f = files[0]
size = f.get_media_size()
h = hashlib.sha256()
off = 0
while off < size:
    n = min(1 << 20, size - off)
    f.seek(off)
    h.update(f.read(n))
    off += n
print(size, h.hexdigest())
"#;
    let mut args = vec!["-c", script, image];
    args.extend_from_slice(parents);
    let out = run_ok(SYS_PYTHON, &args);
    let mut it = out.split_whitespace();
    let size = it.next().unwrap().parse().unwrap();
    (size, it.next().unwrap().to_string())
}

pub fn sha256_file(path: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut f, &mut buf);
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

pub fn pathbuf(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Write what libvhdi reads from `image` (parents as in [`libvhdi_read`]) to `out`.
pub fn libvhdi_dump(image: &str, parents: &[&str], out: &str) {
    let script = r#"
import sys, pyvhdi
out = sys.argv[1]
files = [pyvhdi.file() for _ in sys.argv[2:]]
for f, name in zip(files, sys.argv[2:]):
    f.open(name)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
f = files[0]
size = f.get_media_size()
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        f.seek(off)
        o.write(f.read(n))
        off += n
"#;
    let mut args = vec!["-c", script, out, image];
    args.extend_from_slice(parents);
    run_ok(SYS_PYTHON, &args);
}
