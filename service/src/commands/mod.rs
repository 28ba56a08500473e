//! The commands of [`crate::Appliance`] that take more than a few lines, one module per
//! concern: the wizard's password and staging target, sources, checks, jobs, exports, and
//! diagnostics (metrics, support bundle).

mod checks;
mod diagnostics;
mod exports;
mod jobs;
mod oppages;
mod setup;
mod sources;
mod staging_servers; // issue 21

pub(crate) use exports::export_format_name;
pub(crate) use oppages::limit_now;
