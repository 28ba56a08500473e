//! The console banner. Until the setup wizard is finished it shows what the person at the
//! console needs to start it: the setup URL, the certificate fingerprint to check in the
//! browser and the one-time setup code (or why there is none). After setup: the version, the
//! URL of the web UI and the data space free. Tests read it from the serial log.

use super::space::human;

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
    /// The setup wizard is finished.
    pub setup_done: bool,
    /// Data partition (available, total) bytes; `None` when it is not mounted.
    pub data_space: Option<(u64, u64)>,
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
    let label = if b.setup_done {
        "Web UI:      "
    } else {
        "Setup page:  "
    };
    match b.url_port {
        Some(port) => {
            for a in &b.addresses {
                let ip = a.split('/').next().unwrap_or(a);
                let p = if port == 443 {
                    String::new()
                } else {
                    format!(":{port}")
                };
                s.push_str(&format!("  {label} https://{ip}{p}/\n"));
            }
            if !b.setup_done
                && let Some(f) = &b.fingerprint
            {
                s.push_str(&format!("  Certificate:  {f}\n"));
            }
            if let Some(e) = &b.certificate_expires {
                s.push_str(&format!(
                    "  Valid until:  {e} (a generated one is renewed 30 days before; its fingerprint then changes)\n"
                ));
            }
        }
        None => s.push_str(&format!(
            "  {label} not available (the service is not running)\n"
        )),
    }
    if b.setup_done {
        s.push_str("  Setup:        done (sign in with the admin password)\n");
    } else if let Some(c) = &b.setup_code {
        s.push_str(&format!("  Setup code:   {c}\n"));
    } else if b.password_preset {
        s.push_str("  Admin password: preset from the vApp properties (no setup code)\n");
    } else {
        s.push_str("  Admin password: set (sign in on the setup page)\n");
    }
    match b.data_space {
        Some((free, total)) => s.push_str(&format!(
            "  Data space:   {} free of {}\n",
            human(free),
            human(total)
        )),
        None => s.push_str("  Data space:   unknown (the data partition is not mounted)\n"),
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
            fingerprint: Some("SHA256:AB".into()),
            certificate_expires: Some("2027-12-07".into()),
            setup_code: Some("ABCD-EFGH".into()),
            data_space: Some((15 << 30, 16 << 30)),
            ..Default::default()
        };
        let s = render(&b);
        assert!(s.contains("Godwit 0.1.0 (slot A, BIOS)"));
        assert!(s.contains("Address:      10.0.2.15/24 on eth0 (dhcp)"));
        assert!(s.contains("Setup page:   https://10.0.2.15/"));
        assert!(s.contains("Certificate:  SHA256:AB"));
        assert!(s.contains("Setup code:   ABCD-EFGH"));
        assert!(s.contains("Valid until:  2027-12-07 (a generated one is renewed"));
        assert!(s.contains("Data space:   15.0 GiB free of 16.0 GiB"));
        assert!(s.ends_with("GODWIT READY\n"));
        let s = render(&Banner {
            password_preset: true,
            url_port: None,
            setup_code: None,
            data_space: None,
            ..b.clone()
        });
        assert!(s.contains("preset from the vApp properties") && s.contains("not available"));
        assert!(s.contains("Data space:   unknown"));
        // After setup: the URL, the version and the space; no code, no fingerprint.
        let s = render(&Banner {
            setup_done: true,
            ..b
        });
        assert!(s.contains("Godwit 0.1.0"));
        assert!(s.contains("Web UI:       https://10.0.2.15/"));
        assert!(s.contains("Data space:   15.0 GiB free of 16.0 GiB"));
        assert!(
            !s.contains("ABCD-EFGH") && !s.contains("Certificate:") && !s.contains("Setup page")
        );
    }
}
