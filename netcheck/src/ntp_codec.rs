//! SNTP (RFC 4330 / RFC 5905 wire format) codec: a pure encoder and parser of the 48-byte
//! NTP header, and the clock offset / round-trip delay arithmetic. No I/O here.
//!
//! Fuzz entry point: [`parse_ntp_packet`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an NTP header without extension fields or MAC.
pub const NTP_PACKET_LEN: usize = 48;

/// Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// An NTP timestamp: 32 bits of seconds since 1900 (modulo 2^32, i.e. per era) and 32 bits of
/// binary fraction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// The NTP timestamp of a wall-clock instant (era-wrapped, as on the wire).
    pub fn from_system_time(t: SystemTime) -> Self {
        let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS) & 0xFFFF_FFFF;
        let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        Self((secs << 32) | frac)
    }

    /// Signed difference `self - earlier` in nanoseconds, correct across an era boundary as
    /// long as the true difference is under 68 years.
    pub fn nanos_since(self, earlier: NtpTimestamp) -> i128 {
        // Two's-complement difference of 32.32 fixed point values.
        let diff = i128::from(self.0.wrapping_sub(earlier.0).cast_signed());
        (diff * 1_000_000_000) >> 32
    }
}

/// Leap indicator; `Unsynchronized` (3) is the alarm condition: the server's clock is not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeapIndicator {
    NoWarning,
    LastMinute61,
    LastMinute59,
    Unsynchronized,
}

impl LeapIndicator {
    fn bits(self) -> u8 {
        match self {
            Self::NoWarning => 0,
            Self::LastMinute61 => 1,
            Self::LastMinute59 => 2,
            Self::Unsynchronized => 3,
        }
    }
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::NoWarning,
            1 => Self::LastMinute61,
            2 => Self::LastMinute59,
            _ => Self::Unsynchronized,
        }
    }
}

/// Association mode of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtpMode {
    Reserved,
    SymmetricActive,
    SymmetricPassive,
    Client,
    Server,
    Broadcast,
    Control,
    Private,
}

impl NtpMode {
    fn bits(self) -> u8 {
        match self {
            Self::Reserved => 0,
            Self::SymmetricActive => 1,
            Self::SymmetricPassive => 2,
            Self::Client => 3,
            Self::Server => 4,
            Self::Broadcast => 5,
            Self::Control => 6,
            Self::Private => 7,
        }
    }
    fn from_bits(b: u8) -> Self {
        match b & 7 {
            0 => Self::Reserved,
            1 => Self::SymmetricActive,
            2 => Self::SymmetricPassive,
            3 => Self::Client,
            4 => Self::Server,
            5 => Self::Broadcast,
            6 => Self::Control,
            _ => Self::Private,
        }
    }
}

/// One NTP header (the first 48 bytes of a packet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NtpPacket {
    pub leap: LeapIndicator,
    /// Version number, 0..=7 on the wire (3 or 4 in practice).
    pub version: u8,
    pub mode: NtpMode,
    /// 0 = unspecified / kiss-o'-death, 1 = primary reference, 2..=15 secondary, 16 unsynchronised.
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    /// Root delay, NTP short format (16.16 seconds).
    pub root_delay: u32,
    /// Root dispersion, NTP short format (16.16 seconds).
    pub root_dispersion: u32,
    /// Reference id: an IPv4 address, or ASCII (a refclock name, or a kiss code at stratum 0).
    pub reference_id: [u8; 4],
    pub reference_ts: NtpTimestamp,
    pub origin_ts: NtpTimestamp,
    pub receive_ts: NtpTimestamp,
    pub transmit_ts: NtpTimestamp,
}

/// Why bytes are not an NTP packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NtpError {
    #[error("NTP packet too short: {len} bytes, the header needs {NTP_PACKET_LEN}")]
    TooShort { len: usize },
}

impl NtpPacket {
    /// A version-4 client request whose transmit timestamp is `transmit` (the server echoes it
    /// back as the origin timestamp, which is how a reply is matched to its request).
    pub fn client_request(transmit: NtpTimestamp) -> Self {
        Self {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: NtpMode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: 0,
            root_dispersion: 0,
            reference_id: [0; 4],
            reference_ts: NtpTimestamp(0),
            origin_ts: NtpTimestamp(0),
            receive_ts: NtpTimestamp(0),
            transmit_ts: transmit,
        }
    }

    /// The 48-byte wire form.
    pub fn encode(&self) -> [u8; NTP_PACKET_LEN] {
        let mut b = [0u8; NTP_PACKET_LEN];
        b[0] = (self.leap.bits() << 6) | ((self.version & 7) << 3) | self.mode.bits();
        b[1] = self.stratum;
        b[2] = self.poll.to_be_bytes()[0];
        b[3] = self.precision.to_be_bytes()[0];
        b[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        b[16..24].copy_from_slice(&self.reference_ts.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin_ts.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive_ts.0.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit_ts.0.to_be_bytes());
        b
    }

    /// The kiss code (e.g. `RATE`, `DENY`) of a stratum-0 reply, if printable.
    pub fn kiss_code(&self) -> Option<String> {
        if self.stratum != 0 {
            return None;
        }
        let printable = self
            .reference_id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b' ' || *c == 0);
        printable.then(|| {
            String::from_utf8_lossy(&self.reference_id)
                .trim_end_matches(['\0', ' '])
                .to_string()
        })
    }
}

