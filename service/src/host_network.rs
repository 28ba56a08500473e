//! The appliance's network settings file (`image::vapp::NetSettings` as JSON, by default
//! `/data/system/network.json`: read at every boot) and what applies the settings to the
//! system. Applying (host name, addresses, DHCP client, SNTP) is the binary's `system` module's
//! work, handed to the service as an [`ApplyNetwork`]; the service only decides when.

use godwit_image::vapp::NetSettings;
use std::path::Path;

/// How the settings were applied: the interface, `dhcp`/`static`/`none`, its IPv4 addresses.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub interface: String,
    pub mode: String,
    pub addresses: Vec<String>,
}

/// Applies network settings to the host (the `godwit` binary's `system::net`).
pub trait ApplyNetwork: Send + Sync + std::fmt::Debug {
    /// Configure host name, address, DNS and NTP. With `replace`, whatever the interface has
    /// now is dropped first and the clock is set again. Problems go to `notes`.
    fn apply(&self, net: &NetSettings, replace: bool, notes: &mut Vec<String>) -> Applied;
    /// Set the clock once by SNTP from these servers, in the background.
    fn set_clock(&self, servers: Vec<String>);
}

/// Write a file atomically (temp + fsync + rename), creating the directory.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Save the settings atomically (temp file, fsync, rename, fsync of the directory).
pub fn save(path: &Path, net: &NetSettings) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(net).map_err(std::io::Error::other)?;
    write_atomic(path, &json)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The saved settings, if there are any and they parse.
pub fn load(path: &Path) -> Option<NetSettings> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}
