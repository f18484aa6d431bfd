//! weft: a service-mesh sidecar proxy. See README.md for the tour and
//! `docs/config.md` for every config key.

pub mod admin;
pub mod app;
pub mod body;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod http3;
pub mod layer;
pub mod listener;
pub mod memory;
pub mod proxy;
pub mod route;
pub mod snapshot;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod upstream;
