//! Memory figures from `/proc`, for `/metrics` (the appliance must run in 512 MiB: the tests
//! read the service's peak RSS and the guest's MemAvailable there). The parsers are pure.

/// What `/proc/self/status` and `/proc/meminfo` say, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// This process: resident now (VmRSS) and at its peak (VmHWM).
    pub rss: u64,
    pub peak_rss: u64,
    /// The system: MemAvailable and MemTotal.
    pub available: u64,
    pub total: u64,
}

/// The value of a `Key:   1234 kB` line, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut w = rest.split_whitespace();
        let n: u64 = w.next()?.parse().ok()?;
        match w.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    })
}

/// Figures from the two files' text.
pub fn parse(status: &str, meminfo: &str) -> Memory {
    Memory {
        rss: kib_field(status, "VmRSS").unwrap_or(0),
        peak_rss: kib_field(status, "VmHWM").unwrap_or(0),
        available: kib_field(meminfo, "MemAvailable").unwrap_or(0),
        total: kib_field(meminfo, "MemTotal").unwrap_or(0),
    }
}

/// This process and this system now.
pub fn now() -> Memory {
    parse(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_text() {
        let status = "Name:\tgodwit\nVmHWM:\t   93440 kB\nVmRSS:\t   51200 kB\n";
        let meminfo = "MemTotal:         496532 kB\nMemFree:  1 kB\nMemAvailable:     301234 kB\n";
        let m = parse(status, meminfo);
        assert_eq!(m.peak_rss, 93440 * 1024);
        assert_eq!(m.rss, 51200 * 1024);
        assert_eq!(m.available, 301_234 * 1024);
        assert_eq!(m.total, 496_532 * 1024);
        assert_eq!(parse("VmRSS: x kB", ""), Memory::default());
        let live = now();
        assert!(live.rss > 0 && live.peak_rss >= live.rss && live.available <= live.total);
    }
}
