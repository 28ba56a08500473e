//! `GetSpace` end to end (issue 18): a staging server over a local store answers statvfs of its
//! store directory — the figures `df` prints for it — and the client reads them; a server that
//! refuses the frame as unknown (what every server before it does: code 3, then close) reads as
//! unknown, not as a failure.

use super::client::StagingClient;
use super::frame::{ErrorCode, Frame, PROTOCOL_VERSION};
use super::server::{ServerOptions, serve};
use super::tls::ServerIdentity;
use crate::store::{ChunkStore, open_url};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `df -B1 --output=avail,size DIR`: (available, size) in bytes.
fn df(dir: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail,size"])
        .arg(dir)
        .output()
        .expect("df");
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[tokio::test]
async fn a_local_store_answers_what_df_says_of_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        open_url(&format!("file://{}", dir.display()))
            .await
            .unwrap(),
    );
    let token = store.issue_token("default").await.unwrap().token;
    let id = ServerIdentity::load_or_create(tmp.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fp = id.fingerprint();
    let server = tokio::spawn(async move {
        let _ = serve(listener, store, &id, ServerOptions::default()).await;
    });
    let c = StagingClient::connect(&addr, &[fp], &token).await.unwrap();
    let before = df(&dir);
    let got = c.store_space().await.unwrap().expect("a local store knows");
    let after = df(&dir);
    assert_eq!(got.total_bytes, before.1);
    // Other writers share the file system: the answer lies between two readings of df
    // (within 1 MiB of them).
    let (lo, hi) = (before.0.min(after.0), before.0.max(after.0));
    assert!(
        got.free_bytes + (1 << 20) >= lo && got.free_bytes <= hi + (1 << 20),
        "{got:?} vs df {before:?} / {after:?}"
    );
    // Through the trait as well, and the connection stays usable.
    assert_eq!(c.space().await.unwrap().unwrap().total_bytes, before.1);
    assert!(c.list_syncs("vm", 0).await.unwrap().is_empty());
    server.abort();
}

/// A server from before `GetSpace`: TLS, `Welcome`, then any frame type it does not know is a
/// protocol violation answered with `Refused` code 3 and a close (session.rs as it was).
#[tokio::test]
async fn a_server_that_does_not_know_the_question_reads_as_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let id = ServerIdentity::load_or_create(tmp.path()).unwrap();
    let fp = id.fingerprint();
    let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        let read = |buf: &mut Vec<u8>| super::frame::parse(buf).unwrap();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "client closed");
            buf.extend_from_slice(&b[..n]);
            while let Some((f, used)) = read(&mut buf) {
                buf.drain(..used);
                frames.push(f);
                if frames.len() == 1 {
                    let w = Frame::Welcome {
                        version: PROTOCOL_VERSION,
                        window: 8,
                        connector: "default".into(),
                    };
                    s.write_all(&w.to_bytes()).await.unwrap();
                }
            }
        }
        assert!(
            matches!(frames[1], Frame::GetSpace { .. }),
            "{:?}",
            frames[1]
        );
        let r = Frame::Refused {
            code: ErrorCode::BadRequest,
            message: "protocol violation: frame: malformed at byte 4: unknown frame type 27".into(),
        };
        s.write_all(&r.to_bytes()).await.unwrap();
        let _ = s.shutdown().await;
    });
    let c = StagingClient::connect(&addr, &[fp], "a-token-of-sixteen-chars")
        .await
        .unwrap();
    assert_eq!(c.store_space().await.unwrap(), None);
    server.await.unwrap();
}
