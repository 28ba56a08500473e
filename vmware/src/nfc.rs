//! The NFC export-lease path, for datastores `/folder` cannot serve (vSAN, vVol) and
//! selectable for testing: `ExportSnapshot` (running VM, disks as of Godwit's snapshot) or
//! `ExportVm` (powered-off VM) gives an `HttpNfcLease`; we wait until it is `ready`, take the
//! disk device URLs (`*` → the host we connected to), download each disk — a streamOptimized
//! VMDK, no ranges, no resume — into a spool file while a keep-alive thread sends
//! `HttpNfcLeaseProgress` well inside `leaseTimeout`, and end with `HttpNfcLeaseComplete` on
//! success or `HttpNfcLeaseAbort` on any failure (also when the lease is dropped unfinished).
//!
//! Device URLs on another host (an ESXi host behind vCenter) are fetched over HTTPS without the
//! vCenter session cookie (NFC URLs are authorised by the lease itself), trusting the host by
//! the SHA-1 thumbprint vCenter reports for it in the lease (`sslThumbprint`, received over the
//! pinned vCenter session) or by its own SHA-256 pin from the trust store; a host with neither,
//! or whose certificate matches neither, stops the run naming the host and its fingerprint
//! (see [`crate::trust`]). Device URLs are matched to disks by their key (controller and unit),
//! never by position.

use crate::error::{Error, Result};
use crate::moref::MoRef;
use crate::session::{Session, map_reply};
use crate::soap::envelope as env;
use crate::soap::lease::parse_lease_info;
use crate::soap::lease::{DeviceAddress, DeviceUrl, LeaseInfo, LeaseState, device_address};
use crate::soap::response as resp;
use crate::transport::Endpoint;
use crate::trust::Thumbprint;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a lease may stay `initializing` before we give up (and abort it).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Keep-alive interval when the server states no lease timeout.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// An open export lease. Dropping it unfinished aborts it.
pub struct Lease<'s> {
    s: &'s Session,
    pub moref: MoRef,
    pub info: LeaseInfo,
    finished: bool,
}

fn lease_error(s: &Session, lease: &MoRef, what: &str, fault: String, message: String) -> Error {
    Error::TaskFailed {
        host: s.endpoint().authority(),
        task: lease.value.clone(),
        what: what.to_string(),
        fault,
        message,
    }
}

/// `ExportSnapshot`: the disks as of `snapshot` (the VM may be running).
pub fn export_snapshot<'s>(s: &'s Session, snapshot: &MoRef) -> Result<Lease<'s>> {
    start(s, "ExportSnapshot", &env::export_snapshot(snapshot))
}

/// `ExportVm`: a powered-off VM's disks (`InvalidPowerState` while it runs).
pub fn export_vm<'s>(s: &'s Session, vm: &MoRef) -> Result<Lease<'s>> {
    start(s, "ExportVm", &env::export_vm(vm))
}

fn start<'s>(s: &'s Session, method: &str, body: &str) -> Result<Lease<'s>> {
    let moref = s.call(method, &|_| body.to_string(), &|b| {
        resp::parse_moref_reply(b, method)
    })?;
    let mut lease = Lease {
        s,
        moref,
        info: LeaseInfo {
            device_urls: Vec::new(),
            total_disk_capacity_kb: 0,
            lease_timeout_secs: 0,
        },
        finished: false,
    };
    lease.info = lease.wait_ready(READY_TIMEOUT)?;
    Ok(lease)
}

