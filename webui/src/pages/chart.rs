//! The throughput chart (issue #18), drawn on the server as a standalone SVG: a time axis over
//! the last [`WINDOW_SECS`] seconds labelled in minutes, a rate axis with round values in
//! binary units per second, grid lines, and the samples as a line. Pure: [`svg`] takes the
//! samples and the current time. The pages show it as an image that `app.js` reloads, so the
//! chart has one implementation and the CSP needs no inline script or style.

use super::human_bytes;
use crate::backend::ThroughputSample;
use std::fmt::Write as _;

/// The time the chart covers, seconds.
pub(crate) const WINDOW_SECS: u64 = 300;
const W: u64 = 640;
const H: u64 = 200;
const LEFT: u64 = 78;
const RIGHT: u64 = 12;
const TOP: u64 = 12;
const BOTTOM: u64 = 28;

/// The smallest "round" rate (1, 2 or 5 × 10ⁿ of a binary unit) at or above `peak`.
pub(crate) fn nice_max(peak: u64) -> u64 {
    if peak == 0 {
        return 1 << 20;
    }
    let mut unit = 1u64;
    while peak / unit >= 1024 && unit < 1 << 50 {
        unit <<= 10;
    }
    let v = peak.div_ceil(unit);
    let nice = [1u64, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1024]
        .into_iter()
        .find(|&n| n >= v)
        .unwrap_or(1024);
    nice.saturating_mul(unit)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart of `samples` (oldest first) at `now` (Unix seconds), titled `title`.
pub(crate) fn svg(samples: &[ThroughputSample], now: u64, title: &str) -> String {
    let from = now.saturating_sub(WINDOW_SECS);
    let shown: Vec<&ThroughputSample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= now)
        .collect();
    let peak = shown.iter().map(|s| s.bytes_per_second).max().unwrap_or(0);
    let ymax = nice_max(peak);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x_of = |at: u64| LEFT + (at - from) * pw / WINDOW_SECS;
    let y_of = |bps: u64| {
        let scaled = u128::from(bps.min(ymax)) * u128::from(ph) / u128::from(ymax);
        TOP + ph - u64::try_from(scaled).unwrap_or(ph)
    };
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" font-family="sans-serif" font-size="11"><title>{}</title><rect width="{W}" height="{H}" fill="#ffffff"/>"##,
        esc(title)
    );
    // Rate axis: 4 intervals, labelled.
    for i in 0..=4u64 {
        let v = ymax / 4 * i;
        let y = y_of(v);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#dddddd"/><text x="{}" y="{}" text-anchor="end" fill="#444444" class="y-label">{}/s</text>"##,
            W - RIGHT,
            LEFT - 6,
            y + 4,
            human_bytes(v)
        );
    }
    // Time axis: a tick a minute, "now" at the right.
    for m in 0..=WINDOW_SECS / 60 {
        let at = from + m * 60;
        let x = x_of(at);
        let ago = (WINDOW_SECS - m * 60) / 60;
        let label = if ago == 0 {
            "now".to_string()
        } else {
            format!("−{ago} min")
        };
        let _ = write!(
            o,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#eeeeee"/><text x="{x}" y="{}" text-anchor="middle" fill="#444444" class="x-label">{label}</text>"##,
            TOP + ph,
            H - 8
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="#444444"/><line x1="{LEFT}" y1="{b}" x2="{}" y2="{b}" stroke="#444444"/>"##,
        W - RIGHT,
        b = TOP + ph
    );
    if shown.is_empty() {
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666666">No transfer in the last 5 minutes</text>"##,
            LEFT + pw / 2,
            TOP + ph / 2
        );
    } else {
        let points: Vec<String> = shown
            .iter()
            .map(|s| format!("{},{}", x_of(s.at), y_of(s.bytes_per_second)))
            .collect();
        let _ = write!(
            o,
            r##"<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: u64, bps: u64) -> ThroughputSample {
        ThroughputSample {
            at,
            bytes_per_second: bps,
        }
    }

    #[test]
    fn rate_axis_is_round_in_binary_units() {
        assert_eq!(nice_max(0), 1 << 20);
        assert_eq!(nice_max(900), 1000);
        assert_eq!(nice_max(3 << 20), 5 << 20);
        assert_eq!(nice_max(60 << 20), 100 << 20);
        assert_eq!(nice_max((1 << 30) + 1), 2 << 30);
    }

    #[test]
    fn chart_has_axes_units_time_scale_and_the_line_inside_the_plot() {
        let now = 10_000;
        let v: Vec<_> = (0..120).map(|i| s(now - 119 + i, (i % 7) << 20)).collect();
        let out = svg(&v, now, "vm <1>");
        assert!(out.contains("<title>vm &lt;1&gt;</title>"));
        for label in ["10.0 MiB/s", "0 B/s", "now", "−5 min", "−1 min"] {
            assert!(out.contains(label), "{label} missing: {out}");
        }
        let pts = out
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(pts.split(' ').count(), 120);
        for p in pts.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (u64, u64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (LEFT..=W - RIGHT).contains(&x) && (TOP..=H - BOTTOM).contains(&y),
                "{p}"
            );
        }
    }

    #[test]
    fn old_samples_are_left_out_and_an_empty_chart_says_so() {
        let out = svg(&[s(1, 5)], 10_000, "t");
        assert!(out.contains("No transfer in the last 5 minutes"));
        assert!(!out.contains("polyline"));
    }
}
