//! TEMPORARY: the Hyper-V tests (hyperv_*, service_hyperv*, service_scvmm), converted to the
//! harness by another branch, still include this file with `#[path]`. It only re-exports
//! `godwit_tests::staging`; delete it once those tests `use godwit_tests::staging` directly.
#![allow(unused_imports)]

pub use godwit_tests::peers::need;
pub use godwit_tests::staging::*;
