//! PowerShell's CLIXML error stream (`#< CLIXML` + `<Objs>`) turned into readable text, and
//! the matching encoder (used by the simulator). `_xHHHH_` escapes are decoded
//! (`_x000D__x000A_` is a line break), progress records are dropped.

use crate::xml;

const HEADER: &str = "#< CLIXML";
const NS_PS: &str = "http://schemas.microsoft.com/powershell/2004/04";

/// Why a CLIXML stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CLIXML error stream: {0}")]
pub struct ClixmlError(pub String);

/// Decode `_xHHHH_` escapes (XmlConvert.EncodeName style) in `s`.
pub fn unescape_names(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("_x") {
        out.push_str(&rest[..i]);
        let cand = &rest[i..];
        let decoded = cand
            .get(2..6)
            .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
            .filter(|_| cand.get(6..7) == Some("_"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &cand[7..];
            }
            None => {
                out.push_str("_x");
                rest = &cand[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escape text for a CLIXML `<S>` element: `_x` sequences, control characters and line breaks.
pub fn escape_names(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' && chars.peek() == Some(&'x') {
            out.push_str("_x005F_");
        } else if c.is_control() {
            out.push_str(&format!("_x{:04X}_", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Readable text from a command's stderr: CLIXML error records joined by line breaks, or the
/// bytes as they are (lossy UTF-8) when the stream is not CLIXML.
pub fn decode_stderr(stderr: &[u8]) -> Result<String, ClixmlError> {
    let text = String::from_utf8_lossy(stderr);
    let trimmed = text.trim_start();
    let Some(rest) = trimmed.strip_prefix(HEADER) else {
        return Ok(text.trim_end().to_string());
    };
    // PowerShell may write several <Objs> documents; wrap them in one root. Text after the last
    // one (a native program's stderr, a line written with [Console]::Error after the CLIXML) is
    // kept as it is.
    let (docs, tail) = match rest.rfind("</Objs>") {
        Some(i) => rest.split_at(i + "</Objs>".len()),
        None => (rest, ""),
    };
    let wrapped = format!("<R>{}</R>", docs.trim());
    let root = xml::parse(&wrapped).map_err(|e| ClixmlError(e.to_string()))?;
    let mut lines: Vec<String> = Vec::new();
    for objs in root.children.iter().filter(|c| c.name == "Objs") {
        for s in objs.children.iter().filter(|c| c.name == "S") {
            if s.attr("S").is_some_and(|k| k != "Error") {
                continue;
            }
            let t = unescape_names(&s.text).replace("\r\n", "\n");
            lines.push(t);
        }
    }
    let mut joined: String = lines.concat();
    let tail = tail.trim();
    if !tail.is_empty() {
        if !joined.is_empty() && !joined.ends_with('\n') {
            joined.push('\n');
        }
        joined.push_str(tail);
    }
    Ok(joined.trim_end().to_string())
}

/// The CLIXML stderr PowerShell writes for these error lines.
pub fn encode_error_stream(lines: &[&str]) -> Vec<u8> {
    let mut s = format!("{HEADER}\r\n<Objs Version=\"1.1.0.1\" xmlns=\"{NS_PS}\">");
    for l in lines {
        s.push_str("<S S=\"Error\">");
        s.push_str(&xml::escape(&escape_names(&format!("{l}\r\n"))));
        s.push_str("</S>");
    }
    s.push_str("<Obj S=\"progress\" RefId=\"0\"><TN RefId=\"0\"><T>System.Management.Automation.PSCustomObject</T></TN><MS><I64 N=\"SourceId\">1</I64><PR N=\"Record\"><AV>Preparing modules for first use.</AV></PR></MS></Obj>");
    s.push_str("</Objs>");
    s.into_bytes()
}

/// Fuzzing entry point.
pub fn fuzz_decode_stderr(bytes: &[u8]) -> Result<String, ClixmlError> {
    decode_stderr(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_sample_decodes() {
        let raw = "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">boom_x000D__x000A_</S><S S=\"Error\">At line:1 char:1_x000D__x000A_</S></Objs>";
        assert_eq!(
            decode_stderr(raw.as_bytes()).unwrap(),
            "boom\nAt line:1 char:1"
        );
    }

    #[test]
    fn text_after_the_clixml_block_is_kept() {
        let mut raw = encode_error_stream(&["boom"]);
        raw.extend_from_slice(b"\r\nthe connector at https://x did not answer\r\n");
        assert_eq!(
            decode_stderr(&raw).unwrap(),
            "boom\nthe connector at https://x did not answer"
        );
    }

    #[test]
    fn plain_stderr_passes_through_and_bad_clixml_is_an_error() {
        assert_eq!(decode_stderr(b"plain error\r\n").unwrap(), "plain error");
        let e = decode_stderr(b"#< CLIXML\r\n<Objs><S>").unwrap_err();
        assert!(e.to_string().contains("malformed CLIXML"), "{e}");
    }

    #[test]
    fn encoder_round_trips() {
        let lines = [
            "Get-VM : Hyper-V was unable to find a virtual machine with name \"x_x1\".",
            "At line:1 char:1 <&>",
        ];
        let enc = encode_error_stream(&lines);
        assert_eq!(decode_stderr(&enc).unwrap(), lines.join("\n"));
    }

    proptest! {
        #[test]
        fn escape_round_trip(s in "\\PC{0,80}") {
            prop_assert_eq!(unescape_names(&escape_names(&s)), s);
        }

        #[test]
        fn lines_round_trip(lines in proptest::collection::vec("[ -~]{1,40}", 1..4)) {
            let lines: Vec<String> = lines.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            prop_assert_eq!(decode_stderr(&encode_error_stream(&refs)).unwrap(), lines.join("\n"));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = b"#< CLIXML\r\n".to_vec();
            b.extend(bytes);
            let _ = decode_stderr(&b);
        }
    }
}
