//! The staging protocol on TCP 1500 (docs/wire-protocol.md): frame codec, TLS, server, client.

pub mod client;
pub mod frame;
pub mod server;
mod session;
pub mod tls;

#[cfg(test)]
mod space_tests;
