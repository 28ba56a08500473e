//! The host-push data path: Hyper-V hosts push the file ranges a cycle needs to the
//! connector's inbound HTTPS ingest endpoint (443 on the appliance), with a one-time token
//! and the connector's certificate pinned, instead of the bytes travelling base64 through
//! WinRM.
//!
//! [`codec`] (the request head, pure and fuzzed), [`ranges`] (range sets), [`spool`] (pushed
//! bytes stored durably, resumable after a kill, released once read), [`budget`] (how much the
//! spools may hold at once), [`registry`] (sessions, tokens and what a push gets, whatever
//! listener it came through), [`server`] (an endpoint on its own port, for `godwit replicate`;
//! `godwit serve` mounts the registry on its one HTTPS port instead), [`plan`] (which file
//! ranges a disk needs, in the order the transfer reads them), [`locator`] (the spool-first
//! locator the transfer reads through), [`push`] (running `scripts/push-ranges.ps1`).

pub mod budget;
pub mod codec;
pub mod locator;
pub mod plan;
pub mod push;
pub mod ranges;
pub mod registry;
pub mod server;
pub mod spool;

pub use budget::SpoolBudget;
pub use locator::PushLocator;
pub use push::{IngestConfig, IngestUrl, PushReport, check_ingest_url};
pub use ranges::RangeSet;
pub use registry::{IngestRegistry, IngestStats};
pub use server::{IngestIdentity, IngestServer};
