//! PowerShell command lines: `-EncodedCommand` (UTF-16LE, base64) and delivery of scripts too
//! long for one command line (cmd.exe stops at 8191 characters) in pieces: each piece appends
//! base64 text to a file in `$env:TEMP`, and a last small script decodes and runs it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// The command line the client sends; the simulator also accepts pywinrm's `powershell -encodedcommand`.
pub const COMMAND_PREFIX: &str = "powershell.exe -NoProfile -NonInteractive -EncodedCommand ";
/// cmd.exe's limit, with room to spare.
pub const MAX_COMMAND_LINE: usize = 8000;
/// Base64 characters of script per piece (the piece script then stays under the limit).
pub const PIECE_CHARS: usize = 2400;
/// Largest script accepted for delivery (pieces are bounded too).
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;

/// Why a command line is not an encoded PowerShell command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PowerShell command line: {0}")]
pub struct CommandLineError(pub String);

/// UTF-16LE then base64, as `-EncodedCommand` expects.
pub fn encode_script(script: &str) -> String {
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    B64.encode(bytes)
}

/// The inverse of [`encode_script`].
pub fn decode_script(b64: &str) -> Result<String, CommandLineError> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| CommandLineError(format!("-EncodedCommand is not base64: {e}")))?;
    if bytes.len() % 2 != 0 {
        return Err(CommandLineError(format!(
            "-EncodedCommand decodes to {} bytes, not UTF-16",
            bytes.len()
        )));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|e| CommandLineError(format!("-EncodedCommand: {e}")))
}

/// Split a command line into `powershell ... -EncodedCommand <b64>` and return the script,
/// or `None` when it is not a PowerShell command line at all.
pub fn script_of_command_line(line: &str) -> Option<Result<String, CommandLineError>> {
    let mut words = line.split_whitespace();
    let exe = words.next()?.to_ascii_lowercase();
    if exe != "powershell" && exe != "powershell.exe" {
        return None;
    }
    let words: Vec<&str> = words.collect();
    let pos = words.iter().position(|w| {
        let w = w.to_ascii_lowercase();
        w == "-encodedcommand" || w == "-enc" || w == "-e" || w == "-ec"
    })?;
    Some(match words.get(pos + 1) {
        Some(b64) => decode_script(b64),
        None => Err(CommandLineError(
            "-EncodedCommand without an argument".into(),
        )),
    })
}

/// The single command line for `script`.
pub fn command_line(script: &str) -> String {
    format!("{COMMAND_PREFIX}{}", encode_script(script))
}

/// `$ProgressPreference` first: `ConvertFrom-Json` can load Microsoft.PowerShell.Utility, whose
/// first load writes progress records ("Preparing modules for first use") otherwise.
const ARGS_HEAD: &str =
    "$ProgressPreference = 'SilentlyContinue'\n$GodwitArgs = ConvertFrom-Json '";
const ARGS_TAIL: &str = "'\n";

/// Prefix `script` with a line that sets `$ProgressPreference` and one that sets `$GodwitArgs` from `args` (JSON in a
/// single-quoted string). Every character PowerShell treats as a single quote (`'` and
/// U+2018..U+201B) is written as a JSON `\uXXXX` escape, so no argument can end the string.
pub fn with_args(script: &str, args: &serde_json::Value) -> String {
    let json = args.to_string();
    let mut safe = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => {
                safe.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            _ => safe.push(c),
        }
    }
    format!("{ARGS_HEAD}{safe}{ARGS_TAIL}{script}")
}

/// The inverse of [`with_args`] (the simulator's side): the arguments and the script body.
pub fn split_args(script: &str) -> Option<(serde_json::Value, &str)> {
    let rest = script.strip_prefix(ARGS_HEAD)?;
    let (json, body) = rest.split_once(ARGS_TAIL)?;
    if json.contains(['\'', '\u{2018}', '\u{2019}', '\u{201A}', '\u{201B}']) {
        return None;
    }
    Some((serde_json::from_str(json).ok()?, body))
}

/// A token naming the temporary file that collects pieces (hex, so it is safe in a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceToken(String);

