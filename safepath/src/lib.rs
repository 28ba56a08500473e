//! Names that come from outside — a VM id a Hyper-V host reports, a disk path in a vCenter
//! descriptor, a sync id or file name a client sends — never become paths as they are.
//!
//! Every path built from such a name goes through [`Component`]: either the name is accepted
//! as **one** safe path component ([`Component::parse`], which refuses anything else and says
//! why), or it is mapped reversibly onto one ([`Component::encode`], `%`-escaping every byte
//! outside `[A-Za-z0-9._-]`). A [`Component`] can only be joined onto a base directory
//! ([`Component::join_to`]); it can never be absolute, empty, `.`, `..`, hold a separator, a NUL
//! or a control character, or be longer than a file name may be.
//!
//! [`create_new`] opens a file under a directory the way untrusted names must be written: the
//! name is a [`Component`], the file must not exist (`O_EXCL`, which also refuses a symlink
//! planted at the name) and is created with mode 0600.
//!
//! Pure (no I/O) apart from [`create_new`]; property-tested and fuzzed (`fuzz/fuzz_targets/safepath.rs`).

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Longest component accepted, in bytes (ext4, XFS and tmpfs allow 255).
pub const MAX_LEN: usize = 255;

/// Why a name is not one safe path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeName {
    #[error("an empty name")]
    Empty,
    #[error("{0:?} names a directory itself, not a file in it")]
    Dot(String),
    #[error("{name:?} holds a path separator {sep:?}")]
    Separator { name: String, sep: char },
    #[error("{name:?} holds the control character U+{code:04X}")]
    Control { name: String, code: u32 },
    #[error("{name:?} is {len} bytes long (at most {MAX_LEN})", name = shorten(.name))]
    TooLong { name: String, len: usize },
}

/// One path component that cannot escape the directory it is joined to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Component(String);

impl Component {
    /// Accept `name` as it is, or say why it is not one safe component.
    pub fn parse(name: &str) -> Result<Component, UnsafeName> {
        if name.is_empty() {
            return Err(UnsafeName::Empty);
        }
        if name == "." || name == ".." {
            return Err(UnsafeName::Dot(name.to_string()));
        }
        if let Some(sep) = name.chars().find(|c| matches!(c, '/' | '\\')) {
            return Err(UnsafeName::Separator {
                name: name.to_string(),
                sep,
            });
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(UnsafeName::Control {
                name: name.to_string(),
                code: u32::from(c),
            });
        }
        if name.len() > MAX_LEN {
            return Err(UnsafeName::TooLong {
                name: name.to_string(),
                len: name.len(),
            });
        }
        Ok(Component(name.to_string()))
    }

    /// Any string as one safe component, reversibly ([`Component::decode`]): every byte outside
    /// `[A-Za-z0-9_-]` and `.` (except a leading `.`) becomes `%XX`; the empty name is `%`. A name whose encoding would be
    /// longer than [`MAX_LEN`] is cut and ends in `~` plus a hash of the whole name, so distinct
    /// long names stay distinct (such a component does not decode).
    pub fn encode(name: &str) -> Component {
        let mut o = String::with_capacity(name.len());
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !o.is_empty()) {
                o.push(char::from(b));
            } else {
                o.push('%');
                o.push(char::from(HEX[usize::from(b >> 4)]));
                o.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        if o.is_empty() {
            // A lone `%` is never produced otherwise (every escape has two hex digits).
            o.push('%');
        }
        if o.len() > MAX_LEN {
            let tag = format!("~{:016x}", fnv1a(name.as_bytes()));
            let mut cut = MAX_LEN - tag.len();
            // Never cut inside a %XX escape.
            while o.as_bytes()[..cut].iter().rev().take(2).any(|&b| b == b'%') {
                cut -= 1;
            }
            o.truncate(cut);
            o.push_str(&tag);
        }
        Component(o)
    }

