//! Validation of wizard and settings input, defined once for both sides of
//! [`crate::backend::Backend`]: the service and the web layer's test double run these same
//! rules. Values are validated types (`TryFrom<&str>`, the error is the message shown next to
//! the field): [`Hostname`], [`IpCidr`] (IPv4 or IPv6), [`Fingerprint`], [`Port`],
//! [`HostPort`]; the admin password is [`crate::password::AdminPassword`]. Every problem names
//! its form field (the same name as the JSON member), so the web layer can show it there.

use crate::backend::{AddressMode, CommandError, FieldError, NetworkSettings};
use std::net::IpAddr;

/// What a host name may hold (the message of [`Hostname`]).
pub const HOSTNAME_RULE: &str = "letters, digits and hyphens only, labels separated by dots";

/// An RFC 1123 host name: labels of letters, digits and hyphens, up to 253 characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hostname(String);

impl TryFrom<&str> for Hostname {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if is_hostname(s) {
            Ok(Hostname(s.to_string()))
        } else {
            Err(HOSTNAME_RULE.into())
        }
    }
}

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An address with its prefix length, IPv4 (`192.0.2.10/24`) or IPv6 (`2001:db8::10/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpCidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl TryFrom<&str> for IpCidr {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .trim()
            .split_once('/')
            .ok_or("an IP address with prefix length, e.g. 192.0.2.10/24")?;
        let ip: IpAddr = a.parse().map_err(|_| {
            format!(
                "{a:?} is not an IP address (an IP address with prefix length, e.g. 192.0.2.10/24)"
            )
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(prefix) if (1..=max).contains(&prefix) => Ok(IpCidr { ip, prefix }),
            _ => Err(format!("prefix length must be 1-{max}")),
        }
    }
}

/// A certificate's SHA-256 fingerprint in the one format Godwit shows everywhere (UI, API, logs),
/// as vCenter shows thumbprints: `SHA256:` and upper-case hex pairs separated by colons
/// (`SHA256:3F:A1:…:02`). Accepted with or without the prefix (any case), in any case, with or
/// without colons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(String);

/// What a fingerprint must look like (the message shown next to the field).
pub const FINGERPRINT_RULE: &str =
    "expected SHA256: followed by 64 hex digits (32 pairs; colons and case do not matter)";

impl TryFrom<&str> for Fingerprint {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let body = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex: String = body.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(FINGERPRINT_RULE.into());
        }
        Ok(Fingerprint(canonical_fingerprint_hex(&hex)))
    }
}

/// `SHA256:AB:CD:…` of 64 hex digits (any case, no separators).
fn canonical_fingerprint_hex(hex: &str) -> String {
    let upper = hex.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..upper.len() / 2)
        .filter_map(|i| upper.get(2 * i..2 * i + 2))
        .collect();
    format!("SHA256:{}", pairs.join(":"))
}

impl Fingerprint {
    /// The fingerprint of 32 digest bytes.
    pub fn of_digest(bytes: &[u8; 32]) -> Fingerprint {
        Fingerprint(canonical_fingerprint_hex(&hex::encode(bytes)))
    }

    /// `s` in the one format when it is a fingerprint, else `s` unchanged (for views of
    /// records stored before the format was settled).
    pub fn display(s: &str) -> String {
        Fingerprint::try_from(s).map_or_else(|_| s.to_string(), Fingerprint::into_string)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A TCP port, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u16);

impl TryFrom<&str> for Port {
    type Error = String;
    fn try_from(p: &str) -> Result<Self, String> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(Port(n)),
            _ => Err(format!("{p:?} is not a port number (1-65535)")),
        }
    }
}

/// A host to connect to and its port: `host`, `host:port`, `[v6]` or `[v6]:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parse with `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        host_port(s, default_port).map(|(host, port)| HostPort { host, port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&authority(&self.host, self.port))
    }
}

/// Collects field errors; `finish` turns them into `CommandError::Invalid`.
#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub fn finish(self) -> Result<(), CommandError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Invalid { fields: self.0 })
        }
    }
}

/// RFC 1123 host name (labels of letters, digits, hyphens; up to 253 characters).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port).
pub fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("required".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or("unclosed [")?;
        (h.to_string(), p.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address.
        (s.to_string(), None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => Port::try_from(p)?.0,
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            return Err(format!(
                "{host} is the unspecified address, not a host to connect to"
            ));
        }
        Ok(_) => {}
        // A name whose last label is all digits would be read as an address (`0` is 0.0.0.0,
        // `10.1` is 10.0.0.1): not a host name (RFC 1123 2.1), and not a full address either.
        Err(_) if !is_hostname(&host) || host.rsplit('.').next().is_some_and(all_digits) => {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
        Err(_) => {}
    }
    Ok((host, port))
}

/// An S3 endpoint: `http(s)://host[:port]` (no path, query or user), returned without a
/// trailing slash. A URL the S3 client cannot build requests from must never reach it (found by
/// schemathesis: `http://a b` made object_store panic).
pub fn s3_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let (scheme, rest) = s
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .ok_or("expected https://host[:port]")?;
    if rest.contains(['/', '?', '#', '@']) {
        return Err("expected https://host[:port], without a path, query or user".into());
    }
    let (host, _) = host_port(rest, 443)?;
    if host.contains(':') && !rest.starts_with('[') {
        return Err("an IPv6 address goes in brackets: https://[2001:db8::1]:9000".into());
    }
    Ok(format!("{scheme}://{rest}"))
}

