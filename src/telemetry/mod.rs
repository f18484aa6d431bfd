//! Metrics (HTTP, endpoint health, mirroring, UDP listeners), the access log
//! and the line writer behind it, trace context and span export.

pub mod access_log;
pub mod discovery;
pub mod health;
pub mod lines;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod propagation;
pub mod trace;
pub mod udp;
