//! Tower layers on the request path. Each is composed in `crate::stack` only.

pub mod mirror;
pub mod timeout;