impl PieceToken {
    pub fn random() -> Self {
        PieceToken(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| PieceToken(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const PIECE_HEAD: &str = "$ProgressPreference='SilentlyContinue'; Add-Content -NoNewline -LiteralPath (Join-Path $env:TEMP 'godwit-";
const PIECE_MID: &str = ".b64') -Value '";
const PIECE_TAIL: &str = "'";
const RUN_HEAD: &str = "$ProgressPreference='SilentlyContinue'; $p = Join-Path $env:TEMP 'godwit-";
const RUN_TAIL: &str = ".b64'; $s = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String([IO.File]::ReadAllText($p))); Remove-Item -LiteralPath $p; . ([ScriptBlock]::Create($s))";

/// A piece script: append `chunk` (base64 text) to the token's file.
pub fn piece_script(token: &PieceToken, chunk: &str) -> String {
    format!("{PIECE_HEAD}{}{PIECE_MID}{chunk}{PIECE_TAIL}", token.0)
}

/// The last script: decode the collected file, delete it, run it.
pub fn run_pieces_script(token: &PieceToken) -> String {
    format!("{RUN_HEAD}{}{RUN_TAIL}", token.0)
}

/// Recognise a piece script (the simulator's side): `(token, chunk)`.
pub fn parse_piece_script(script: &str) -> Option<(PieceToken, String)> {
    let rest = script.strip_prefix(PIECE_HEAD)?;
    let (token, rest) = rest.split_once(PIECE_MID)?;
    let chunk = rest.strip_suffix(PIECE_TAIL)?;
    if !chunk
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
    {
        return None;
    }
    Some((PieceToken::parse(token)?, chunk.to_string()))
}

/// Recognise the last script of a delivery (the simulator's side).
pub fn parse_run_pieces_script(script: &str) -> Option<PieceToken> {
    let rest = script.strip_prefix(RUN_HEAD)?;
    PieceToken::parse(rest.strip_suffix(RUN_TAIL)?)
}

/// The command lines that run `script`: one when it fits, otherwise pieces then the runner.
pub fn delivery(script: &str, token: &PieceToken) -> Vec<String> {
    let one = command_line(script);
    if one.len() <= MAX_COMMAND_LINE {
        return vec![one];
    }
    let b64 = B64.encode(script.as_bytes());
    let mut lines: Vec<String> = b64
        .as_bytes()
        .chunks(PIECE_CHARS)
        .map(|c| command_line(&piece_script(token, &String::from_utf8_lossy(c))))
        .collect();
    lines.push(command_line(&run_pieces_script(token)));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encoding() {
        // pywinrm: "Get-VM" -> UTF-16LE base64
        assert_eq!(encode_script("Get-VM"), "RwBlAHQALQBWAE0A");
        assert_eq!(decode_script("RwBlAHQALQBWAE0A").unwrap(), "Get-VM");
        assert!(decode_script("RwB").is_err());
        assert!(decode_script("!!").is_err());
    }

    #[test]
    fn command_lines_are_recognised() {
        let l = command_line("exit 3");
        assert_eq!(script_of_command_line(&l).unwrap().unwrap(), "exit 3");
        let py = format!("powershell -encodedcommand {}", encode_script("x"));
        assert_eq!(script_of_command_line(&py).unwrap().unwrap(), "x");
        assert!(script_of_command_line("echo hi").is_none());
        assert!(
            script_of_command_line("powershell -EncodedCommand")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn long_scripts_go_in_pieces_that_reassemble() {
        let script: String = (0..2000).map(|i| format!("$x{i} = {i}\n")).collect();
        let t = PieceToken::random();
        let lines = delivery(&script, &t);
        assert!(lines.len() > 2);
        let mut b64 = String::new();
        for (i, l) in lines.iter().enumerate() {
            assert!(
                l.len() <= MAX_COMMAND_LINE,
                "line {i} has {} chars",
                l.len()
            );
            let s = script_of_command_line(l).unwrap().unwrap();
            if i + 1 < lines.len() {
                let (tok, chunk) = parse_piece_script(&s).unwrap();
                assert_eq!(tok, t);
                b64.push_str(&chunk);
            } else {
                assert_eq!(parse_run_pieces_script(&s), Some(t.clone()));
            }
        }
        assert_eq!(String::from_utf8(B64.decode(b64).unwrap()).unwrap(), script);
        assert_eq!(delivery("Get-VM", &t).len(), 1);
    }

    #[test]
    fn arguments_cannot_escape_their_string() {
        let v = serde_json::json!({"Name": "it's \u{2019}x\u{2018}; Remove-VM *", "N": 3});
        let s = with_args("Get-VM", &v);
        let mut lines = s.lines();
        assert_eq!(
            lines.next(),
            Some("$ProgressPreference = 'SilentlyContinue'")
        );
        let inner = lines
            .next()
            .unwrap()
            .strip_prefix("$GodwitArgs = ConvertFrom-Json '")
            .unwrap()
            .strip_suffix('\'')
            .unwrap();
        assert!(!inner.contains(['\'', '\u{2018}', '\u{2019}']), "{inner}");
        let (back, body) = split_args(&s).unwrap();
        assert_eq!(back, v);
        assert_eq!(body, "Get-VM");
        assert!(split_args("Get-VM").is_none());
        assert!(split_args("$ProgressPreference = 'SilentlyContinue'\n$GodwitArgs = ConvertFrom-Json '{\"a\":'';x'\nGet-VM").is_none());
    }

    proptest! {
        #[test]
        fn encode_round_trip(s in "\\PC{0,200}") {
            prop_assert_eq!(decode_script(&encode_script(&s)).unwrap(), s);
        }
    }
}
