//! Integration tests: one binary (one link step) with a module per area.

mod admin_page;
mod bad_input;
mod client_fault;
mod dashboard;
mod h3;
mod health;
mod lifecycle;
mod mirror;
mod odd_upstream;
mod overload;
mod process;
mod proxy;
mod strict_h2;
mod support;
mod tcp;
mod tls;
mod trace;