impl<'s> Lease<'s> {
    /// Poll `state` until `ready` (then read `info`) or `error`, within `timeout`.
    fn wait_ready(&mut self, timeout: Duration) -> Result<LeaseInfo> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let o = self
                .s
                .object_properties(&self.moref, &["state", "error", "info"])?;
            let state = o.prop("state").ok_or_else(|| {
                Error::malformed(
                    &self.s.endpoint().authority(),
                    "HttpNfcLease",
                    format!("lease {} has no state", self.moref.value),
                )
            })?;
            let state = LeaseState::parse(&state.text)
                .map_err(|e| map_reply(self.s.endpoint(), "HttpNfcLease state", e))?;
            match state {
                LeaseState::Ready => {
                    let info = o.prop("info").ok_or_else(|| {
                        Error::malformed(
                            &self.s.endpoint().authority(),
                            "HttpNfcLease",
                            format!("lease {} is ready but has no info", self.moref.value),
                        )
                    })?;
                    return parse_lease_info(info)
                        .map_err(|e| map_reply(self.s.endpoint(), "HttpNfcLease info", e));
                }
                LeaseState::Error | LeaseState::Done => {
                    self.finished = true; // nothing to abort
                    let err = o.prop("error");
                    return Err(lease_error(
                        self.s,
                        &self.moref,
                        "NFC export lease",
                        err.and_then(|e| e.child("fault"))
                            .and_then(|f| f.xsi_type.clone())
                            .unwrap_or_else(|| format!("lease {}", state.as_str())),
                        err.and_then(|e| e.child_text("localizedMessage"))
                            .unwrap_or_default()
                            .to_string(),
                    ));
                }
                LeaseState::Initializing => {}
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    host: self.s.endpoint().authority(),
                    what: format!("NFC lease {} to become ready", self.moref.value),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// The disk device URLs, in device order.
    pub fn disks(&self) -> Vec<&DeviceUrl> {
        self.info.device_urls.iter().filter(|d| d.disk).collect()
    }

    /// The keep-alive interval: a quarter of the lease timeout (at least 100 ms, at most 60 s).
    pub fn keepalive_interval(&self) -> Duration {
        match self.info.lease_timeout_secs {
            0 => DEFAULT_KEEPALIVE,
            t => (Duration::from_secs(u64::from(t)) / 4)
                .clamp(Duration::from_millis(100), DEFAULT_KEEPALIVE),
        }
    }

    /// `HttpNfcLeaseProgress`.
    pub fn progress(&self, percent: u8) -> Result<()> {
        let body = env::http_nfc_lease_progress(&self.moref, percent);
        self.s
            .call("HttpNfcLeaseProgress", &|_| body.clone(), &|b| {
                resp::parse_empty_reply(b, "HttpNfcLeaseProgress")
            })
    }

    /// `HttpNfcLeaseComplete`: the export succeeded.
    pub fn complete(mut self) -> Result<()> {
        self.finished = true;
        let body = env::http_nfc_lease_complete(&self.moref);
        self.s
            .call("HttpNfcLeaseComplete", &|_| body.clone(), &|b| {
                resp::parse_empty_reply(b, "HttpNfcLeaseComplete")
            })
    }

    /// `HttpNfcLeaseAbort`: the export failed; the server releases the lease at once.
    pub fn abort(mut self) -> Result<()> {
        self.finished = true;
        self.send_abort()
    }

    fn send_abort(&self) -> Result<()> {
        let body = env::http_nfc_lease_abort(&self.moref);
        self.s.call("HttpNfcLeaseAbort", &|_| body.clone(), &|b| {
            resp::parse_empty_reply(b, "HttpNfcLeaseAbort")
        })
    }

    /// Where a device URL points, with `*` replaced by the host we connected to.
    pub fn address(&self, d: &DeviceUrl) -> Result<DeviceAddress> {
        let ep = self.s.endpoint();
        device_address(&d.url, &ep.host, ep.port)
            .map_err(|e| map_reply(ep, "HttpNfcLease deviceUrl", e))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Err(e) = self.send_abort()
        {
            tracing::warn!(lease = %self.moref.value, error = %e, "could not abort the NFC lease");
        }
    }
}

/// Sends `HttpNfcLeaseProgress` every interval until dropped; counts calls and failures.
pub struct KeepAlive {
    stop: Arc<AtomicBool>,
    pub done_bytes: Arc<AtomicU64>,
    pub calls: Arc<AtomicU32>,
}

impl KeepAlive {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Run `work` while a keep-alive thread reports `done_bytes / total_bytes` as the percentage.
pub fn with_keepalive<T>(
    lease: &Lease<'_>,
    total_bytes: u64,
    work: impl FnOnce(&KeepAlive) -> Result<T>,
) -> Result<T> {
    let ka = KeepAlive {
        stop: Arc::new(AtomicBool::new(false)),
        done_bytes: Arc::new(AtomicU64::new(0)),
        calls: Arc::new(AtomicU32::new(0)),
    };
    let interval = lease.keepalive_interval();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let step = Duration::from_millis(50).min(interval);
            let mut since = Duration::ZERO;
            while !ka.stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                since += step;
                if since < interval {
                    continue;
                }
                since = Duration::ZERO;
                let done = ka.done_bytes.load(Ordering::Relaxed);
                let pct = (done.saturating_mul(100) / total_bytes.max(1)).min(99);
                match lease.progress(u8::try_from(pct).unwrap_or(99)) {
                    Ok(()) => {
                        ka.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(lease = %lease.moref.value, error = %e, "lease keep-alive failed"),
                }
            }
        });
        // Stop the thread however `work` ends (a panic too, or the scope would wait).
        struct Stop<'a>(&'a KeepAlive);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        let _stop = Stop(&ka);
        work(&ka)
    })
}

