//! # godwit-disk
//!
//! Readers and writers for the virtual disk formats Godwit migrates: VMDK (hosted sparse,
//! streamOptimized in both layouts, flat, split, ESXi `vmfs` descriptors, delta chains), VHD
//! (fixed, dynamic, differencing) and VHDX (fixed, dynamic, differencing, log replay), plus raw.
//!
//! ## Design
//! - Parsers are pure functions over bytes (`parse`/`encode` pairs, fuzzed); I/O goes through
//!   [`storage::ReadAt`] handles opened by a [`storage::Locator`], so the same code reads local
//!   files, memory and remote datastores.
//! - Each file is a [`layer::Layer`]: it maps any byte range to data / zero / parent runs and
//!   reads its own data. [`Disk`] stacks layers into a chain and implements
//!   [`layer::BlockSource`], which the writers and the replication pipeline consume.
//! - Memory stays bounded whatever the disk size: tables are read on demand with bounded caches.
//!
//! ## Limits
//! Each format module states what it reads and what it refuses by name.

pub mod chain;
pub mod compare;
pub mod error;
pub mod layer;
pub mod probe;
pub mod progress;
pub mod raw;
pub mod storage;
pub mod units;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod write;

#[cfg(feature = "testing")]
pub mod testing;

pub use chain::{Disk, FormatHint};
pub use error::{Error, ErrorKind, Result};
pub use layer::{BlockSource, Format, Layer, LayerInfo, Run, RunState};
