//! # godwit-tests
//!
//! The harness of the end-to-end tests in `tests/tests/`: one module per peer the tests run or
//! compare against, so every test binary uses the same code (no `#[path]` includes).
//!
//! - [`peers`]: the `godwit` binary (built once per run, under a file lock, so a test never runs
//!   a stale binary), running tools, `need()` for the tools a test cannot do without, hashing.
//! - [`cli`]: the `godwit` command line's progress lines and `--json` events.
//! - [`staging`]: `godwit staging serve` as a child process; replicate / export runners.
//! - [`vcsim`]: govmomi's vCenter simulator (with our CBT/NFC stubs) and vSphere fixtures.
//! - [`hyperv`]: the Hyper-V fixture and the simulator (`godwit-hyperv-sim`).
//! - [`service`]: `godwit serve` and a pinned HTTPS client of its API.
//! - [`pki`]: an operator's CA and leaves made by `openssl`.
//! - [`s3`]: SeaweedFS's S3 gateway; [`s3_proxy`]: a counting proxy in front of one.
//! - [`netcheck`]: chronyd, dnsmasq, `openssl s_server`, a CONNECT proxy, network namespaces.
//! - [`image`]: the appliance image, qemu to boot it, and the peers of the in-guest tests.

pub mod cli;
pub mod hyperv;
pub mod image;
pub mod netcheck;
pub mod peers;
pub mod pki;
pub mod s3;
pub mod s3_proxy;
pub mod service;
pub mod staging;
pub mod vcsim;
