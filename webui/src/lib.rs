//! # godwit-webui
//!
//! The HTTPS setup wizard and dashboard: axum routes, askama templates, static assets, and the
//! REST API. Handlers turn forms and JSON bodies into the typed commands of [`backend`] and hold
//! no business rules; the appliance core implements [`backend::Backend`].

pub mod backend;
