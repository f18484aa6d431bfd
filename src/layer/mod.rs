//! Tower layers on the request path, each a thin service around state it
//! is handed (the cluster's overload state, a route's policy); they are
//! composed in the stack module only.

pub mod admission;
pub mod mirror;
pub mod retry;
pub mod timeout;
