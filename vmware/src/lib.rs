//! # godwit-vmware
//!
//! vSphere source: SOAP client, inventory, snapshots with a ledger, CBT and disk reads over
//! datastore `/folder` Range GETs.
//!
//! ## Design
//! - `soap`: sans-I/O. Envelopes are built to `String` ([`soap::envelope`]), replies parsed
//!   from bytes ([`soap::response`], over the bounded tree of [`soap::xml`]). Fuzz entry point:
//!   [`soap::response::fuzz_all_parsers`].
//! - [`transport::Endpoint`] is the only network code: HTTPS with a pinned SHA-256
//!   certificate fingerprint ([`trust`]), session cookie, 503 backoff, parallel-request cap.
//! - [`session::Session`]: Login / re-login on `NotAuthenticated` / Logout, paged property
//!   retrieval, task polling.
//! - [`inventory`]: VMs and disks; [`eligibility`]: what can be replicated and why not;
//!   [`paths`]: inventory paths (dcPath, folders); [`vmref`]: a VM by name, MoRef or instance
//!   UUID; [`privileges`] + [`preflight`]: what is refused before any snapshot;
//!   [`snapshot`] + [`ledger`]: snapshots that are never left behind; [`datastore`]: a
//!   `godwit_disk` Locator over `/folder` (datastores by MoRef); [`cbt`]: when a changeId may
//!   be used, QueryChangedDiskAreas and the changeId store; [`replicate`]: one cycle.
//! - [`nfc`] + [`replicate_nfc`]: the NFC export lease (ExportSnapshot / ExportVm, keep-alive,
//!   Complete, Abort) for datastores `/folder` cannot serve; [`replicate::DiskAccess`] chooses.
//!
//! ## Limits
//! NFC downloads are spooled to a local file per disk (no ranges, no resume) and always read
//! whole. ESXi hosts behind vCenter are trusted by their SHA-256 pin or the SHA-1 thumbprint
//! vCenter reports for them. See `docs/vsphere.md`.

pub mod cbt;
pub mod datastore;
pub mod eligibility;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod moref;
pub mod nfc;
pub mod paths;
pub mod preflight;
pub mod privileges;
pub mod replicate;
pub mod replicate_nfc;
pub mod session;
pub mod snapshot;
pub mod soap;
pub mod transport;
pub mod trust;
pub mod vmref;

pub use error::{Error, ErrorKind, Result};
pub use moref::MoRef;