/// An S3 region name (AWS's `us-east-1`, or what an S3-compatible store calls its region).
pub fn s3_region(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return Err("required: 1-64 characters (e.g. us-east-1)".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("letters, digits, hyphens and underscores only (e.g. us-east-1)".into());
    }
    Ok(s.to_string())
}

/// Text that goes into requests or object names: printable, bounded.
pub fn printable(s: &str, max: usize) -> Result<(), String> {
    if s.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("no control characters".into());
    }
    Ok(())
}

fn all_digits(label: &str) -> bool {
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
}

/// `host:port` with IPv6 in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `SHA256:<hex>` (any case, colons allowed) → `SHA256:AB:CD:…` ([`Fingerprint`]).
pub fn fingerprint(s: &str) -> Result<String, String> {
    Fingerprint::try_from(s).map(Fingerprint::into_string)
}

/// Check network settings; returns them normalised (trimmed, empty entries dropped).
pub fn network(mut n: NetworkSettings) -> Result<NetworkSettings, CommandError> {
    let mut p = Problems::default();
    n.hostname = n.hostname.trim().to_string();
    if let Err(e) = Hostname::try_from(n.hostname.as_str()) {
        p.add("hostname", e);
    }
    if let AddressMode::Static { address, gateway } = &mut n.address {
        *address = address.trim().to_string();
        *gateway = gateway.trim().to_string();
        let addr = IpCidr::try_from(address.as_str());
        if let Err(e) = &addr {
            p.add("address", e.clone());
        }
        match gateway.parse::<IpAddr>() {
            Err(_) => p.add(
                "gateway",
                format!("{gateway:?} is not an IP address (IPv4 or IPv6)"),
            ),
            Ok(g) => {
                if let Ok(IpCidr { ip: a, .. }) = addr
                    && a.is_ipv4() != g.is_ipv4()
                {
                    p.add("gateway", "must be the same IP version as the address");
                }
            }
        }
    }
    n.dns_servers = clean(&n.dns_servers);
    for s in &n.dns_servers {
        if s.parse::<IpAddr>().is_err() {
            p.add("dns_servers", format!("{s:?} is not an IP address"));
        }
    }
    if n.dns_servers.len() > 3 {
        p.add("dns_servers", "at most 3 DNS servers");
    }
    n.ntp_servers = clean(&n.ntp_servers);
    for s in &n.ntp_servers {
        if let Err(e) = host_port(s, 123) {
            p.add("ntp_servers", format!("{s:?}: {e}"));
        }
    }
    n.proxy = n
        .proxy
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(proxy) = &n.proxy {
        match proxy.strip_prefix("http://") {
            None => p.add("proxy", "expected http://[user@]host:port"),
            Some(rest) => {
                let hp = rest.trim_end_matches('/');
                let hp = hp.rsplit_once('@').map_or(hp, |(_, h)| h);
                if let Err(e) = host_port(hp, 3128) {
                    p.add("proxy", e);
                }
            }
        }
    }
    p.finish()?;
    Ok(n)
}

