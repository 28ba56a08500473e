//! Logging for `godwit serve`: tracing to stderr, to `DATA/logs/godwit.log` (mode 0600) and to
//! an in-memory ring of recent lines that the dashboard and the support bundle read.
//! Nothing logs a secret in the first place; the bundle scrubs known secrets once more.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Lines kept in memory.
pub const RING_LINES: usize = 2000;
/// The log file is moved to `godwit.log.1` at start when larger than this.
const ROTATE_BYTES: u64 = 20 << 20;

/// Recent log lines, shared between the tracing layer and the service.
#[derive(Clone, Default)]
pub struct LogRing(Arc<Mutex<VecDeque<String>>>);

impl LogRing {
    pub fn push(&self, line: &str) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for l in line.lines().filter(|l| !l.trim().is_empty()) {
            g.push_back(l.to_string());
        }
        while g.len() > RING_LINES {
            g.pop_front();
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.iter().skip(g.len().saturating_sub(n)).cloned().collect()
    }
}

/// One log record being written; pushed to the ring when the formatter drops it.
pub struct RingLine {
    ring: LogRing,
    buf: Vec<u8>,
}

impl Write for RingLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RingLine {
    fn drop(&mut self) {
        self.ring.push(&String::from_utf8_lossy(&self.buf));
    }
}

impl<'a> MakeWriter<'a> for LogRing {
    type Writer = RingLine;
    fn make_writer(&'a self) -> RingLine {
        RingLine {
            ring: self.clone(),
            buf: Vec::new(),
        }
    }
}

pub fn log_file(data: &Path) -> PathBuf {
    data.join("logs").join("godwit.log")
}

/// Install the subscriber (filter from `GODWIT_LOG`, default `info`). Returns the ring.
pub fn init(data: &Path) -> anyhow::Result<LogRing> {
    use anyhow::Context;
    let path = log_file(data);
    let dir = path.parent().unwrap_or(data);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let ring = LogRing::default();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let to_file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(Mutex::new(file));
    let to_ring = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(ring.clone());
    tracing_subscriber::registry()
        .with(filter())
        .with(stderr)
        .with(to_file)
        .with(to_ring)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_lines() {
        let r = LogRing::default();
        for i in 0..(RING_LINES + 5) {
            let mut w = r.make_writer();
            writeln!(w, "line {i}").unwrap();
        }
        let last = r.last(2);
        assert_eq!(
            last,
            [
                format!("line {}", RING_LINES + 3),
                format!("line {}", RING_LINES + 4)
            ]
        );
        assert_eq!(r.last(usize::MAX).len(), RING_LINES);
    }
}
