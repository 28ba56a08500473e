//! The appliance image the image tests boot: built once per godwit binary with `godwit image
//! build` (rootless, Debian packages) under `<target>/tmp/godwit-image/`, and shared by every
//! image test binary. A lock file serializes builds, so tests may run in parallel.

use crate::peers::{godwit_bin, have, run_ok};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn tmp_root() -> PathBuf {
    crate::peers::target_dir().join("tmp/godwit-image")
}

pub fn need_tools() {
    for t in [
        "qemu-system-x86_64",
        "qemu-img",
        "mkfs.fat",
        "mcopy",
        "syslinux",
        "sgdisk",
        "mkfs.ext4",
        "resize2fs",
        "cpio",
        "zstd",
        "depmod",
        "faketime",
        "xorriso",
        "curl",
        "tar",
        "go",
    ] {
        assert!(
            have(t),
            "{t} is missing: run `make deps` (tests/deps/image.apt)"
        );
    }
}

/// Build into `name` (under the shared temp root) with the test's godwit binary, unless an
/// image built from this same binary is there already.
pub fn build(name: &str) -> PathBuf {
    need_tools();
    let root = tmp_root();
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    lock.lock().expect("locking the image build");
    let out = root.join(name);
    let sums = out.join("SHA256SUMS");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(img), Some(bin)) = (fresh(&sums), fresh(&godwit_bin()))
        && img > bin
    {
        return out;
    }
    let _ = std::fs::remove_dir_all(&out);
    let cache = root.join("cache");
    run_ok(
        Command::new(godwit_bin())
            .args(["image", "build", "--out"])
            .arg(&out)
            .arg("--cache")
            .arg(&cache)
            .arg("--godwit-bin")
            .arg(godwit_bin())
            .args(["--version", "0.0.0-test"])
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    // The OVA's disk, extracted with tar (the same bytes vSphere reads).
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(out.join("godwit.ova"))
            .arg("-C")
            .arg(&out),
    );
    out
}

/// The shared image (`godwit.ova`, its extracted `godwit-disk1.vmdk`, `godwit.vhdx`).
pub fn image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| build("a"))
}

/// An OVF environment document with `settings` (key=value) written to `dir/ovf-env.xml`.
pub fn ovf_env(dir: &Path, settings: &[String]) -> PathBuf {
    let env = dir.join("ovf-env.xml");
    let mut cmd = Command::new(godwit_bin());
    cmd.args(["image", "ovfenv"]);
    for s in settings {
        cmd.arg("--set").arg(s);
    }
    run_ok(cmd.arg("--out").arg(&env));
    env
}
