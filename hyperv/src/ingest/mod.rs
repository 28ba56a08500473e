//! The host-push data path: Hyper-V hosts push the file ranges a cycle needs to the
//! connector's inbound HTTPS ingest endpoint (443 on the appliance), with a one-time token
//! and the connector's certificate pinned, instead of the bytes travelling base64 through
//! WinRM.
//!
//! [`codec`] (the request head, pure and fuzzed), [`ranges`] (range sets), [`spool`] (pushed
//! bytes stored durably, resumable after a kill), [`registry`] (sessions, tokens and what a
//! push gets, whatever listener it came through), [`server`] (an endpoint on its own port, for
//! `godwit replicate`; `godwit serve` mounts the registry on its one HTTPS port instead),
//! [`push`] (which ranges a disk needs, the spool-first locator, running
//! `scripts/push-ranges.ps1`).

pub mod codec;
pub mod push;
pub mod ranges;
pub mod registry;
pub mod server;
pub mod spool;

pub use push::{IngestConfig, PushLocator, PushReport, check_ingest_url};
pub use ranges::RangeSet;
pub use registry::{IngestRegistry, IngestStats};
pub use server::{IngestIdentity, IngestServer};
