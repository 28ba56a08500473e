//! vcsim (govmomi's vCenter simulator, built from Debian's golang-github-vmware-govmomi-dev by
//! tests/vcsim/build.sh) for the vmware_* tests: built once and cached under the target dir,
//! started on a loopback port over TLS, stopped by a Drop guard (closing its stdin makes it
//! remove its datastore directories and exit; a kill follows if it does not).
//!
//! The `/stub/*` endpoints and QueryChangedDiskAreas are a STUB we wrote after the published
//! vSphere API (vcsim has no CBT); see tests/vcsim/main.go.

use godwit_vmware::moref::MoRef;
use godwit_vmware::session::{ConnectOptions, Secret, Session, SourceUrl};
use godwit_vmware::soap::{envelope as env, response as resp};
use godwit_vmware::trust::{Fingerprint, TrustStore};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret-pw";

/// Build (once, cached, under a file lock so parallel test processes wait) and return the path.
pub fn vcsim_binary() -> PathBuf {
    let out = crate::peers::target_dir().join("vcsim");
    std::fs::create_dir_all(&out).expect("vcsim dir");
    let lock = std::fs::File::create(out.join(".build-lock")).expect("lock file");
    lock.lock().expect("lock");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vcsim/build.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("run build.sh");
    assert!(
        o.status.success(),
        "building vcsim failed (needs golang-go and golang-github-vmware-govmomi-dev: bash tests/deps/install.sh):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// A running vcsim; stopped on drop.
pub struct Vcsim {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    pub fingerprint: String,
    pub cert: PathBuf,
    pub datastores: Vec<(String, PathBuf)>,
    /// Every datastore with its datacenter's inventory path and MoRef: (dc path, MoRef value,
    /// name, directory). Two datacenters may each have a `LocalDS_0`.
    pub datastores_in: Vec<(String, String, String, PathBuf)>,
    pub esx: bool,
    pub dir: tempfile::TempDir,
}

/// How to start vcsim beyond the defaults (one datacenter at the root, sessions never idle out).
#[derive(Clone, Debug, Default)]
pub struct VcsimOptions<'a> {
    pub esx: bool,
    pub listen: Option<&'a str>,
    pub tls_dir: Option<&'a Path>,
    /// vcsim's Model.Datacenter (default 1).
    pub datacenters: Option<u32>,
    /// vcsim's Model.Folder: the last N datacenters sit in a folder `F<i>`.
    pub folders: Option<u32>,
    /// vcsim's SessionIdleTimeout.
    pub session_idle_timeout: Option<Duration>,
    /// vcsim's Model.Machine: VMs per standalone host and per cluster resource pool (the
    /// default model has one of each, so 2N VMs).
    pub vms_per_pool: Option<u32>,
    /// The only `user:password` vcsim accepts (default [`USER`]:[`PASSWORD`]): a restart with
    /// another one looks like a password changed on the vCenter.
    pub cred: Option<&'a str>,
}

impl Vcsim {
    pub fn start(esx: bool) -> Vcsim {
        Self::start_with(esx, None, None)
    }

    /// Start on a fixed `listen` address (`127.0.0.1:PORT`) with the certificate kept in
    /// `tls_dir`, so a second start there looks like the same server restarted (same address,
    /// same certificate; vcsim's inventory state is in memory and starts fresh).
    pub fn start_with(esx: bool, listen: Option<&str>, tls_dir: Option<&Path>) -> Vcsim {
        Self::start_opts(&VcsimOptions {
            esx,
            listen,
            tls_dir,
            ..VcsimOptions::default()
        })
    }

    pub fn start_opts(o: &VcsimOptions<'_>) -> Vcsim {
        let esx = o.esx;
        let bin = vcsim_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let mut cmd = Command::new(bin);
        if let Some(l) = o.listen {
            cmd.arg(format!("-listen={l}"));
        }
        if let Some(t) = o.tls_dir {
            cmd.arg(format!("-tls-dir={}", t.display()));
        }
        if let Some(n) = o.datacenters {
            cmd.arg(format!("-datacenters={n}"));
        }
        if let Some(n) = o.folders {
            cmd.arg(format!("-folders={n}"));
        }
        if let Some(n) = o.vms_per_pool {
            cmd.arg(format!("-vm={n}"));
        }
        if let Some(t) = o.session_idle_timeout {
            cmd.arg(format!("-session-idle-timeout={}ms", t.as_millis()));
        }
        let cred = o
            .cred
            .map_or_else(|| format!("{USER}:{PASSWORD}"), str::to_string);
        cmd.arg(format!("-cred={cred}"))
            .arg(format!("-cert-out={}", cert.display()))
            .env("TMPDIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if esx {
            cmd.arg("-esx");
        }
        let mut child = cmd.spawn().expect("start vcsim");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut v = Vcsim {
            child,
            stdin,
            port: 0,
            fingerprint: String::new(),
            cert,
            datastores: Vec::new(),
            datastores_in: Vec::new(),
            esx,
            dir,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read vcsim output");
            if let Some(rest) = line.strip_prefix("DSDC ") {
                let f: Vec<&str> = rest.splitn(4, ' ').collect();
                v.datastores_in.push((
                    f[0].to_string(),
                    f[1].to_string(),
                    f[2].to_string(),
                    PathBuf::from(f[3]),
                ));
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("URL"), Some(u), _) => {
                    let hostport = u.trim_start_matches("https://").split('/').next().unwrap();
                    v.port = hostport.rsplit(':').next().unwrap().parse().unwrap();
                }
                (Some("FINGERPRINT"), Some(f), _) => v.fingerprint = f.to_string(),
                (Some("DATASTORE"), Some(name), Some(path)) => {
                    v.datastores.push((name.to_string(), PathBuf::from(path)))
                }
                (Some("READY"), _, _) => break,
                _ => {}
            }
        }
        assert!(v.port != 0, "vcsim did not print its URL");
        v
    }

    /// SIGKILL: the server vanishes mid-whatever (no cleanup; its temp dir goes with `self`).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// STUB NFC lease statistics (tests/vcsim/nfc.go).
    pub fn nfc_stats(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.stub("/stub/nfc-stats", None)).unwrap()
    }

    pub fn source(&self, user: &str) -> String {
        format!("vsphere://{user}@127.0.0.1:{}", self.port)
    }

    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn fingerprint_arg(&self) -> String {
        format!("SHA256:{}", self.fingerprint)
    }

    pub fn connect_opts(&self, password: &str) -> ConnectOptions {
        let mut trust = TrustStore::new();
        trust.add(
            &self.authority(),
            Fingerprint::parse(&self.fingerprint).unwrap(),
        );
        ConnectOptions {
            url: SourceUrl::parse(&self.source(USER)).unwrap(),
            password: Secret::new(password.to_string()),
            trust,
            max_parallel: 4,
            task_timeout: Duration::from_secs(60),
        }
    }

    pub fn connect(&self) -> Session {
        Session::connect(&self.connect_opts(PASSWORD)).expect("connect to vcsim")
    }

    /// The first datastore's directory (LocalDS_0).
    pub fn datastore(&self) -> (&str, &Path) {
        let (n, p) = &self.datastores[0];
        (n, p)
    }

    /// The directory of datastore `name` in the datacenter at inventory path `dc`.
    pub fn datastore_in(&self, dc: &str, name: &str) -> &Path {
        &self
            .datastores_in
            .iter()
            .find(|(d, _, n, _)| d == dc && n == name)
            .unwrap_or_else(|| panic!("no datastore {name} in {dc}: {:?}", self.datastores_in))
            .3
    }

    /// End a session behind its owner's back, as an administrator does
    /// (SessionManager.TerminateSession, vcsim's own method), from a session of our own.
    pub fn terminate_session(&self, key: &str) {
        let admin = self.connect();
        let sm = admin.service_content().session_manager.clone();
        admin
            .call(
                "TerminateSession",
                &|_| env::terminate_session(&sm, &[key]),
                &|b| resp::parse_empty_reply(b, "TerminateSession"),
            )
            .expect("TerminateSession");
        admin.logout().unwrap();
    }

    /// curl against the simulator with its certificate as the only CA.
    pub fn curl(&self, args: &[&str]) -> String {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.cert)
            .args(args)
            .output()
            .expect("curl");
        assert!(
            o.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn stub(&self, path: &str, json: Option<&str>) -> String {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        match json {
            Some(body) => self.curl(&["-X", "POST", "--data-binary", body, &url]),
            None => self.curl(&[&url]),
        }
    }

    /// Bytes and requests `/folder` served since the last reset (STUB counter).
    pub fn folder_stats(&self) -> (u64, u64) {
        let v: serde_json::Value = serde_json::from_str(&self.stub("/stub/stats", None)).unwrap();
        (
            v["folder_bytes"].as_u64().unwrap(),
            v["folder_requests"].as_u64().unwrap(),
        )
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VM of the model with its device list.
pub fn vm_by_name(s: &Session, name: &str) -> godwit_vmware::inventory::Vm {
    godwit_vmware::replicate::find_vm(s, name).expect("find vm")
}

pub fn run_task(s: &Session, method: &str, body: String) {
    let task = s
        .call(method, &|_| body.clone(), &|b| {
            resp::parse_moref_reply(b, method)
        })
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    s.wait_task(&task, method)
        .unwrap_or_else(|e| panic!("{method} task: {e}"));
}

/// Replace a VM's disks with existing VMDK files (`[ds] path` names), through our own
/// ReconfigVM_Task. Returns the controller key used.
pub fn set_vm_disks(s: &Session, vm_name: &str, files: &[(&str, u64)]) {
    let vm = vm_by_name(s, vm_name);
    let controller = vm
        .disks
        .first()
        .and_then(|d| d.controller_key)
        .unwrap_or(202);
    for d in &vm.disks {
        run_task(
            s,
            "ReconfigVM_Task",
            env::reconfig_remove_device(&vm.moref, d.key),
        );
    }
    for (i, (file, capacity)) in files.iter().enumerate() {
        let unit = i32::try_from(i).unwrap();
        run_task(
            s,
            "ReconfigVM_Task",
            env::reconfig_add_existing_disk(
                &vm.moref,
                file,
                controller,
                unit,
                capacity / 1024,
                true,
            ),
        );
    }
}

pub fn moref_of(s: &Session, vm_name: &str) -> MoRef {
    vm_by_name(s, vm_name).moref
}

pub fn qemu_img(args: &[&str]) {
    crate::peers::run_ok(Command::new("qemu-img").args(args));
}

pub fn qemu_io(file: &Path, fmt: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(file);
    crate::peers::run_ok(&mut c);
}

/// `qemu-img convert -O raw` of a source image, read back.
pub fn qemu_raw(src: &Path, tmp: &Path) -> Vec<u8> {
    let out = tmp.join(format!(
        "{}.raw",
        src.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

pub const VM: &str = "DC0_H0_VM0";
/// 3 MiB + 1 KiB and 5 MiB + 65 KiB: not multiples of a grain or a MiB.
pub const SPARSE_SIZE: u64 = 3 * 1024 * 1024 + 1024;
pub const FLAT_SIZE: u64 = 5 * 1024 * 1024 + 65 * 1024;

/// Make two qemu-img disks (monolithicSparse and monolithicFlat, odd sizes, some data) in the
/// VM's datastore folder and attach them to `VM`. Returns the local descriptor paths.
pub fn prepare_two_disks(v: &Vcsim) -> (PathBuf, PathBuf) {
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(VM);
    std::fs::create_dir_all(&vmdir).unwrap();
    let a = vmdir.join("sparse.vmdk");
    let b = vmdir.join("flat.vmdk");
    let (sa, sb) = (SPARSE_SIZE.to_string(), FLAT_SIZE.to_string());
    qemu_img(&["create", "-q", "-f", "vmdk", a.to_str().unwrap(), &sa]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        b.to_str().unwrap(),
        &sb,
    ]);
    // vcsim 0.24.2 attaches an existing disk only when `<name>-flat.vmdk` exists (vdmNames).
    std::fs::write(vmdir.join("sparse-flat.vmdk"), b"").unwrap();
    qemu_io(
        &a,
        "vmdk",
        &[
            "write -P 0xa1 0 100k",
            "write -P 0x5c 1M 64k",
            "write -P 0x77 3145728 1k",
        ],
    );
    qemu_io(
        &b,
        "vmdk",
        &["write -P 0x3e 4096 70000", "write -P 0xe4 5M 65k"],
    );
    let s = v.connect();
    set_vm_disks(
        &s,
        VM,
        &[
            (&format!("[{ds}] {VM}/sparse.vmdk"), SPARSE_SIZE),
            (&format!("[{ds}] {VM}/flat.vmdk"), FLAT_SIZE),
        ],
    );
    s.logout().unwrap();
    (a, b)
}

/// Read a whole disk the way the transfer pipeline does: data runs only, zeros elsewhere.
pub fn read_all(d: &dyn godwit_disk::BlockSource) -> Vec<u8> {
    use godwit_disk::RunState;
    let size = d.virtual_size();
    let mut out = vec![0u8; usize::try_from(size).unwrap()];
    for run in d.map(0, size).unwrap() {
        if run.state == RunState::Data {
            let s = usize::try_from(run.offset).unwrap();
            let e = usize::try_from(run.end()).unwrap();
            d.read_at(run.offset, &mut out[s..e]).unwrap();
        }
    }
    out
}

/// Replace a VM's disks with existing VMDK files like [`set_vm_disks`], each with extra XML
/// inside its backing element (e.g. `<sharing>sharingMultiWriter</sharing>` or a `<parent>`),
/// through our own ReconfigVM_Task (vcsim stores the backing as given).
pub fn set_vm_disks_ext(s: &Session, vm_name: &str, files: &[(&str, u64, &str)]) {
    let vm = vm_by_name(s, vm_name);
    set_vm_disks_of(s, &vm, files);
}

/// [`set_vm_disks_ext`] for a VM already looked up (names may be ambiguous).
pub fn set_vm_disks_of(
    s: &Session,
    vm: &godwit_vmware::inventory::Vm,
    files: &[(&str, u64, &str)],
) {
    let controller = vm
        .disks
        .first()
        .and_then(|d| d.controller_key)
        .unwrap_or(202);
    for d in &vm.disks {
        run_task(
            s,
            "ReconfigVM_Task",
            env::reconfig_remove_device(&vm.moref, d.key),
        );
    }
    for (i, (file, capacity, extra)) in files.iter().enumerate() {
        let spec = format!(
            r#"<spec><deviceChange><operation>add</operation><device xsi:type="VirtualDisk"><key>-1</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>{}</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned>{extra}</backing><controllerKey>{controller}</controllerKey><unitNumber>{i}</unitNumber><capacityInKB>{}</capacityInKB></device></deviceChange></spec>"#,
            env::escape(file),
            capacity / 1024
        );
        run_task(
            s,
            "ReconfigVM_Task",
            env::envelope("ReconfigVM_Task", &vm.moref, &spec),
        );
    }
}

/// A disk made with qemu-img in `dir`: `flat` (monolithicFlat, a sparse -flat file: thin) or
/// `sparse` (monolithicSparse, plus the empty `-flat.vmdk` vcsim wants to attach it), with
/// qemu-io writes. Returns the descriptor's path.
pub fn make_disk(dir: &Path, name: &str, flat: bool, size: u64, writes: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.vmdk"));
    let size = size.to_string();
    if flat {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            p.to_str().unwrap(),
            &size,
        ]);
    } else {
        qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), &size]);
        std::fs::write(dir.join(format!("{name}-flat.vmdk")), b"").unwrap();
    }
    if !writes.is_empty() {
        qemu_io(&p, "vmdk", writes);
    }
    p
}

