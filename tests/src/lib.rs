//! # godwit-tests
//!
//! Helpers shared by the end-to-end tests in `tests/tests/`: locating the `godwit` binary and
//! the real peers (qemu-img, qemu-io, libvhdi), scratch directories, hashing; [`hyperv`]: the
//! Hyper-V fixture and simulator.

pub mod cli;
pub mod hyperv;
pub mod peers;
