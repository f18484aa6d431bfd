//! Metrics (HTTP, endpoint health, mirroring, UDP listeners, the runtime's
//! alive tasks), the access log and the line writer behind it, trace context
//! and span export, and the per-kind rate limit on warnings in the log.

pub mod access_log;
pub mod discovery;
pub mod health;
pub mod lines;
pub mod log_limit;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod propagation;
pub mod runtime;
pub mod trace;
pub mod udp;
