//! Integration tests: one binary (one link step) with a module per area.

mod admin_page;
mod bad_input;
mod dashboard;
mod h3;
mod health;
mod lifecycle;
mod mirror;
mod overload;
mod process;
mod proxy;
mod support;
mod tcp;
mod tls;
mod trace;
