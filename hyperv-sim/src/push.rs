//! `scripts/push-ranges.ps1` as the simulated host runs it: a probe PUT of no bytes (exit 3
//! when the endpoint cannot be reached), then each range in order read from the data
//! directory's files and PUT in chunks to the connector's ingest endpoint over HTTPS (reqwest +
//! rustls, no proxy), accepting only the pinned certificate, with the script's headers
//! (`Authorization: Bearer`, `Content-Length`, `X-Godwit-Sha256`), its retries (any error and
//! 422; other 4xx stop the script), 503 waited for as `Retry-After` says (RFC 9110 §10.2.3), the
//! time bound `Seconds`, and its output `{"Pushes","Bytes","Retries","Waits","Next","NextOffset"}`.
//! The command completes when the pushes are done; Receive waits for it meanwhile.

use super::scripts::Outcome;
use godwit_hyperv::trust::Fingerprint;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

/// What one push-ranges.ps1 run has to do (paths already resolved in the data directory).
#[derive(Debug, Clone)]
pub struct PushJob {
    pub url: String,
    pub token: String,
    pub pin: String,
    pub chunk: u64,
    pub retries: u32,
    pub seconds: u64,
    /// (file id, Windows path, local path)
    pub files: Vec<(u64, String, PathBuf)>,
    /// (file id, offset, length), in push order.
    pub ranges: Vec<(u64, u64, u64)>,
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
        let local = resolve(&path)?;
        files.push((id, path, local));
    }
    let flat: Vec<u64> = arg(args, "Ranges")?
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| u(v, "Ranges"))
        .collect::<Result<_, _>>()?;
    let ranges = flat.chunks_exact(3).map(|c| (c[0], c[1], c[2])).collect();
    Ok(PushJob {
        url: s("Url")?,
        token: s("Token")?,
        pin: s("Pin")?.to_ascii_lowercase(),
        chunk,
        retries: u32::try_from(u(arg(args, "Retries")?, "Retries")?).unwrap_or(u32::MAX),
        seconds: u(arg(args, "Seconds")?, "Seconds")?,
        files,
        ranges,
        delay_ms,
    })
}

fn failed(msg: String) -> Outcome {
    (Vec::new(), format!("{msg}\r\n").into_bytes(), 2)
}

/// One PUT: the status, the answer's text and its Retry-After, or the error on the way.
async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, String, u64), reqwest::Error> {
    let hex = hex::encode(Sha256::digest(&body));
    let mut req = client.put(url);
    if body.is_empty() {
        // HttpWebRequest sends `Content-Length: 0` for ContentLength = 0; hyper would send none.
        req = req.header("Content-Length", "0");
    }
    let r = req
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Godwit-Sha256", hex)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    let code = r.status().as_u16();
    let after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let text = r.text().await.unwrap_or_default().trim().to_string();
    Ok((code, text, after))
}

/// Run the pushes (the simulator's runtime), as the script does: the probe, then each range
/// in order in chunks, 503 waited for as Retry-After says, other errors retried (data read
/// again), stopping at `seconds` and saying where.
pub async fn run(job: PushJob) -> Outcome {
    let pin = match Fingerprint::parse(&format!("SHA256:{}", job.pin)) {
        Ok(p) => p,
        Err(e) => return failed(format!("bad pin: {e}")),
    };
    let (tls, seen) = match godwit_trust::pinned_client_config(&[pin]) {
        Ok(v) => v,
        Err(e) => return failed(format!("TLS: {e}")),
    };
    // No proxy, as the script's `$req.Proxy = $null`.
    let client = match reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("HTTP client: {e}")),
    };
    let trust_failed =
        || godwit_trust::pin_failure(&[pin], godwit_trust::last_seen(&seen)).is_some();
    let deadline = std::time::Instant::now() + Duration::from_secs(job.seconds);
    if let Some(&(first, _, _)) = job.ranges.first() {
        match send(
            &client,
            &format!("{}/{first}/0", job.url),
            &job.token,
            Vec::new(),
        )
        .await
        {
            Ok((200, _, _)) => {}
            Ok((code, text, _)) => {
                return failed(format!(
                    "the connector refused the probe of {} (HTTP {code}): {text}",
                    job.url
                ));
            }
            Err(_) if trust_failed() => {
                return failed(format!(
                    "the connector at {} did not show the pinned certificate SHA256:{}",
                    job.url, job.pin
                ));
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why = s.to_string();
                    src = s.source();
                }
                return (
                    Vec::new(),
                    format!(
                        "this host (HVSIM) could not connect to {}: {why}\r\n",
                        job.url
                    )
                    .into_bytes(),
                    3,
                );
            }
        }
    }
    let (mut pushes, mut bytes, mut retries, mut waits) = (0u64, 0u64, 0u64, 0u64);
    let mut opened: std::collections::HashMap<u64, std::fs::File> = Default::default();
    let (mut next, mut next_offset) = (0usize, 0u64);
    'ranges: for (i, &(id, off, len)) in job.ranges.iter().enumerate() {
        next = i;
        next_offset = off;
        let Some((_, path, local)) = job.files.iter().find(|f| f.0 == id) else {
            return failed(format!("Cannot index into a null array (file {id})."));
        };
        let f = match opened.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match std::fs::File::open(local) {
                Ok(f) => v.insert(f),
                Err(_) => {
                    return failed(format!(
                        "Exception calling \"Open\" with \"4\" argument(s): \"Could not find file '{path}'.\""
                    ));
                }
            },
        };
        let flen = f.metadata().map(|m| m.len()).unwrap_or(0);
        let end = off.saturating_add(len);
        if end > flen {
            return failed(format!(
                "range {off}+{len} is past the end of {path} ({flen} bytes)"
            ));
        }
        let mut pos = off;
        while pos < end {
            if std::time::Instant::now() > deadline {
                break 'ranges;
            }
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
                let (code, detail, after) = match send(&client, &url, &job.token, buf).await {
                    Ok(v) => v,
                    Err(_) if trust_failed() => {
                        return failed(format!(
                            "the connector at {} did not show the pinned certificate SHA256:{}",
                            job.url, job.pin
                        ));
                    }
                    Err(e) => (0, format!("{e:?}"), 0),
                };
                if (200..300).contains(&code) {
                    break;
                }
                if code == 503 {
                    waits += 1;
                    if std::time::Instant::now() > deadline {
                        break 'ranges;
                    }
                    tokio::time::sleep(Duration::from_secs(after.clamp(1, 30))).await;
                    continue;
                }
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
            next_offset = pos;
        }
        next = i + 1;
        next_offset = 0;
    }
    let out = serde_json::json!({ "Pushes": pushes, "Bytes": bytes, "Retries": retries,
        "Waits": waits, "Next": next, "NextOffset": next_offset });
    (format!("{out}\r\n").into_bytes(), Vec::new(), 0)
}
