//! Logging for `godwit serve`: tracing to stderr, to `DATA/logs/godwit.log` (mode 0600) and to
//! an in-memory ring of recent lines that the dashboard and the support bundle read.
//! Nothing logs a secret in the first place; the bundle scrubs known secrets once more.
//!
//! The file rotates by size while the service runs ([`RotatingFile`]: at [`ROTATE_BYTES`] it
//! becomes `godwit.log.1`, the older `.1` becomes `.2`, and [`KEEP_ROTATED`] old files are
//! kept), so the logs never take more than `(1 + KEEP_ROTATED) × ROTATE_BYTES` of the data
//! disk. Events anyone can cause without logging in are aggregated before they are logged
//! (`godwit_webui::audit`).

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
/// The log file is moved to `godwit.log.1` when a write would make it larger than this.
pub const ROTATE_BYTES: u64 = 20 << 20;
/// Rotated files kept (`godwit.log.1` .. `godwit.log.N`).
pub const KEEP_ROTATED: usize = 2;

/// A log file that rotates by size (see the module docs).
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: std::fs::File,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file,
            size,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `path` → `path.1` → `path.2` ... (the oldest dropped), and a new empty `path`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + b.len() as u64 > self.max_bytes {
            // A failed rotation keeps writing to the file it has.
            let _ = self.rotate();
        }
        let n = self.file.write(b)?;
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

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

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Install the subscriber (filter from `GODWIT_LOG`, default `info`). Returns the ring.
pub fn init(data: &Path) -> Result<LogRing, LogError> {
    let io = |what: String| move |source| LogError::Io { what, source };
    let path = log_file(data);
    let dir = path.parent().unwrap_or(data);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let file = RotatingFile::open(&path, ROTATE_BYTES, KEEP_ROTATED)
        .map_err(io(format!("opening {}", path.display())))?;
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
        .try_init()?;
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

    #[test]
    fn the_file_rotates_by_size_while_written_and_keeps_two_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("godwit.log");
        std::fs::write(&path, "x".repeat(900)).unwrap();
        let mut f = RotatingFile::open(&path, 1000, 2).unwrap();
        // Whole lines per write, as the tracing formatter writes each event.
        for i in 0..100 {
            f.write_all(format!("line {i:04} {}\n", "y".repeat(40)).as_bytes())
                .unwrap();
        }
        f.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["godwit.log", "godwit.log.1", "godwit.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 1000, "{n}: {len} bytes");
        }
        // The newest lines are in the current file, whole.
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.ends_with(&format!("line 0099 {}\n", "y".repeat(40))));
        assert!(now.lines().all(|l| l.starts_with("line ")));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
