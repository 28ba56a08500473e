//! # godwit-image
//!
//! Builds the bootable appliance: OVA (OVF + streamOptimized VMDK + manifest) and VHDX.
