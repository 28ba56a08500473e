//! Where local exports go, and how their files are made, served and removed.
//!
//! An export destination is `s3://BUCKET/KEY`, or a file under the service's export directory
//! (`/data/exports` on the appliance, `DATA/exports` elsewhere): a file name (`web.vmdk`), a
//! relative path (`web/disk0.vmdk`) or the same as an absolute path under the directory
//! (`/data/exports/web/disk0.vmdk`). Every part is one safe name (`godwit_safepath::Component`);
//! anything else — another absolute path, `..`, an empty part — is refused naming the field.
//! Directories are created as needed and must be real directories (a symlink is refused); the
//! file is created new (`O_EXCL`, mode 0600: an existing file is never truncated, a symlink at
//! its name never followed) when the export is asked for, so a refusal is the answer to that
//! request. Downloads open the file without following a symlink.

use godwit_safepath::Component;
use godwit_webui::backend::CommandError;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Directories an export path may nest (below the export directory).
const MAX_DEPTH: usize = 8;

/// A checked destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `s3://BUCKET/KEY`
    S3(String),
    /// A file under the export directory: directories, then the file name.
    Local(Vec<Component>),
}

fn refuse(msg: impl Into<String>) -> CommandError {
    CommandError::field("destination", msg)
}

/// Check `input` against the rules above (pure).
pub fn parse(input: &str, exports_dir: &Path) -> Result<Destination, CommandError> {
    let d = input.trim();
    let dir = exports_dir.display();
    if d.is_empty() {
        return Err(refuse(format!(
            "a file name (the export is written under {dir}/), or s3://BUCKET/KEY"
        )));
    }
    if let Some(rest) = d.strip_prefix("s3://") {
        return match rest.split_once('/') {
            Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok(Destination::S3(d.to_string())),
            _ => Err(refuse("expected s3://BUCKET/KEY")),
        };
    }
    let rel = if d.starts_with('/') {
        let root = format!("{}/", exports_dir.display());
        d.strip_prefix(root.as_str()).ok_or_else(|| {
            refuse(format!(
                "exports are written under {dir}/ only: give a file name, or a path under {dir}/ (or s3://BUCKET/KEY)"
            ))
        })?
    } else {
        d
    };
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() > MAX_DEPTH + 1 {
        return Err(refuse(format!(
            "at most {MAX_DEPTH} directories below {dir}/"
        )));
    }
    let parts = parts
        .iter()
        .map(|p| Component::parse(p).map_err(|e| refuse(format!("{rel:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Destination::Local(parts))
}

/// The absolute path of a local destination (what the export view shows).
pub fn path_of(exports_dir: &Path, parts: &[Component]) -> PathBuf {
    let refs: Vec<&Component> = parts.iter().collect();
    godwit_safepath::join(exports_dir, &refs)
}

/// The directory the file goes in: every part below the export directory made or checked to
/// be a real directory (never a symlink).
fn directory(exports_dir: &Path, dirs: &[Component]) -> Result<PathBuf, CommandError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |p: &Path, e: std::io::Error| CommandError::Internal {
        message: format!("{}: {e}", p.display()),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(exports_dir)
        .map_err(|e| io(exports_dir, e))?;
    let mut at = exports_dir.to_path_buf();
    for (n, c) in std::iter::once(None)
        .chain(dirs.iter().map(Some))
        .enumerate()
    {
        if let Some(c) = c {
            at = c.join_to(&at);
            match std::fs::DirBuilder::new().mode(0o700).create(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&at, e)),
            }
        }
        let m = std::fs::symlink_metadata(&at).map_err(|e| io(&at, e))?;
        if m.file_type().is_symlink() || !m.is_dir() {
            let what = if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a directory"
            };
            return Err(if n == 0 {
                CommandError::Internal {
                    message: format!("the export directory {} is {what}", at.display()),
                }
            } else {
                refuse(format!("{} is {what}", at.display()))
            });
        }
    }
    Ok(at)
}

/// Create the file of a local export: new, 0600, never following a symlink.
pub fn create(exports_dir: &Path, parts: &[Component]) -> Result<File, CommandError> {
    let (name, dirs) = parts.split_last().ok_or_else(|| refuse("no file name"))?;
    let dir = directory(exports_dir, dirs)?;
    godwit_safepath::create_new(&dir, name).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => refuse(format!(
            "{} exists already: delete that export first, or choose another name",
            name.join_to(&dir).display()
        )),
        _ => unwritable(format!("creating {}: {e}", name.join_to(&dir).display())),
    })
}

