//! How `godwit replicate`, `export`, `disk convert` and `staging verify` tell a failure
//! (issue 18): one `error:` line saying what happened and one `what to do:` line, from the
//! service's classifier ([`godwit_service::errors::classify_cli`]), then the error as the
//! component reported it for support; with `--json`, one `{"event":"error","error":{code,
//! message,remediation,detail}}` line on stdout as well, after the progress events.

use godwit_service::errors::{JobError, classify_cli};

/// The lines printed on stderr for a typed error.
pub fn lines(e: &JobError) -> Vec<String> {
    let mut out = vec![
        format!("godwit: error: {}", e.message),
        format!("godwit: what to do: {}", e.remediation),
    ];
    if let Some(d) = &e.detail {
        out.push(format!("godwit: detail ({}): {d}", e.code));
    }
    out
}

/// The JSON line printed on stdout with `--json`.
pub fn json_line(e: &JobError) -> String {
    serde_json::json!({"event": "error", "error": e}).to_string()
}

/// Print `err` classified: stderr lines, and with `json` the JSON line on stdout.
pub fn report(err: &anyhow::Error, json: bool) {
    let typed = classify_cli(&format!("{err:#}"));
    for l in lines(&typed) {
        eprintln!("{l}");
    }
    if json {
        println!("{}", json_line(&typed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_lines_then_the_detail_and_one_json_object() {
        let e =
            classify_cli("staging://127.0.0.1:9: connection: Connection refused (os error 111)");
        let l = lines(&e);
        assert_eq!(
            l[0],
            "godwit: error: The staging server staging://127.0.0.1:9 could not be reached."
        );
        assert!(l[1].starts_with("godwit: what to do: Check that `godwit staging serve`"));
        assert!(l[2].starts_with("godwit: detail (staging.unreachable): staging://"));
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(v["event"], "error");
        assert_eq!(v["error"]["code"], "staging.unreachable");
        assert!(v["error"]["remediation"].as_str().unwrap().contains("1500"));
    }
}
