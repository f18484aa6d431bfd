//! Integration tests: one binary (one link step) with a module per area.

mod admin_page;
mod await_ready;
mod bad_input;
mod capture;
mod capture_paths;
mod cli;
mod client_fault;
mod config_watch;
mod dashboard;
mod h3;
mod health;
mod inject;
mod k8s_schema;
mod lifecycle;
mod mirror;
mod netns;
mod odd_upstream;
mod overload;
mod process;
mod proxy;
mod reload;
mod strict_h2;
mod support;
mod tcp;
mod tls;
mod trace;
