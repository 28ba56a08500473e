//! `scripts/push-ranges.ps1` as the simulated host runs it: read each range from the data
//! directory's files and PUT it in chunks to the connector's ingest endpoint over HTTPS
//! (reqwest + rustls), accepting only the pinned certificate, with the script's headers
//! (`Authorization: Bearer`, `Content-Length`, `X-Godwit-Sha256`), its retries (network errors
//! and 422; other 4xx stop the script) and its output `{"Pushes","Bytes","Retries"}`.
//! The command completes when the pushes are done; Receive waits for it meanwhile.

use super::scripts::Outcome;
use crate::trust::Fingerprint;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

/// One file to push: (file id, Windows path, local path, ranges (offset, length)).
pub type PushFile = (u64, String, PathBuf, Vec<(u64, u64)>);

/// What one push-ranges.ps1 run has to do (paths already resolved in the data directory).
#[derive(Debug, Clone)]
pub struct PushJob {
    pub url: String,
    pub token: String,
    pub pin: String,
    pub chunk: u64,
    pub retries: u32,
    pub files: Vec<PushFile>,
    pub delay_ms: u64,
}

fn arg<'a>(args: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value, String> {
    args.get(name)
        .ok_or_else(|| format!("Cannot bind argument to parameter '{name}' because it is null."))
}

/// Parse the script's arguments; `resolve` maps a Windows path to a local file (or the error
/// PowerShell would print).
pub fn job_of_args(
    args: &serde_json::Value,
    delay_ms: u64,
    resolve: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<PushJob, String> {
    let s = |n: &str| -> Result<String, String> {
        arg(args, n)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("Cannot convert parameter '{n}' to type \"System.String\"."))
    };
    let u = |v: &serde_json::Value, n: &str| -> Result<u64, String> {
        v.as_u64()
            .ok_or_else(|| format!("Cannot convert value of '{n}' to type \"System.Int64\"."))
    };
    let chunk = u(arg(args, "Chunk")?, "Chunk")?;
    if chunk == 0 || chunk > 0x7fff_ffff {
        return Err(format!(
            "Cannot convert value \"{chunk}\" to type \"System.Int32\"."
        ));
    }
    let mut files = Vec::new();
    for f in arg(args, "Files")?.as_array().into_iter().flatten() {
        let id = u(arg(f, "Id")?, "Id")?;
        let path = arg(f, "Path")?.as_str().unwrap_or_default().to_string();
        let flat: Vec<u64> = arg(f, "Ranges")?
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| u(v, "Ranges"))
            .collect::<Result<_, _>>()?;
        let ranges = flat
            .chunks(2)
            .map(|c| (c[0], c.get(1).copied().unwrap_or(0)))
            .collect();
        let local = resolve(&path)?;
        files.push((id, path, local, ranges));
    }
    Ok(PushJob {
        url: s("Url")?,
        token: s("Token")?,
        pin: s("Pin")?.to_ascii_lowercase(),
        chunk,
        retries: u32::try_from(u(arg(args, "Retries")?, "Retries")?).unwrap_or(u32::MAX),
        files,
        delay_ms,
    })
}

fn failed(msg: String) -> Outcome {
    (Vec::new(), format!("{msg}\r\n").into_bytes(), 2)
}

/// Run the pushes (the simulator's runtime).
pub async fn run(job: PushJob) -> Outcome {
    let pin = match Fingerprint::parse(&format!("SHA256:{}", job.pin)) {
        Ok(p) => p,
        Err(e) => return failed(format!("bad pin: {e}")),
    };
    let (tls, seen) = match godwit_trust::pinned_client_config(&[pin]) {
        Ok(v) => v,
        Err(e) => return failed(format!("TLS: {e}")),
    };
    let client = match reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(120))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("HTTP client: {e}")),
    };
    let (mut pushes, mut bytes, mut retries) = (0u64, 0u64, 0u64);
    for (id, path, local, ranges) in &job.files {
        let f = match std::fs::File::open(local) {
            Ok(f) => f,
            Err(_) => {
                return failed(format!(
                    "Exception calling \"Open\" with \"4\" argument(s): \"Could not find file '{path}'.\""
                ));
            }
        };
        let flen = f.metadata().map(|m| m.len()).unwrap_or(0);
        for &(off, len) in ranges {
            let end = off.saturating_add(len);
            if end > flen {
                return failed(format!(
                    "range {off}+{len} is past the end of {path} ({flen} bytes)"
                ));
            }
            let mut pos = off;
            while pos < end {
                let n = (end - pos).min(job.chunk);
                let url = format!("{}/{id}/{pos}", job.url);
                let mut attempt = 0u32;
                loop {
                    if job.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(job.delay_ms)).await;
                    }
                    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
                    if let Err(e) = f.read_exact_at(&mut buf, pos) {
                        return failed(format!("short read at {pos} in {path}: {e}"));
                    }
                    let hex = hex::encode(Sha256::digest(&buf));
                    let sent = client
                        .put(&url)
                        .header("Authorization", format!("Bearer {}", job.token))
                        .header("X-Godwit-Sha256", hex)
                        .header("Content-Type", "application/octet-stream")
                        .body(buf)
                        .send()
                        .await;
                    let (code, detail) = match sent {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => {
                            let code = r.status().as_u16();
                            (code, r.text().await.unwrap_or_default().trim().to_string())
                        }
                        Err(e) => {
                            // As the script's TrustFailure: another certificate stops at once.
                            if godwit_trust::pin_failure(&[pin], godwit_trust::last_seen(&seen))
                                .is_some()
                            {
                                return failed(format!(
                                    "the connector at {} did not show the pinned certificate SHA256:{}: {e}",
                                    job.url, job.pin
                                ));
                            }
                            (0, format!("{e:?}"))
                        }
                    };
                    if (400..500).contains(&code) && code != 422 {
                        return failed(format!(
                            "the connector refused the push of {path} at {pos}+{n} (HTTP {code}): {detail}"
                        ));
                    }
                    attempt += 1;
                    retries += 1;
                    if attempt > job.retries {
                        return failed(format!(
                            "push of {path} at {pos}+{n} to {url} failed after {attempt} attempts: {detail}"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                pushes += 1;
                bytes += n;
                pos += n;
            }
        }
    }
    let out = serde_json::json!({ "Pushes": pushes, "Bytes": bytes, "Retries": retries });
    (format!("{out}\r\n").into_bytes(), Vec::new(), 0)
}
