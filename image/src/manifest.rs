//! The OVA manifest (`.mf`): one `SHA256(name)= hex` line per file, in the OVA's order.

use crate::{Error, Result};

/// One manifest line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// Encode entries as manifest text (`SHA256(f)= hex\n` each).
pub fn encode(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("SHA256({})= {}\n", e.name, e.sha256))
        .collect()
}

/// Parse manifest text. Accepts SHA256 and SHA1 lines (the algorithm must be SHA256 for
/// [`verify`]); blank lines are ignored; anything else is an error naming the line.
pub fn parse(text: &str) -> Result<Vec<(String, Entry)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            Error::invalid(
                format!("manifest line {}", i + 1),
                format!("{line:?} is not ALG(file)= hex"),
            )
        };
        let (alg, rest) = line.split_once('(').ok_or_else(bad)?;
        let (name, hexpart) = rest.rsplit_once(")=").ok_or_else(bad)?;
        let digest = hexpart.trim();
        let want_len = match alg {
            "SHA256" => 64,
            "SHA1" => 40,
            _ => return Err(bad()),
        };
        if name.is_empty()
            || digest.len() != want_len
            || !digest.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        out.push((
            alg.to_string(),
            Entry {
                name: name.to_string(),
                sha256: digest.to_ascii_lowercase(),
            },
        ));
    }
    Ok(out)
}

/// Check that every SHA256 manifest line matches `digest_of(name)`; returns the names checked.
/// A name the manifest lists that `digest_of` cannot find, or a SHA1 line, is an error.
pub fn verify(text: &str, digest_of: impl Fn(&str) -> Option<String>) -> Result<Vec<String>> {
    let mut checked = Vec::new();
    for (alg, e) in parse(text)? {
        if alg != "SHA256" {
            return Err(Error::invalid(
                "manifest",
                format!("{}: {alg} is not accepted, only SHA256", e.name),
            ));
        }
        let got = digest_of(&e.name).ok_or_else(|| {
            Error::invalid("manifest", format!("{} is listed but not present", e.name))
        })?;
        if got != e.sha256 {
            return Err(Error::invalid(
                "manifest",
                format!("{}: SHA-256 is {got}, manifest says {}", e.name, e.sha256),
            ));
        }
        checked.push(e.name);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verify() {
        let entries = vec![
            Entry {
                name: "godwit.ovf".into(),
                sha256: "ab".repeat(32),
            },
            Entry {
                name: "godwit-disk1.vmdk".into(),
                sha256: "cd".repeat(32),
            },
        ];
        let text = encode(&entries);
        assert!(text.starts_with("SHA256(godwit.ovf)= abab"));
        let back: Vec<Entry> = parse(&text).unwrap().into_iter().map(|(_, e)| e).collect();
        assert_eq!(back, entries);
        let ok = verify(&text, |n| {
            entries
                .iter()
                .find(|e| e.name == n)
                .map(|e| e.sha256.clone())
        });
        assert_eq!(ok.unwrap().len(), 2);
        let err = verify(&text, |n| (n == "godwit.ovf").then(|| "ab".repeat(32))).unwrap_err();
        assert!(
            err.to_string().contains("godwit-disk1.vmdk is listed"),
            "{err}"
        );
        let err = verify(&text, |_| Some("00".repeat(32))).unwrap_err();
        assert!(err.to_string().contains("manifest says"), "{err}");
    }

    #[test]
    fn bad_lines_are_named() {
        for bad in [
            "SHA256 godwit.ovf= aa",
            "MD5(x)= 00",
            "SHA256(x)= zz",
            "SHA256(x)= abcd",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("manifest line 1"), "{bad}: {err}");
        }
        assert!(verify(&format!("SHA1(x)= {}", "a".repeat(40)), |_| None).is_err());
    }
}
