//! ICMP / ICMPv6 echo codec: pure encoder of echo requests and parser of what an ICMP socket
//! receives (echo replies and destination-unreachable errors). No I/O here.
//!
//! Fuzz entry points: [`parse_icmp_v4`] and [`parse_icmp_v6`].

/// Which ICMP family a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn echo_request_type(self) -> u8 {
        match self {
            Self::V4 => 8,
            Self::V6 => 128,
        }
    }
    fn echo_reply_type(self) -> u8 {
        match self {
            Self::V4 => 0,
            Self::V6 => 129,
        }
    }
    fn unreachable_type(self) -> u8 {
        match self {
            Self::V4 => 3,
            Self::V6 => 1,
        }
    }
}

/// An echo request or reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub ident: u16,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// What a received ICMP message means to the echo check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IcmpMessage {
    EchoRequest(Echo),
    EchoReply(Echo),
    /// Destination unreachable; carries the echo it reports on when the quoted packet was one
    /// of ours, and the destination address of the quoted IP header when present.
    Unreachable {
        code: u8,
        quoted: Option<Echo>,
        quoted_destination: Option<std::net::IpAddr>,
    },
    Other {
        kind: u8,
        code: u8,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IcmpError {
    #[error("ICMP message too short: {len} bytes at offset {offset}, need {need}")]
    TooShort {
        offset: usize,
        len: usize,
        need: usize,
    },
    #[error("IPv4 header at offset {offset}: version {version}, not 4")]
    NotIpv4 { offset: usize, version: u8 },
    #[error("IPv4 header at offset {offset}: header length {ihl} bytes is invalid")]
    BadIhl { offset: usize, ihl: usize },
    #[error("IPv4 packet at offset {offset} carries protocol {protocol}, not ICMP")]
    NotIcmp { offset: usize, protocol: u8 },
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Encode an echo request. For IPv4 the checksum is filled in; for ICMPv6 the kernel computes
/// it (it covers a pseudo-header with addresses only the kernel knows), so it is left zero.
pub fn encode_echo_request(family: Family, echo: &Echo) -> Vec<u8> {
    encode(family.echo_request_type(), family, echo)
}

/// Encode an echo reply (used by tests and fuzz seeds).
pub fn encode_echo_reply(family: Family, echo: &Echo) -> Vec<u8> {
    encode(family.echo_reply_type(), family, echo)
}

fn encode(kind: u8, family: Family, echo: &Echo) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + echo.payload.len());
    b.extend_from_slice(&[kind, 0, 0, 0]);
    b.extend_from_slice(&echo.ident.to_be_bytes());
    b.extend_from_slice(&echo.seq.to_be_bytes());
    b.extend_from_slice(&echo.payload);
    if family == Family::V4 {
        let c = internet_checksum(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
    b
}

fn need(bytes: &[u8], offset: usize, need: usize) -> Result<(), IcmpError> {
    if bytes.len() < offset + need {
        Err(IcmpError::TooShort {
            offset,
            len: bytes.len().saturating_sub(offset),
            need,
        })
    } else {
        Ok(())
    }
}

/// Length of the IPv4 header at the start of `bytes`, checking that it carries ICMP.
fn ipv4_header_len(bytes: &[u8], offset: usize, require_icmp: bool) -> Result<usize, IcmpError> {
    need(bytes, offset, 20)?;
    let version = bytes[offset] >> 4;
    if version != 4 {
        return Err(IcmpError::NotIpv4 { offset, version });
    }
    let ihl = usize::from(bytes[offset] & 0x0F) * 4;
    if ihl < 20 || bytes.len() < offset + ihl {
        return Err(IcmpError::BadIhl { offset, ihl });
    }
    let protocol = bytes[offset + 9];
    if require_icmp && protocol != 1 {
        return Err(IcmpError::NotIcmp { offset, protocol });
    }
    Ok(ihl)
}

fn echo_at(bytes: &[u8], offset: usize) -> Result<Echo, IcmpError> {
    need(bytes, offset, 8)?;
    Ok(Echo {
        ident: u16::from_be_bytes([bytes[offset + 4], bytes[offset + 5]]),
        seq: u16::from_be_bytes([bytes[offset + 6], bytes[offset + 7]]),
        payload: bytes[offset + 8..].to_vec(),
    })
}

/// Parse an ICMPv4 message. `with_ip_header`: raw sockets deliver the IPv4 header first,
/// datagram ("ping") sockets do not.
pub fn parse_icmp_v4(bytes: &[u8], with_ip_header: bool) -> Result<IcmpMessage, IcmpError> {
    let start = if with_ip_header {
        ipv4_header_len(bytes, 0, true)?
    } else {
        0
    };
    parse_at(bytes, start, Family::V4)
}

/// Parse an ICMPv6 message (sockets never deliver the IPv6 header).
pub fn parse_icmp_v6(bytes: &[u8]) -> Result<IcmpMessage, IcmpError> {
    parse_at(bytes, 0, Family::V6)
}

fn parse_at(bytes: &[u8], start: usize, family: Family) -> Result<IcmpMessage, IcmpError> {
    need(bytes, start, 8)?;
    let kind = bytes[start];
    let code = bytes[start + 1];
    if kind == family.echo_reply_type() {
        return Ok(IcmpMessage::EchoReply(echo_at(bytes, start)?));
    }
    if kind == family.echo_request_type() {
        return Ok(IcmpMessage::EchoRequest(echo_at(bytes, start)?));
    }
    if kind == family.unreachable_type() {
        // 8 bytes of ICMP header, then the quoted IP header and at least 8 bytes of its payload.
        let quoted_ip = start + 8;
        let (quoted, quoted_destination) = match family {
            Family::V4 => match ipv4_header_len(bytes, quoted_ip, false) {
                Ok(ihl) => {
                    let d = &bytes[quoted_ip + 16..quoted_ip + 20];
                    let dst = std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]);
                    let is_echo = bytes[quoted_ip + 9] == 1
                        && bytes.get(quoted_ip + ihl) == Some(&family.echo_request_type());
                    let echo = if is_echo {
                        echo_at(bytes, quoted_ip + ihl).ok()
                    } else {
                        None
                    };
                    (echo, Some(dst.into()))
                }
                Err(_) => (None, None),
            },
            Family::V6 => {
                if bytes.len() >= quoted_ip + 40 {
                    let mut d = [0u8; 16];
                    d.copy_from_slice(&bytes[quoted_ip + 24..quoted_ip + 40]);
                    let next_header = bytes[quoted_ip + 6];
                    let is_echo = next_header == 58
                        && bytes.get(quoted_ip + 40) == Some(&family.echo_request_type());
                    let echo = if is_echo {
                        echo_at(bytes, quoted_ip + 40).ok()
                    } else {
                        None
                    };
                    (echo, Some(std::net::Ipv6Addr::from(d).into()))
                } else {
                    (None, None)
                }
            }
        };
        return Ok(IcmpMessage::Unreachable {
            code,
            quoted,
            quoted_destination,
        });
    }
    Ok(IcmpMessage::Other { kind, code })
}

