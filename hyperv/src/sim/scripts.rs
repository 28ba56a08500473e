//! The command lines and PowerShell the simulator understands, recognised by exact text.
//! Anything else fails the way cmd.exe or PowerShell would (unknown command, CLIXML error).

use super::Sim;
use super::model;
use crate::clixml::encode_error_stream;
use crate::inventory::INVENTORY_SCRIPT;
use crate::powershell;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;

/// (stdout, stderr, exit code)
pub type Outcome = (Vec<u8>, Vec<u8>, i64);

/// Largest script the simulator collects from pieces.
const MAX_PIECES_BYTES: usize = powershell::MAX_SCRIPT_BYTES * 2;

fn ps_error(msg: &str) -> Outcome {
    (Vec::new(), encode_error_stream(&[msg]), 1)
}

pub fn run_command_line(sim: &Sim, pieces: &mut HashMap<String, String>, line: &str) -> Outcome {
    match powershell::script_of_command_line(line) {
        Some(Ok(script)) => run_script(sim, pieces, &script, 0),
        Some(Err(e)) => (Vec::new(), format!("{e}\r\n").into_bytes(), 1),
        None => {
            let trimmed = line.trim();
            if let Some(text) = trimmed.strip_prefix("echo ") {
                (format!("{text}\r\n").into_bytes(), Vec::new(), 0)
            } else {
                let word = trimmed.split_whitespace().next().unwrap_or("");
                (
                    Vec::new(),
                    format!("'{word}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n").into_bytes(),
                    1,
                )
            }
        }
    }
}

fn quoted_arg<'a>(script: &'a str, cmdlet: &str) -> Option<&'a str> {
    let rest = script.trim().strip_prefix(cmdlet)?.trim();
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

fn run_script(
    sim: &Sim,
    pieces: &mut HashMap<String, String>,
    script: &str,
    depth: u32,
) -> Outcome {
    if script == INVENTORY_SCRIPT {
        return match model::records(&sim.config.model, &sim.config.data_dir) {
            Ok(recs) => match serde_json::to_string(&recs) {
                Ok(json) => (format!("{json}\r\n").into_bytes(), Vec::new(), 0),
                Err(e) => ps_error(&format!("ConvertTo-Json : {e}")),
            },
            // The script's catch block writes the error as plain text and exits 2.
            Err(e) => (Vec::new(), format!("{e}\r\n").into_bytes(), 2),
        };
    }
    if let Some((token, chunk)) = powershell::parse_piece_script(script) {
        let buf = pieces.entry(token.as_str().to_string()).or_default();
        if buf.len() + chunk.len() > MAX_PIECES_BYTES {
            return ps_error("Add-Content : There is not enough space on the disk.");
        }
        buf.push_str(&chunk);
        return (Vec::new(), Vec::new(), 0);
    }
    if let Some(token) = powershell::parse_run_pieces_script(script) {
        let Some(b64) = pieces.remove(token.as_str()) else {
            return ps_error(&format!(
                "Exception calling \"ReadAllText\" with \"1\" argument(s): \"Could not find file 'C:\\Windows\\Temp\\godwit-{}.b64'.\"",
                token.as_str()
            ));
        };
        let decoded = B64
            .decode(b64.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return match decoded {
            Some(inner) if depth == 0 => run_script(sim, pieces, &inner, depth + 1),
            Some(_) => ps_error("nested piece delivery is not supported"),
            None => ps_error(
                "Exception calling \"FromBase64String\" with \"1\" argument(s): \"The input is not a valid Base-64 string.\"",
            ),
        };
    }
    if let Some(text) = quoted_arg(script, "Write-Output") {
        return (format!("{text}\r\n").into_bytes(), Vec::new(), 0);
    }
    if let Some(text) = quoted_arg(script, "Write-Error") {
        return ps_error(&format!(
            "{text}\r\n    + CategoryInfo          : NotSpecified: (:) [Write-Error], WriteErrorException"
        ));
    }
    if let Some(code) = script
        .trim()
        .strip_prefix("exit ")
        .and_then(|c| c.trim().parse::<i64>().ok())
    {
        return (Vec::new(), Vec::new(), code);
    }
    let first = script.split_whitespace().next().unwrap_or("");
    ps_error(&format!(
        "{first} : The term '{first}' is not recognized as the name of a cmdlet, function, script file, or operable program. (simulator: unknown script)"
    ))
}
