//! Peers the appliance image tests serve on loopback, the image they boot ([`image`]), and
//! qemu to boot it ([`qemu`]).

pub mod build;
pub mod e2e;
pub mod qemu;

use std::time::Duration;

/// An SNTP server on 127.0.0.1 (the guest reaches it as 10.0.2.2, qemu's host address): the
/// appliance's clock is set from it, so tests make no outbound NTP or DNS lookups (the image's
/// default, pool.ntp.org, would be resolved through qemu's user network).
pub struct Sntp {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sntp {
    pub fn start() -> Sntp {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind SNTP");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let answered = std::sync::Arc::new(AtomicU32::new(0));
        let (s2, a2) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 || buf[0] & 7 != 3 {
                    continue;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let secs = u32::try_from(now.as_secs() + 2_208_988_800).unwrap_or(u32::MAX);
                let mut r = [0u8; 48];
                r[0] = 0x24; // LI 0, version 4, mode 4 (server)
                r[1] = 2; // stratum
                r[24..32].copy_from_slice(&buf[40..48]); // originate = client's transmit
                r[32..36].copy_from_slice(&secs.to_be_bytes());
                r[40..44].copy_from_slice(&secs.to_be_bytes());
                if sock.send_to(&r, from).is_ok() {
                    a2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Sntp {
            port,
            stop,
            answered,
            thread: Some(thread),
        }
    }

    /// The `godwit.ntp` value the guest uses to reach this server.
    pub fn guest_setting(&self) -> String {
        format!("10.0.2.2:{}", self.port)
    }

    pub fn answered(&self) -> u32 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Sntp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