/// Parse the NTP header at the start of `bytes` (extension fields / MAC after byte 48 are
/// ignored). Pure; never panics.
pub fn parse_ntp_packet(bytes: &[u8]) -> Result<NtpPacket, NtpError> {
    let Some(b) = bytes.first_chunk::<NTP_PACKET_LEN>() else {
        return Err(NtpError::TooShort { len: bytes.len() });
    };
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    Ok(NtpPacket {
        leap: LeapIndicator::from_bits(b[0] >> 6),
        version: (b[0] >> 3) & 7,
        mode: NtpMode::from_bits(b[0]),
        stratum: b[1],
        poll: i8::from_be_bytes([b[2]]),
        precision: i8::from_be_bytes([b[3]]),
        root_delay: u32_at(4),
        root_dispersion: u32_at(8),
        reference_id: [b[12], b[13], b[14], b[15]],
        reference_ts: NtpTimestamp(u64_at(16)),
        origin_ts: NtpTimestamp(u64_at(24)),
        receive_ts: NtpTimestamp(u64_at(32)),
        transmit_ts: NtpTimestamp(u64_at(40)),
    })
}

/// Clock offset and round-trip delay in nanoseconds from the four timestamps of one exchange:
/// `t1` client transmit, `t2` server receive, `t3` server transmit, `t4` client receive.
/// A positive offset means the server's clock is ahead of ours.
pub fn offset_and_delay(
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    t4: NtpTimestamp,
) -> (i128, i128) {
    let offset = (t2.nanos_since(t1) + t3.nanos_since(t4)) / 2;
    let delay = t4.nanos_since(t1) - t3.nanos_since(t2);
    (offset, delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_packet() -> impl Strategy<Value = NtpPacket> {
        (
            (
                0u8..4,
                0u8..8,
                0u8..8,
                any::<u8>(),
                any::<i8>(),
                any::<i8>(),
            ),
            (any::<u32>(), any::<u32>(), any::<[u8; 4]>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |((li, vn, mode, stratum, poll, precision), (rd, rdisp, rid), ts)| NtpPacket {
                    leap: LeapIndicator::from_bits(li),
                    version: vn,
                    mode: NtpMode::from_bits(mode),
                    stratum,
                    poll,
                    precision,
                    root_delay: rd,
                    root_dispersion: rdisp,
                    reference_id: rid,
                    reference_ts: NtpTimestamp(ts.0),
                    origin_ts: NtpTimestamp(ts.1),
                    receive_ts: NtpTimestamp(ts.2),
                    transmit_ts: NtpTimestamp(ts.3),
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(p in arb_packet()) {
            prop_assert_eq!(parse_ntp_packet(&p.encode()).unwrap(), p);
        }

        #[test]
        fn bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 48..100)) {
            let p = parse_ntp_packet(&bytes).unwrap();
            prop_assert_eq!(&p.encode()[..], &bytes[..48]);
        }

        #[test]
        fn short_input_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            prop_assert_eq!(parse_ntp_packet(&bytes), Err(NtpError::TooShort { len: bytes.len() }));
        }
    }

    #[test]
    fn known_bytes_decode() {
        // A chrony reply captured by hand: LI=0, VN=4, mode=4, stratum 8, poll 6, precision -23.
        let mut b = [0u8; 48];
        b[0] = 0b00_100_100;
        b[1] = 8;
        b[2] = 6;
        b[3] = 0xE9;
        b[12..16].copy_from_slice(b"LOCL");
        let p = parse_ntp_packet(&b).unwrap();
        assert_eq!(p.version, 4);
        assert_eq!(p.mode, NtpMode::Server);
        assert_eq!(p.stratum, 8);
        assert_eq!(p.precision, -23);
        assert_eq!(p.kiss_code(), None);
    }

    #[test]
    fn offset_math_matches_rfc_example() {
        let base = NtpTimestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let at = |ms: i64| {
            let delta = (i128::from(ms) << 32) / 1000;
            NtpTimestamp(base.0.wrapping_add_signed(i64::try_from(delta).unwrap()))
        };
        // Server 5 s ahead, 10 ms each way, 1 ms processing.
        let (offset, delay) = offset_and_delay(at(0), at(5010), at(5011), at(21));
        assert!((offset - 5_000_000_000).abs() < 1_000, "offset {offset}");
        assert!((delay - 20_000_000).abs() < 1_000, "delay {delay}");
    }

    #[test]
    fn difference_across_era_boundary() {
        let before = NtpTimestamp(0xFFFF_FFFF_0000_0000); // one second before the 2036 wrap
        let after = NtpTimestamp(0x0000_0001_0000_0000); // one second after
        assert_eq!(after.nanos_since(before), 2_000_000_000);
        assert_eq!(before.nanos_since(after), -2_000_000_000);
    }

    #[test]
    fn kiss_code_of_stratum_zero() {
        let mut p = NtpPacket::client_request(NtpTimestamp(1));
        p.stratum = 0;
        p.reference_id = *b"RATE";
        assert_eq!(p.kiss_code().as_deref(), Some("RATE"));
    }
}
