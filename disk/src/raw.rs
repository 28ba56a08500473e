//! Raw images and block devices: every byte is data, the virtual size is the file size.

use crate::error::{Error, Result};
use crate::layer::{Format, Identity, Layer, LayerInfo, Run, RunState};
use crate::storage::Opened;

pub struct RawLayer {
    info: LayerInfo,
    src: Opened,
}

impl RawLayer {
    pub fn open(src: Opened) -> Result<Self> {
        let size = src
            .file
            .size()
            .map_err(|e| Error::io(&src.name, "size", e))?;
        Ok(RawLayer {
            info: LayerInfo {
                file: src.name.clone(),
                format: Format::Raw,
                subformat: "raw".into(),
                virtual_size: size,
                logical_sector_size: 512,
                files: vec![src.name.clone()],
                identity: Identity::None,
                parent: None,
            },
            src,
        })
    }
}

impl Layer for RawLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        Ok(vec![Run {
            offset,
            len,
            state: RunState::Data,
        }])
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.src
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.src.name, "read", e))
    }
}
