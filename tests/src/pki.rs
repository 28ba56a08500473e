//! An operator's PKI made by `openssl` (not our code) for the `service_*` tests that replace the
//! service's HTTPS certificate:
//! a P-256 CA (`ca.pem`/`ca.key`) and RSA leaves for 127.0.0.1 and localhost it signs, an
//! expired one signed under libfaketime's clock.

use std::path::Path;
use std::process::Command;

/// openssl in `dir`, under libfaketime's clock `at` when given (to sign in the past).
pub fn openssl_at(dir: &Path, at: Option<&str>, args: &[&str]) {
    let mut cmd = match at {
        Some(t) => {
            let mut c = Command::new("faketime");
            c.args([t, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    let out = cmd
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dir` with the CA (`ca.pem`, `ca.key`) and the leaves' extensions (`san.ext`).
pub fn make_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl_at(
        dir,
        None,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Operator Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `name`.pem/.key: an RSA leaf for 127.0.0.1 and localhost signed by the CA, valid for `days`
/// from `at` (a libfaketime date, or now).
pub fn make_leaf(dir: &Path, name: &str, days: u32, at: Option<&str>) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl_at(
        dir,
        None,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=godwit.test",
        ],
    );
    let days = days.to_string();
    openssl_at(
        dir,
        at,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-extfile",
            "san.ext",
            "-days",
            &days,
        ],
    );
}

pub fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

/// A CA and one leaf it signed, valid now: (chain PEM leaf + CA, key PEM).
pub fn operator_certificate(dir: &Path) -> (String, String) {
    make_ca(dir);
    make_leaf(dir, "leaf", 30, None);
    (
        format!("{}{}", read(dir, "leaf.pem"), read(dir, "ca.pem")),
        read(dir, "leaf.key"),
    )
}
