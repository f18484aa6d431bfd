//! Metrics, the access log and log set-up.

pub mod access_log;
pub mod health;
pub mod metrics;
pub mod mirror;
