//! The uploader's .NET side run on a real CLR (Debian's Mono, `mono-runtime`): the C# that
//! push-ranges.ps1 compiles with `Add-Type` (the certificate pin), compiled by `mcs
//! -langversion:5` together with a driver that makes the PUT the way the script's
//! `Send-Godwit` does (`HttpWebRequest`, `Proxy = $null`, `ServerCertificateValidationCallback
//! = [GodwitPin]::Callback`, TLS 1.2), against an HTTPS server that is not ours (Python's
//! `http.server` + `ssl`). Shown on a real CLR, not on the simulator's Rust imitation:
//! - the pinned certificate passes whatever its name or issuer (self-signed, another name);
//! - any other certificate fails as `WebException` with `Status = TrustFailure`, the status the
//!   script's `Get-GodwitReason` tests to say "did not show the pinned certificate";
//! - a connection reset in the middle of a PUT surfaces as an exception, not as a hang or a
//!   200: on Mono, while the body is written, as `System.IO.IOException` — not a
//!   `WebException` — which is why push-ranges.ps1 retries on ANY exception per PUT (its
//!   `catch { }` around `Send-Godwit`), not only on `[Net.WebException]`.
//!
//! Mono is not the .NET Framework 4.6-4.8 of Windows Server: its TLS stack (BoringSSL) and
//! its proxy handling differ (Mono ignores `https_proxy` for this request, so `Proxy = $null`
//! cannot be shown to matter here). The driver is ours; the CLR, the compiler and the server
//! are not.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SERVER: &str = r#"
import http.server, socket, ssl, struct, sys
mode = sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        if mode == 'reset':
            # RST instead of an answer: SO_LINGER 0, then close.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        n = int(self.headers.get('Content-Length', 0))
        body = self.rfile.read(n)
        self.send_response(200 if body == b'\x01\x02\x03' else 422)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = c.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

const DRIVER: &str = r#"
using System;
using System.IO;
using System.Net;
public static class Driver {
  // Environment.Exit: Mono can linger at exit after a failed request (pending async I/O).
  public static void Main(string[] a) { Environment.Exit(Put(a)); }
  static int Put(string[] a) {
    GodwitPin.Sha256Hex = a[1].ToLowerInvariant();
    ServicePointManager.SecurityProtocol = SecurityProtocolType.Tls12;
    HttpWebRequest req = (HttpWebRequest)WebRequest.Create(a[0]);
    req.Method = "PUT";
    req.Proxy = null;
    req.ServerCertificateValidationCallback = GodwitPin.Callback;
    req.ContentType = "application/octet-stream";
    req.ContentLength = 3;
    req.Timeout = 20000;
    req.ReadWriteTimeout = 20000;
    try {
      using (Stream s = req.GetRequestStream()) { s.Write(new byte[] { 1, 2, 3 }, 0, 3); }
      using (HttpWebResponse r = (HttpWebResponse)req.GetResponse()) {
        Console.WriteLine("STATUS " + (int)r.StatusCode);
      }
      return 0;
    } catch (WebException e) {
      Console.WriteLine("WEBEXCEPTION " + e.Status + (e.Response == null ? " NORESPONSE" : " RESPONSE"));
      return 1;
    } catch (Exception e) {
      // What the script's per-PUT `catch { }` (any exception) also takes.
      Console.WriteLine("EXCEPTION " + e.GetType().FullName);
      return 1;
    }
  }
}
"#;

/// The C# of push-ranges.ps1 (the single-quoted here-string after `Add-Type -TypeDefinition`).
fn pin_csharp() -> String {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hyperv/scripts/push-ranges.ps1"),
    )
    .unwrap();
    let open = "Add-Type -TypeDefinition @'\n";
    let at = script.find(open).expect("push-ranges.ps1 compiles C#") + open.len();
    let end = script[at..].find("\n'@").expect("here-string closed");
    script[at..at + end].to_string()
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(dir: &Path, mode: &str) -> Server {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    Server(child, port)
}

fn put(dir: &Path, port: u16, pin: &str) -> String {
    let o = Command::new("timeout")
        .args(["30", "mono"])
        .arg(dir.join("uploader.exe"))
        .arg(format!("https://127.0.0.1:{port}/ingest/v1/s/1/0"))
        .arg(pin)
        .output()
        .expect("mono (Debian mono-runtime, tests/deps/hyperv.apt)");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn the_uploaders_pin_callback_and_reset_handling_on_a_real_clr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A certificate whose name is not the address and whose issuer nobody trusts.
    let ck = rcgen::generate_simple_self_signed(vec!["connector.example".to_string()]).unwrap();
    std::fs::write(d.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let pin = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(ck.cert.der()))
    };
    std::fs::write(d.join("pin.cs"), pin_csharp()).unwrap();
    std::fs::write(d.join("driver.cs"), DRIVER).unwrap();
    let mcs = Command::new("mcs")
        .args(["-langversion:5", "-nologo"])
        .arg(format!("-out:{}", d.join("uploader.exe").display()))
        .arg(d.join("pin.cs"))
        .arg(d.join("driver.cs"))
        .output()
        .expect("mcs");
    assert!(
        mcs.status.success(),
        "{}{}",
        String::from_utf8_lossy(&mcs.stdout),
        String::from_utf8_lossy(&mcs.stderr)
    );

    let ok = server(d, "ok");
    // The pinned certificate passes (upper-case pin too: the script lower-cases it).
    assert_eq!(put(d, ok.1, &pin), "STATUS 200");
    assert_eq!(put(d, ok.1, &pin.to_uppercase()), "STATUS 200");
    // Any other certificate: TrustFailure, before a byte is sent.
    let mut wrong = pin.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert_eq!(put(d, ok.1, &wrong), "WEBEXCEPTION TrustFailure NORESPONSE");
    // No pin at all (an empty argument): refused, never accept-any.
    assert_eq!(put(d, ok.1, ""), "WEBEXCEPTION TrustFailure NORESPONSE");
    drop(ok);

    // A reset in the middle of the PUT: an exception (the script's catch-all retries it: the
    // range is read and hashed again), never a 200, never a hang (`timeout 30` above).
    let reset = server(d, "reset");
    let got = put(d, reset.1, &pin);
    assert!(
        got == "EXCEPTION System.IO.IOException"
            || (got.starts_with("WEBEXCEPTION ") && got.ends_with(" NORESPONSE")),
        "{got}"
    );
}
