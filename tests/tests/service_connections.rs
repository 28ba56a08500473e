//! Connections to `godwit serve`'s one HTTPS port (web UI, REST API, Hyper-V ingest) cannot
//! be hoarded: TCP connections that never start TLS, TLS connections that never send a
//! request and requests whose header never ends are all closed within a minute (the service's
//! own default timeouts, not test settings) while a normal client is served throughout; and
//! one client address holds at most the per-client cap of open connections, however fast it
//! opens them. Client addresses are spread over 127.0.0.0/8 (each connection binds its own
//! loopback source address) so the per-client cap does not hide the timeouts.

use godwit_tests::service;
use service::{Service, pinned_client};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the service allows one client address at once (service/src/listener.rs).
const PER_CLIENT_CAP: usize = 32;

fn port_of(svc: &Service) -> u16 {
    svc.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TCP connection to the service from `from` (a loopback address).
fn connect_from(from: IpAddr, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    sock.into()
}

fn tls_config(fp: &str) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pin = godwit_vmware::trust::Fingerprint::parse(fp).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(godwit_vmware::trust::PinnedVerifier::new(vec![pin], seen));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    /// A TLS connection, handshake completed, from `from`.
    fn tls(from: IpAddr, port: u16, cfg: &Arc<rustls::ClientConfig>) -> Conn {
        let mut tcp = connect_from(from, port);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut c = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
        while c.is_handshaking() {
            c.complete_io(&mut tcp).expect("TLS handshake");
        }
        Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
    }

    /// Whether the server has closed it (EOF or reset); false while it is still open.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let r = match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                s.read(&mut buf)
            }
            Conn::Tls(s) => {
                s.sock
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                s.read(&mut buf)
            }
        };
        match r {
            Ok(0) => true,
            // The server may answer a half-sent request with an error before it closes.
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

fn addr(a: u8, b: u8) -> IpAddr {
    IpAddr::from([127, 0, a, b])
}

#[test]
fn idle_and_half_sent_connections_are_closed_while_a_client_is_served() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let port = port_of(&svc);
    let cfg = tls_config(&svc.fingerprint);
    let t0 = Instant::now();
    let mut conns: Vec<(&str, Conn)> = Vec::new();
    // 30 that never start TLS.
    for i in 0..30u8 {
        conns.push(("no TLS", Conn::Tcp(connect_from(addr(2, 1 + i % 10), port))));
    }
    // 50 that finish the handshake and send nothing.
    for i in 0..50u8 {
        conns.push(("idle TLS", Conn::tls(addr(3, 1 + i % 10), port, &cfg)));
    }
    // 50 that send half a request header and stop.
    for i in 0..50u8 {
        let mut c = Conn::tls(addr(4, 1 + i % 10), port, &cfg);
        if let Conn::Tls(s) = &mut c {
            s.write_all(b"GET /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s.flush().unwrap();
        }
        conns.push(("half-sent header", c));
    }
    let opened = t0.elapsed();
    // A normal client is served while they are open.
    let (s, v) = svc.api("GET", "/jobs", None);
    assert_eq!(s, 200, "{v}");
    let client = pinned_client(&svc.fingerprint, true);
    let r = client
        .get(format!("{}/api/v1/session", svc.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let deadline = t0 + Duration::from_secs(60);
    let mut open: Vec<usize> = (0..conns.len()).collect();
    while !open.is_empty() && Instant::now() < deadline {
        open.retain(|&i| !conns[i].1.closed());
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = t0.elapsed();
    let still: Vec<&str> = open.iter().map(|&i| conns[i].0).collect();
    assert!(
        still.is_empty(),
        "{} of {} connections still open after {took:?}: {still:?}",
        still.len(),
        conns.len()
    );
    println!(
        "service connections: {} hoarding connections opened in {opened:?}, all closed after {took:?}",
        conns.len()
    );
    // Still serving.
    assert_eq!(svc.api("GET", "/jobs", None).0, 200);
}

#[test]
fn the_per_client_connection_cap_holds_under_a_burst() {
    let work = tempfile::tempdir().unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let port = port_of(&svc);
    let hog = addr(5, 1);
    // 200 connections from one address, opened as fast as the loopback allows, on 4 threads.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || (0..50).map(|_| connect_from(hog, port)).collect::<Vec<_>>())
        })
        .collect();
    let mut burst: Vec<Conn> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(Conn::Tcp)
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let open = burst.iter_mut().map(|c| !c.closed()).filter(|o| *o).count();
    assert!(
        open <= PER_CLIENT_CAP,
        "{open} of 200 connections from one address still open (cap {PER_CLIENT_CAP})"
    );
    assert!(open > 0, "the first ones are served");
    // Another client is served meanwhile.
    let other = addr(5, 2);
    let cfg = tls_config(&svc.fingerprint);
    let mut c = Conn::tls(other, port, &cfg);
    if let Conn::Tls(s) = &mut c {
        s.write_all(
            b"GET /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // The hog is served again once it lets go.
    drop(burst);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Conn::tls(hog, port, &cfg);
    if let Conn::Tls(s) = &mut c {
        s.write_all(
            b"GET /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // The refusals are summed up in the log, not one line each.
    let refusals = svc
        .log_text()
        .lines()
        .filter(|l| l.contains("connection") && l.contains("refused"))
        .count();
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} log lines about refused connections:\n{}",
        svc.log_text()
    );
}
