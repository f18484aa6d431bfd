//! Integration tests: one binary (one link step) with a module per area.

mod bad_input;
mod health;
mod lifecycle;
mod proxy;
mod support;
mod tcp;
