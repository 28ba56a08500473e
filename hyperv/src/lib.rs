//! # godwit-hyperv
//!
//! WinRM client, Hyper-V and SCVMM inventory, checkpoints, RCT and the host-push ingest.
