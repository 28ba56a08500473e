//! The host-push data path: Hyper-V hosts push the file ranges a cycle needs to the
//! connector's inbound HTTPS ingest endpoint (443 on the appliance), with a one-time token
//! and the connector's certificate pinned, instead of the bytes travelling base64 through
//! WinRM.
//!
//! [`codec`] (the request head, pure and fuzzed), [`ranges`] (range sets), [`spool`] (pushed
//! bytes stored durably, resumable after a kill), [`server`] (the endpoint), [`push`] (which
//! ranges a disk needs, the spool-first locator, running `scripts/push-ranges.ps1`).

pub mod codec;
pub mod push;
pub mod ranges;
pub mod server;
pub mod spool;

pub use push::{IngestConfig, PushLocator, PushReport};
pub use ranges::RangeSet;
pub use server::{IngestIdentity, IngestServer, IngestStats};
