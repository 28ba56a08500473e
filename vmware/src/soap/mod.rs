//! SOAP (vim25) without I/O: request envelopes, reply parsers, and the XML tree beneath them.

pub mod envelope;
pub mod lease;
pub mod response;
pub mod xml;
