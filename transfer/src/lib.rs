//! # godwit-transfer
//!
//! Moves a disk's data from the connector to the staging area and back out as an image.
//!
//! ## Design
//! - Disks are cut into fixed, offset-aligned chunks (4 MiB by default) named by the SHA-256 of
//!   their bytes ([`digest::ChunkDigest`]), stored zstd-compressed with a small header
//!   ([`chunk`]); all-zero chunks are not stored. A sync is an index ([`index::SyncIndex`])
//!   written last and atomically. Format: `docs/store-format.md`.
//! - [`store::ChunkStore`] is the store interface; [`store::Store`] implements it over a local
//!   directory or an S3 bucket, [`wire::client::StagingClient`] over TCP 1500
//!   (`docs/wire-protocol.md`), served by [`wire::server::serve`].
//! - [`replicate::replicate_disk`] runs the pipeline; [`export`] reads a sync back as a
//!   `disk::BlockSource` and streams it through the disk writers.
//! - Codecs of untrusted bytes are pure: [`wire::frame::parse`], [`index::SyncIndex::parse`],
//!   [`chunk::decode_chunk`], [`chunk::ChunkHeader::parse`].
//!
//! ## Limitations
//! - GC does nothing while a sync holds a fresh lease (it reports the leases and stops).
//! - The raw SHA-256 of a change-tracked (CBT/RCT) sync is not known, as only changes are read.

pub mod chunk;
mod codec;
pub mod digest;
pub mod error;
pub mod export;
pub mod hasher;
pub mod index;
pub mod replicate;
pub mod s3_export;
pub mod store;
pub mod target;
pub mod wire;

pub use digest::{ChunkDigest, Fingerprint};
pub use error::{Error, Result};
pub use replicate::{Range, replicate_disk};