/// STUB (tests/vcsim/vmstate.go): set VM state vcsim never sets (keyIds, consolidation, FT,
/// tools).
pub fn vm_state(v: &Vcsim, json: &str) {
    v.stub("/stub/vm-state", Some(json));
}

/// Every regular file under `dir` (a file:// staging store), relative.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// `godwit replicate` of `vm` (name, MoRef or UUID) from vcsim to a file:// store.
pub fn replicate_cli(
    v: &Vcsim,
    vm: &str,
    store: &Path,
    state: &Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(crate::peers::godwit_bin())
        .env("GODWIT_PASSWORD", PASSWORD)
        .args(["replicate", "--vm", vm, "--source", &v.source(USER)])
        .args(["--source-fingerprint", &v.fingerprint_arg()])
        .arg("--target")
        .arg(format!("file://{}", store.display()))
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .output()
        .expect("run godwit replicate")
}

/// `godwit export` of disk `disk` of `vm` from a file:// store, compared with `qemu-img
/// convert -O raw` of `src`.
pub fn export_equals(store: &Path, vm: &str, disk: usize, src: &Path, work: &Path) {
    let out = work.join(format!("export-{vm}-{disk}.raw"));
    crate::peers::run_ok(
        Command::new(crate::peers::godwit_bin())
            .args([
                "export",
                "--vm",
                vm,
                "--disk",
                &disk.to_string(),
                "--format",
                "raw",
            ])
            .arg("--target")
            .arg(format!("file://{}", store.display()))
            .arg("--out")
            .arg(&out),
    );
    let got = std::fs::read(&out).unwrap();
    let want = qemu_raw(src, work);
    assert_eq!(got.len(), want.len(), "disk {disk} of {vm}: size differs");
    assert!(
        got == want,
        "disk {disk} of {vm}: export differs from qemu-img convert -O raw of {}",
        src.display()
    );
}
