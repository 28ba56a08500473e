//! # godwit-image
//!
//! Builds the bootable appliance: OVA (OVF + streamOptimized VMDK + manifest) and VHDX, and
//! holds the pure codecs the appliance uses at boot:
//!
//! - [`ovf`]: the OVF descriptor (virtual hardware, vApp properties) and [`manifest`] (`.mf`);
//! - [`ova`]: the ustar archive, descriptor first;
//! - [`ovfenv`]: the OVF environment document vSphere hands the VM, and [`vapp`], the typed
//!   settings read from it;
//! - [`bundle`]: signed A/B update bundles, and [`slots`], the A/B boot state machine;
//! - [`gpt`]: the GUID partition table, and the growth of the data partition at boot;
//! - [`build`]: the rootless pipeline (`godwit image build`).

pub mod bootonce;
pub mod build;
pub mod bundle;
pub mod gpt;
pub mod ids;
pub mod manifest;
pub mod ova;
pub mod ovf;
pub mod ovfenv;
pub mod slots;
pub mod vapp;
pub mod xml;

/// Errors from building images and decoding appliance inputs. Each names what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {msg}")]
    Tool { tool: String, msg: String },
    #[error(transparent)]
    Disk(#[from] godwit_disk::Error),
}

impl Error {
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
