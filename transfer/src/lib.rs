//! # godwit-transfer
//!
//! Chunking, zstd, SHA-256, the staging chunk store (directory and S3), the TCP 1500 wire protocol and export.