// --- issue 18, typed export errors (wt-errors) ---
/// The exports folder refused a new file: a read-only or full file system, or no permission
/// is the operator's to fix, so it is refused on `destination` saying what happened and what
/// to do; anything else stays an internal error.
fn unwritable(raw: String) -> CommandError {
    let typed = crate::errors::classify_export(&raw);
    if typed.code.starts_with("export.target_") {
        CommandError::field(
            "destination",
            format!("{} {} ({raw})", typed.message, typed.remediation),
        )
    } else {
        CommandError::Internal { message: raw }
    }
}
// --- end typed export errors ---

/// Create it again for a resumed export: our own partial file is removed first (unlinking a
/// name never follows a symlink).
pub fn recreate(exports_dir: &Path, parts: &[Component]) -> Result<File, CommandError> {
    let path = path_of(exports_dir, parts);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CommandError::Internal {
                message: format!("removing {}: {e}", path.display()),
            });
        }
    }
    create(exports_dir, parts)
}

/// Open a finished export for reading, refusing a symlink at its name.
pub fn open(path: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Remove a local export's file (a missing file is fine: the export is gone either way).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_msg(e: CommandError) -> String {
        match e {
            CommandError::Invalid { fields } => {
                assert_eq!(fields[0].field, "destination");
                fields[0].message.clone()
            }
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn destinations() {
        let dir = Path::new("/data/exports");
        let local = |s: &str| match parse(s, dir).unwrap() {
            Destination::Local(p) => path_of(dir, &p),
            Destination::S3(_) => panic!("{s}"),
        };
        assert_eq!(local("web.vmdk"), Path::new("/data/exports/web.vmdk"));
        assert_eq!(
            local(" web/disk0.vhdx "),
            Path::new("/data/exports/web/disk0.vhdx")
        );
        assert_eq!(
            local("/data/exports/a/b.raw"),
            Path::new("/data/exports/a/b.raw")
        );
        assert_eq!(
            parse("s3://bucket/key.vmdk", dir).unwrap(),
            Destination::S3("s3://bucket/key.vmdk".into())
        );
        for bad in [
            "",
            "/etc/x",
            "/data/exports",
            "/data/exports/",
            "/data/exportsX/a",
            "../x",
            "a/../../etc/passwd",
            "a//b",
            "./a",
            "a/",
            "s3://bucket",
            "s3:///key",
            "a/b/c/d/e/f/g/h/i/j",
            "x\ny",
        ] {
            let m = field_msg(parse(bad, dir).unwrap_err());
            assert!(!m.is_empty(), "{bad:?}");
        }
        assert!(field_msg(parse("/etc/x", dir).unwrap_err()).contains("/data/exports/"));
    }

    #[test]
    fn created_new_in_real_directories_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("exports");
        let parts = |s: &str| match parse(s, &dir).unwrap() {
            Destination::Local(p) => p,
            Destination::S3(_) => unreachable!(),
        };
        create(&dir, &parts("a/b/x.raw")).unwrap();
        assert!(dir.join("a/b/x.raw").is_file());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("a/b/x.raw"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never truncated: an existing file is refused, its bytes kept.
        std::fs::write(dir.join("keep.raw"), b"precious").unwrap();
        let m = field_msg(create(&dir, &parts("keep.raw")).unwrap_err());
        assert!(m.contains("exists already"), "{m}");
        assert_eq!(std::fs::read(dir.join("keep.raw")).unwrap(), b"precious");
        // A symlink planted as the file or as a directory is not followed.
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), dir.join("link.raw")).unwrap();
        assert!(create(&dir, &parts("link.raw")).is_err());
        assert!(!outside.join("victim").exists());
        std::os::unix::fs::symlink(&outside, dir.join("d")).unwrap();
        let m = field_msg(create(&dir, &parts("d/x.raw")).unwrap_err());
        assert!(m.contains("symbolic link"), "{m}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // Download: a symlink is not opened.
        assert!(open(&dir.join("link.raw")).is_err());
        assert!(open(&dir.join("a/b/x.raw")).is_ok());
        // A resumed export's own file is made again.
        std::fs::write(dir.join("a/b/x.raw"), b"partial").unwrap();
        recreate(&dir, &parts("a/b/x.raw")).unwrap();
        assert_eq!(std::fs::metadata(dir.join("a/b/x.raw")).unwrap().len(), 0);
        remove(&dir.join("a/b/x.raw")).unwrap();
        remove(&dir.join("a/b/x.raw")).unwrap();
    }
}
