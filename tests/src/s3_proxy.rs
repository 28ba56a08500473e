//! A TCP proxy in front of an S3 server (SeaweedFS or moto) on loopback that records every
//! UploadPart request (`PUT /BUCKET/KEY?partNumber=N&uploadId=ID`) for keys under a prefix, and
//! whether it carried an `x-amz-checksum-sha256` header, and holds each one back for a moment
//! so a test can interrupt an upload between parts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One UploadPart request seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartPut {
    pub number: u32,
    pub upload_id: String,
}

pub struct Proxy {
    pub endpoint: String,
    parts: Arc<Mutex<Vec<PartPut>>>,
    checksummed: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listen on a free loopback port, forward to `upstream` (`127.0.0.1:PORT`); UploadPart
    /// requests whose path starts with `/{path_prefix}` are recorded and delayed by `hold`.
    pub fn start(upstream: &str, path_prefix: &str, hold: Duration) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let parts = Arc::new(Mutex::new(Vec::new()));
        let checksummed = Arc::new(AtomicUsize::new(0));
        let (p2, c2s, up, needle) = (
            parts.clone(),
            checksummed.clone(),
            upstream.to_string(),
            format!("PUT /{path_prefix}"),
        );
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(s) = TcpStream::connect(&up) else {
                    continue;
                };
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let (p3, n2, k3) = (p2.clone(), needle.clone(), c2s.clone());
                std::thread::spawn(move || upload_side(c, s, &n2, (&p3, &k3), hold));
                std::thread::spawn(move || copy(s2, c2));
            }
        });
        Proxy {
            endpoint,
            parts,
            checksummed,
        }
    }

    /// UploadPart requests seen whose headers carried `x-amz-checksum-sha256`.
    pub fn checksummed_parts(&self) -> usize {
        self.checksummed.load(Ordering::SeqCst)
    }

    /// Every UploadPart request seen so far, in order.
    pub fn parts(&self) -> Vec<PartPut> {
        self.parts.lock().unwrap().clone()
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Client → server, scanning request lines as they pass.
fn upload_side(
    mut from: TcpStream,
    mut to: TcpStream,
    needle: &str,
    (parts, checksummed): (&Mutex<Vec<PartPut>>, &AtomicUsize),
    hold: Duration,
) {
    let mut buf = vec![0u8; 64 << 10];
    // Unscanned tail of the stream (a request line split across reads).
    let mut carry: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let mut at = 0;
        let mut held = false;
        while let Some(p) = find(&carry[at..], needle.as_bytes()) {
            let start = at + p;
            let Some(end) = find(&carry[start..], b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&carry[start..start + end]).into_owned();
            if let Some(pp) = parse_part(&line) {
                let head = &carry[start..];
                let head = &head[..find(head, b"\r\n\r\n").unwrap_or(head.len())];
                if String::from_utf8_lossy(head)
                    .to_ascii_lowercase()
                    .contains("\r\nx-amz-checksum-sha256:")
                {
                    checksummed.fetch_add(1, Ordering::SeqCst);
                }
                parts.lock().unwrap().push(pp);
                held = true;
            }
            at = start + end;
        }
        let keep = carry.len().saturating_sub(1024).max(at);
        carry.drain(..keep);
        if held {
            std::thread::sleep(hold);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `PUT /b/k?partNumber=3&uploadId=X HTTP/1.1` → part 3 of upload X.
fn parse_part(line: &str) -> Option<PartPut> {
    let target = line.split(' ').nth(1)?;
    let (_, query) = target.split_once('?')?;
    let mut number = None;
    let mut upload_id = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("partNumber", v)) => number = v.parse().ok(),
            Some(("uploadId", v)) => upload_id = Some(v.to_string()),
            _ => {}
        }
    }
    Some(PartPut {
        number: number?,
        upload_id: upload_id?,
    })
}
