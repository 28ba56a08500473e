//! Managed object references: a (type, value) pair, both opaque.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `<x type="VirtualMachine">vm-57</x>`: vCenter uses `vm-57`, ESXi plain numbers; never
/// interpret the value, and keep the type with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MoRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }
}

impl fmt::Display for MoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}