/// Opens HTTPS endpoints for device URLs: the session's own endpoint when the URL points at
/// the host we are logged in to (cookie sent), otherwise a new one pinned to that host.
pub struct DeviceEndpoints<'s> {
    s: &'s Session,
    others: Vec<Arc<Endpoint>>,
}

impl<'s> DeviceEndpoints<'s> {
    pub fn new(s: &'s Session) -> Self {
        DeviceEndpoints {
            s,
            others: Vec::new(),
        }
    }

    /// The endpoint for a device URL's host; `thumbprint` is the `sslThumbprint` vCenter gave
    /// with it (may be empty).
    pub fn get(&mut self, a: &DeviceAddress, thumbprint: &str) -> Result<Arc<Endpoint>> {
        let own = self.s.endpoint();
        if a.host.eq_ignore_ascii_case(&own.host) && a.port == own.port {
            return Ok(own.clone());
        }
        if let Some(e) = self
            .others
            .iter()
            .find(|e| e.host.eq_ignore_ascii_case(&a.host) && e.port == a.port)
        {
            return Ok(e.clone());
        }
        let pins = self.s.trust.pins_for(&a.host, a.port);
        let thumbprints: Vec<Thumbprint> = Thumbprint::parse(thumbprint).into_iter().collect();
        let ep = Arc::new(Endpoint::with_thumbprints(
            &a.host,
            a.port,
            pins,
            thumbprints,
            2,
        )?);
        self.others.push(ep.clone());
        Ok(ep)
    }
}

/// Download one disk of the lease into `dest` (created; removed on failure). `limit` bounds
/// the bytes accepted (a streamOptimized file is at most a little larger than the capacity).
pub fn download_disk(
    endpoints: &mut DeviceEndpoints<'_>,
    lease: &Lease<'_>,
    device: &DeviceUrl,
    capacity_bytes: u64,
    dest: &Path,
    ka: &KeepAlive,
) -> Result<u64> {
    let addr = lease.address(device)?;
    let ep = endpoints.get(&addr, &device.ssl_thumbprint)?;
    let limit = capacity_bytes
        .saturating_add(capacity_bytes / 8)
        .saturating_add(16 << 20);
    // At least 1 MiB/s, plus two minutes of slack.
    let time_limit = Duration::from_secs(120 + limit / (1 << 20));
    let mut file = std::fs::File::create(dest).map_err(|e| Error::file(dest, "create", e))?;
    let base = ka.done_bytes.load(Ordering::Relaxed);
    let what = format!("NFC download {}", device.url);
    let r = ep.download_to(
        &addr.path_query,
        &mut file,
        limit,
        time_limit,
        &what,
        &|n| ka.done_bytes.store(base + n, Ordering::Relaxed),
    );
    let r = r.and_then(|n| {
        file.sync_all()
            .map_err(|e| Error::file(dest, "sync", e))
            .map(|()| n)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    r
}

/// The spool file for disk `n` of a lease.
pub fn spool_path(dir: &Path, lease: &MoRef, n: usize) -> PathBuf {
    let safe: String = lease
        .value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("nfc-{safe}-disk{n}.vmdk"))
}