fn clean(v: &[String]) -> Vec<String> {
    v.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(address: AddressMode) -> NetworkSettings {
        NetworkSettings {
            hostname: "godwit-01".into(),
            address,
            dns_servers: vec!["192.0.2.53".into(), " ".into()],
            ntp_servers: vec!["ntp.example.com".into()],
            proxy: None,
        }
    }

    fn fields(e: CommandError) -> Vec<String> {
        match e {
            CommandError::Invalid { fields } => fields.into_iter().map(|f| f.field).collect(),
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn good_settings_are_normalised() {
        let n = network(net(AddressMode::Dhcp)).unwrap();
        assert_eq!(n.dns_servers, ["192.0.2.53"]);
        let s = network(net(AddressMode::Static {
            address: "192.0.2.10/24".into(),
            gateway: "192.0.2.1".into(),
        }));
        assert!(s.is_ok());
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let mut n = net(AddressMode::Static {
            address: "192.0.2.10".into(),
            gateway: "fe80::1".into(),
        });
        n.hostname = "bad_host!".into();
        n.dns_servers = vec!["dns.example.com".into()];
        n.ntp_servers = vec!["ntp:99999".into()];
        n.proxy = Some("socks://x".into());
        let f = fields(network(n).unwrap_err());
        for want in ["hostname", "address", "dns_servers", "ntp_servers", "proxy"] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn host_port_and_fingerprint_forms() {
        assert_eq!(host_port("vc.corp", 443).unwrap(), ("vc.corp".into(), 443));
        assert_eq!(
            host_port("10.0.0.1:8443", 443).unwrap(),
            ("10.0.0.1".into(), 8443)
        );
        assert_eq!(host_port("[::1]:5986", 1).unwrap(), ("::1".into(), 5986));
        assert!(host_port("a b", 1).is_err());
        assert!(host_port("h:0", 1).is_err());
        // Found by schemathesis: "0" was taken for a host name and connected to 0.0.0.0.
        for bad in ["0", "0:443", "10.1", "192.168.1", "0.0.0.0", "[::]:443"] {
            assert!(host_port(bad, 443).is_err(), "{bad}");
        }
        assert_eq!(host_port("host1.example", 1).unwrap().0, "host1.example");
        assert_eq!(
            host_port("1password.example", 1).unwrap().0,
            "1password.example"
        );
    }

    #[test]
    fn validated_types_and_their_messages() {
        assert_eq!(
            Hostname::try_from(" godwit-01.corp ").unwrap().as_str(),
            "godwit-01.corp"
        );
        for bad in ["", "bad host", "-a", "a..b", &"a".repeat(64)] {
            assert_eq!(Hostname::try_from(bad).unwrap_err(), HOSTNAME_RULE, "{bad}");
        }
        let v6 = IpCidr::try_from("2001:db8::10/64").unwrap();
        assert_eq!((v6.ip.is_ipv6(), v6.prefix), (true, 64));
        assert!(
            IpCidr::try_from("192.0.2.300")
                .unwrap_err()
                .contains("prefix length")
        );
        assert!(
            IpCidr::try_from("192.0.2.1/33")
                .unwrap_err()
                .contains("1-32")
        );
        assert!(
            IpCidr::try_from("2001:db8::1/129")
                .unwrap_err()
                .contains("1-128")
        );
        assert!(
            IpCidr::try_from("x/24")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert_eq!(Port::try_from("5986"), Ok(Port(5986)));
        assert!(Port::try_from("0").is_err() && Port::try_from("65536").is_err());
        let hp = HostPort::parse("[2001:db8::1]:1500", 443).unwrap();
        assert_eq!(hp.to_string(), "[2001:db8::1]:1500");
        assert_eq!(HostPort::parse("vc", 443).unwrap().port, 443);
        assert!(Fingerprint::try_from("SHA256:zz").is_err());
    }

    #[test]
    fn static_ipv6_settings() {
        let s = network(net(AddressMode::Static {
            address: "2001:db8::10/64".into(),
            gateway: "2001:db8::1".into(),
        }));
        assert!(s.is_ok(), "{s:?}");
        let f = fields(
            network(net(AddressMode::Static {
                address: "2001:db8::10/64".into(),
                gateway: "192.0.2.1".into(),
            }))
            .unwrap_err(),
        );
        assert_eq!(f, ["gateway"]);
    }

    #[test]
    fn s3_values() {
        assert_eq!(
            s3_endpoint("https://s3.example/").unwrap(),
            "https://s3.example"
        );
        assert_eq!(
            s3_endpoint("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            s3_endpoint("http://[::1]:9000").unwrap(),
            "http://[::1]:9000"
        );
        for bad in [
            "http://a b",
            "http://0",
            "ftp://s3.example",
            "s3.example",
            "https://s3.example/bucket",
            "https://user@s3.example",
            "https://s3.example?x=1",
            "https://",
            "http://::1",
        ] {
            assert!(s3_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(s3_region(" us-east-1 ").unwrap(), "us-east-1");
        assert!(s3_region("us east").is_err() && s3_region("").is_err());
        assert!(printable("a/b", 10).is_ok());
        assert!(printable("a\u{1}", 10).is_err() && printable("abc", 2).is_err());
        let hex = "AB".repeat(32);
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            fingerprint(&format!("SHA256:{colons}")).unwrap(),
            format!("SHA256:{colons}")
        );
        assert!(fingerprint("SHA256:abc").is_err());
    }

    /// One format everywhere: `SHA256:` + upper-case hex pairs with colons, whatever was typed.
    #[test]
    fn fingerprints_take_any_form_and_show_one() {
        let want = "SHA256:3F:A1:09:5C:7E:22:B4:D0:11:8A:6B:C3:2E:F0:94:57:A8:1D:63:CE:05:B9:72:4F:E6:30:8D:1B:C4:59:AE:02";
        let bare = want.trim_start_matches("SHA256:").replace(':', "");
        for typed in [
            want.to_string(),
            want.to_ascii_lowercase(),
            bare.clone(),
            bare.to_ascii_lowercase(),
            format!("sha256:{}", bare.to_ascii_lowercase()),
            format!("Sha256:{bare}"),
            format!(
                "  {}  ",
                want.trim_start_matches("SHA256:").to_ascii_lowercase()
            ),
        ] {
            assert_eq!(
                Fingerprint::try_from(typed.as_str()).unwrap().as_str(),
                want,
                "{typed}"
            );
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&bare, &mut bytes).unwrap();
        assert_eq!(Fingerprint::of_digest(&bytes).as_str(), want);
        assert_eq!(Fingerprint::display(&bare), want);
        assert_eq!(Fingerprint::display("not one"), "not one");
        for bad in [
            "",
            "SHA256:",
            "SHA1:ab",
            &format!("{bare}00"),
            &bare[2..],
            &format!("{}zz", &bare[2..]),
        ] {
            assert_eq!(
                Fingerprint::try_from(bad).unwrap_err(),
                FINGERPRINT_RULE,
                "{bad}"
            );
        }
    }
}
