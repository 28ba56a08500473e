//! # godwit-tests
//!
//! Helpers shared by the end-to-end tests in `tests/tests/`: locating the `godwit` binary and
//! the real peers (qemu-img, qemu-io, libvhdi), scratch directories, hashing.

pub mod cli;
pub mod peers;
