//! Generators of synthetic images for tests (feature `testing`, enabled only by dev-dependencies
//! and the Hyper-V simulator; product builds do not compile this module). Each generator writes
//! the on-disk layout from the format description, using the library's encoders for the
//! structures it has (VHD/VHDX) and byte-by-byte layouts for the ones only tests need (VMDK
//! streams, COWD, seSparse). Panics on bad arguments: they are test fixtures, not parsers.

pub mod vhd_gen;
pub mod vmdk_gen;