/// Text for a destination-unreachable code.
pub fn unreachable_reason(family: Family, code: u8) -> &'static str {
    match (family, code) {
        (Family::V4, 0) | (Family::V6, 0) => "network unreachable (no route)",
        (Family::V4, 1) | (Family::V6, 3) => "host unreachable",
        (Family::V4, 3) | (Family::V6, 4) => "port unreachable",
        (Family::V4, 9 | 10 | 13) | (Family::V6, 1) => "administratively prohibited (firewall)",
        _ => "destination unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ipv4_header(protocol: u8, dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let total = u16::try_from(20 + payload_len).unwrap();
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0, 127, 0, 0, 1];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&dst);
        h
    }

    proptest! {
        #[test]
        fn v4_round_trip(ident: u16, seq: u16, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = Echo { ident, seq, payload };
            let req = encode_echo_request(Family::V4, &e);
            prop_assert_eq!(internet_checksum(&req), 0, "a correct checksum sums to zero");
            prop_assert_eq!(parse_icmp_v4(&req, false).unwrap(), IcmpMessage::EchoRequest(e.clone()));
            let reply = encode_echo_reply(Family::V4, &e);
            let mut raw = ipv4_header(1, [127, 0, 0, 1], reply.len());
            raw.extend_from_slice(&reply);
            prop_assert_eq!(parse_icmp_v4(&raw, true).unwrap(), IcmpMessage::EchoReply(e));
        }

        #[test]
        fn v6_round_trip(ident: u16, seq: u16, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = Echo { ident, seq, payload };
            let reply = encode_echo_reply(Family::V6, &e);
            prop_assert_eq!(parse_icmp_v6(&reply).unwrap(), IcmpMessage::EchoReply(e));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), hdr: bool) {
            let _ = parse_icmp_v4(&bytes, hdr);
            let _ = parse_icmp_v6(&bytes);
        }
    }

    #[test]
    fn unreachable_quotes_our_echo() {
        let e = Echo {
            ident: 0x1234,
            seq: 7,
            payload: b"godwit".to_vec(),
        };
        let req = encode_echo_request(Family::V4, &e);
        let mut quoted = ipv4_header(1, [192, 0, 2, 9], req.len());
        quoted.extend_from_slice(&req[..8]);
        let mut msg = vec![3, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&quoted);
        let mut raw = ipv4_header(1, [127, 0, 0, 1], msg.len());
        raw.extend_from_slice(&msg);
        match parse_icmp_v4(&raw, true).unwrap() {
            IcmpMessage::Unreachable {
                code,
                quoted,
                quoted_destination,
            } => {
                assert_eq!(code, 1);
                let q = quoted.unwrap();
                assert_eq!((q.ident, q.seq), (0x1234, 7));
                assert_eq!(quoted_destination, Some("192.0.2.9".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_non_icmp_and_truncated() {
        let raw = ipv4_header(6, [1, 2, 3, 4], 0);
        assert_eq!(
            parse_icmp_v4(&raw, true),
            Err(IcmpError::NotIcmp {
                offset: 0,
                protocol: 6
            })
        );
        assert!(matches!(
            parse_icmp_v6(&[129, 0, 0]),
            Err(IcmpError::TooShort { .. })
        ));
    }

    #[test]
    fn checksum_known_value() {
        // RFC 1071 example bytes.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }
}
