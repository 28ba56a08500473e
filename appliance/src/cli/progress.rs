//! The progress an operator sees while `replicate`, `export`, `disk convert` and `staging
//! verify` run. The figures come from the libraries (allocation-aware: the total is the bytes
//! of allocated data actually to be read, so a sparse disk is not over-estimated); this module
//! only shows them:
//! - on a terminal (stderr is a tty): one indicatif line per disk with %, bytes, rate and ETA;
//! - with `--json`: one JSON object per line **on stdout**, whatever stderr is (see
//!   docs/cli.md for the schema): `{"event":"progress","op":..,"bytes_done":..,
//!   "bytes_total":..,"rate_bytes_per_sec":..,"eta_seconds":..,"elapsed_seconds":..}` at most
//!   every [`INTERVAL`], and one `{"event":"done","op":..,..}` per disk or operation at the end;
//! - otherwise (piped, in a script without `--json`): nothing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a progress event or a redraw happens at most.
pub const INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Json,
    Quiet,
}

impl Mode {
    pub fn pick(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Quiet
        }
    }
}

/// One figure set to show.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: u64,
    pub eta_secs: Option<u64>,
    /// Fields of the operation (vm, disk, bytes_sent...), merged into the JSON event.
    pub extra: serde_json::Map<String, Value>,
}

impl From<&godwit_disk::progress::Snapshot> for Figures {
    fn from(s: &godwit_disk::progress::Snapshot) -> Figures {
        Figures {
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
            rate_bytes_per_sec: s.rate_bytes_per_sec,
            eta_secs: s.eta_secs,
            extra: serde_json::Map::new(),
        }
    }
}

struct State {
    /// The line being drawn and the label it is for.
    bar: Option<(String, ProgressBar)>,
    last_json: Option<Instant>,
    last: Option<Figures>,
    /// `last` was not printed (JSON mode, rate-limited).
    pending: bool,
}

/// Shows the progress of one command (several disks one after the other).
pub struct Reporter {
    mode: Mode,
    op: &'static str,
    started: Instant,
    st: Mutex<State>,
}

impl Reporter {
    pub fn new(op: &'static str, json: bool) -> Arc<Reporter> {
        Arc::new(Reporter {
            mode: Mode::pick(json),
            op,
            started: Instant::now(),
            st: Mutex::new(State {
                bar: None,
                last_json: None,
                last: None,
                pending: false,
            }),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// New figures for the item `label` (e.g. `vm disk 0`). `last`: the final figures of the
    /// item (always shown, never rate-limited).
    pub fn update(&self, label: &str, f: &Figures, last: bool) {
        let Ok(mut st) = self.st.lock() else { return };
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => {
                let due = st.last_json.is_none_or(|t| t.elapsed() >= INTERVAL);
                st.pending = !(due || last);
                if due || last {
                    st.last_json = Some(Instant::now());
                    println!("{}", self.event("progress", f));
                }
            }
            Mode::Bar => {
                if st.bar.as_ref().is_none_or(|(l, _)| l != label) {
                    if let Some((_, old)) = st.bar.take() {
                        old.finish();
                    }
                    st.bar = Some((label.to_string(), new_bar(label, f)));
                } else if let Some((_, bar)) = &st.bar {
                    bar.set_length(f.bytes_total);
                    bar.set_position(f.bytes_done.min(f.bytes_total));
                    bar.set_message(rate_eta(f));
                }
            }
        }
        st.last = Some(f.clone());
    }

    /// The item is over: leave its line on the terminal. Returns its last figures.
    pub fn finish(&self) -> Option<Figures> {
        let mut st = self.st.lock().ok()?;
        if let Some((_, bar)) = st.bar.take() {
            bar.finish();
        }
        if st.pending
            && let Some(f) = &st.last
        {
            println!("{}", self.event("progress", f));
        }
        st.pending = false;
        st.last_json = None;
        st.last.take()
    }

    /// The JSON object of an event, with the operation's own fields merged in.
    pub fn event(&self, event: &str, f: &Figures) -> Value {
        let mut v = json!({
            "event": event,
            "op": self.op,
            "bytes_done": f.bytes_done,
            "bytes_total": f.bytes_total,
            "rate_bytes_per_sec": f.rate_bytes_per_sec,
            "eta_seconds": f.eta_secs,
            "elapsed_seconds": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        if let Some(o) = v.as_object_mut() {
            for (k, x) in &f.extra {
                o.entry(k.clone()).or_insert_with(|| x.clone());
            }
        }
        v
    }

    /// Print the `done` event of an item (JSON mode): `report`'s fields, `event`, `op` and
    /// the item's final `bytes_done` / `bytes_total`.
    pub fn done_json(&self, report: Value, last: Option<&Figures>) -> Value {
        let mut v = report;
        if let Some(o) = v.as_object_mut() {
            o.insert("event".into(), "done".into());
            o.insert("op".into(), self.op.into());
            if let Some(f) = last {
                o.insert("bytes_done".into(), f.bytes_done.into());
                o.insert("bytes_total".into(), f.bytes_total.into());
            }
        }
        v
    }
}

/// A line with its first figures, drawn only once they are set.
fn new_bar(label: &str, f: &Figures) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(f.bytes_total), ProgressDrawTarget::hidden());
    let style = ProgressStyle::with_template(
        "{prefix} {bar:24.cyan/blue} {percent:>3}% {binary_bytes}/{binary_total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.set_position(f.bytes_done.min(f.bytes_total));
    bar.set_message(rate_eta(f));
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar
}

fn rate_eta(f: &Figures) -> String {
    let eta = match f.eta_secs {
        Some(s) if f.bytes_done < f.bytes_total => format!("ETA {}", clock(s)),
        _ if f.bytes_done >= f.bytes_total => "done".to_string(),
        _ => "ETA ?".to_string(),
    };
    format!("{}/s  {eta}", indicatif::BinaryBytes(f.rate_bytes_per_sec))
}

/// `1:02:03`, `2:03`, `0:05`.
pub fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The reporter of `godwit replicate`, which the per-disk report printer finishes (the Hyper-V
/// and vSphere cycles print each disk's report as they go).
static REPLICATE: OnceLock<Arc<Reporter>> = OnceLock::new();

pub fn set_replicate(r: Arc<Reporter>) {
    let _ = REPLICATE.set(r);
}

pub fn replicate() -> Option<&'static Arc<Reporter>> {
    REPLICATE.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_events() {
        assert_eq!(clock(5), "0:05");
        assert_eq!(clock(123), "2:03");
        assert_eq!(clock(3723), "1:02:03");
        let r = Reporter::new("export", true);
        let mut f = Figures {
            bytes_done: 5,
            bytes_total: 10,
            rate_bytes_per_sec: 1,
            eta_secs: Some(5),
            extra: serde_json::Map::new(),
        };
        f.extra.insert("vm".into(), "a".into());
        f.extra.insert("op".into(), "not this".into());
        let v = r.event("progress", &f);
        assert_eq!(v["op"], "export");
        assert_eq!(v["vm"], "a");
        assert_eq!(v["eta_seconds"], 5);
        let d = r.done_json(json!({"x": 1}), Some(&f));
        assert_eq!(
            (d["event"].as_str(), d["bytes_total"].as_u64()),
            (Some("done"), Some(10))
        );
    }
}
