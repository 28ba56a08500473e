//! # godwit-hyperv
//!
//! WinRM client, Hyper-V and SCVMM inventory, checkpoints, RCT and the host-push ingest.
//!
//! Layers, bottom up: [`xml`] (bounded tree), [`wsman`] (WS-Man shell envelopes),
//! [`clixml`] (PowerShell error streams), [`powershell`] (encoded commands, pieces),
//! [`transport`] (HTTPS with a pinned certificate, Basic auth), [`client`] (shell lifecycle),
//! [`inventory`] (VMs, disks, eligibility), [`checkpoint`] + [`ledger`] (ledgered `godwit-`
//! checkpoints), [`hostfile`] (frozen disks read over WinRM), [`ingest`] (the host-push data
//! path: ingest endpoint, spool, uploader), [`replicate`] (one cycle), [`scvmm`] (SCVMM names each VM's host).
//! The Hyper-V/WinRM simulator the tests run is a separate crate, `godwit-hyperv-sim`.

pub mod checkpoint;
pub mod client;
pub mod clixml;
pub mod error;
pub mod hostfile;
pub mod ingest;
pub mod inventory;
pub mod ledger;
pub mod ntlm;
pub mod powershell;
pub mod rct;
pub mod replicate;
pub mod scvmm;
pub mod transport;
pub mod trust;
pub mod wsman;
pub mod xml;

pub use error::{Error, Result};
pub use inventory::{Inventory, Source, inventory};
pub use transport::Credentials;
pub use trust::Fingerprint;
