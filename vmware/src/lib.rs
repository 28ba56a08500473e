//! # godwit-vmware
//!
//! vSphere SOAP client, inventory, snapshots, CBT and disk reads over /folder and NFC.
