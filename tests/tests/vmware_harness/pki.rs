//! TEMPORARY: the Hyper-V tests (hyperv_*, service_hyperv*, service_scvmm), converted to the
//! harness by another branch, still include this file with `#[path]`. It only re-exports
//! `godwit_tests::pki`; delete it once those tests `use godwit_tests::pki` directly.
#![allow(unused_imports)]

pub use godwit_tests::pki::*;
