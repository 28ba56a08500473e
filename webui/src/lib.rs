//! # godwit-webui
//!
//! The HTTPS setup wizard and dashboard: axum routes, askama templates, static assets.
