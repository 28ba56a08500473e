//! The console banner: version, slot, host name, addresses, setup URL and the one-time setup
//! code (or why there is none). Tests read it from the serial log.

/// What the banner shows.
#[derive(Clone, Debug, Default)]
pub struct Banner {
    pub version: String,
    pub slot: String,
    pub firmware: String,
    pub hostname: String,
    pub interface: String,
    /// `address/prefix` entries.
    pub addresses: Vec<String>,
    pub mode: String,
    pub url_port: Option<u16>,
    pub fingerprint: Option<String>,
    /// When the HTTPS certificate ends (`YYYY-MM-DD`, as `godwit serve` printed it).
    pub certificate_expires: Option<String>,
    pub setup_code: Option<String>,
    pub password_preset: bool,
    pub notes: Vec<String>,
}

pub fn render(b: &Banner) -> String {
    let line = "=".repeat(68);
    let mut s = format!(
        "\n{line}\n  Godwit {} (slot {}, {})\n",
        b.version, b.slot, b.firmware
    );
    s.push_str(&format!("  Host name:    {}\n", b.hostname));
    if b.addresses.is_empty() {
        s.push_str(&format!(
            "  Address:      none yet on {} ({})\n",
            b.interface, b.mode
        ));
    }
    for a in &b.addresses {
        s.push_str(&format!(
            "  Address:      {a} on {} ({})\n",
            b.interface, b.mode
        ));
    }
    match b.url_port {
        Some(port) => {
            for a in &b.addresses {
                let ip = a.split('/').next().unwrap_or(a);
                let p = if port == 443 {
                    String::new()
                } else {
                    format!(":{port}")
                };
                s.push_str(&format!("  Setup page:   https://{ip}{p}/\n"));
            }
            if let Some(f) = &b.fingerprint {
                s.push_str(&format!("  Certificate:  {f}\n"));
            }
            if let Some(e) = &b.certificate_expires {
                s.push_str(&format!(
                    "  Valid until:  {e} (a generated one is renewed 30 days before; its fingerprint then changes)\n"
                ));
            }
        }
        None => s.push_str("  Setup page:   not available (the service is not running)\n"),
    }
    if let Some(c) = &b.setup_code {
        s.push_str(&format!("  Setup code:   {c}\n"));
    } else if b.password_preset {
        s.push_str("  Admin password: preset from the vApp properties (no setup code)\n");
    } else {
        s.push_str("  Admin password: set (sign in on the setup page)\n");
    }
    for n in &b.notes {
        s.push_str(&format!("  Note:         {n}\n"));
    }
    s.push_str(&format!("{line}\nGODWIT READY\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_what_an_operator_needs() {
        let b = Banner {
            version: "0.1.0".into(),
            slot: "A".into(),
            firmware: "BIOS".into(),
            hostname: "mig-01".into(),
            interface: "eth0".into(),
            addresses: vec!["10.0.2.15/24".into()],
            mode: "dhcp".into(),
            url_port: Some(443),
            fingerprint: Some("SHA256:ab".into()),
            certificate_expires: Some("2027-12-07".into()),
            setup_code: Some("ABCD-EFGH".into()),
            ..Default::default()
        };
        let s = render(&b);
        assert!(s.contains("Godwit 0.1.0 (slot A, BIOS)"));
        assert!(s.contains("Address:      10.0.2.15/24 on eth0 (dhcp)"));
        assert!(s.contains("Setup page:   https://10.0.2.15/"));
        assert!(s.contains("Setup code:   ABCD-EFGH"));
        assert!(s.contains("Valid until:  2027-12-07 (a generated one is renewed"));
        assert!(s.ends_with("GODWIT READY\n"));
        let s = render(&Banner {
            password_preset: true,
            url_port: None,
            setup_code: None,
            ..b
        });
        assert!(s.contains("preset from the vApp properties") && s.contains("not available"));
    }
}
