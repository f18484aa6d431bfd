//! weft: a service-mesh sidecar proxy. See README.md for the tour and
//! `docs/config.md` for every config key.
//!
//! Modules form one dependency order: each imports only from modules listed
//! before it (`.ci/check-module-order` enforces this list in CI).
//!
//! 1. `core`      body, error, boxed service, request/response extensions
//! 2. `config`    the YAML schema, its checks, file watching (a leaf)
//! 3. `telemetry` metrics registry and handles, access log and line writer, trace context
//! 4. `tls`       rustls configs, certificate store and rotation
//! 5. `http3`     h3 stream <-> body adapters
//! 6. `policy`    pure cores: balancer, EWMA, outlier, zone, gradient, retry, circuit counters
//! 7. `upstream`  connectors with connection limits, pools, HTTP/1, HTTP/2, HTTP/3 clients
//! 8. `cluster`   endpoints (a replaceable set), discovery (dns, file), health, monitor,
//!    overload state, the endpoint-picking service
//! 9. `layer`     timeout, retry, admission, mirror
//! 10. `route`    matchers, splits, sticky sides
//! 11. `front`    the front path's steps (before and after the route), each alone
//! 12. `stack`, `snapshot`  layer and step composition; the compiled config
//! 13. `proxy`    the front service (runs the composed front path per request)
//! 14. `memory`, `listener`, `admin`, `app`, `demo`
//! 15. `capture`, `inject`, `await_ready`  the Kubernetes commands (init-iptables, inject,
//!     await); they use nothing of the proxy, `inject` only `capture`'s option types

pub mod core;
pub mod config;
pub mod telemetry;
pub mod tls;
pub mod http3;
pub mod policy;
pub mod upstream;
pub mod cluster;
pub mod layer;
pub mod route;
pub mod front;
pub mod stack;
pub mod snapshot;
pub mod proxy;
pub mod memory;
pub mod listener;
pub mod admin;
pub mod app;
pub mod demo;
pub mod capture;
pub mod inject;
pub mod await_ready;
