//! Metrics, the access log, trace context and span export.

pub mod access_log;
pub mod health;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod propagation;
pub mod trace;
