//! Rate-limited, aggregated logging of events anyone can cause without logging in (failed
//! logins, refused connections, failed TLS handshakes): a flood must not become a log flood.
//!
//! Per kind and client address, the first event of a minute is logged at once; the rest of
//! that minute are counted and logged as one line when the minute is over ("N failed logins
//! from ADDR in the last minute"). At most [`ADDRESSES_PER_WINDOW`] addresses get lines of
//! their own per minute; events from further addresses are summed up in one line per kind.
//! So any number of events costs at most `2 × ADDRESSES_PER_WINDOW + 1` lines a minute per
//! kind, and memory stays bounded by [`MAX_TRACKED`].

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

/// Addresses with lines of their own per window (per kind).
pub const ADDRESSES_PER_WINDOW: usize = 20;
/// (kind, address) pairs tracked at most per window; beyond, only counted.
const MAX_TRACKED: usize = 10_000;

/// What happened, in words for one and for many.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKind {
    pub one: &'static str,
    pub many: &'static str,
}

/// A wrong password (form, JSON, HTTP Basic) or setup code.
pub const FAILED_LOGIN: EventKind = EventKind {
    one: "failed login",
    many: "failed logins",
};

/// A login attempt refused by the rate limit (nothing was checked).
pub const REFUSED_LOGIN: EventKind = EventKind {
    one: "refused login attempt (rate limit)",
    many: "refused login attempts (rate limit)",
};

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    /// Events after the first, per (kind, address) that got its own line.
    counts: BTreeMap<(&'static str, &'static str, IpAddr), u64>,
    /// Addresses with a line of their own, per kind.
    lined: BTreeMap<&'static str, usize>,
    /// Events from addresses without a line of their own: (count, addresses).
    others: BTreeMap<(&'static str, &'static str), (u64, HashSet<IpAddr>)>,
}

/// See the module docs. Lines go to `tracing` (warn, target `godwit::audit`).
pub struct EventLog {
    window: Duration,
    state: Mutex<Window>,
}

impl EventLog {
    pub fn new(window: Duration) -> Arc<EventLog> {
        Arc::new(EventLog {
            window,
            state: Mutex::new(Window::default()),
        })
    }

    /// Record one event from `addr`; logs at once or later (see the module docs).
    pub fn note(&self, kind: &'static EventKind, addr: IpAddr) {
        for line in self.note_at(kind, addr, Instant::now()) {
            tracing::warn!(target: "godwit::audit", "{line}");
        }
    }

    /// Log the summaries of a window that is over; a task calls this every few seconds.
    pub fn flush(&self) {
        for line in self.flush_at(Instant::now()) {
            tracing::warn!(target: "godwit::audit", "{line}");
        }
    }

    /// Call [`EventLog::flush`] every few seconds on the current tokio runtime (when there is
    /// one) for as long as this log exists.
    pub fn spawn_flusher(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak: Weak<EventLog> = Arc::downgrade(self);
        let every = (self.window / 12).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(log) => log.flush(),
                    None => break,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lines to log for an event at `now` (pure but for the lock; for tests).
    pub fn note_at(&self, kind: &'static EventKind, addr: IpAddr, now: Instant) -> Vec<String> {
        let mut out = self.flush_at(now);
        let mut w = self.lock();
        if w.started.is_none() {
            w.started = Some(now);
        }
        let key = (kind.one, kind.many, addr);
        if let Some(n) = w.counts.get_mut(&key) {
            *n += 1;
            return out;
        }
        let lined = w.lined.get(kind.one).copied().unwrap_or(0);
        if lined < ADDRESSES_PER_WINDOW && w.counts.len() < MAX_TRACKED {
            w.counts.insert(key, 0);
            w.lined.insert(kind.one, lined + 1);
            let secs = self.window.as_secs();
            out.push(format!(
                "{} from {addr} (further ones from this address are summed up every {secs} s)",
                kind.one
            ));
        } else {
            let e = w.others.entry((kind.one, kind.many)).or_default();
            e.0 += 1;
            if e.1.len() < MAX_TRACKED {
                e.1.insert(addr);
            }
        }
        out
    }

    /// The summary lines of the window when it is over at `now` (and a new window begins).
    pub fn flush_at(&self, now: Instant) -> Vec<String> {
        let mut w = self.lock();
        let Some(started) = w.started else {
            return Vec::new();
        };
        if now.duration_since(started) < self.window {
            return Vec::new();
        }
        let span = human(self.window);
        let mut out = Vec::new();
        for ((_, many, addr), n) in std::mem::take(&mut w.counts) {
            if n > 0 {
                out.push(format!("{n} more {many} from {addr} in the last {span}"));
            }
        }
        for ((_, many), (n, addrs)) in std::mem::take(&mut w.others) {
            out.push(format!(
                "{n} {many} from {} other addresses in the last {span}",
                addrs.len()
            ));
        }
        *w = Window::default();
        out
    }
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        60 => "minute".to_owned(),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + i))
    }

    #[test]
    fn two_thousand_failures_from_one_address_are_two_lines() {
        let log = EventLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..2000u64 {
            lines.extend(log.note_at(&FAILED_LOGIN, addr(1), t0 + Duration::from_millis(i * 20)));
        }
        assert_eq!(
            lines,
            vec![
                "failed login from 192.0.2.1 (further ones from this address are summed up every 60 s)"
            ]
        );
        lines.extend(log.flush_at(t0 + Duration::from_secs(61)));
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            "1999 more failed logins from 192.0.2.1 in the last minute"
        );
        // Nothing left to say; the next window starts afresh.
        assert!(log.flush_at(t0 + Duration::from_secs(200)).is_empty());
        let again = log.note_at(&FAILED_LOGIN, addr(1), t0 + Duration::from_secs(201));
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn many_addresses_are_bounded_and_summed_up() {
        let log = EventLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..5000u32 {
            lines.extend(log.note_at(&FAILED_LOGIN, addr(i), t0));
        }
        assert_eq!(lines.len(), ADDRESSES_PER_WINDOW);
        let summary = log.flush_at(t0 + Duration::from_secs(60));
        assert_eq!(
            summary,
            vec![format!(
                "{} failed logins from {} other addresses in the last minute",
                5000 - ADDRESSES_PER_WINDOW,
                5000 - ADDRESSES_PER_WINDOW
            )]
        );
    }
}