    /// The name [`Component::encode`] was given, when this component came from it.
    pub fn decode(&self) -> Option<String> {
        if self.0 == "%" {
            return Some(String::new());
        }
        let b = self.0.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            } else if b[i].is_ascii_alphanumeric() || matches!(b[i], b'-' | b'_' | b'.') {
                out.push(b[i]);
                i += 1;
            } else {
                return None;
            }
        }
        String::from_utf8(out).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base/self` — the only way to turn a component into a path.
    pub fn join_to(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for Component {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// `base/a/b/...`, each part one safe component.
pub fn join(base: &Path, parts: &[&Component]) -> PathBuf {
    let mut p = base.to_path_buf();
    for c in parts {
        p.push(&c.0);
    }
    p
}

/// Create `dir/name` for writing: it must not exist yet (`O_CREAT | O_EXCL`, so an existing file
/// is never truncated and a symlink planted at `name` is not followed), mode 0600.
pub fn create_new(dir: &Path, name: &Component) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(name.join_to(dir))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component as PathPart;

    fn is_one_normal_component(c: &Component) -> bool {
        let parts: Vec<_> = Path::new(c.as_str()).components().collect();
        parts.len() == 1 && matches!(parts[0], PathPart::Normal(_))
    }

    #[test]
    fn refusals_name_the_reason() {
        assert_eq!(Component::parse(""), Err(UnsafeName::Empty));
        assert!(matches!(Component::parse(".."), Err(UnsafeName::Dot(_))));
        assert!(matches!(Component::parse("."), Err(UnsafeName::Dot(_))));
        for bad in ["/etc", "../x", "a/b", "a\\b", "C:\\Windows", "x/"] {
            let e = Component::parse(bad).unwrap_err();
            assert!(matches!(e, UnsafeName::Separator { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("separator"), "{e}");
        }
        assert!(matches!(
            Component::parse("a\0b"),
            Err(UnsafeName::Control { code: 0, .. })
        ));
        assert!(matches!(
            Component::parse("a\nb"),
            Err(UnsafeName::Control { code: 10, .. })
        ));
        let long = "x".repeat(256);
        let e = Component::parse(&long).unwrap_err();
        assert!(e.to_string().contains("256 bytes"), "{e}");
        assert!(e.to_string().len() < 120, "{e}");
        for ok in [
            "5ad7e3c1-9a51-4f8e-b3c6-2a8e53e0a0f1",
            "web-01.vmdk",
            "...",
            ".hidden",
            "VM name with spaces",
        ] {
            assert_eq!(Component::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn encoding_is_safe_and_readable() {
        assert_eq!(Component::encode("web-01").as_str(), "web-01");
        assert_eq!(Component::encode("a/b c").as_str(), "a%2Fb%20c");
        assert_eq!(Component::encode("..").as_str(), "%2E.");
        assert_eq!(Component::encode("é").as_str(), "%C3%A9");
        assert_eq!(Component::encode("").as_str(), "%");
        assert_eq!(Component::encode("").decode().as_deref(), Some(""));
        assert_eq!(Component::encode("\0").as_str(), "%00");
        assert_eq!(Component::encode("\0").decode().as_deref(), Some("\0"));
    }

    #[test]
    fn create_new_never_truncates_or_follows_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let name = Component::parse("out.raw").unwrap();
        std::fs::write(d.path().join("out.raw"), b"keep").unwrap();
        let e = create_new(d.path(), &name).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(d.path().join("out.raw")).unwrap(), b"keep");

        let target = d.path().join("victim");
        std::fs::write(&target, b"victim").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("link")).unwrap();
        let e = create_new(d.path(), &Component::parse("link").unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"victim");

        let f = create_new(d.path(), &Component::parse("new").unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    proptest! {
        #[test]
        fn parse_accepts_only_one_normal_component(s in ".{0,300}") {
            if let Ok(c) = Component::parse(&s) {
                prop_assert!(is_one_normal_component(&c), "{s:?}");
                let joined = c.join_to(Path::new("/base"));
                prop_assert_eq!(joined.parent(), Some(Path::new("/base")));
            }
        }

        #[test]
        fn encode_is_always_one_component_and_round_trips(s in ".{0,120}") {
            let c = Component::encode(&s);
            prop_assert!(is_one_normal_component(&c), "{s:?} -> {c}");
            prop_assert!(Component::parse(c.as_str()).is_ok());
            // Short enough not to be cut: reversible. Cut: never mistaken for another name.
            if c.as_str().contains('~') {
                prop_assert!(c.as_str().len() > MAX_LEN - 3 && c.decode().is_none());
            } else {
                prop_assert_eq!(c.decode(), Some(s));
            }
        }

        #[test]
        fn long_names_stay_distinct_and_bounded(a in ".{100,400}", b in ".{100,400}") {
            let (ca, cb) = (Component::encode(&a), Component::encode(&b));
            prop_assert!(ca.as_str().len() <= MAX_LEN);
            prop_assert!(Component::parse(ca.as_str()).is_ok());
            if a != b {
                prop_assert_ne!(ca, cb);
            }
        }

        #[test]
        fn hostile_prefixes_never_escape(tail in "[a-z/.]{0,20}") {
            for head in ["/", "../", "..\\", "./", "\0"] {
                let s = format!("{head}{tail}");
                prop_assert!(Component::parse(&s).is_err(), "{s:?}");
            }
        }
    }
}
